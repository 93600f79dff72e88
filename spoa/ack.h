/*
 * ack: the actions of one ACK frame, written in place into the peer's
 * output buffer.
 *
 * The decision engine calls ack_set_*() without knowing anything about
 * frames. An action that does not fit in the negotiated frame size is
 * dropped whole (never half-written) and counted in `dropped`: put the
 * decisive variable first, since HAProxy applies actions in order.
 */
#ifndef TOKENGATE_ACK_H
#define TOKENGATE_ACK_H

#include <stddef.h>
#include <stdint.h>

#include "spop.h"

struct ack {
	uint8_t *p;   /* next byte to write */
	uint8_t *end; /* end of the frame's room */
	unsigned nactions;
	unsigned dropped;
};

/* Sets txn.<prefix>.<name> (the prefix is HAProxy's, not ours). */
void ack_set_str(struct ack *a, const char *name, const char *s, size_t len);
void ack_set_cstr(struct ack *a, const char *name, const char *s);
void ack_set_int(struct ack *a, const char *name, int64_t v);
void ack_unset(struct ack *a, const char *name);

#endif
