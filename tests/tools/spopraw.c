/*
 * spopraw: a raw SPOP client for end-to-end tests of an agent, hostile input
 * included. It plays HAProxy's side with its own codec (bench/spopwire.c,
 * independent from the agent's) and prints what the agent answers, one
 * decoded frame per line.
 *
 * Build:
 *   cc -std=c11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
 *      -D_GNU_SOURCE -Ibench tests/tools/spopraw.c bench/spopwire.c \
 *      -o build/spopraw
 *
 * Usage: see usage() below or `spopraw -h`. Output lines:
 *   AGENT-HELLO version=2.0 max-frame-size=16380 capabilities=pipelining
 *   AGENT-DISCONNECT status=4 message="invalid frame received"
 *   ACK sid=1 fid=1 set-var txn action str:allow | set-var txn reason str:ok
 *   closed | open
 * Values of an unexpected type are shown as type:value (e.g.
 * max-frame-size=int64:16380); header anomalies are appended (flags=0x0,
 * sid=3 fid=1 on a HELLO). notify prints the ACK's actions one per line:
 *   set-var txn action str:allow
 *
 * Exit status: 0 the exchange happened (even if the agent disconnected or
 * closed), 1 the agent sent bytes that do not decode as SPOP frames (or an
 * ACK for another stream), 2 usage error, 3 connection failure or timeout.
 * Every wait is bounded by -T (2000 ms by default).
 */
#include "spopwire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define EXIT_OK 0
#define EXIT_BADPEER 1
#define EXIT_USAGE 2
#define EXIT_NET 3

#define MAX_ARGS 255
#define NOTIFY_CAP (1u << 20)	/* a NOTIFY may exceed the frame size on purpose */

struct gopts {
	const char *host;
	const char *port;
	unsigned timeout_ms;
	int hello_first;
	uint32_t frame_size;
	const char *versions;
	const char *caps;
	const char *engine_id;
	int verbose;
};

static struct gopts g;
static int bad_peer;		/* set when the agent sent undecodable bytes */

static void
usage(FILE *out)
{
	fprintf(out,
		"usage: spopraw [global options] COMMAND [command options]\n"
		"global options:\n"
		"  -H HOST             agent address (127.0.0.1)\n"
		"  -p PORT             agent port (required)\n"
		"  -T MS               bound of every wait (2000)\n"
		"  --hello             send-hex/disconnect: do the HELLO handshake first\n"
		"  --frame-size N      max-frame-size announced (16380)\n"
		"  --versions S        supported-versions announced (2.0)\n"
		"  --caps S            capabilities announced (pipelining; \"\" for healthcheck)\n"
		"  --engine-id S       engine-id announced (spopraw-PID; none for healthcheck)\n"
		"  -v                  details on stderr\n"
		"commands:\n"
		"  hello               HAPROXY-HELLO, print the reply\n"
		"  healthcheck         HELLO with healthcheck=true, print the reply,\n"
		"                      then closed or open (peer closed within -T or not)\n"
		"  send-hex [--chunk N] [--delay MS] HEX...\n"
		"                      send raw bytes (hex digits; spaces and ':' ignored;\n"
		"                      '-' reads them from stdin), in N-byte pieces MS ms\n"
		"                      apart if asked, then print every frame received\n"
		"                      until close or -T, then closed or open\n"
		"  notify [-u USER] [--arg NAME=TYPE:VALUE]... [--drop NAME]... [--no-args]\n"
		"         [--message NAME] [--sid N] [--fid N]\n"
		"                      HELLO, one NOTIFY (llm-request with the default\n"
		"                      arguments, overridden/added by --arg), print the\n"
		"                      ACK's actions one per line. TYPE: str bin(hex)\n"
		"                      int32 uint32 int64 uint64 bool ipv4 ipv6 null;\n"
		"                      a VALUE without a known TYPE: prefix is a string\n"
		"  disconnect [--status N] [--text S]\n"
		"                      HELLO, HAPROXY-DISCONNECT, print the reply, then\n"
		"                      closed or open\n"
		"exit: 0 exchange done, 1 undecodable reply, 2 usage, 3 connection/timeout\n");
}

static void
die_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, "spopraw: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	exit(EXIT_USAGE);
}

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int
parse_u64(const char *s, uint64_t max, uint64_t *v)
{
	char *e;

	errno = 0;
	if (*s == '-' || *s == '\0')
		return -1;
	*v = strtoull(s, &e, 10);
	return errno != 0 || *e != '\0' || *v > max ? -1 : 0;
}

static int
parse_i64(const char *s, int64_t min, int64_t max, int64_t *v)
{
	char *e;
	long long x;

	errno = 0;
	x = strtoll(s, &e, 10);
	if (errno != 0 || e == s || *e != '\0' || x < min || x > max)
		return -1;
	*v = x;
	return 0;
}

