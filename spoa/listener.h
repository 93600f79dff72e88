/*
 * listener: the SPOP listening socket (TCP or unix), accepting into conns.
 *
 * Connections beyond max_connections are accepted and closed at once, so
 * that a flood cannot queue HAProxy's own connections behind it in the
 * kernel backlog; EMFILE pauses accepting briefly instead of spinning.
 */
#ifndef TOKENGATE_LISTENER_H
#define TOKENGATE_LISTENER_H

#include <stddef.h>
#include <sys/types.h>

#include "conn.h"

struct listener;

/*
 * Binds and listens on addr: "HOST:PORT", "[V6]:PORT" or a unix socket
 * path (anything containing '/'), and starts accepting on env->loop. A unix
 * socket gets unix_socket_mode and the owner uid:gid (each -1: as bind made
 * it, the process's own); only a stale socket at the path is replaced (see
 * unixsock_bind). NULL with a message in err on failure.
 */
struct listener *listener_new(struct conn_env *env, const char *addr, uid_t uid, gid_t gid, char *err,
			      size_t errsz);

/* The bound TCP port (useful with port 0), or 0 for a unix socket. */
int listener_port(const struct listener *l);

/* Stops accepting and closes the socket (removing a unix socket file).
 * Idempotent; frees nothing. */
void listener_stop(struct listener *l);

void listener_free(struct listener *l);

#endif
