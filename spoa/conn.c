/* conn: the SPOP connection state machine (see conn.h). */
#include "conn.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log.h"
#include "spop.h"
#include "tls.h"

enum conn_state {
	CONN_HELLO = 0,
	CONN_READY,
	CONN_CLOSING,
	CONN_STATE_COUNT
};

#define CONN_F_WRITING 0x1u     /* output pending, write watcher armed */
#define CONN_F_PAUSED 0x2u      /* reading stopped for backpressure */
#define CONN_F_SHUT 0x4u        /* our side shut down, lingering */
#define CONN_F_DEAD 0x8u        /* free at the end of the callback */
#define CONN_F_IN_CALLBACK 0x10u
#define CONN_F_HANDSHAKE 0x20u        /* TLS handshake not finished */
#define CONN_F_READ_WANTS_WRITE 0x40u /* SSL_read waits for the socket to take output */
#define CONN_F_WRITE_WANTS_READ 0x80u /* SSL_write waits for input */

/* A peer cannot make us buffer more than this for one frame, whatever it
 * announces. 3.1.x may send frames larger than negotiated, so we accept
 * up to what it announced (its tune.bufsize - 4), within this cap: 64 KB
 * covers any sane bufsize and bounds a connection's read buffer. */
#define CONN_RX_HARD_MAX (1u << 16)
#define CONN_LINGER_S 1.0
#define CONN_CLOSE_WRITE_S 5.0
#define CONN_RBUF_INITIAL 4096u

struct conn {
	int fd;
	enum conn_state state;
	unsigned flags;
	struct conn_env *env;
	struct conn *prev, *next;
	ev_io rio, wio;
	ev_timer timer;
	ev_tstamp last_activity;
	uint32_t frame_size; /* negotiated: what we may send */
	uint32_t rx_max;     /* largest frame we accept */
	uint8_t *rbuf;
	size_t rlen, rcap;
	uint8_t *wbuf;
	size_t wlen, woff, wcap;
	uint64_t id;
	SSL *ssl; /* NULL: plain socket */
};

static const char *const state_names[CONN_STATE_COUNT] = {"HELLO", "READY", "CLOSING"};

static const char *conn_state_str(enum conn_state s)
{
	return (unsigned)s < CONN_STATE_COUNT ? state_names[s] : "?";
}

static void conn_set_state(struct conn *c, enum conn_state s)
{
	if ((unsigned)s >= CONN_STATE_COUNT)
		abort();
	LOG_DEBUG("conn %llu: %s -> %s", (unsigned long long)c->id, conn_state_str(c->state),
		  conn_state_str(s));
	c->state = s;
}

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void conn_free(struct conn *c)
{
	struct conn_env *env = c->env;

	ev_io_stop(env->loop, &c->rio);
	ev_io_stop(env->loop, &c->wio);
	ev_timer_stop(env->loop, &c->timer);
	if (c->fd != -1)
		close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		env->all = c->next;
	if (c->next)
		c->next->prev = c->prev;
	env->nconns--;
	env->stats.closed++;
	SSL_free(c->ssl);
	free(c->rbuf);
	free(c->wbuf);
	free(c);
	if (env->on_free)
		env->on_free(env->on_free_arg);
}

/* Marks c for freeing; the free happens when the current callback ends,
 * never under the codec's feet. */
static void conn_close(struct conn *c)
{
	c->flags |= CONN_F_DEAD;
	ev_io_stop(c->env->loop, &c->rio);
	ev_io_stop(c->env->loop, &c->wio);
	ev_timer_stop(c->env->loop, &c->timer);
	if (!(c->flags & CONN_F_IN_CALLBACK))
		conn_free(c);
}

/* The end of every callback: free if closed, else nothing. */
static void conn_leave(struct conn *c)
{
	c->flags &= ~CONN_F_IN_CALLBACK;
	if (c->flags & CONN_F_DEAD)
		conn_free(c);
}

