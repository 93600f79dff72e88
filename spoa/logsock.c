/* logsock: HAProxy's log lines over a unix datagram socket (see logsock.h). */
#include "logsock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "unixsock.h"

#define LOGSOCK_DGRAM_MAX 8192
#define LOGSOCK_PER_EVENT 256
/* Datagrams taken per recvmmsg: under load HAProxy's lines queue up while
 * the loop answers NOTIFYs, and one system call for each of them cost
 * more than parsing them. */
#define LOGSOCK_BATCH 32

struct logsock {
	struct ev_loop *loop;
	int fd;
	ev_io io;
	logsock_line_fn fn;
	void *arg;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct mmsghdr msgs[LOGSOCK_BATCH];
	struct iovec iov[LOGSOCK_BATCH];
	char bufs[LOGSOCK_BATCH][LOGSOCK_DGRAM_MAX];
};

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct logsock *s = (struct logsock *)((char *)w - offsetof(struct logsock, io));

	(void)loop;
	(void)revents;
	for (int got = 0; got < LOGSOCK_PER_EVENT;) {
		int n;

		for (int i = 0; i < LOGSOCK_BATCH; i++) {
			s->iov[i] = (struct iovec){s->bufs[i], LOGSOCK_DGRAM_MAX - 1};
			s->msgs[i].msg_hdr = (struct msghdr){.msg_iov = &s->iov[i], .msg_iovlen = 1};
		}
		n = recvmmsg(s->fd, s->msgs, LOGSOCK_BATCH, MSG_DONTWAIT, NULL);
		if (n == -1) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				LOG_WARN("log socket %s: %s", s->path, strerror(errno));
			return;
		}
		for (int i = 0; i < n; i++) {
			char *buf = s->bufs[i];
			size_t len = s->msgs[i].msg_len;

			while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == '\0'))
				len--;
			buf[len] = '\0';
			s->fn(buf, len, s->arg);
		}
		/* Fewer than asked: the queue is empty (the watcher is level
		 * triggered and calls again for anything that came since). */
		if (n < LOGSOCK_BATCH)
			return;
		got += n;
	}
}

/* A datagram socket's queue is bounded by a kernel setting whose default
 * (10, without systemd) drops lines as soon as the loop is busy for a
 * moment: say so at start, where an operator looks. */
static void warn_queue_length(const char *path)
{
	FILE *f = fopen("/proc/sys/net/unix/max_dgram_qlen", "r");
	int q = 0;

	if (!f)
		return;
	if (fscanf(f, "%d", &q) == 1 && q < 128)
		LOG_WARN("log socket %s: net.unix.max_dgram_qlen is %d: HAProxy will drop log lines under load "
			 "(their requests then settle at their estimate after reservation_ttl_s); set it to 512 "
			 "(sysctl -w net.unix.max_dgram_qlen=512), as systemd does",
			 path, q);
	fclose(f);
}

struct logsock *logsock_start(struct ev_loop *loop, const char *path, long mode, uid_t uid, gid_t gid,
			      logsock_line_fn fn, void *arg, char *err, size_t errsz)
{
	struct logsock *s;
	int rcvbuf = 4 << 20;

	if (strlen(path) >= sizeof(s->path)) {
		snprintf(err, errsz, "log_socket: path too long: %s", path);
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errsz, "log_socket: out of memory");
		return NULL;
	}
	strcpy(s->path, path);
	s->loop = loop;
	s->fn = fn;
	s->arg = arg;
	s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd == -1) {
		snprintf(err, errsz, "log_socket %s: %s", path, strerror(errno));
		goto fail;
	}
	/* Room for bursts of lines while the loop is busy. */
	setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (unixsock_bind(s->fd, "log_socket", path, mode, uid, gid, err, errsz) == -1)
		goto fail;
	ev_io_init(&s->io, read_cb, s->fd, EV_READ);
	ev_io_start(loop, &s->io);
	warn_queue_length(path);
	return s;
fail:
	if (s->fd != -1)
		close(s->fd);
	free(s);
	return NULL;
}

void logsock_stop(struct logsock *s)
{
	if (!s)
		return;
	ev_io_stop(s->loop, &s->io);
	close(s->fd);
	unlink(s->path);
	free(s);
}

void logsock_fields(const char *line, size_t len, const char *const keys[], size_t nkeys,
		    struct logsock_val vals[])
{
	const char *p = line, *end = line + len;
	size_t left = nkeys;

	for (size_t k = 0; k < nkeys; k++)
		vals[k] = (struct logsock_val){NULL, -1};
	/* One pass over the space-separated tokens: the agent reads about ten
	 * keys of every log line, and a search per key (memmem) scanned the
	 * whole line each time, a tenth of the agent's CPU under load. */
	while (p < end && left > 0) {
		const char *tok_end = memchr(p, ' ', (size_t)(end - p)), *eq;

		if (!tok_end)
			tok_end = end;
		eq = memchr(p, '=', (size_t)(tok_end - p));
		if (eq) {
			size_t klen = (size_t)(eq - p);

			for (size_t k = 0; k < nkeys; k++) {
				/* The first byte first: a strlen per key and token was
				 * a fifth of this function. */
				if (vals[k].len < 0 && klen > 0 && keys[k][0] == p[0] && strlen(keys[k]) == klen &&
				    memcmp(keys[k], p, klen) == 0) {
					vals[k].ptr = eq + 1;
					vals[k].len = (long)(tok_end - eq - 1);
					left--;
					break;
				}
			}
		}
		if (tok_end == end)
			break;
		p = tok_end + 1;
	}
}

long logsock_field(const char *line, size_t len, const char *key, const char **val)
{
	struct logsock_val v;

	logsock_fields(line, len, &key, 1, &v);
	if (v.len >= 0)
		*val = v.ptr;
	return v.len;
}

long long logsock_val_int(struct logsock_val v, long long def)
{
	char buf[24], *end;
	long long x;

	if (v.len <= 0 || v.len >= (long)sizeof(buf) || (v.len == 1 && v.ptr[0] == '-'))
		return def;
	memcpy(buf, v.ptr, (size_t)v.len);
	buf[v.len] = '\0';
	x = strtoll(buf, &end, 10);
	return *end ? def : x;
}

long long logsock_int(const char *line, size_t len, const char *key, long long def)
{
	struct logsock_val v;

	logsock_fields(line, len, &key, 1, &v);
	return logsock_val_int(v, def);
}

static int b64val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

long logsock_base64(const char *in, size_t len, unsigned char *out, size_t size)
{
	unsigned acc = 0;
	int bits = 0;
	size_t n = 0;

	for (size_t i = 0; i < len && in[i] != '='; i++) {
		int v = b64val((unsigned char)in[i]);

		if (v < 0)
			return -1;
		acc = acc << 6 | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n < size)
				out[n++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	return (long)n;
}
