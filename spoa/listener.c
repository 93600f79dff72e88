/* listener: accept loop (see listener.h). */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "unixsock.h"

#define LISTEN_BACKLOG 4096
#define ACCEPTS_PER_EVENT 64
#define EMFILE_PAUSE_S 0.1

struct listener {
	int fd;
	int port;
	int is_unix;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct conn_env *env;
	ev_io io;
	ev_timer resume;
};

static void set_nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct listener *l = (struct listener *)((char *)w - offsetof(struct listener, io));

	(void)revents;
	for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				LOG_WARN("accept: %s; pausing the listener", strerror(errno));
				ev_io_stop(loop, &l->io);
				ev_timer_start(loop, &l->resume);
			} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
				LOG_WARN("accept: %s", strerror(errno));
			}
			return;
		}
		if (l->env->nconns >= (unsigned)l->env->cfg->max_connections) {
			char peer[80];

			l->env->stats.rejected_limit++;
			CONN_REFUSAL_LOG(l->env, CONN_REFUSAL_LIMIT,
					 "connection%s closed at once: max_connections (%ld) reached",
					 conn_peer_str(fd, peer, sizeof(peer)), l->env->cfg->max_connections);
			close(fd);
			continue;
		}
		if (!l->is_unix)
			set_nodelay(fd);
		if (!conn_new(l->env, fd))
			LOG_WARN("out of memory for a new connection");
	}
}

static void resume_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct listener *l = (struct listener *)((char *)w - offsetof(struct listener, resume));

	(void)revents;
	if (l->fd != -1)
		ev_io_start(loop, &l->io);
}

static int bind_unix(struct listener *l, const char *path, long mode, uid_t uid, gid_t gid, char *err,
		     size_t errsz)
{
	if (strlen(path) >= sizeof(l->path)) {
		snprintf(err, errsz, "listen: unix socket path too long: %s", path);
		return -1;
	}
	strcpy(l->path, path);
	l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd == -1) {
		snprintf(err, errsz, "listen %s: %s", path, strerror(errno));
		return -1;
	}
	if (unixsock_bind(l->fd, "listen", path, mode, uid, gid, err, errsz) == -1)
		return -1;
	l->is_unix = 1;
	return 0;
}

static int bind_tcp(struct listener *l, const char *addr, char *err, size_t errsz)
{
	char host[256];
	const char *colon = strrchr(addr, ':'), *port;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res = NULL;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	size_t hlen;
	int one = 1, rc;

	if (!colon || colon == addr || colon[1] == '\0') {
		snprintf(err, errsz, "listen: \"%s\" is not HOST:PORT or a unix socket path", addr);
		return -1;
	}
	port = colon + 1;
	hlen = (size_t)(colon - addr);
	if (addr[0] == '[' && colon[-1] == ']') {
		addr++;
		hlen -= 2;
	}
	if (hlen >= sizeof(host)) {
		snprintf(err, errsz, "listen: host too long");
		return -1;
	}
	memcpy(host, addr, hlen);
	host[hlen] = '\0';
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errsz, "listen: %s: %s", host, gai_strerror(rc));
		return -1;
	}
	l->fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd == -1 || setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    bind(l->fd, res->ai_addr, res->ai_addrlen) == -1) {
		snprintf(err, errsz, "listen: %s: %s", addr, strerror(errno));
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	if (getsockname(l->fd, (struct sockaddr *)&ss, &sslen) == 0)
		l->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
						   : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return 0;
}

struct listener *listener_new(struct conn_env *env, const char *addr, uid_t uid, gid_t gid, char *err,
			      size_t errsz)
{
	struct listener *l = calloc(1, sizeof(*l));
	int rc;

	if (!l) {
		snprintf(err, errsz, "listen: out of memory");
		return NULL;
	}
	l->fd = -1;
	l->env = env;
	if (strchr(addr, '/'))
		rc = bind_unix(l, addr, env->cfg->unix_socket_mode, uid, gid, err, errsz);
	else
		rc = bind_tcp(l, addr, err, errsz);
	if (rc == -1)
		goto fail;
	if (listen(l->fd, LISTEN_BACKLOG) == -1) {
		snprintf(err, errsz, "listen: %s: %s", addr, strerror(errno));
		goto fail;
	}
	ev_io_init(&l->io, accept_cb, l->fd, EV_READ);
	ev_timer_init(&l->resume, resume_cb, EMFILE_PAUSE_S, 0.);
	ev_io_start(env->loop, &l->io);
	return l;
fail:
	if (l->fd != -1)
		close(l->fd);
	free(l);
	return NULL;
}

int listener_port(const struct listener *l)
{
	return l->port;
}

void listener_stop(struct listener *l)
{
	if (!l || l->fd == -1)
		return;
	ev_io_stop(l->env->loop, &l->io);
	ev_timer_stop(l->env->loop, &l->resume);
	close(l->fd);
	l->fd = -1;
	if (l->is_unix)
		unlink(l->path);
}

void listener_free(struct listener *l)
{
	if (!l)
		return;
	listener_stop(l);
	free(l);
}
