/*
 * spopload: a SPOP load generator that plays HAProxy's part against an agent
 * directly: HAPROXY-HELLO on each connection, then NOTIFY frames kept
 * pipelined, each ACK matched to its (stream-id, frame-id) and timed.
 *
 * Build:
 *   cc -std=c11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
 *      -D_GNU_SOURCE bench/spopload.c bench/spopwire.c -o build/spopload -pthread
 *
 * Run: spopload -p PORT [-c CONNS] [-P DEPTH] [-t THREADS] [-d SECS | -n N]
 * [-r RATE] [--tally] (spopload -h for all options). Exit status: 0 when requests
 * completed without any error, 1 otherwise (protocol error, agent
 * disconnect, timeout, refused connection, unexpected close), 2 on a usage
 * error.
 */
#include "spopwire.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 100000u
#define MAX_DEPTH 4096u
#define MAX_THREADS 256u
#define RECONNECT_DELAY_NS 100000000ull	/* 100 ms between reconnects */
#define READS_PER_EVENT 16		/* reads per readiness event */
#define MAX_ERROR_LINES 20		/* error lines printed in all */
#define NARGS 10
#define TALLY_MAX 32			/* distinct values counted by --tally */
#define TALLY_KEY_MAX 96		/* bytes of one formatted value */
#define PACE_SLACK_NS 10000000ull	/* -r: unused sending credit kept, 10 ms */

/* ---- options ---------------------------------------------------------- */

struct opts {
	const char *host;
	const char *port;
	unsigned conns;
	unsigned depth;
	unsigned threads;
	double duration;	/* seconds; < 0 when not given */
	uint64_t total;		/* 0: run for the duration */
	double warmup;
	unsigned users;
	const char *message;
	uint32_t frame_size;
	unsigned timeout_ms;
	int json;
	int verbose;
	int tally;		/* --tally: count the "action" values of ACKs */
	int settle;		/* --settle: answer each allowed request with llm-response */
	double rate;		/* -r: NOTIFYs per second in all; 0 = as fast as answered */
	uint64_t pace_ns;	/* -r: one NOTIFY per connection every pace_ns */
	struct sockaddr_storage addr;
	socklen_t addrlen;
};

/* ---- latency histogram ------------------------------------------------ */

/*
 * Log-linear buckets over nanoseconds: values below 2^SUB_BITS are exact,
 * above that each power of two is cut into 2^SUB_BITS buckets, so a
 * reported percentile is within 1/128 (0.8 %) of the true sample.
 */
#define SUB_BITS 7u
#define SUB_COUNT (1u << SUB_BITS)
#define HIST_GROUPS (64u - SUB_BITS + 1u)
#define HIST_BUCKETS (HIST_GROUPS * SUB_COUNT)

struct hist {
	uint64_t count;
	uint64_t max;
	uint64_t sum;
	uint64_t b[HIST_BUCKETS];
};

static unsigned
hist_index(uint64_t v)
{
	unsigned msb, g;

	if (v < SUB_COUNT)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	g = msb - SUB_BITS + 1u;
	return g * SUB_COUNT + (unsigned)((v >> (g - 1u)) - SUB_COUNT);
}

/* Highest value that falls into bucket i. */
static uint64_t
hist_upper(unsigned i)
{
	unsigned g = i / SUB_COUNT, sub = i % SUB_COUNT;

	if (g == 0)
		return sub;
	return (((uint64_t)SUB_COUNT + sub) << (g - 1u)) + ((uint64_t)1 << (g - 1u)) - 1u;
}

static void
hist_add(struct hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

static void
hist_merge(struct hist *to, const struct hist *from)
{
	unsigned i;

	for (i = 0; i < HIST_BUCKETS; i++)
		to->b[i] += from->b[i];
	to->count += from->count;
	to->sum += from->sum;
	if (from->max > to->max)
		to->max = from->max;
}

/* The q-quantile (0 < q <= 1), as its bucket's upper bound, capped by max. */
static uint64_t
hist_quantile(const struct hist *h, double q)
{
	uint64_t rank, seen = 0, up;
	unsigned i;

	if (h->count == 0)
		return 0;
	rank = (uint64_t)(q * (double)h->count + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > h->count)
		rank = h->count;
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= rank) {
			up = hist_upper(i);
			return up < h->max ? up : h->max;
		}
	}
	return h->max;
}

/* ---- shared run state ------------------------------------------------- */

struct stats {
	uint64_t completed;	/* ACKs counted (after warmup) */
	uint64_t warmup_acks;
	uint64_t sent;
	uint64_t frames;	/* NOTIFY frames sent: requests and llm-responses */
	uint64_t dropped;	/* in flight when a connection was lost */
	uint64_t protocol_errors;
	uint64_t agent_disconnects;
	uint64_t timeouts;
	uint64_t connect_errors;
	uint64_t peer_closes;
	uint64_t connects;
	uint64_t actions;	/* actions decoded in counted ACKs */
	struct hist lat;
};

static uint64_t t_warm, t_end;		/* CLOCK_MONOTONIC ns */
static atomic_uint_fast64_t g_counted;	/* for -n */
static atomic_int g_stop;
static atomic_int g_first_ack_shown;
static atomic_int g_error_lines;
static atomic_int g_no_pipelining_warned;
/* --tally with -n: NOTIFYs handed out, and ACKed or lost, in all. */
static atomic_uint_fast64_t g_tally_sent;
static atomic_uint_fast64_t g_tally_done;

/* ---- --tally: values of the "action" variable in ACKs ------------------ */

/*
 * One entry per distinct value, formatted as text: a string value as it is
 * (quoted and escaped when it is not plain), another type as "type:value".
 * "(none)": an ACK without an "action" set-var. "(other)": values beyond the
 * first TALLY_MAX distinct ones.
 */
struct tally_entry {
	char key[TALLY_KEY_MAX];
	uint64_t count;
};

struct tally {
	unsigned n;
	struct tally_entry e[TALLY_MAX + 1];	/* + "(other)" */
};

