/* http: the admin listener (see http.h). */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crypto.h"
#include "log.h"

#define HTTP_HEAD_MAX 8192
#define HTTP_TIMEOUT_S 10.0
#define HTTP_MAX_CONNS 64

struct http_conn {
	struct http_server *srv;
	struct http_conn *next;
	int fd;
	ev_io io;
	ev_timer timer;
	char in[HTTP_HEAD_MAX];
	size_t inlen;
	char *out;
	size_t outlen, outoff;
};

struct http_server {
	struct ev_loop *loop;
	int fd;
	int port;
	ev_io io;
	char token[HTTP_TOKEN_MAX + 1];
	http_handler handler;
	void *arg;
	struct http_conn *conns;
	unsigned nconns;
};

static void conn_free(struct http_conn *c)
{
	struct http_conn **pp;

	ev_io_stop(c->srv->loop, &c->io);
	ev_timer_stop(c->srv->loop, &c->timer);
	close(c->fd);
	for (pp = &c->srv->conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	c->srv->nconns--;
	free(c->out);
	free(c);
}

static const char *status_text(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

static void set_reply(struct http_conn *c, int status, const char *ctype, const char *body, size_t len)
{
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
			 status, status_text(status), ctype, len,
			 status == 401 ? "WWW-Authenticate: Bearer\r\n" : "");

	c->out = malloc((size_t)n + len);
	if (!c->out) {
		c->outlen = 0;
		return;
	}
	memcpy(c->out, head, (size_t)n);
	memcpy(c->out + n, body, len);
	c->outlen = (size_t)n + len;
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct http_conn *c = (struct http_conn *)((char *)w - offsetof(struct http_conn, io));

	(void)loop;
	(void)revents;
	while (c->outoff < c->outlen) {
		ssize_t n = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0)
			break;
		c->outoff += (size_t)n;
	}
	conn_free(c);
}

/* True when the request carries "Authorization: Bearer <token>". */
static int authorized(const struct http_server *s, const char *head)
{
	const char *p = head;
	size_t tlen = strlen(s->token);

	if (!s->token[0])
		return 1;
	while ((p = strchr(p, '\n')) != NULL) {
		p++;
		if (strncasecmp(p, "authorization:", 14) == 0) {
			const char *v = p + 14, *e;

			while (*v == ' ')
				v++;
			if (strncasecmp(v, "bearer ", 7) != 0)
				return 0;
			v += 7;
			e = v;
			while (*e && *e != '\r' && *e != '\n')
				e++;
			return (size_t)(e - v) == tlen && crypto_equal(v, s->token, tlen);
		}
	}
	return 0;
}

static void respond(struct http_conn *c)
{
	char method[8], path[256];
	struct http_reply r = {0};
	char *q;

	if (sscanf(c->in, "%7s %255s HTTP/1.%*c", method, path) != 2) {
		set_reply(c, 400, "text/plain", "bad request\n", 12);
		return;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		set_reply(c, 405, "text/plain", "GET only\n", 9);
		return;
	}
	if (!authorized(c->srv, c->in)) {
		set_reply(c, 401, "text/plain", "bearer token required\n", 22);
		return;
	}
	q = strchr(path, '?');
	if (q)
		*q = '\0';
	c->srv->handler(path, &r, c->srv->arg);
	if (!r.status) {
		r.status = 404;
		r.content_type = "text/plain";
	}
	if (!r.body)
		set_reply(c, r.status, r.content_type, r.status == 404 ? "not found\n" : "", r.status == 404 ? 10 : 0);
	else
		set_reply(c, r.status, r.content_type, r.body, strcmp(method, "HEAD") ? r.len : 0);
	free(r.body);
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct http_conn *c = (struct http_conn *)((char *)w - offsetof(struct http_conn, io));
	ssize_t n;

	(void)revents;
	n = read(c->fd, c->in + c->inlen, sizeof(c->in) - 1 - c->inlen);
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		conn_free(c);
		return;
	}
	c->inlen += (size_t)n;
	c->in[c->inlen] = '\0';
	if (!strstr(c->in, "\r\n\r\n") && !strstr(c->in, "\n\n")) {
		if (c->inlen < sizeof(c->in) - 1)
			return;
		set_reply(c, 400, "text/plain", "request head too large\n", 23);
	} else {
		respond(c);
	}
	ev_io_stop(loop, &c->io);
	ev_io_set(&c->io, c->fd, EV_WRITE);
	ev_set_cb(&c->io, write_cb);
	ev_io_start(loop, &c->io);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	conn_free((struct http_conn *)((char *)w - offsetof(struct http_conn, timer)));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct http_server *s = (struct http_server *)((char *)w - offsetof(struct http_server, io));

	(void)revents;
	for (int i = 0; i < 16; i++) {
		int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct http_conn *c;

		if (fd == -1)
			return;
		if (s->nconns >= HTTP_MAX_CONNS || !(c = calloc(1, sizeof(*c)))) {
			close(fd);
			continue;
		}
		c->srv = s;
		c->fd = fd;
		c->next = s->conns;
		s->conns = c;
		s->nconns++;
		ev_io_init(&c->io, read_cb, fd, EV_READ);
		ev_timer_init(&c->timer, timeout_cb, HTTP_TIMEOUT_S, 0.);
		ev_io_start(loop, &c->io);
		ev_timer_start(loop, &c->timer);
	}
}

