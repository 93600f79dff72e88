/*
 * engine: where a named SPOE message and its arguments become actions.
 *
 * This is the only place the protocol code hands requests to: conn.c
 * decodes a NOTIFY and calls engine_on_message() once per message; the
 * engine answers by writing variables into the ACK. It does no I/O and
 * never blocks.
 */
#ifndef TOKENGATE_ENGINE_H
#define TOKENGATE_ENGINE_H

#include "ack.h"
#include "config.h"
#include "spop.h"

struct engine;

/* Creates an engine for cfg (borrowed: must outlive the engine). NULL on
 * allocation failure. */
struct engine *engine_new(const struct config *cfg);
void engine_free(struct engine *e);

/* Decides on one message. Unknown messages write nothing. */
void engine_on_message(struct engine *e, const struct spop_msg *msg, struct ack *out);

#endif
