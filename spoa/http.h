/*
 * http: the admin listener, a deliberately small HTTP/1.1 server on the
 * loop: GET only, one request per connection, request head at most 8 KB,
 * answered from memory and closed. It serves operators and Prometheus,
 * never clients, and binds loopback unless told otherwise.
 */
#ifndef TOKENGATE_HTTP_H
#define TOKENGATE_HTTP_H

#include <ev.h>
#include <stddef.h>

struct http_server;

struct http_reply {
	int status;               /* 200, 404, 503, ... */
	const char *content_type; /* e.g. "text/plain; version=0.0.4" */
	char *body;               /* malloc'ed; the server frees it */
	size_t len;
};

/*
 * handler fills *out for `path` (query string removed). It runs on the
 * loop and must not block. token, when non-empty, is required as
 * "Authorization: Bearer <token>" on every request.
 */
typedef void (*http_handler)(const char *path, struct http_reply *out, void *arg);

/* Longest token http_start() takes. */
#define HTTP_TOKEN_MAX 255

/* Binds addr ("HOST:PORT", port 0 = any). Refuses a non-loopback host
 * unless allow_public, and a token longer than HTTP_TOKEN_MAX (cut, it
 * would never match). token is copied. NULL with err on failure. */
struct http_server *http_start(struct ev_loop *loop, const char *addr, int allow_public, const char *token,
			       http_handler handler, void *arg, char *err, size_t errsz);
int http_port(const struct http_server *s);
/* Stops accepting and closes every connection. */
void http_stop(struct http_server *s);

#endif