const char *conn_peer_str(int fd, char *buf, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN];
	int port;

	buf[0] = '\0';
	if (getpeername(fd, (struct sockaddr *)&ss, &len) == -1)
		return buf;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
	} else {
		return buf;
	}
	snprintf(buf, size, " from %s:%d", host, port);
	return buf;
}

static const struct {
	const char *name; /* the metrics label */
	const char *what; /* the summary line's subject */
	enum log_level level;
} refusals[CONN_REFUSAL_COUNT] = {
	[CONN_REFUSAL_TLS] = {"tls", "TLS refusals", LOG_LVL_INFO},
	[CONN_REFUSAL_PROTOCOL] = {"protocol", "protocol errors", LOG_LVL_INFO},
	[CONN_REFUSAL_LIMIT] = {"limit", "connections over max_connections", LOG_LVL_INFO},
};

const char *conn_refusal_str(enum conn_refusal kind)
{
	return (unsigned)kind < CONN_REFUSAL_COUNT ? refusals[kind].name : "?";
}

enum log_level conn_refusal_level(enum conn_refusal kind)
{
	if ((unsigned)kind >= CONN_REFUSAL_COUNT)
		abort();
	return refusals[kind].level;
}

static struct ratelog *refusal_log(struct conn_env *env, enum conn_refusal kind)
{
	struct ratelog *r = &env->refusal_log[kind];

	if (!r->burst) /* the env is zeroed by its owner: first use */
		ratelog_init(r, CONN_REFUSAL_LOG_PER_S, 1.0);
	return r;
}

static void refusal_summary(enum conn_refusal kind, uint64_t held, double held_s)
{
	LOG(refusals[kind].level, "%s: suppressed %llu similar messages in the last %.1f s", refusals[kind].what,
	    (unsigned long long)held, held_s);
}

bool conn_refusal_log_ok(struct conn_env *env, enum conn_refusal kind)
{
	uint64_t held;
	double held_s;

	if (conn_refusal_level(kind) > log_threshold)
		return false;
	if (!ratelog_allow(refusal_log(env, kind), ev_now(env->loop), &held, &held_s)) {
		env->stats.refusal_lines_suppressed[kind]++;
		return false;
	}
	if (held)
		refusal_summary(kind, held, held_s);
	return true;
}

void conn_refusal_log_tick(struct conn_env *env)
{
	for (unsigned k = 0; k < CONN_REFUSAL_COUNT; k++) {
		double held_s;
		uint64_t held = ratelog_flush(refusal_log(env, k), ev_now(env->loop), &held_s);

		if (held)
			refusal_summary(k, held, held_s);
	}
}

struct conn *conn_new(struct conn_env *env, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	static uint64_t next_id;

	if (!c) {
		close(fd);
		return NULL;
	}
	if (env->tls) {
		c->ssl = SSL_new(env->tls);
		if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
			SSL_free(c->ssl);
			free(c);
			close(fd);
			ERR_clear_error();
			return NULL;
		}
		SSL_set_accept_state(c->ssl);
		c->flags |= CONN_F_HANDSHAKE;
	}
	c->fd = fd;
	c->env = env;
	c->id = ++next_id;
	c->state = CONN_HELLO;
	c->rx_max = (uint32_t)env->cfg->max_frame_size;
	c->frame_size = (uint32_t)env->cfg->max_frame_size;
	ev_io_init(&c->rio, conn_read_cb, fd, EV_READ);
	ev_io_init(&c->wio, conn_write_cb, fd, EV_WRITE);
	ev_timer_init(&c->timer, conn_timer_cb, 0., 0.);
	c->next = env->all;
	if (env->all)
		env->all->prev = c;
	env->all = c;
	env->nconns++;
	env->stats.accepted++;
	c->last_activity = ev_now(env->loop);
	c->timer.repeat = (double)env->cfg->hello_timeout_ms / 1000.0;
	ev_timer_again(env->loop, &c->timer);
	ev_io_start(env->loop, &c->rio);
	return c;
}