static void
tally_add(struct tally *t, const char *key, uint64_t count)
{
	unsigned i;

	for (i = 0; i < t->n; i++) {
		if (strcmp(t->e[i].key, key) == 0) {
			t->e[i].count += count;
			return;
		}
	}
	if (t->n >= TALLY_MAX) {
		key = "(other)";
		for (i = 0; i < t->n; i++) {
			if (strcmp(t->e[i].key, key) == 0) {
				t->e[i].count += count;
				return;
			}
		}
	}
	snprintf(t->e[t->n].key, sizeof(t->e[t->n].key), "%s", key);
	t->e[t->n].count = count;
	t->n++;
}

static int
tally_cmp(const void *a, const void *b)
{
	return strcmp(((const struct tally_entry *)a)->key,
		      ((const struct tally_entry *)b)->key);
}

/* The tally key of an action's value. */
static void
tally_key(char *out, size_t cap, const struct spopwire_data *d)
{
	if (d->type == SPOPWIRE_T_STR)
		spopwire_format_str(out, cap, d->v.str, 1, 64);
	else
		spopwire_format_data(out, cap, d);
}

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- connections ------------------------------------------------------ */

enum conn_state {
	CONN_IDLE = 0,		/* not connected; reconnects at retry_at */
	CONN_CONNECTING,
	CONN_HELLO,		/* HAPROXY-HELLO sent, waiting AGENT-HELLO */
	CONN_READY,
	CONN_STATE_COUNT
};

static const char *
conn_state_str(enum conn_state s)
{
	static const char *const names[CONN_STATE_COUNT] = {
		"idle", "connecting", "hello", "ready",
	};

	return (unsigned)s < CONN_STATE_COUNT ? names[s] : "?";
}

struct slot {
	uint64_t sid;		/* 0: free */
	uint64_t t_send;
	uint64_t req;		/* the request's number, for its unique_id */
	unsigned fid;		/* frame-id awaited: 1 request, 2 response (--settle) */
};

struct worker;

struct conn {
	struct worker *w;
	unsigned id;		/* global connection number */
	int fd;
	enum conn_state state;
	uint32_t events;	/* epoll interest currently registered */
	uint8_t *rbuf;
	size_t rlen, rcap;
	uint8_t *wbuf;
	size_t wlen, woff, wcap;
	struct slot *slots;	/* opts.depth entries */
	unsigned *free_slots;	/* stack of free slot indexes */
	unsigned nfree;
	unsigned depth;		/* effective pipeline depth */
	unsigned inflight;
	uint64_t notify_seq;	/* NOTIFYs sent on this TCP connection */
	uint64_t req_seq;	/* NOTIFYs sent by this conn, all reconnects */
	uint32_t max_frame;	/* negotiated frame size */
	uint64_t state_since;
	uint64_t retry_at;
	uint64_t next_at;	/* -r: when this connection may send its next NOTIFY */
};

struct worker {
	const struct opts *o;
	pthread_t th;
	int ep;
	struct conn *conns;
	unsigned nconns;
	unsigned first_id;
	uint64_t rng;
	struct stats st;
	struct tally tally;
};

static void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints one error line to stderr, up to MAX_ERROR_LINES in all. */
static void
errmsg(const char *fmt, ...)
{
	va_list ap;
	int n = atomic_fetch_add(&g_error_lines, 1);

	if (n > MAX_ERROR_LINES)
		return;
	if (n == MAX_ERROR_LINES) {
		fprintf(stderr, "spopload: further errors not shown\n");
		return;
	}
	va_start(ap, fmt);
	fprintf(stderr, "spopload: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
}

static uint64_t
rng_next(uint64_t *s)
{
	/* xorshift64* */
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Du;
}

static void
conn_set_state(struct conn *c, enum conn_state s, uint64_t now)
{
	if ((unsigned)s >= CONN_STATE_COUNT)
		abort();
	if (c->w->o->verbose > 1)
		fprintf(stderr, "spopload: conn %u: %s -> %s\n", c->id,
			conn_state_str(c->state), conn_state_str(s));
	c->state = s;
	c->state_since = now;
}

static int
conn_watch(struct conn *c, uint32_t events)
{
	struct epoll_event ev;

	if (events == c->events)
		return 0;
	memset(&ev, 0, sizeof(ev));
	ev.events = events;
	ev.data.ptr = c;
	if (epoll_ctl(c->w->ep, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD,
		      c->fd, &ev) == -1) {
		errmsg("conn %u: epoll_ctl: %s", c->id, strerror(errno));
		return -1;
	}
	c->events = events;
	return 0;
}

/* Drops the TCP connection (if any) and schedules a reconnect. */
static void
conn_drop(struct conn *c, uint64_t now)
{
	unsigned i;

	if (c->fd != -1) {
		close(c->fd);	/* also removes it from the epoll set */
		c->fd = -1;
	}
	c->events = 0;
	c->w->st.dropped += c->inflight;
	if (c->inflight > 0)
		atomic_fetch_add(&g_tally_done, c->inflight);
	c->inflight = 0;
	c->nfree = 0;
	for (i = c->w->o->depth; i-- > 0;) {
		c->slots[i].sid = 0;
		c->free_slots[c->nfree++] = i;
	}
	c->rlen = 0;
	c->wlen = c->woff = 0;
	c->notify_seq = 0;
	c->retry_at = now + RECONNECT_DELAY_NS;
	conn_set_state(c, CONN_IDLE, now);
}

static void conn_fail(struct conn *c, uint64_t *counter, uint64_t now,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Counts an error against *counter, reports it, and drops the connection. */
static void
conn_fail(struct conn *c, uint64_t *counter, uint64_t now, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	(*counter)++;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	errmsg("conn %u (%s): %s", c->id, conn_state_str(c->state), line);
	conn_drop(c, now);
}

/* Makes room for `need` more bytes at the end of the write buffer. */
static int
wbuf_reserve(struct conn *c, size_t need)
{
	size_t cap;
	uint8_t *nb;

	if (c->woff > 0 && c->woff == c->wlen)
		c->woff = c->wlen = 0;
	if (c->wcap - c->wlen >= need)
		return 0;
	if (c->woff > 0) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
		if (c->wcap - c->wlen >= need)
			return 0;
	}
	cap = c->wcap ? c->wcap : 4096;
	while (cap - c->wlen < need)
		cap *= 2;
	nb = realloc(c->wbuf, cap);
	if (nb == NULL)
		return -1;
	c->wbuf = nb;
	c->wcap = cap;
	return 0;
}

/* Writes what it can; watches for writability when something is left.
 * Returns -1 when the connection was dropped. */
static int
conn_flush(struct conn *c, uint64_t now)
{
	ssize_t n;

	while (c->woff < c->wlen) {
		n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_fail(c, &c->w->st.peer_closes, now, "send: %s", strerror(errno));
			return -1;
		}
		c->woff += (size_t)n;
	}
	if (c->woff == c->wlen)
		c->woff = c->wlen = 0;
	if (conn_watch(c, EPOLLIN | (c->wlen > 0 ? EPOLLOUT : 0)) == -1) {
		conn_drop(c, now);
		return -1;
	}
	return 0;
}

