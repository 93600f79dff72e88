/*
 * unixsock: the file system side of the agent's unix sockets (the SPOP
 * listener on a path, the log socket): the path they are bound to, its
 * mode and its owner.
 *
 * The agent often starts as root, so a path from the configuration must not
 * be able to delete what happens to be there: only a socket (left by an
 * earlier run) is replaced. And once the agent has switched to its `user`,
 * HAProxy reaches these sockets through their group: they are given to that
 * user and group before the switch.
 */
#ifndef TOKENGATE_UNIXSOCK_H
#define TOKENGATE_UNIXSOCK_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Binds the AF_UNIX socket fd to path. A socket already at path is removed
 * first; anything else there (a regular file, a directory, a symlink, a
 * FIFO) is left alone and refused. Then sets the path's mode and its owner
 * uid:gid (either (uid_t)-1 / (gid_t)-1: left as bind made it, as for
 * chown). `what` names the setting in messages
 * ("log_socket", "listen"). Returns 0, or -1 with err naming the setting and
 * the path; the caller closes fd, and a path bound before the failure is
 * removed here.
 */
int unixsock_bind(int fd, const char *what, const char *path, long mode, uid_t uid, gid_t gid, char *err,
		  size_t errsz);

#endif