/* Makes room for n more output bytes; false when over the bound. */
static bool wbuf_reserve(struct conn *c, size_t n)
{
	size_t need, cap;
	uint8_t *nb;

	if (c->woff > 0 && c->woff == c->wlen)
		c->woff = c->wlen = 0;
	need = c->wlen + n;
	if (need <= c->wcap)
		return true;
	if (c->woff > 0) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
		need = c->wlen + n;
		if (need <= c->wcap)
			return true;
	}
	/* The bound is on what waits, plus one frame being built. */
	if (c->wlen > (size_t)c->env->cfg->write_buffer_max)
		return false;
	cap = c->wcap ? c->wcap : 4096;
	while (cap < need)
		cap *= 2;
	nb = realloc(c->wbuf, cap);
	if (!nb)
		return false;
	c->wbuf = nb;
	c->wcap = cap;
	return true;
}

static void conn_flush(struct conn *c);

/* Stops taking input; what is queued is written, then we close. The
 * timer bounds how long a peer that does not read can keep us. */
static void conn_closing(struct conn *c)
{
	conn_set_state(c, CONN_CLOSING);
	ev_io_stop(c->env->loop, &c->rio);
	ev_timer_stop(c->env->loop, &c->timer);
	ev_timer_set(&c->timer, CONN_CLOSE_WRITE_S, 0.);
	ev_timer_start(c->env->loop, &c->timer);
}

/* Queues an AGENT-DISCONNECT and moves to CLOSING. */
static void conn_fail(struct conn *c, enum spop_status status, const char *why)
{
	uint8_t *p, *end;

	if (c->state == CONN_CLOSING)
		return;
	if (status == SPOP_ERR_NONE) {
		LOG_DEBUG("conn %llu: closing: %s", (unsigned long long)c->id, why);
	} else {
		char peer[80];

		CONN_REFUSAL_LOG(c->env, CONN_REFUSAL_PROTOCOL, "conn %llu%s: disconnect status %d (%s): %s",
				 (unsigned long long)c->id, conn_peer_str(c->fd, peer, sizeof(peer)), (int)status,
				 spop_status_str(status), why);
	}
	c->env->stats.disconnect_sent[status < 99 ? status : 99]++;
	conn_closing(c);
	if (!wbuf_reserve(c, 256)) {
		conn_close(c);
		return;
	}
	p = c->wbuf + c->wlen;
	end = c->wbuf + c->wcap;
	if (spop_put_agent_disconnect(&p, end, (uint32_t)status, why) == -1)
		abort(); /* 256 bytes always fit our own messages */
	c->wlen = (size_t)(p - c->wbuf);
	c->env->stats.frames_out++;
}