/* --tally with -n N: exactly N NOTIFYs are sent in all (warmup included),
 * so that the tally covers every request the agent was asked about. */
static int
tally_capped(const struct opts *o)
{
	return o->tally && o->total > 0;
}

static int
run_stopping(const struct opts *o, uint64_t now)
{
	if (now >= t_end || atomic_load(&g_stop))
		return 1;
	if (tally_capped(o) && atomic_load(&g_tally_done) >= o->total)
		return 1;
	return o->total > 0 && atomic_load(&g_counted) >= o->total;
}

/*
 * -r RATE: each connection sends its share, RATE / connections, one NOTIFY
 * every pace_ns. Credit left unused for longer than PACE_SLACK_NS is lost,
 * so that a stall (a reconnect, a slow answer, a full pipeline) is not
 * followed by a burst, while the loop's millisecond wakeups can still send
 * several NOTIFYs at once when the interval is shorter than that.
 */
static int
pace_ready(const struct conn *c, uint64_t now)
{
	return c->w->o->pace_ns == 0 || now >= c->next_at;
}

static void
pace_take(struct conn *c, uint64_t now)
{
	uint64_t ns = c->w->o->pace_ns;

	if (ns == 0)
		return;
	if (c->next_at + PACE_SLACK_NS < now)
		c->next_at = now - PACE_SLACK_NS;
	c->next_at += ns;
}

/* Queues NOTIFYs until `depth` are in flight (and, with -r, while the
 * connection has sending credit). Returns -1 when dropped. */
static int
conn_fill(struct conn *c, uint64_t now)
{
	static const uint8_t localhost[4] = { 127, 0, 0, 1 };
	const struct opts *o = c->w->o;
	struct spopwire_arg args[NARGS];
	char uid[48], user[32];
	unsigned slot;
	size_t room;
	uint64_t sid;
	int ulen, idlen;
	long n;

	if (c->state != CONN_READY || run_stopping(o, now))
		return 0;
	while (c->inflight < c->depth && c->nfree > 0 && pace_ready(c, now)) {
		if (tally_capped(o) && atomic_fetch_add(&g_tally_sent, 1) >= o->total)
			break;
		slot = c->free_slots[--c->nfree];
		/* Increasing stream-ids from which the slot can be read back:
		 * slot = (sid - 1) % depth. */
		sid = c->notify_seq * o->depth + slot + 1;
		c->notify_seq++;
		/* Unique across runs too, as HAProxy's unique-ids are: a repeated
		 * id is a replay to the agent, not a new request. */
		idlen = snprintf(uid, sizeof(uid), "b%ld-%u-%" PRIu64, (long)getpid(), c->id, c->req_seq++);
		ulen = snprintf(user, sizeof(user), "user-%u",
				(unsigned)(rng_next(&c->w->rng) % o->users));
		args[0] = (struct spopwire_arg){ "unique_id", spopwire_strn(uid, (size_t)idlen) };
		args[1] = (struct spopwire_arg){ "user", spopwire_strn(user, (size_t)ulen) };
		args[2] = (struct spopwire_arg){ "auth", spopwire_strn("", 0) };
		args[3] = (struct spopwire_arg){ "path", spopwire_strz("/v1/chat/completions") };
		args[4] = (struct spopwire_arg){ "method", spopwire_strz("POST") };
		args[5] = (struct spopwire_arg){ "content_length", spopwire_int64(400) };
		args[6] = (struct spopwire_arg){ "model", spopwire_strz("gpt-4o-mini") };
		args[7] = (struct spopwire_arg){ "max_tokens", spopwire_int64(64) };
		args[8] = (struct spopwire_arg){ "stream", spopwire_bool(0) };
		args[9] = (struct spopwire_arg){ "client_ip", spopwire_ipv4(localhost) };

		room = SPOPWIRE_LEN_SIZE + (size_t)c->max_frame;
		if (wbuf_reserve(c, room) == -1) {
			conn_fail(c, &c->w->st.protocol_errors, now, "out of memory");
			return -1;
		}
		n = spopwire_build_notify(c->wbuf + c->wlen, room, sid, 1,
					  o->message, args, NARGS);
		if (n == -1) {
			conn_fail(c, &c->w->st.protocol_errors, now,
				  "NOTIFY does not fit max-frame-size %u", c->max_frame);
			return -1;
		}
		c->wlen += (size_t)n;
		c->slots[slot].sid = sid;
		c->slots[slot].t_send = now;
		c->slots[slot].req = c->req_seq - 1;
		c->slots[slot].fid = 1;
		c->inflight++;
		c->w->st.sent++;
		c->w->st.frames++;
		pace_take(c, now);
	}
	return 0;
}

static int
conn_send_hello(struct conn *c, uint64_t now)
{
	const struct opts *o = c->w->o;
	struct spopwire_hello h;
	char engine[32];
	long n;

	snprintf(engine, sizeof(engine), "spopload-%u", c->id);
	h.versions = "2.0";
	h.max_frame_size = o->frame_size;
	h.capabilities = "pipelining";
	h.healthcheck = -1;
	h.engine_id = engine;
	if (wbuf_reserve(c, 512) == -1)
		return -1;
	n = spopwire_build_hello(c->wbuf + c->wlen, 512, &h);
	if (n == -1)
		return -1;
	c->wlen += (size_t)n;
	conn_set_state(c, CONN_HELLO, now);
	return conn_flush(c, now);
}