/* ---- network ---------------------------------------------------------- */

static int
net_connect(void)
{
	struct addrinfo hints, *res, *ai;
	struct pollfd pfd;
	int fd = -1, r, err, one = 1;
	socklen_t len;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	r = getaddrinfo(g.host, g.port, &hints, &res);
	if (r != 0) {
		fprintf(stderr, "spopraw: %s:%s: %s\n", g.host, g.port, gai_strerror(r));
		exit(EXIT_NET);
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd == -1)
			continue;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			r = poll(&pfd, 1, (int)g.timeout_ms);
			err = 0;
			len = sizeof(err);
			if (r == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
			    err == 0)
				break;
			errno = r == 0 ? ETIMEDOUT : err;
		}
		fprintf(stderr, "spopraw: connect %s:%s: %s\n", g.host, g.port, strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1)
		exit(EXIT_NET);
	return fd;
}

/*
 * Sends all of buf before the deadline. Returns 0, or -1 if the peer closed
 * or reset the connection (not fatal: what it sent before still matters).
 * Exits on timeout.
 */
static int
send_all(int fd, const uint8_t *buf, size_t len, uint64_t deadline)
{
	struct pollfd pfd;
	ssize_t n;
	uint64_t now;

	while (len > 0) {
		n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK) {
			if (g.verbose)
				fprintf(stderr, "spopraw: send: %s\n", strerror(errno));
			return -1;
		}
		now = now_ms();
		if (now >= deadline) {
			fprintf(stderr, "spopraw: send timed out (%zu bytes left)\n", len);
			exit(EXIT_NET);
		}
		pfd.fd = fd;
		pfd.events = POLLOUT;
		poll(&pfd, 1, (int)(deadline - now));
	}
	return 0;
}

enum rd_result { RD_BAD = -2, RD_TIMEOUT = -1, RD_CLOSED = 0, RD_FRAME = 1 };

struct reader {
	int fd;
	uint8_t *buf;
	size_t len;
	size_t used;		/* bytes of the frame last returned */
	size_t cap;
	uint32_t max_frame;
};

/* The one reader of the run: main() releases its buffer. */
static struct reader rd;

static void
reader_init(struct reader *r, int fd, uint32_t max_frame)
{
	r->fd = fd;
	r->cap = SPOPWIRE_LEN_SIZE + (size_t)max_frame;
	r->buf = malloc(r->cap);
	if (r->buf == NULL) {
		fprintf(stderr, "spopraw: out of memory\n");
		exit(EXIT_NET);
	}
	r->len = r->used = 0;
	r->max_frame = max_frame;
}

/*
 * Next frame, waiting until the deadline. The frame borrows the reader's
 * buffer until the next call. RD_BAD: the bytes are not a frame within
 * max_frame (f->len holds the announced length when known).
 */
static enum rd_result
reader_next(struct reader *r, struct spopwire_frame *f, uint64_t deadline)
{
	struct pollfd pfd;
	uint64_t now;
	ssize_t n;
	long k;

	if (r->used > 0) {
		memmove(r->buf, r->buf + r->used, r->len - r->used);
		r->len -= r->used;
		r->used = 0;
	}
	for (;;) {
		k = spopwire_frame_parse(r->buf, r->len, r->max_frame, f);
		if (k > 0) {
			r->used = (size_t)k;
			return RD_FRAME;
		}
		if (k < 0)
			return RD_BAD;
		now = now_ms();
		if (now >= deadline)
			return RD_TIMEOUT;
		pfd.fd = r->fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, (int)(deadline - now)) == 0)
			return RD_TIMEOUT;
		n = recv(r->fd, r->buf + r->len, r->cap - r->len, 0);
		if (n > 0) {
			r->len += (size_t)n;
			continue;
		}
		if (n == -1 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (g.verbose)
			fprintf(stderr, "spopraw: connection %s\n",
				n == 0 ? "closed (EOF)" : strerror(errno));
		if (r->len > 0) {
			printf("TRUNCATED %zu bytes before close\n", r->len);
			bad_peer = 1;
		}
		return RD_CLOSED;
	}
}

/* ---- printing --------------------------------------------------------- */

struct line {
	char s[8192];
	size_t n;
};