static void handle_hello(struct conn *c, const struct spop_frame *f)
{
	struct spop_hello h;
	enum spop_status st;
	uint8_t *p;

	if (f->type != SPOP_FRAME_HAPROXY_HELLO) {
		conn_fail(c, SPOP_ERR_INVALID, "expected HAPROXY-HELLO");
		return;
	}
	if (!(f->flags & SPOP_FLAG_FIN)) {
		conn_fail(c, SPOP_ERR_FRAG_NOT_SUPPORTED, "fragmented HELLO");
		return;
	}
	if (f->sid != 0 || f->fid != 0) {
		conn_fail(c, SPOP_ERR_INVALID, "HELLO with non-zero stream-id or frame-id");
		return;
	}
	if (spop_get_hello(f->payload, f->payload_len, &h) == -1) {
		conn_fail(c, SPOP_ERR_INVALID, "malformed HELLO items");
		return;
	}
	st = spop_hello_check(&h);
	if (st != SPOP_ERR_NONE) {
		conn_fail(c, st, spop_status_str(st));
		return;
	}
	c->frame_size = h.max_frame_size < c->frame_size ? h.max_frame_size : c->frame_size;
	c->rx_max = h.max_frame_size > CONN_RX_HARD_MAX ? CONN_RX_HARD_MAX : h.max_frame_size;
	if (c->rx_max < c->frame_size)
		c->rx_max = c->frame_size;
	if (!wbuf_reserve(c, 128)) {
		conn_close(c);
		return;
	}
	p = c->wbuf + c->wlen;
	/* Pipelining only: we never fragment and never answer on another
	 * connection, and we require nothing of HAProxy. */
	if (spop_put_agent_hello(&p, c->wbuf + c->wcap, c->frame_size, "pipelining") == -1)
		abort();
	c->wlen = (size_t)(p - c->wbuf);
	c->env->stats.frames_out++;
	if (h.healthcheck) {
		/* No DISCONNECT after a health check: HAProxy reads the raw
		 * AGENT-HELLO and then resets the connection itself. */
		c->env->stats.healthcheck++;
		conn_closing(c);
		return;
	}
	c->env->stats.hello++;
	conn_set_state(c, CONN_READY);
	c->timer.repeat = c->env->cfg->idle_timeout_ms > 0 ? (double)c->env->cfg->idle_timeout_ms / 1000.0 : 0.;
	if (c->timer.repeat > 0.)
		ev_timer_again(c->env->loop, &c->timer);
	else
		ev_timer_stop(c->env->loop, &c->timer);
}

static void handle_notify(struct conn *c, const struct spop_frame *f)
{
	static struct spop_msg msg; /* large; the loop is single-threaded */
	const uint8_t *p = f->payload, *end = f->payload + f->payload_len;
	uint8_t *start, *q;
	struct ack ack;

	if (!(f->flags & SPOP_FLAG_FIN)) {
		conn_fail(c, SPOP_ERR_FRAG_NOT_SUPPORTED, "NOTIFY without FIN: fragmentation was not negotiated");
		return;
	}
	if (!wbuf_reserve(c, (size_t)c->frame_size + 4)) {
		conn_fail(c, SPOP_ERR_RES, "output buffer full");
		return;
	}
	q = c->wbuf + c->wlen;
	start = spop_begin_frame(&q, q + c->frame_size + 4, SPOP_FRAME_ACK, SPOP_FLAG_FIN, f->sid, f->fid);
	if (!start)
		abort(); /* frame_size >= 256 always holds a header */
	ack.p = q;
	ack.end = start + 4 + c->frame_size;
	ack.nactions = 0;
	ack.dropped = 0;
	while (p < end) {
		if (spop_get_message(&p, end, &msg) == -1) {
			conn_fail(c, SPOP_ERR_INVALID, "malformed message list in NOTIFY");
			return;
		}
		if (!c->env->cfg->ack_only)
			engine_on_message(c->env->engine, ev_now(c->env->loop), &msg, &ack);
	}
	/* Never an empty ACK: some HAProxy versions wait for the processing
	 * timeout on one. Unsetting an unknown variable is a no-op. */
	if (ack.nactions == 0)
		ack_unset(&ack, "noop");
	c->env->stats.actions_dropped += ack.dropped;
	spop_end_frame(start, ack.p);
	c->wlen = (size_t)(ack.p - c->wbuf);
	c->env->stats.notify++;
	c->env->stats.frames_out++;
}

static void handle_ready(struct conn *c, const struct spop_frame *f)
{
	struct spop_disconnect d;
	char msg[128];

	switch (f->type) {
	case SPOP_FRAME_NOTIFY:
		handle_notify(c, f);
		break;
	case SPOP_FRAME_HAPROXY_DISCONNECT:
		c->env->stats.disconnect_recv++;
		if (spop_get_disconnect(f->payload, f->payload_len, &d) == -1) {
			conn_fail(c, SPOP_ERR_INVALID, "malformed HAPROXY-DISCONNECT");
			break;
		}
		LOG_DEBUG("conn %llu: HAProxy disconnects, status %u: %s", (unsigned long long)c->id,
			  (unsigned)d.status, log_escape(msg, sizeof(msg), d.message.ptr, d.message.len, 100));
		conn_fail(c, SPOP_ERR_NONE, "bye");
		break;
	case SPOP_FRAME_UNSET:
		conn_fail(c, SPOP_ERR_FRAG_NOT_SUPPORTED, "fragment received: fragmentation was not negotiated");
		break;
	default:
		snprintf(msg, sizeof(msg), "unexpected frame type %u (%s)", f->type,
			 spop_frame_type_str(f->type));
		conn_fail(c, SPOP_ERR_INVALID, msg);
		break;
	}
}