static void
conn_start(struct conn *c, uint64_t now)
{
	const struct opts *o = c->w->o;
	int one = 1;

	c->w->st.connects++;
	c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd == -1) {
		conn_fail(c, &c->w->st.connect_errors, now, "socket: %s", strerror(errno));
		return;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->max_frame = o->frame_size;
	c->depth = o->depth;
	if (connect(c->fd, (const struct sockaddr *)&o->addr, o->addrlen) == -1 &&
	    errno != EINPROGRESS) {
		conn_fail(c, &c->w->st.connect_errors, now, "connect: %s", strerror(errno));
		return;
	}
	conn_set_state(c, CONN_CONNECTING, now);
	if (conn_watch(c, EPOLLOUT) == -1)
		conn_drop(c, now);
}

static void
show_actions(const struct conn *c, const struct spopwire_frame *f)
{
	const uint8_t *p = f->payload, *end = f->payload + f->payload_len;
	struct spopwire_action a;
	char line[512];

	fprintf(stderr, "spopload: first ACK (conn %u sid=%" PRIu64 " fid=%" PRIu64 "):\n",
		c->id, f->sid, f->fid);
	while (p < end) {
		if (spopwire_get_action(&p, end, &a) == -1) {
			fprintf(stderr, "  (undecodable action)\n");
			return;
		}
		spopwire_format_action(line, sizeof(line), &a);
		fprintf(stderr, "  %s\n", line);
	}
}

/* Handles AGENT-HELLO. Returns -1 when the connection was dropped. */
static int
conn_on_hello(struct conn *c, const struct spopwire_frame *f, uint64_t now)
{
	const struct opts *o = c->w->o;
	struct spopwire_agent_kv kv;
	uint64_t mfs;

	if (f->type == SPOPWIRE_FRAME_AGENT_DISCONNECT) {
		uint64_t st = 0;

		if (spopwire_parse_agent_kv(f->payload, f->payload + f->payload_len, &kv) == 0)
			spopwire_data_to_u64(&kv.status_code, &st);
		conn_fail(c, &c->w->st.agent_disconnects, now,
			  "AGENT-DISCONNECT in reply to HELLO, status %" PRIu64, st);
		return -1;
	}
	if (f->type != SPOPWIRE_FRAME_AGENT_HELLO) {
		conn_fail(c, &c->w->st.protocol_errors, now,
			  "frame type %u instead of AGENT-HELLO", f->type);
		return -1;
	}
	if (f->flags != SPOPWIRE_FLAG_FIN || f->sid != 0 || f->fid != 0) {
		conn_fail(c, &c->w->st.protocol_errors, now,
			  "AGENT-HELLO with flags 0x%x sid %" PRIu64 " fid %" PRIu64,
			  f->flags, f->sid, f->fid);
		return -1;
	}
	if (spopwire_parse_agent_kv(f->payload, f->payload + f->payload_len, &kv) == -1) {
		conn_fail(c, &c->w->st.protocol_errors, now, "undecodable AGENT-HELLO");
		return -1;
	}
	if (!spopwire_data_streq(&kv.version, "2.0")) {
		conn_fail(c, &c->w->st.protocol_errors, now, "AGENT-HELLO version is not \"2.0\"");
		return -1;
	}
	if (!(kv.present & SPOPWIRE_KV_MAX_FRAME_SIZE) ||
	    spopwire_data_to_u64(&kv.max_frame_size, &mfs) == -1 ||
	    mfs < SPOPWIRE_MIN_FRAME_SIZE || mfs > o->frame_size) {
		conn_fail(c, &c->w->st.protocol_errors, now,
			  "AGENT-HELLO max-frame-size missing or outside [256, %u]",
			  o->frame_size);
		return -1;
	}
	if (kv.capabilities.type != SPOPWIRE_T_STR) {
		conn_fail(c, &c->w->st.protocol_errors, now,
			  "AGENT-HELLO without a capabilities string");
		return -1;
	}
	c->max_frame = (uint32_t)mfs;
	if (!spopwire_has_capability(kv.capabilities.v.str, "pipelining")) {
		c->depth = 1;
		if (o->depth > 1 && atomic_exchange(&g_no_pipelining_warned, 1) == 0)
			fprintf(stderr, "spopload: agent does not announce pipelining:"
				" one NOTIFY in flight per connection\n");
	}
	conn_set_state(c, CONN_READY, now);
	return 0;
}