static int is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
	return 0;
}

struct http_server *http_start(struct ev_loop *loop, const char *addr, int allow_public, const char *token,
			       http_handler handler, void *arg, char *err, size_t errsz)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res = NULL;
	const char *colon = strrchr(addr, ':');
	char host[256];
	size_t hlen;
	struct http_server *s;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	int one = 1, rc;

	if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof(host)) {
		snprintf(err, errsz, "admin_listen: \"%s\" is not HOST:PORT", addr);
		return NULL;
	}
	if (token && strlen(token) > HTTP_TOKEN_MAX) {
		snprintf(err, errsz, "admin_token: longer than %d bytes", HTTP_TOKEN_MAX);
		return NULL;
	}
	hlen = (size_t)(colon - addr);
	if (addr[0] == '[' && colon[-1] == ']') {
		memcpy(host, addr + 1, hlen - 2);
		host[hlen - 2] = '\0';
	} else {
		memcpy(host, addr, hlen);
		host[hlen] = '\0';
	}
	rc = getaddrinfo(host, colon + 1, &hints, &res);
	if (rc != 0) {
		snprintf(err, errsz, "admin_listen: %s: %s", addr, gai_strerror(rc));
		return NULL;
	}
	if (!allow_public && !is_loopback(res->ai_addr)) {
		snprintf(err, errsz, "admin_listen: %s is not a loopback address (set admin_allow_public = true)", addr);
		freeaddrinfo(res);
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		freeaddrinfo(res);
		snprintf(err, errsz, "admin_listen: out of memory");
		return NULL;
	}
	s->loop = loop;
	s->handler = handler;
	s->arg = arg;
	snprintf(s->token, sizeof(s->token), "%s", token ? token : "");
	s->fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd == -1 || setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    bind(s->fd, res->ai_addr, res->ai_addrlen) == -1 || listen(s->fd, 64) == -1) {
		snprintf(err, errsz, "admin_listen: %s: %s", addr, strerror(errno));
		if (s->fd != -1)
			close(s->fd);
		free(s);
		freeaddrinfo(res);
		return NULL;
	}
	freeaddrinfo(res);
	if (getsockname(s->fd, (struct sockaddr *)&ss, &sslen) == 0)
		s->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
						   : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	ev_io_init(&s->io, accept_cb, s->fd, EV_READ);
	ev_io_start(loop, &s->io);
	return s;
}

int http_port(const struct http_server *s)
{
	return s->port;
}

void http_stop(struct http_server *s)
{
	if (!s)
		return;
	ev_io_stop(s->loop, &s->io);
	close(s->fd);
	while (s->conns)
		conn_free(s->conns);
	free(s);
}
