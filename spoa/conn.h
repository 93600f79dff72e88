/*
 * conn: one SPOP connection from HAProxy, as an explicit state machine on
 * libev.
 *
 *   HELLO   waiting for HAPROXY-HELLO (bounded by hello_timeout_ms); with
 *           TLS, the handshake comes first, within the same bound
 *   READY   NOTIFY in, ACK out, any number in flight (pipelining)
 *   CLOSING our last frame (AGENT-DISCONNECT or a health-check HELLO) is
 *           being written; then we shut down our side, discard input until
 *           the peer closes or a short linger ends, and free.
 *
 * Why a connection is blocked (output pending, reading paused for
 * backpressure) is kept in flags, not states.
 */
#ifndef TOKENGATE_CONN_H
#define TOKENGATE_CONN_H

#include <ev.h>
#include <stdint.h>

#include "config.h"
#include "engine.h"

/* Counters the metrics code reads; only the loop thread writes them. */
struct conn_stats {
	uint64_t accepted;
	uint64_t rejected_limit;
	uint64_t closed;
	uint64_t frames_in;
	uint64_t frames_out;
	uint64_t notify;
	uint64_t hello;
	uint64_t healthcheck;
	uint64_t disconnect_sent[100]; /* by status code, 99 = other */
	uint64_t disconnect_recv;
	uint64_t actions_dropped;
	uint64_t paused_backpressure;
	uint64_t tls_handshakes;
	uint64_t tls_handshake_failures;
};

/* What every connection shares: owned by main, outlives all conns. */
struct conn_env {
	struct ev_loop *loop;
	const struct config *cfg;
	struct engine *engine;
	struct ssl_ctx_st *tls; /* SSL_CTX of the listener; NULL: plain */
	struct conn *all;   /* every live connection */
	unsigned nconns;
	struct conn_stats stats;
	void (*on_free)(void *arg); /* a slot became free (listener resumes) */
	void *on_free_arg;
};

struct conn;

/* Takes ownership of fd (non-blocking, connected) and starts serving it.
 * NULL, with fd closed, on allocation failure. */
struct conn *conn_new(struct conn_env *env, int fd);

/*
 * Starts a graceful stop of every connection: answers what was already
 * read, then sends AGENT-DISCONNECT status 0 and closes. Returns the
 * number of connections still open.
 */
unsigned conn_drain_all(struct conn_env *env);

/* Closes and frees every connection at once (final exit). */
void conn_free_all(struct conn_env *env);

#endif