static void
line_add(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
line_add(struct line *l, const char *fmt, ...)
{
	va_list ap;
	int r;

	if (l->n >= sizeof(l->s) - 1)
		return;
	va_start(ap, fmt);
	r = vsnprintf(l->s + l->n, sizeof(l->s) - l->n, fmt, ap);
	va_end(ap);
	if (r > 0)
		l->n += (size_t)r < sizeof(l->s) - l->n ? (size_t)r : sizeof(l->s) - 1 - l->n;
}

static void
line_data(struct line *l, const struct spopwire_data *d)
{
	if (l->n < sizeof(l->s) - 1)
		l->n += spopwire_format_data(l->s + l->n, sizeof(l->s) - l->n, d);
}

static void
line_str(struct line *l, struct spopwire_str s, int quote)
{
	if (l->n < sizeof(l->s) - 1)
		l->n += spopwire_format_str(l->s + l->n, sizeof(l->s) - l->n, s, quote, 512);
}

/* " key=value": bare when of the expected type, else type:value. */
static void
line_kv(struct line *l, const char *key, const struct spopwire_data *d,
	enum spopwire_type want, int quote)
{
	line_add(l, " %s=", key);
	if (d->type != want || d->flags != 0)
		line_data(l, d);
	else if (want == SPOPWIRE_T_STR)
		line_str(l, d->v.str, quote);
	else
		line_add(l, "%" PRIu64, d->v.u64);
}

static void
line_header_anomalies(struct line *l, const struct spopwire_frame *f, int ids_zero)
{
	if (f->flags != SPOPWIRE_FLAG_FIN)
		line_add(l, " flags=0x%x", f->flags);
	if (ids_zero && (f->sid != 0 || f->fid != 0))
		line_add(l, " sid=%" PRIu64 " fid=%" PRIu64, f->sid, f->fid);
}

/* AGENT-HELLO / AGENT-DISCONNECT and other KV-LIST frames. */
static void
print_kv_frame(const struct spopwire_frame *f, const char *name)
{
	const uint8_t *p = f->payload, *end = f->payload + f->payload_len;
	struct spopwire_agent_kv kv;
	struct spopwire_str key;
	struct spopwire_data val;
	struct line l = { .n = 0 };

	line_add(&l, "%s", name);
	if (spopwire_parse_agent_kv(p, end, &kv) == -1) {
		line_add(&l, " BAD-PAYLOAD");
		line_header_anomalies(&l, f, 1);
		printf("%s\n", l.s);
		bad_peer = 1;
		return;
	}
	if (kv.present & SPOPWIRE_KV_STATUS_CODE)
		line_kv(&l, "status", &kv.status_code, SPOPWIRE_T_UINT32, 0);
	if (kv.present & SPOPWIRE_KV_MESSAGE)
		line_kv(&l, "message", &kv.message, SPOPWIRE_T_STR, 2);
	if (kv.present & SPOPWIRE_KV_VERSION)
		line_kv(&l, "version", &kv.version, SPOPWIRE_T_STR, 0);
	if (kv.present & SPOPWIRE_KV_MAX_FRAME_SIZE)
		line_kv(&l, "max-frame-size", &kv.max_frame_size, SPOPWIRE_T_UINT32, 0);
	if (kv.present & SPOPWIRE_KV_CAPABILITIES)
		line_kv(&l, "capabilities", &kv.capabilities, SPOPWIRE_T_STR, 0);
	if (kv.unknown > 0) {
		while (p < end && spopwire_get_kv(&p, end, &key, &val) == 0) {
			static const char *const known[] = { "status-code", "message",
				"version", "max-frame-size", "capabilities" };
			size_t i;
			int is_known = 0;

			for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
				if (key.len == strlen(known[i]) &&
				    memcmp(key.ptr, known[i], key.len) == 0)
					is_known = 1;
			if (is_known)
				continue;
			line_add(&l, " ");
			line_str(&l, key, 1);
			line_add(&l, "=");
			line_data(&l, &val);
		}
	}
	if (kv.duplicate > 0)
		line_add(&l, " duplicate-keys=%u", kv.duplicate);
	line_header_anomalies(&l, f, 1);
	printf("%s\n", l.s);
}

static void
print_ack(const struct spopwire_frame *f)
{
	const uint8_t *p = f->payload, *end = f->payload + f->payload_len;
	struct spopwire_action a;
	struct line l = { .n = 0 };
	char txt[1024];
	int first = 1;

	line_add(&l, "ACK sid=%" PRIu64 " fid=%" PRIu64, f->sid, f->fid);
	while (p < end) {
		if (spopwire_get_action(&p, end, &a) == -1) {
			line_add(&l, "%s BAD-ACTION at byte %zu of %zu", first ? "" : " |",
				 (size_t)(p - f->payload), f->payload_len);
			bad_peer = 1;
			break;
		}
		spopwire_format_action(txt, sizeof(txt), &a);
		line_add(&l, "%s %s", first ? "" : " |", txt);
		first = 0;
	}
	line_header_anomalies(&l, f, 0);
	printf("%s\n", l.s);
}

static void
print_frame(const struct spopwire_frame *f)
{
	const char *name = spopwire_frame_type_str(f->type);

	switch (f->type) {
	case SPOPWIRE_FRAME_AGENT_HELLO:
	case SPOPWIRE_FRAME_AGENT_DISCONNECT:
	case SPOPWIRE_FRAME_HAPROXY_DISCONNECT:
		print_kv_frame(f, name);
		break;
	case SPOPWIRE_FRAME_ACK:
		print_ack(f);
		break;
	default:
		printf("FRAME type=%u%s%s%s flags=0x%x sid=%" PRIu64 " fid=%" PRIu64
		       " payload=%zu\n", f->type, name ? "(" : "", name ? name : "",
		       name ? ")" : "", f->flags, f->sid, f->fid, f->payload_len);
		break;
	}
	fflush(stdout);
}

static void
print_bad(const struct spopwire_frame *f, const struct reader *r)
{
	if (r->len >= SPOPWIRE_LEN_SIZE &&
	    (f->len < SPOPWIRE_FRAME_MIN || f->len > r->max_frame))
		printf("BAD-FRAME length=%u limit=%u\n", f->len, r->max_frame);
	else
		printf("BAD-FRAME length=%u (undecodable header)\n", f->len);
	bad_peer = 1;
}

/* ---- exchanges -------------------------------------------------------- */

static char default_engine[64];

static int
send_hello(int fd, int healthcheck)
{
	struct spopwire_hello h;
	uint8_t buf[4096];
	long n;

	h.versions = g.versions;
	h.max_frame_size = g.frame_size;
	h.capabilities = g.caps != NULL ? g.caps : healthcheck ? "" : "pipelining";
	h.healthcheck = healthcheck ? 1 : -1;
	h.engine_id = g.engine_id != NULL ? g.engine_id : healthcheck ? NULL : default_engine;
	n = spopwire_build_hello(buf, sizeof(buf), &h);
	if (n == -1)
		die_usage("HELLO too large%s", "");
	return send_all(fd, buf, (size_t)n, now_ms() + g.timeout_ms);
}

/*
 * Reads the reply to a HELLO and prints it. Returns the frame type (and
 * narrows r->max_frame to the negotiated size), 0 if the peer closed first.
 * Exits on timeout or garbage.
 */
static int
read_hello_reply(struct reader *r)
{
	struct spopwire_frame f;
	struct spopwire_agent_kv kv;
	uint64_t mfs;

	switch (reader_next(r, &f, now_ms() + g.timeout_ms)) {
	case RD_FRAME:
		break;
	case RD_CLOSED:
		printf("closed\n");
		return 0;
	case RD_TIMEOUT:
		fprintf(stderr, "spopraw: no reply to HELLO within %u ms\n", g.timeout_ms);
		exit(EXIT_NET);
	case RD_BAD:
	default:
		print_bad(&f, r);
		exit(EXIT_BADPEER);
	}
	print_frame(&f);
	if (f.type == SPOPWIRE_FRAME_AGENT_HELLO &&
	    spopwire_parse_agent_kv(f.payload, f.payload + f.payload_len, &kv) == 0 &&
	    spopwire_data_to_u64(&kv.max_frame_size, &mfs) == 0 &&
	    mfs >= SPOPWIRE_MIN_FRAME_SIZE && mfs < r->max_frame)
		r->max_frame = (uint32_t)mfs;
	return f.type;
}

/* Prints frames until the peer closes (prints "closed") or the deadline
 * passes ("open"). */
static void
drain(struct reader *r, uint64_t deadline)
{
	struct spopwire_frame f;

	for (;;) {
		switch (reader_next(r, &f, deadline)) {
		case RD_FRAME:
			print_frame(&f);
			continue;
		case RD_CLOSED:
			printf("closed\n");
			return;
		case RD_TIMEOUT:
			printf("open\n");
			return;
		case RD_BAD:
		default:
			print_bad(&f, r);
			return;
		}
	}
}

static int
cmd_hello(int argc, char **argv)
{
	struct reader *const rp = &rd;
	int fd;

	(void)argv;
	if (argc > 1)
		die_usage("hello takes no argument%s", "");
	fd = net_connect();
	reader_init(rp, fd, g.frame_size);
	if (send_hello(fd, 0) == -1) {
		drain(rp, now_ms() + g.timeout_ms);
		return bad_peer ? EXIT_BADPEER : EXIT_OK;
	}
	read_hello_reply(rp);
	return bad_peer ? EXIT_BADPEER : EXIT_OK;
}

static int
cmd_healthcheck(int argc, char **argv)
{
	struct reader *const rp = &rd;
	int fd;

	(void)argv;
	if (argc > 1)
		die_usage("healthcheck takes no argument%s", "");
	fd = net_connect();
	reader_init(rp, fd, g.frame_size);
	send_hello(fd, 1);
	if (read_hello_reply(rp) != 0)
		drain(rp, now_ms() + g.timeout_ms);
	return bad_peer ? EXIT_BADPEER : EXIT_OK;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

struct bytes {
	uint8_t *p;
	size_t n, cap;
};

static void
bytes_push(struct bytes *b, uint8_t v)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 1024;
		b->p = realloc(b->p, b->cap);
		if (b->p == NULL) {
			fprintf(stderr, "spopraw: out of memory\n");
			exit(EXIT_NET);
		}
	}
	b->p[b->n++] = v;
}

