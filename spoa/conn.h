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
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "engine.h"
#include "log.h"
#include "ratelog.h"

/*
 * Peers the listener refuses or drops, by kind. Each kind logs at most
 * CONN_REFUSAL_LOG_PER_S lines a second (with the peer's address), then
 * one "suppressed K similar messages" line: a peer opening thousands of
 * bad connections must not flood the log. The metrics count every one.
 */
enum conn_refusal {
	CONN_REFUSAL_TLS = 0,  /* TLS handshake failed or timed out, TLS errors */
	CONN_REFUSAL_PROTOCOL, /* AGENT-DISCONNECT with an error status */
	CONN_REFUSAL_LIMIT,    /* accepted and closed at max_connections */
	CONN_REFUSAL_COUNT
};

#define CONN_REFUSAL_LOG_PER_S 10

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
	uint64_t refusal_lines_suppressed[CONN_REFUSAL_COUNT];
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
	struct ratelog refusal_log[CONN_REFUSAL_COUNT]; /* set up on first use */
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

/* " from ADDR:PORT" of the TCP peer on fd, into buf, for the lines that
 * tell an operator who was refused; "" for a unix socket or when it cannot
 * be had. Returns buf. */
const char *conn_peer_str(int fd, char *buf, size_t size);

/* "tls", "protocol", "limit": the kind as metrics label it. */
const char *conn_refusal_str(enum conn_refusal kind);

/* The level a kind's lines are logged at. */
enum log_level conn_refusal_level(enum conn_refusal kind);

/*
 * True when one line about a refused peer of this kind may be written now
 * (its level is on, and the kind is within its rate); when lines were held
 * back before it, writes their summary first. Use CONN_REFUSAL_LOG.
 */
bool conn_refusal_log_ok(struct conn_env *env, enum conn_refusal kind);

/* For a timer (about every second): writes the summary of the lines held
 * back by a flood that has stopped. */
void conn_refusal_log_tick(struct conn_env *env);

/* Logs one line about a refused peer, within the kind's rate; the
 * arguments (e.g. the peer's address) are not even evaluated otherwise. */
#define CONN_REFUSAL_LOG(env, kind, ...)                                        \
	do {                                                                    \
		if (conn_refusal_log_ok((env), (kind)))                         \
			log_write(conn_refusal_level(kind), __VA_ARGS__);       \
	} while (0)

#endif