/* Handles a frame on a ready connection. Returns -1 when dropped. */
static int
conn_on_frame(struct conn *c, const struct spopwire_frame *f, uint64_t now)
{
	const struct opts *o = c->w->o;
	const uint8_t *p, *end;
	struct spopwire_action a;
	struct spopwire_agent_kv kv;
	struct slot *s;
	uint64_t st = 0, lat;
	unsigned slot, nact = 0;
	char tkey[TALLY_KEY_MAX];

	tkey[0] = '\0';

	if (f->type == SPOPWIRE_FRAME_AGENT_DISCONNECT) {
		if (spopwire_parse_agent_kv(f->payload, f->payload + f->payload_len, &kv) == 0)
			spopwire_data_to_u64(&kv.status_code, &st);
		conn_fail(c, &c->w->st.agent_disconnects, now,
			  "AGENT-DISCONNECT, status %" PRIu64, st);
		return -1;
	}
	if (f->type != SPOPWIRE_FRAME_ACK) {
		conn_fail(c, &c->w->st.protocol_errors, now,
			  "unexpected frame type %u", f->type);
		return -1;
	}
	if (!(f->flags & SPOPWIRE_FLAG_FIN)) {
		conn_fail(c, &c->w->st.protocol_errors, now, "ACK without FIN (fragmented)");
		return -1;
	}
	slot = f->sid == 0 ? 0 : (unsigned)((f->sid - 1) % o->depth);
	s = &c->slots[slot];
	if (f->sid == 0 || f->fid != s->fid || s->sid != f->sid) {
		conn_fail(c, &c->w->st.protocol_errors, now,
			  "ACK for unknown sid=%" PRIu64 " fid=%" PRIu64, f->sid, f->fid);
		return -1;
	}
	p = f->payload;
	end = f->payload + f->payload_len;
	while (p < end) {
		if (spopwire_get_action(&p, end, &a) == -1) {
			conn_fail(c, &c->w->st.protocol_errors, now,
				  "ACK sid=%" PRIu64 " with an undecodable action", f->sid);
			return -1;
		}
		nact++;
		if (o->tally && a.type == SPOPWIRE_ACT_SET_VAR &&
		    a.name.len == 6 && memcmp(a.name.ptr, "action", 6) == 0)
			tally_key(tkey, sizeof(tkey), &a.value);	/* last one wins */
	}
	if (o->tally) {
		tally_add(&c->w->tally, tkey[0] != '\0' ? tkey : "(none)", 1);
		atomic_fetch_add(&g_tally_done, 1);
	}
	if (o->verbose && atomic_exchange(&g_first_ack_shown, 1) == 0)
		show_actions(c, f);

	lat = now - s->t_send;
	if (o->settle && s->fid == 1 && strcmp(tkey, "allow") == 0) {
		/* As HAProxy does after the provider answered: the same stream,
		 * the next frame-id, the request's unique_id and its usage. */
		struct spopwire_arg args[5];
		char uid[48];
		int idlen = snprintf(uid, sizeof(uid), "b%ld-%u-%" PRIu64, (long)getpid(), c->id, s->req);
		size_t room = SPOPWIRE_LEN_SIZE + (size_t)c->max_frame;
		long n;

		args[0] = (struct spopwire_arg){ "unique_id", spopwire_strn(uid, (size_t)idlen) };
		args[1] = (struct spopwire_arg){ "status", spopwire_int64(200) };
		args[2] = (struct spopwire_arg){ "prompt_tokens", spopwire_int64(90) };
		args[3] = (struct spopwire_arg){ "completion_tokens", spopwire_int64(40) };
		args[4] = (struct spopwire_arg){ "streamed", spopwire_bool(0) };
		if (wbuf_reserve(c, room) == -1) {
			conn_fail(c, &c->w->st.protocol_errors, now, "out of memory");
			return -1;
		}
		n = spopwire_build_notify(c->wbuf + c->wlen, room, s->sid, 2, "llm-response", args, 5);
		if (n == -1) {
			conn_fail(c, &c->w->st.protocol_errors, now, "llm-response does not fit");
			return -1;
		}
		c->wlen += (size_t)n;
		c->w->st.frames++;
		s->fid = 2;
		s->t_send = now;
		/* Sent at once, as HAProxy would, but counted against -r:
		 * the rate is of NOTIFY frames, as the throughput line is. */
		pace_take(c, now);
	} else {
		s->sid = 0;
		c->free_slots[c->nfree++] = slot;
		c->inflight--;
	}
	if (now < t_warm) {
		c->w->st.warmup_acks++;
	} else if (o->total == 0 || atomic_fetch_add(&g_counted, 1) < o->total) {
		c->w->st.completed++;
		c->w->st.actions += nact;
		hist_add(&c->w->st.lat, lat);
	}
	return 0;
}

/* Reads and handles what arrived. Returns -1 when the connection was dropped. */
static int
conn_on_readable(struct conn *c, uint64_t now)
{
	struct spopwire_frame f;
	unsigned reads;
	size_t off, room;
	ssize_t n;
	long r;

	for (reads = 0; reads < READS_PER_EVENT; reads++) {
		room = c->rcap - c->rlen;
		n = recv(c->fd, c->rbuf + c->rlen, room, 0);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_fail(c, &c->w->st.peer_closes, now, "recv: %s", strerror(errno));
			return -1;
		}
		if (n == 0) {
			conn_fail(c, &c->w->st.peer_closes, now,
				  "connection closed by the agent (%u in flight)", c->inflight);
			return -1;
		}
		c->rlen += (size_t)n;
		off = 0;
		for (;;) {
			r = spopwire_frame_parse(c->rbuf + off, c->rlen - off, c->max_frame, &f);
			if (r == 0)
				break;
			if (r == -1) {
				conn_fail(c, &c->w->st.protocol_errors, now,
					  "malformed frame (length %u, limit %u)",
					  f.len, c->max_frame);
				return -1;
			}
			off += (size_t)r;
			if (c->state == CONN_HELLO) {
				if (conn_on_hello(c, &f, now) == -1)
					return -1;
			} else if (conn_on_frame(c, &f, now) == -1) {
				return -1;
			}
		}
		if (off > 0) {
			memmove(c->rbuf, c->rbuf + off, c->rlen - off);
			c->rlen -= off;
		}
		/* A short read drained the socket: skip the EAGAIN round trip
		 * (epoll is level-triggered and reports anything left). */
		if ((size_t)n < room)
			break;
	}
	if (conn_fill(c, now) == -1)
		return -1;
	return conn_flush(c, now);
}

static void
conn_on_event(struct conn *c, uint32_t events, uint64_t now)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (c->state == CONN_CONNECTING) {
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
			err = errno;
		if (err != 0) {
			conn_fail(c, &c->w->st.connect_errors, now, "connect: %s", strerror(err));
			return;
		}
		if (!(events & EPOLLOUT))
			return;
		if (conn_send_hello(c, now) == -1 && c->state != CONN_IDLE)
			conn_fail(c, &c->w->st.protocol_errors, now, "cannot build HELLO");
		return;
	}
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		if (conn_on_readable(c, now) == -1)
			return;
	}
	if ((events & EPOLLOUT) && c->state != CONN_IDLE)
		conn_flush(c, now);
}