/* Appends the bytes spelled by hex text; half-bytes carry across calls. */
static void
hex_feed(struct bytes *b, const char *s, size_t len, int *half)
{
	size_t i;
	int v;

	for (i = 0; i < len; i++) {
		if (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == ':')
			continue;
		v = hexval((unsigned char)s[i]);
		if (v < 0) {
			char c[2] = { s[i], '\0' };
			die_usage("bad hex digit '%s'", c);
		}
		if (*half < 0) {
			*half = v;
		} else {
			bytes_push(b, (uint8_t)(*half << 4 | v));
			*half = -1;
		}
	}
}

static int
cmd_send_hex(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "hello", no_argument, NULL, 'h' },
		{ "chunk", required_argument, NULL, 'c' },
		{ "delay", required_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	struct bytes b = { NULL, 0, 0 };
	uint64_t chunk = 0, delay = 0;
	struct timespec ts;
	struct reader *const rp = &rd;
	size_t off, n;
	int ch, i, half = -1, fd, sent_ok = 1;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
		switch (ch) {
		case 'h': g.hello_first = 1; break;
		case 'c':
			if (parse_u64(optarg, 1u << 30, &chunk) == -1 || chunk == 0)
				die_usage("bad --chunk: %s", optarg);
			break;
		case 'd':
			if (parse_u64(optarg, 60000, &delay) == -1)
				die_usage("bad --delay: %s", optarg);
			break;
		default:
			exit(EXIT_USAGE);
		}
	}
	if (optind >= argc)
		die_usage("send-hex needs HEX bytes%s", "");
	for (i = optind; i < argc; i++) {
		if (strcmp(argv[i], "-") == 0) {
			char buf[4096];

			while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0)
				hex_feed(&b, buf, n, &half);
		} else {
			hex_feed(&b, argv[i], strlen(argv[i]), &half);
		}
	}
	if (half >= 0)
		die_usage("odd number of hex digits%s", "");

	fd = net_connect();
	reader_init(rp, fd, g.frame_size);
	if (g.hello_first) {
		if (send_hello(fd, 0) == -1 || read_hello_reply(rp) == 0) {
			drain(rp, now_ms() + g.timeout_ms);
			return bad_peer ? EXIT_BADPEER : EXIT_OK;
		}
	}
	if (chunk == 0)
		chunk = b.n ? b.n : 1;
	for (off = 0; off < b.n && sent_ok; off += n) {
		n = b.n - off < chunk ? b.n - off : (size_t)chunk;
		if (off > 0 && delay > 0) {
			ts.tv_sec = (time_t)(delay / 1000);
			ts.tv_nsec = (long)(delay % 1000) * 1000000L;
			nanosleep(&ts, NULL);
		}
		if (send_all(fd, b.p + off, n, now_ms() + g.timeout_ms) == -1)
			sent_ok = 0;
	}
	if (!sent_ok && g.verbose)
		fprintf(stderr, "spopraw: peer closed after %zu of %zu bytes\n", off, b.n);
	drain(rp, now_ms() + g.timeout_ms);
	free(b.p);
	return bad_peer ? EXIT_BADPEER : EXIT_OK;
}