/* Handles one whole frame (length prefix excluded). */
static void handle_frame(struct conn *c, const uint8_t *buf, size_t len)
{
	struct spop_frame f;

	c->env->stats.frames_in++;
	if (spop_get_frame(buf, len, &f) == -1) {
		conn_fail(c, SPOP_ERR_INVALID, "malformed frame header");
		return;
	}
	if (c->state == CONN_HELLO)
		handle_hello(c, &f);
	else if (c->state == CONN_READY)
		handle_ready(c, &f);
}

/* Frames in rbuf: handles whole ones, up to frames_per_event. Returns
 * true when more whole frames may remain. */
static bool process_input(struct conn *c)
{
	size_t off = 0;
	long budget = c->env->cfg->frames_per_event;
	bool more = false;

	while (c->state != CONN_CLOSING) {
		uint32_t len;
		int r = spop_peek_length(c->rbuf + off, c->rlen - off, c->rx_max, &len);

		if (r == 0)
			break;
		if (r == -1) {
			char msg[96];

			if (len > c->rx_max) {
				snprintf(msg, sizeof(msg), "frame of %u bytes exceeds %u", len, c->rx_max);
				conn_fail(c, SPOP_ERR_TOO_BIG, msg);
			} else {
				snprintf(msg, sizeof(msg), "frame of %u bytes is shorter than a header", len);
				conn_fail(c, SPOP_ERR_INVALID, msg);
			}
			break;
		}
		if (c->rlen - off < 4 + (size_t)len)
			break;
		if (c->flags & CONN_F_PAUSED)
			break; /* the write side wakes us */
		if (budget-- == 0) {
			more = true;
			break;
		}
		handle_frame(c, c->rbuf + off + 4, len);
		off += 4 + (size_t)len;
		/* Only whole frames count as activity: a peer dribbling one byte
		 * at a time cannot hold its slot past the idle timeout. */
		c->last_activity = ev_now(c->env->loop);
		/* Backpressure: stop taking NOTIFYs while the peer does not
		 * read its ACKs. */
		if (c->wlen - c->woff > (size_t)c->env->cfg->write_buffer_max && c->state == CONN_READY) {
			c->flags |= CONN_F_PAUSED;
			c->env->stats.paused_backpressure++;
			ev_io_stop(c->env->loop, &c->rio);
		}
	}
	if (off > 0) {
		memmove(c->rbuf, c->rbuf + off, c->rlen - off);
		c->rlen -= off;
	}
	return more;
}

/* Makes room to read into rbuf, growing it so that the frame announced
 * by the first prefix fits whole. Returns the room, 0 when the buffer
 * holds whole frames and no more is needed, -1 on allocation failure. */
static long rbuf_reserve(struct conn *c)
{
	size_t need = c->rlen + CONN_RBUF_INITIAL, limit = (size_t)c->rx_max + 4, cap;
	uint32_t len;
	uint8_t *nb;

	if (spop_peek_length(c->rbuf, c->rlen, c->rx_max, &len) == 1 && 4 + (size_t)len > need)
		need = 4 + (size_t)len;
	if (need > limit)
		need = limit > c->rlen ? limit : c->rlen;
	if (c->rcap < need) {
		cap = c->rcap ? c->rcap : CONN_RBUF_INITIAL;
		while (cap < need)
			cap *= 2;
		nb = realloc(c->rbuf, cap);
		if (!nb)
			return -1;
		c->rbuf = nb;
		c->rcap = cap;
	}
	return (long)(c->rcap - c->rlen);
}