/* Timeouts and reconnections, checked a few times per second. */
static void
conn_tick(struct conn *c, uint64_t now)
{
	const struct opts *o = c->w->o;
	uint64_t limit = (uint64_t)o->timeout_ms * 1000000u;
	unsigned i;

	switch (c->state) {
	case CONN_IDLE:
		if (now >= c->retry_at)
			conn_start(c, now);
		break;
	case CONN_CONNECTING:
	case CONN_HELLO:
		if (now - c->state_since > limit)
			conn_fail(c, &c->w->st.timeouts, now, "no %s after %u ms",
				  c->state == CONN_HELLO ? "AGENT-HELLO" : "connection",
				  o->timeout_ms);
		break;
	case CONN_READY:
		for (i = 0; i < o->depth; i++) {
			if (c->slots[i].sid != 0 && now - c->slots[i].t_send > limit) {
				conn_fail(c, &c->w->st.timeouts, now,
					  "no ACK for sid=%" PRIu64 " after %u ms",
					  c->slots[i].sid, o->timeout_ms);
				return;
			}
		}
		/* Sending may have been held back (e.g. a full socket). */
		if (conn_fill(c, now) == 0)
			conn_flush(c, now);
		break;
	default:
		break;
	}
}

/* ---- workers ---------------------------------------------------------- */

/*
 * -r: sends what is due on every ready connection with room in its pipeline
 * (an ACK is not the only thing that lets a paced connection send), and
 * returns the milliseconds until the next one is due (at most `tmo`), so
 * that the loop wakes up in time instead of at its 10 ms tick.
 */
static int
pace_poll(struct worker *w, uint64_t now, int tmo)
{
	uint64_t wait;
	unsigned i;

	for (i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];

		if (c->state != CONN_READY || c->inflight >= c->depth || c->nfree == 0)
			continue;
		if (pace_ready(c, now) && (conn_fill(c, now) == -1 || conn_flush(c, now) == -1))
			continue;
		if (c->state != CONN_READY || c->inflight >= c->depth || c->next_at <= now)
			continue;
		wait = (c->next_at - now + 999999u) / 1000000u;
		if (wait < (uint64_t)tmo)
			tmo = (int)wait;
	}
	return tmo;
}

static void *
worker_run(void *arg)
{
	struct worker *w = arg;
	const struct opts *o = w->o;
	struct epoll_event evs[256];
	uint64_t now, last_tick = 0;
	unsigned i;
	int n, k, tmo;

	now = now_ns();
	for (i = 0; i < w->nconns; i++)
		conn_start(&w->conns[i], now);
	for (;;) {
		now = now_ns();
		if (run_stopping(o, now))
			break;
		tmo = 20;
		if (t_end - now < 20000000u)
			tmo = (int)((t_end - now) / 1000000u) + 1;
		if (o->pace_ns > 0)
			tmo = pace_poll(w, now, tmo);
		n = epoll_wait(w->ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), tmo);
		if (n == -1 && errno != EINTR) {
			errmsg("epoll_wait: %s", strerror(errno));
			break;
		}
		now = now_ns();
		for (k = 0; k < n; k++)
			conn_on_event(evs[k].data.ptr, evs[k].events, now);
		if (now - last_tick >= 10000000u) {
			last_tick = now;
			for (i = 0; i < w->nconns; i++)
				conn_tick(&w->conns[i], now);
		}
	}
	for (i = 0; i < w->nconns; i++) {
		if (w->conns[i].fd != -1)
			close(w->conns[i].fd);
		w->conns[i].fd = -1;
	}
	return NULL;
}

static int
worker_init(struct worker *w, const struct opts *o, unsigned first, unsigned n,
	    uint64_t seed)
{
	unsigned i;

	memset(w, 0, sizeof(*w));
	w->o = o;
	w->first_id = first;
	w->nconns = n;
	w->rng = seed | 1u;
	w->ep = epoll_create1(EPOLL_CLOEXEC);
	if (w->ep == -1) {
		fprintf(stderr, "spopload: epoll_create1: %s\n", strerror(errno));
		return -1;
	}
	w->conns = calloc(n, sizeof(*w->conns));
	if (w->conns == NULL)
		return -1;
	for (i = 0; i < n; i++) {
		struct conn *c = &w->conns[i];

		c->w = w;
		c->id = first + i;
		c->fd = -1;
		c->rcap = SPOPWIRE_LEN_SIZE + (size_t)o->frame_size + 65536u;
		c->rbuf = malloc(c->rcap);
		c->slots = calloc(o->depth, sizeof(*c->slots));
		c->free_slots = calloc(o->depth, sizeof(*c->free_slots));
		if (c->rbuf == NULL || c->slots == NULL || c->free_slots == NULL)
			return -1;
		conn_drop(c, 0);	/* sets the free slots and IDLE state */
		c->w->st.dropped = 0;
	}
	return 0;
}

static void
worker_free(struct worker *w)
{
	unsigned i;

	if (w->conns != NULL) {
		for (i = 0; i < w->nconns; i++) {
			free(w->conns[i].rbuf);
			free(w->conns[i].wbuf);
			free(w->conns[i].slots);
			free(w->conns[i].free_slots);
		}
		free(w->conns);
	}
	if (w->ep != -1)
		close(w->ep);
}

/* ---- main ------------------------------------------------------------- */

static void
usage(FILE *out)
{
	fprintf(out,
		"usage: spopload -p PORT [options]\n"
		"  -H HOST           agent address (127.0.0.1)\n"
		"  -p PORT           agent port (required)\n"
		"  -c N              connections (1)\n"
		"  -P N              NOTIFY frames in flight per connection (1)\n"
		"  -t N              threads; connections are split across them (1)\n"
		"  -d SECS           measured duration (5)\n"
		"  -n N              stop after N measured requests instead\n"
		"                    (the run is then capped at -d, default 600 s)\n"
		"  -w SECS           warmup, not measured (1)\n"
		"  -u N              distinct users, drawn uniformly: user-0..user-N-1 (1)\n"
		"  -r RATE           NOTIFY frames per second in all, paced evenly: each\n"
		"                    connection sends RATE/N, llm-responses of --settle\n"
		"                    included (0: as fast as the agent answers, the default)\n"
		"  -m NAME           message name (llm-request)\n"
		"  -T MS             timeout for connect, HELLO and each ACK (5000)\n"
		"  --frame-size N    max-frame-size announced in HAPROXY-HELLO (16380)\n"
		"  --json            print one JSON object instead of text\n"
		"  --settle          after each ACK allowing a request, send its\n"
		"                    llm-response (status 200, 90+40 tokens) on the same\n"
		"                    stream with frame-id 2, as HAProxy does; both ACKs\n"
		"                    count as NOTIFYs (implies --tally)\n"
		"  --tally           count the values of the \"action\" variable set by\n"
		"                    every ACK (warmup included) and print one line per\n"
		"                    value, \"tally action=VALUE COUNT\" (\"tally\" object\n"
		"                    with --json); \"(none)\": ACKs without it. With -n N,\n"
		"                    exactly N NOTIFYs are then sent in all (use -w 0 to\n"
		"                    have them all measured too)\n"
		"  -v                print the first ACK's actions to stderr (-vv: states)\n"
		"  -h                this help\n");
}

