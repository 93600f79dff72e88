/*
 * state: the JSON state dump of the admin listener (/state): settings and
 * tiers in force, open reservations, the hottest users of the day. The
 * only file that includes cJSON. Never contains a key or a prompt.
 */
#ifndef TOKENGATE_STATE_H
#define TOKENGATE_STATE_H

#include <stddef.h>

#include "metrics.h"

/* The document (malloc'ed, caller frees), or NULL on no memory. */
char *state_json(const struct metrics_sources *m, size_t *len);

#endif