static bool is_normal_close(int err)
{
	return err == ECONNRESET || err == EPIPE || err == ENOTCONN || err == ETIMEDOUT;
}

/*
 * What an SSL call that did not complete means, in read(2) terms: -1 with
 * errno EAGAIN (try again on the event the flags ask for), 0 for the end
 * of the stream, or -1 with ECONNRESET after logging what TLS refused (the
 * callers treat it as a normal close, without a second message).
 */
static ssize_t tls_result(struct conn *c, int r, bool reading)
{
	char why[256], peer[80];

	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		if (!reading)
			c->flags |= CONN_F_WRITE_WANTS_READ;
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_WANT_WRITE:
		if (reading) {
			c->flags |= CONN_F_READ_WANTS_WRITE;
			ev_io_start(c->env->loop, &c->wio);
		}
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() == 0 && (r == 0 || errno == 0))
			return 0;
		if (ERR_peek_error() == 0)
			return -1; /* errno says what the socket did */
		/* fallthrough */
	default:
		tls_error_string(why, sizeof(why), "error");
		CONN_REFUSAL_LOG(c->env, CONN_REFUSAL_TLS, "conn %llu%s: TLS %s: %s", (unsigned long long)c->id,
				 conn_peer_str(c->fd, peer, sizeof(peer)), reading ? "read" : "write", why);
		errno = ECONNRESET;
		return -1;
	}
}

/* read(2), or SSL_read on a TLS connection; read(2)'s results. */
static ssize_t conn_recv(struct conn *c, void *buf, size_t n)
{
	ssize_t k;
	int r;

	if (!c->ssl) {
		do
			k = read(c->fd, buf, n);
		while (k == -1 && errno == EINTR);
		return k;
	}
	ERR_clear_error();
	r = SSL_read(c->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
	return r > 0 ? (ssize_t)r : tls_result(c, r, true);
}

/* write(2), or SSL_write on a TLS connection; write(2)'s results. */
static ssize_t conn_send(struct conn *c, const void *buf, size_t n)
{
	ssize_t k;
	int r;

	if (!c->ssl) {
		do
			k = write(c->fd, buf, n);
		while (k == -1 && errno == EINTR);
		return k;
	}
	ERR_clear_error();
	c->flags &= ~CONN_F_WRITE_WANTS_READ;
	r = SSL_write(c->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
	return r > 0 ? (ssize_t)r : tls_result(c, r, false);
}

/*
 * Advances the TLS handshake: 1 once it is done, 0 while it waits for the
 * peer (the watchers are set for what it waits on), -1 when it failed and
 * the connection is closed. A peer without an acceptable certificate ends
 * here, before a single SPOP byte is read.
 */
static int conn_handshake(struct conn *c)
{
	char why[256], peer[80];
	int r;

	ERR_clear_error();
	r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		c->flags &= ~CONN_F_HANDSHAKE;
		c->env->stats.tls_handshakes++;
		if (!(c->flags & CONN_F_WRITING))
			ev_io_stop(c->env->loop, &c->wio);
		LOG_DEBUG("conn %llu: %s handshake done, %s", (unsigned long long)c->id, SSL_get_version(c->ssl),
			  SSL_get_cipher_name(c->ssl));
		return 1;
	}
	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		ev_io_stop(c->env->loop, &c->wio);
		return 0;
	case SSL_ERROR_WANT_WRITE:
		ev_io_start(c->env->loop, &c->wio);
		return 0;
	default:
		break;
	}
	c->env->stats.tls_handshake_failures++;
	tls_error_string(why, sizeof(why), "the peer closed the connection");
	if (SSL_get_verify_result(c->ssl) != X509_V_OK)
		CONN_REFUSAL_LOG(c->env, CONN_REFUSAL_TLS, "conn %llu%s: TLS handshake failed: client certificate: %s (%s)",
				 (unsigned long long)c->id, conn_peer_str(c->fd, peer, sizeof(peer)),
				 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)), why);
	else
		CONN_REFUSAL_LOG(c->env, CONN_REFUSAL_TLS, "conn %llu%s: TLS handshake failed: %s",
				 (unsigned long long)c->id, conn_peer_str(c->fd, peer, sizeof(peer)), why);
	conn_close(c);
	return -1;
}