static int
parse_uint(const char *s, unsigned long long min, unsigned long long max,
	   unsigned long long *v)
{
	char *e;

	errno = 0;
	if (*s == '-' || *s == '\0')
		return -1;
	*v = strtoull(s, &e, 10);
	if (errno != 0 || *e != '\0' || *v < min || *v > max)
		return -1;
	return 0;
}

static int
parse_secs(const char *s, double min, double *v)
{
	char *e;

	errno = 0;
	*v = strtod(s, &e);
	if (errno != 0 || e == s || *e != '\0' || !(*v >= min) || *v > 1e6)
		return -1;
	return 0;
}

static int
parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "frame-size", required_argument, NULL, 'F' },
		{ "json", no_argument, NULL, 'J' },
		{ "tally", no_argument, NULL, 'X' },
		{ "settle", no_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long long v;
	int ch;

	memset(o, 0, sizeof(*o));
	o->host = "127.0.0.1";
	o->conns = 1;
	o->depth = 1;
	o->threads = 1;
	o->duration = -1;
	o->warmup = 1;
	o->users = 1;
	o->message = "llm-request";
	o->frame_size = SPOPWIRE_DEFAULT_FRAME_SIZE;
	o->timeout_ms = 5000;
	while ((ch = getopt_long(argc, argv, "H:p:c:P:t:d:n:w:u:r:m:T:vh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H': o->host = optarg; break;
		case 'p':
			if (parse_uint(optarg, 1, 65535, &v) == -1)
				goto bad;
			o->port = optarg;
			break;
		case 'c':
			if (parse_uint(optarg, 1, MAX_CONNS, &v) == -1)
				goto bad;
			o->conns = (unsigned)v;
			break;
		case 'P':
			if (parse_uint(optarg, 1, MAX_DEPTH, &v) == -1)
				goto bad;
			o->depth = (unsigned)v;
			break;
		case 't':
			if (parse_uint(optarg, 1, MAX_THREADS, &v) == -1)
				goto bad;
			o->threads = (unsigned)v;
			break;
		case 'd':
			if (parse_secs(optarg, 0.001, &o->duration) == -1)
				goto bad;
			break;
		case 'n':
			if (parse_uint(optarg, 1, UINT64_MAX / 2, &v) == -1)
				goto bad;
			o->total = v;
			break;
		case 'w':
			if (parse_secs(optarg, 0, &o->warmup) == -1)
				goto bad;
			break;
		case 'u':
			if (parse_uint(optarg, 1, UINT32_MAX, &v) == -1)
				goto bad;
			o->users = (unsigned)v;
			break;
		case 'r':
			if (parse_secs(optarg, 0, &o->rate) == -1)
				goto bad;
			break;
		case 'm':
			if (strlen(optarg) > 255)
				goto bad;
			o->message = optarg;
			break;
		case 'T':
			if (parse_uint(optarg, 1, 3600000, &v) == -1)
				goto bad;
			o->timeout_ms = (unsigned)v;
			break;
		case 'F':
			if (parse_uint(optarg, SPOPWIRE_MIN_FRAME_SIZE, 16u << 20, &v) == -1)
				goto bad;
			o->frame_size = (uint32_t)v;
			break;
		case 'J': o->json = 1; break;
		case 'X': o->tally = 1; break;
		case 'S': o->settle = 1; o->tally = 1; break;
		case 'v': o->verbose++; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind != argc || o->port == NULL) {
		usage(stderr);
		return -1;
	}
	if (o->duration < 0)
		o->duration = o->total > 0 ? 600 : 5;
	if (o->threads > o->conns)
		o->threads = o->conns;
	if (o->rate > 0) {
		double ns = (double)o->conns * 1e9 / o->rate;

		o->pace_ns = ns < 1 ? 1 : ns > 3.6e12 ? (uint64_t)3.6e12 : (uint64_t)ns;
	}
	return 0;
bad:
	if (ch == 'F')
		fprintf(stderr, "spopload: bad value for --frame-size: %s\n", optarg);
	else
		fprintf(stderr, "spopload: bad value for -%c: %s\n", ch, optarg);
	return -1;
}

static int
resolve(struct opts *o)
{
	struct addrinfo hints, *res;
	int r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	r = getaddrinfo(o->host, o->port, &hints, &res);
	if (r != 0) {
		fprintf(stderr, "spopload: %s:%s: %s\n", o->host, o->port, gai_strerror(r));
		return -1;
	}
	memcpy(&o->addr, res->ai_addr, res->ai_addrlen);
	o->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* A tally key as a JSON string body: keys are printable ASCII already
 * (tally_key escapes the rest), only '"' and '\\' need a backslash. */
static void
print_json_key(const char *k)
{
	for (; *k != '\0'; k++) {
		if (*k == '"' || *k == '\\')
			putchar('\\');
		putchar(*k);
	}
}

static void
report(const struct opts *o, const struct stats *st, double window,
       struct tally *tally)
{
	uint64_t errors = st->protocol_errors + st->agent_disconnects + st->timeouts +
			  st->connect_errors + st->peer_closes;
	double rate = window > 0 ? (double)st->completed / window : 0;
	double p50 = (double)hist_quantile(&st->lat, 0.50) / 1e3;
	double p99 = (double)hist_quantile(&st->lat, 0.99) / 1e3;
	double p999 = (double)hist_quantile(&st->lat, 0.999) / 1e3;
	double max = (double)st->lat.max / 1e3;
	double mean = st->lat.count ? (double)st->lat.sum / (double)st->lat.count / 1e3 : 0;
	unsigned i;

	if (o->json) {
		printf("{\"host\":\"%s\",\"port\":%s,\"connections\":%u,\"pipeline\":%u,"
		       "\"threads\":%u,\"users\":%u,\"warmup_s\":%.3f,\"window_s\":%.3f,"
		       "\"requests\":%" PRIu64 ",\"errors\":%" PRIu64 ","
		       "\"protocol_errors\":%" PRIu64 ",\"agent_disconnects\":%" PRIu64 ","
		       "\"timeouts\":%" PRIu64 ",\"connect_errors\":%" PRIu64 ","
		       "\"peer_closes\":%" PRIu64 ",\"connects\":%" PRIu64 ","
		       "\"sent\":%" PRIu64 ",\"frames_sent\":%" PRIu64 ",\"dropped\":%" PRIu64 ","
		       "\"notify_per_s\":%.1f,\"mean_us\":%.1f,\"p50_us\":%.1f,"
		       "\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f",
		       o->host, o->port, o->conns, o->depth, o->threads, o->users,
		       o->warmup, window, st->completed, errors, st->protocol_errors,
		       st->agent_disconnects, st->timeouts, st->connect_errors,
		       st->peer_closes, st->connects, st->sent, st->frames, st->dropped, rate,
		       mean, p50, p99, p999, max);
		if (o->rate > 0)
			printf(",\"rate_per_s\":%.1f", o->rate);
		if (o->tally) {
			qsort(tally->e, tally->n, sizeof(tally->e[0]), tally_cmp);
			printf(",\"tally\":{");
			for (i = 0; i < tally->n; i++) {
				printf("%s\"", i > 0 ? "," : "");
				print_json_key(tally->e[i].key);
				printf("\":%" PRIu64, tally->e[i].count);
			}
			printf("}");
		}
		printf("}\n");
		return;
	}
	printf("target      %s:%s  connections %u  pipeline %u  threads %u  users %u",
	       o->host, o->port, o->conns, o->depth, o->threads, o->users);
	if (o->rate > 0)
		printf("  rate %.1f/s", o->rate);
	printf("\n");
	printf("window      %.3f s after %.3f s warmup\n", window, o->warmup);
	printf("requests    %" PRIu64 " completed, %" PRIu64 " sent, %" PRIu64
	       " dropped on reconnect\n", st->completed, st->sent, st->dropped);
	printf("errors      %" PRIu64 " (protocol %" PRIu64 ", agent-disconnect %" PRIu64
	       ", timeout %" PRIu64 ", connect %" PRIu64 ", closed %" PRIu64 ")\n",
	       errors, st->protocol_errors, st->agent_disconnects, st->timeouts,
	       st->connect_errors, st->peer_closes);
	printf("throughput  %.1f NOTIFY/s\n", rate);
	printf("latency us  p50 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
	       p50, p99, p999, max, mean);
	if (o->tally) {
		qsort(tally->e, tally->n, sizeof(tally->e[0]), tally_cmp);
		for (i = 0; i < tally->n; i++)
			printf("tally action=%s %" PRIu64 "\n", tally->e[i].key,
			       tally->e[i].count);
	}
}

int
main(int argc, char **argv)
{
	struct worker *workers;
	struct stats total;
	struct tally tally;
	struct opts o;
	uint64_t t0, t_stop, errors;
	double window;
	unsigned i, first = 0, n, ninit = 0;
	int failed_init = 0;

	if (parse_opts(argc, argv, &o) == -1)
		return 2;
	if (resolve(&o) == -1)
		return 1;
	signal(SIGPIPE, SIG_IGN);

	workers = calloc(o.threads, sizeof(*workers));
	if (workers == NULL)
		return 1;
	t0 = now_ns();
	t_warm = t0 + (uint64_t)(o.warmup * 1e9);
	t_end = t_warm + (uint64_t)(o.duration * 1e9);
	for (i = 0; i < o.threads; i++) {
		n = o.conns / o.threads + (i < o.conns % o.threads ? 1 : 0);
		if (worker_init(&workers[i], &o, first, n,
				t0 ^ ((uint64_t)(i + 1) * 0x9E3779B97F4A7C15u)) == -1) {
			fprintf(stderr, "spopload: cannot set up worker %u\n", i);
			worker_free(&workers[i]);
			failed_init = 1;
			break;
		}
		ninit++;
		first += n;
	}
	if (!failed_init) {
		for (i = 1; i < o.threads; i++) {
			if (pthread_create(&workers[i].th, NULL, worker_run, &workers[i]) != 0) {
				fprintf(stderr, "spopload: pthread_create failed\n");
				atomic_store(&g_stop, 1);
				o.threads = i;
				break;
			}
		}
		worker_run(&workers[0]);
		for (i = 1; i < o.threads; i++)
			pthread_join(workers[i].th, NULL);
	}
	t_stop = now_ns();
	if (t_stop > t_end)
		t_stop = t_end;

	memset(&total, 0, sizeof(total));
	memset(&tally, 0, sizeof(tally));
	for (i = 0; i < ninit; i++) {
		struct stats *s = &workers[i].st;
		unsigned k;

		for (k = 0; k < workers[i].tally.n; k++)
			tally_add(&tally, workers[i].tally.e[k].key,
				  workers[i].tally.e[k].count);

		total.completed += s->completed;
		total.warmup_acks += s->warmup_acks;
		total.sent += s->sent;
		total.frames += s->frames;
		total.dropped += s->dropped;
		total.protocol_errors += s->protocol_errors;
		total.agent_disconnects += s->agent_disconnects;
		total.timeouts += s->timeouts;
		total.connect_errors += s->connect_errors;
		total.peer_closes += s->peer_closes;
		total.connects += s->connects;
		total.actions += s->actions;
		hist_merge(&total.lat, &s->lat);
		worker_free(&workers[i]);
	}
	free(workers);
	if (failed_init)
		return 1;

	window = t_stop > t_warm ? (double)(t_stop - t_warm) / 1e9 : 0;
	report(&o, &total, window, &tally);
	errors = total.protocol_errors + total.agent_disconnects + total.timeouts +
		 total.connect_errors + total.peer_closes;
	if (total.completed == 0)
		fprintf(stderr, "spopload: no request completed\n");
	return total.completed > 0 && errors == 0 ? 0 : 1;
}