/* Parses "NAME=TYPE:VALUE" into a. Strings borrow from spec (argv); bin
 * values are decoded into a buffer that lives until exit. */
static void
parse_arg(char *spec, struct spopwire_arg *a)
{
	static const char *const tnames[] = {
		"null", "bool", "int32", "uint32", "int64", "uint64",
		"ipv4", "ipv6", "str", "bin",
	};
	char *eq = strchr(spec, '='), *val, *colon;
	int64_t i64;
	uint64_t u64;
	size_t t, tl;

	if (eq == NULL || eq == spec)
		die_usage("--arg wants NAME=TYPE:VALUE, got %s", spec);
	*eq = '\0';
	if (strlen(spec) > 255)
		die_usage("argument name too long: %s", spec);
	a->name = spec;
	val = eq + 1;
	colon = strchr(val, ':');
	tl = colon ? (size_t)(colon - val) : strlen(val);
	for (t = 0; t < sizeof(tnames) / sizeof(tnames[0]); t++)
		if (strlen(tnames[t]) == tl && strncmp(val, tnames[t], tl) == 0)
			break;
	if (t == SPOPWIRE_T_NULL && colon == NULL) {
		a->value = spopwire_null();
		return;
	}
	if (t == sizeof(tnames) / sizeof(tnames[0]) || colon == NULL) {
		a->value = spopwire_strz(val);	/* untyped: a string */
		return;
	}
	val = colon + 1;
	switch (t) {
	case SPOPWIRE_T_NULL:
		a->value = spopwire_null();
		break;
	case SPOPWIRE_T_BOOL:
		if (strcmp(val, "true") == 0 || strcmp(val, "1") == 0)
			a->value = spopwire_bool(1);
		else if (strcmp(val, "false") == 0 || strcmp(val, "0") == 0)
			a->value = spopwire_bool(0);
		else
			die_usage("bad bool: %s", val);
		break;
	case SPOPWIRE_T_INT32:
		if (parse_i64(val, INT32_MIN, INT32_MAX, &i64) == -1)
			die_usage("bad int32: %s", val);
		a->value = spopwire_int32((int32_t)i64);
		break;
	case SPOPWIRE_T_INT64:
		if (parse_i64(val, INT64_MIN, INT64_MAX, &i64) == -1)
			die_usage("bad int64: %s", val);
		a->value = spopwire_int64(i64);
		break;
	case SPOPWIRE_T_UINT32:
		if (parse_u64(val, UINT32_MAX, &u64) == -1)
			die_usage("bad uint32: %s", val);
		a->value = spopwire_uint32((uint32_t)u64);
		break;
	case SPOPWIRE_T_UINT64:
		if (parse_u64(val, UINT64_MAX, &u64) == -1)
			die_usage("bad uint64: %s", val);
		a->value = spopwire_uint64(u64);
		break;
	case SPOPWIRE_T_IPV4: {
		uint8_t ip[4];

		if (inet_pton(AF_INET, val, ip) != 1)
			die_usage("bad ipv4: %s", val);
		a->value = spopwire_ipv4(ip);
		break;
	}
	case SPOPWIRE_T_IPV6: {
		uint8_t ip[16];

		if (inet_pton(AF_INET6, val, ip) != 1)
			die_usage("bad ipv6: %s", val);
		a->value = spopwire_ipv6(ip);
		break;
	}
	case SPOPWIRE_T_STR:
		a->value = spopwire_strz(val);
		break;
	case SPOPWIRE_T_BIN: {
		struct bytes b = { NULL, 0, 0 };
		int half = -1;

		hex_feed(&b, val, strlen(val), &half);
		if (half >= 0)
			die_usage("odd number of hex digits in %s", val);
		a->value = spopwire_bin(b.p, b.n);	/* freed at exit */
		break;
	}
	default:
		break;
	}
}