/* Writes what is pending; arms the write watcher on a short write. */
static void conn_flush(struct conn *c)
{
	while (c->woff < c->wlen) {
		ssize_t n = conn_send(c, c->wbuf + c->woff, c->wlen - c->woff);

		if (n == -1) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				/* TLS waiting for input: the read side calls
				 * us again; a write watcher would spin. */
				if (c->flags & CONN_F_WRITE_WANTS_READ) {
					c->flags &= ~CONN_F_WRITING;
					ev_io_stop(c->env->loop, &c->wio);
					ev_io_start(c->env->loop, &c->rio);
					return;
				}
				if (!(c->flags & CONN_F_WRITING)) {
					c->flags |= CONN_F_WRITING;
					ev_io_start(c->env->loop, &c->wio);
				}
				return;
			}
			if (!is_normal_close(errno))
				LOG_WARN("conn %llu: write: %s", (unsigned long long)c->id, strerror(errno));
			conn_close(c);
			return;
		}
		c->woff += (size_t)n;
	}
	c->woff = c->wlen = 0;
	if (c->flags & CONN_F_WRITING) {
		c->flags &= ~CONN_F_WRITING;
		ev_io_stop(c->env->loop, &c->wio);
	}
	if (c->state == CONN_CLOSING && !(c->flags & CONN_F_SHUT)) {
		/* Our last frame is out. Half-close and read until the peer
		 * closes, so that unread input cannot turn our close into a
		 * reset that destroys the DISCONNECT before HAProxy reads it. */
		c->flags |= CONN_F_SHUT;
		if (c->ssl) {
			/* close_notify, best effort: the TCP half-close follows. */
			ERR_clear_error();
			SSL_shutdown(c->ssl);
			ERR_clear_error();
		}
		shutdown(c->fd, SHUT_WR);
		c->rlen = 0;
		ev_io_start(c->env->loop, &c->rio);
		ev_timer_stop(c->env->loop, &c->timer);
		ev_timer_set(&c->timer, CONN_LINGER_S, 0.);
		ev_timer_start(c->env->loop, &c->timer);
	}
	if ((c->flags & CONN_F_PAUSED) && c->state == CONN_READY) {
		c->flags &= ~CONN_F_PAUSED;
		ev_io_start(c->env->loop, &c->rio);
		/* Frames may already wait in rbuf: come back for them. */
		ev_feed_event(c->env->loop, &c->rio, EV_READ);
	}
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = container_of(w, struct conn, rio);
	long room;

	(void)revents;
	c->flags |= CONN_F_IN_CALLBACK;
	if (c->flags & CONN_F_SHUT) {
		/* Lingering: discard until EOF. */
		uint8_t junk[4096];
		ssize_t n = read(c->fd, junk, sizeof(junk));

		if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR))
			conn_close(c);
		conn_leave(c);
		return;
	}
	if ((c->flags & CONN_F_HANDSHAKE) && conn_handshake(c) != 1) {
		conn_leave(c);
		return;
	}
	/* One read per event: libev is level-triggered, so what we leave
	 * in the socket brings us back after other connections had a turn
	 * (what TLS has already decrypted is not in the socket: see below). */
	room = rbuf_reserve(c);
	if (room == -1) {
		conn_fail(c, SPOP_ERR_RES, "out of memory");
	} else if (room > 0) {
		ssize_t n = conn_recv(c, c->rbuf + c->rlen, (size_t)room);

		if (n > 0) {
			c->rlen += (size_t)n;
		} else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
			if (n == -1 && !is_normal_close(errno))
				LOG_WARN("conn %llu: read: %s", (unsigned long long)c->id, strerror(errno));
			LOG_DEBUG("conn %llu: peer closed", (unsigned long long)c->id);
			conn_close(c);
			conn_leave(c);
			return;
		}
	}
	if (!(c->flags & CONN_F_DEAD) && process_input(c) && !(c->flags & CONN_F_DEAD))
		ev_feed_event(loop, &c->rio, EV_READ); /* yield, then continue */
	else if (c->ssl && !(c->flags & (CONN_F_DEAD | CONN_F_PAUSED)) && SSL_pending(c->ssl) > 0)
		ev_feed_event(loop, &c->rio, EV_READ); /* decrypted bytes wait in OpenSSL, not the socket */
	if (!(c->flags & CONN_F_DEAD))
		conn_flush(c);
	conn_leave(c);
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = container_of(w, struct conn, wio);

	(void)revents;
	c->flags |= CONN_F_IN_CALLBACK;
	if (c->flags & CONN_F_HANDSHAKE) {
		if (conn_handshake(c) == 1)
			ev_feed_event(loop, &c->rio, EV_READ); /* HELLO may already be in */
		conn_leave(c);
		return;
	}
	if (c->flags & CONN_F_READ_WANTS_WRITE) {
		c->flags &= ~CONN_F_READ_WANTS_WRITE;
		ev_feed_event(loop, &c->rio, EV_READ);
	}
	conn_flush(c);
	if (!(c->flags & (CONN_F_WRITING | CONN_F_DEAD)))
		ev_io_stop(loop, &c->wio);
	conn_leave(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct conn *c = container_of(w, struct conn, timer);
	ev_tstamp idle, timeout;

	(void)revents;
	c->flags |= CONN_F_IN_CALLBACK;
	switch (c->state) {
	case CONN_HELLO:
		if (c->flags & CONN_F_HANDSHAKE) {
			char peer[80];

			/* No TLS channel to say it on: just close. */
			c->env->stats.tls_handshake_failures++;
			CONN_REFUSAL_LOG(c->env, CONN_REFUSAL_TLS,
					 "conn %llu%s: TLS handshake not finished within hello_timeout_ms",
					 (unsigned long long)c->id, conn_peer_str(c->fd, peer, sizeof(peer)));
			conn_close(c);
			break;
		}
		conn_fail(c, SPOP_ERR_TOUT, "no HELLO in time");
		conn_flush(c);
		break;
	case CONN_READY:
		/* Lazy re-arm: activity only stamps last_activity. */
		idle = ev_now(loop) - c->last_activity;
		timeout = (double)c->env->cfg->idle_timeout_ms / 1000.0;
		if (idle < timeout) {
			w->repeat = timeout - idle;
			ev_timer_again(loop, w);
			break;
		}
		conn_fail(c, SPOP_ERR_TOUT, "idle timeout");
		conn_flush(c);
		break;
	case CONN_CLOSING:
	default:
		conn_close(c); /* linger or last write took too long */
		break;
	}
	conn_leave(c);
}

unsigned conn_drain_all(struct conn_env *env)
{
	struct conn *c, *next;

	for (c = env->all; c; c = next) {
		next = c->next;
		c->flags |= CONN_F_IN_CALLBACK;
		if (c->state == CONN_HELLO) {
			conn_close(c);
		} else if (c->state == CONN_READY) {
			/* Answer what was already read, then say goodbye. */
			c->flags &= ~CONN_F_PAUSED;
			while (process_input(c) && !(c->flags & CONN_F_DEAD))
				;
			if (!(c->flags & CONN_F_DEAD)) {
				conn_fail(c, SPOP_ERR_NONE, "agent shutting down");
				conn_flush(c);
			}
		}
		conn_leave(c);
	}
	return env->nconns;
}

void conn_free_all(struct conn_env *env)
{
	while (env->all)
		conn_free(env->all);
}
