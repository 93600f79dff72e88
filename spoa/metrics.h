/*
 * metrics: what tokengate exposes to operators over the admin listener:
 * /metrics in the Prometheus text format (0.0.4), /healthz, and /state, a
 * JSON dump of the rules in force and the hottest users (state.h).
 * Read-only views of the loop's state, built on the loop when asked.
 */
#ifndef TOKENGATE_METRICS_H
#define TOKENGATE_METRICS_H

#include <stddef.h>

#include "conn.h"
#include "engine.h"
#include "store.h"

struct metrics_sources {
	const struct conn_env *env;
	struct engine *engine;
	struct store *store;
	double started; /* Unix time */
	const char *version;
};

/* The exposition text (malloc'ed, caller frees), or NULL on no memory. */
char *metrics_render(const struct metrics_sources *m, size_t *len);

/* 1 when the database is usable and today's counters are loaded; else 0
 * with a reason in why. */
int metrics_healthy(const struct metrics_sources *m, char *why, size_t size);

#endif