static uint8_t *notify_buf;	/* released by main() */

static int
cmd_notify(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "arg", required_argument, NULL, 'a' },
		{ "drop", required_argument, NULL, 'D' },
		{ "no-args", no_argument, NULL, 'N' },
		{ "message", required_argument, NULL, 'm' },
		{ "sid", required_argument, NULL, 's' },
		{ "fid", required_argument, NULL, 'f' },
		{ "user", required_argument, NULL, 'u' },
		{ NULL, 0, NULL, 0 },
	};
	static const uint8_t localhost[4] = { 127, 0, 0, 1 };
	static struct spopwire_arg args[MAX_ARGS];
	const char *message = "llm-request", *user = "user-0";
	char uid[64];
	const char *drops[MAX_ARGS];
	struct spopwire_arg extra[MAX_ARGS];
	size_t nargs = 0, nextra = 0, ndrops = 0, i, j;
	uint64_t sid = 1, fid = 1, deadline;
	struct spopwire_frame f;
	struct spopwire_action act;
	const uint8_t *p, *end;
	int ch, fd, no_args = 0, keep;
	struct reader *const rp = &rd;
	uint8_t *buf;
	char txt[1024];
	long n;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "+u:", longopts, NULL)) != -1) {
		switch (ch) {
		case 'u': user = optarg; break;
		case 'a':
			if (nextra == MAX_ARGS)
				die_usage("too many --arg%s", "");
			parse_arg(optarg, &extra[nextra++]);
			break;
		case 'D':
			if (ndrops == MAX_ARGS)
				die_usage("too many --drop%s", "");
			drops[ndrops++] = optarg;
			break;
		case 'N': no_args = 1; break;
		case 'm':
			if (strlen(optarg) > 255)
				die_usage("message name too long%s", "");
			message = optarg;
			break;
		case 's':
			if (parse_u64(optarg, UINT64_MAX, &sid) == -1)
				die_usage("bad --sid: %s", optarg);
			break;
		case 'f':
			if (parse_u64(optarg, UINT64_MAX, &fid) == -1)
				die_usage("bad --fid: %s", optarg);
			break;
		default:
			exit(EXIT_USAGE);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument: %s", argv[optind]);

	if (!no_args) {
		snprintf(uid, sizeof(uid), "raw-%ld-1", (long)getpid());
		args[nargs++] = (struct spopwire_arg){ "unique_id", spopwire_strz(uid) };
		args[nargs++] = (struct spopwire_arg){ "user", spopwire_strz(user) };
		args[nargs++] = (struct spopwire_arg){ "auth", spopwire_strz("") };
		args[nargs++] = (struct spopwire_arg){ "path", spopwire_strz("/v1/chat/completions") };
		args[nargs++] = (struct spopwire_arg){ "method", spopwire_strz("POST") };
		args[nargs++] = (struct spopwire_arg){ "content_length", spopwire_int64(400) };
		args[nargs++] = (struct spopwire_arg){ "model", spopwire_strz("gpt-4o-mini") };
		args[nargs++] = (struct spopwire_arg){ "max_tokens", spopwire_int64(64) };
		args[nargs++] = (struct spopwire_arg){ "stream", spopwire_bool(0) };
		args[nargs++] = (struct spopwire_arg){ "client_ip", spopwire_ipv4(localhost) };
	}
	/* --arg replaces a default of the same name in place, else appends. */
	for (i = 0; i < nextra; i++) {
		for (j = 0; j < nargs; j++)
			if (strcmp(args[j].name, extra[i].name) == 0)
				break;
		if (j == nargs) {
			if (nargs == MAX_ARGS)
				die_usage("more than 255 arguments%s", "");
			nargs++;
		}
		args[j] = extra[i];
	}
	for (i = 0, j = 0; i < nargs; i++) {
		size_t d;

		keep = 1;
		for (d = 0; d < ndrops; d++)
			if (strcmp(args[i].name, drops[d]) == 0)
				keep = 0;
		if (keep)
			args[j++] = args[i];
	}
	nargs = j;

	buf = notify_buf = malloc(NOTIFY_CAP);
	if (buf == NULL)
		return EXIT_NET;
	n = spopwire_build_notify(buf, NOTIFY_CAP, sid, fid, message, args, nargs);
	if (n == -1)
		die_usage("NOTIFY larger than %s", "1 MiB");

	fd = net_connect();
	reader_init(rp, fd, g.frame_size);
	if (send_hello(fd, 0) == -1 || read_hello_reply(rp) != SPOPWIRE_FRAME_AGENT_HELLO) {
		drain(rp, now_ms() + g.timeout_ms);
		return bad_peer ? EXIT_BADPEER : EXIT_OK;
	}
	if ((size_t)n - SPOPWIRE_LEN_SIZE > rp->max_frame)
		fprintf(stderr, "spopraw: NOTIFY of %ld bytes exceeds max-frame-size %u"
			" (sent anyway)\n", n - SPOPWIRE_LEN_SIZE, rp->max_frame);
	if (g.verbose)
		fprintf(stderr, "spopraw: NOTIFY sid=%" PRIu64 " fid=%" PRIu64
			" %zu args, %ld bytes\n", sid, fid, nargs, n);
	if (send_all(fd, buf, (size_t)n, now_ms() + g.timeout_ms) == -1) {
		drain(rp, now_ms() + g.timeout_ms);
		return bad_peer ? EXIT_BADPEER : EXIT_OK;
	}

	deadline = now_ms() + g.timeout_ms;
	for (;;) {
		switch (reader_next(rp, &f, deadline)) {
		case RD_FRAME:
			break;
		case RD_CLOSED:
			printf("closed\n");
			return bad_peer ? EXIT_BADPEER : EXIT_OK;
		case RD_TIMEOUT:
			fprintf(stderr, "spopraw: no ACK within %u ms\n", g.timeout_ms);
			return EXIT_NET;
		case RD_BAD:
		default:
			print_bad(&f, rp);
			return EXIT_BADPEER;
		}
		if (f.type != SPOPWIRE_FRAME_ACK) {
			print_frame(&f);
			if (f.type == SPOPWIRE_FRAME_AGENT_DISCONNECT) {
				drain(rp, now_ms() + g.timeout_ms);
				return bad_peer ? EXIT_BADPEER : EXIT_OK;
			}
			continue;
		}
		if (f.sid != sid || f.fid != fid) {
			print_frame(&f);
			fprintf(stderr, "spopraw: ACK for sid=%" PRIu64 " fid=%" PRIu64
				", expected sid=%" PRIu64 " fid=%" PRIu64 "\n",
				f.sid, f.fid, sid, fid);
			return EXIT_BADPEER;
		}
		if (g.verbose)
			fprintf(stderr, "spopraw: ACK sid=%" PRIu64 " fid=%" PRIu64
				" flags=0x%x, %zu payload bytes\n", f.sid, f.fid,
				f.flags, f.payload_len);
		if (f.flags != SPOPWIRE_FLAG_FIN) {
			printf("ACK flags=0x%x\n", f.flags);
			bad_peer = 1;
		}
		p = f.payload;
		end = f.payload + f.payload_len;
		while (p < end) {
			if (spopwire_get_action(&p, end, &act) == -1) {
				printf("BAD-ACTION at byte %zu of %zu\n",
				       (size_t)(p - f.payload), f.payload_len);
				bad_peer = 1;
				break;
			}
			spopwire_format_action(txt, sizeof(txt), &act);
			printf("%s\n", txt);
		}
		return bad_peer ? EXIT_BADPEER : EXIT_OK;
	}
}

static int
cmd_disconnect(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "status", required_argument, NULL, 's' },
		{ "text", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	const char *text = "normal";
	uint64_t status = 0;
	struct reader *const rp = &rd;
	uint8_t buf[4096];
	int ch, fd;
	long n;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (parse_u64(optarg, UINT32_MAX, &status) == -1)
				die_usage("bad --status: %s", optarg);
			break;
		case 't': text = optarg; break;
		default: exit(EXIT_USAGE);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument: %s", argv[optind]);
	n = spopwire_build_disconnect(buf, sizeof(buf), SPOPWIRE_FRAME_HAPROXY_DISCONNECT,
				      (uint32_t)status, text);
	if (n == -1)
		die_usage("message too long%s", "");
	fd = net_connect();
	reader_init(rp, fd, g.frame_size);
	if (send_hello(fd, 0) == -1 || read_hello_reply(rp) == 0) {
		drain(rp, now_ms() + g.timeout_ms);
		return bad_peer ? EXIT_BADPEER : EXIT_OK;
	}
	send_all(fd, buf, (size_t)n, now_ms() + g.timeout_ms);
	drain(rp, now_ms() + g.timeout_ms);
	return bad_peer ? EXIT_BADPEER : EXIT_OK;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "hello", no_argument, NULL, 'E' },
		{ "frame-size", required_argument, NULL, 'F' },
		{ "versions", required_argument, NULL, 'V' },
		{ "caps", required_argument, NULL, 'C' },
		{ "engine-id", required_argument, NULL, 'I' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v;
	const char *cmd;
	int ch, rc;

	rd.fd = -1;
	g.host = "127.0.0.1";
	g.timeout_ms = 2000;
	g.frame_size = SPOPWIRE_DEFAULT_FRAME_SIZE;
	g.versions = "2.0";
	snprintf(default_engine, sizeof(default_engine), "spopraw-%ld", (long)getpid());
	/* "+": stop at the command; its own options follow it. */
	while ((ch = getopt_long(argc, argv, "+H:p:T:vh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H': g.host = optarg; break;
		case 'p':
			if (parse_u64(optarg, 65535, &v) == -1 || v == 0)
				die_usage("bad port: %s", optarg);
			g.port = optarg;
			break;
		case 'T':
			if (parse_u64(optarg, 600000, &v) == -1 || v == 0)
				die_usage("bad -T: %s", optarg);
			g.timeout_ms = (unsigned)v;
			break;
		case 'E': g.hello_first = 1; break;
		case 'F':
			/* Below 256 on purpose is allowed: hostile tests. */
			if (parse_u64(optarg, 16u << 20, &v) == -1 || v < SPOPWIRE_FRAME_MIN)
				die_usage("bad --frame-size: %s", optarg);
			g.frame_size = (uint32_t)v;
			break;
		case 'V': g.versions = optarg; break;
		case 'C': g.caps = optarg; break;
		case 'I': g.engine_id = optarg; break;
		case 'v': g.verbose++; break;
		case 'h': usage(stdout); return EXIT_OK;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (g.port == NULL || optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	signal(SIGPIPE, SIG_IGN);
	cmd = argv[optind];
	argc -= optind;
	argv += optind;
	if (strcmp(cmd, "hello") == 0) {
		rc = cmd_hello(argc, argv);
	} else if (strcmp(cmd, "healthcheck") == 0) {
		rc = cmd_healthcheck(argc, argv);
	} else if (strcmp(cmd, "send-hex") == 0) {
		rc = cmd_send_hex(argc, argv);
	} else if (strcmp(cmd, "notify") == 0) {
		rc = cmd_notify(argc, argv);
	} else if (strcmp(cmd, "disconnect") == 0) {
		rc = cmd_disconnect(argc, argv);
	} else {
		fprintf(stderr, "spopraw: unknown command: %s\n", cmd);
		usage(stderr);
		rc = EXIT_USAGE;
	}
	/* Commands leave their connection open: it is closed here. */
	if (rd.fd != -1)
		close(rd.fd);
	free(rd.buf);
	free(notify_buf);
	return rc;
}
