/*
 * priv: running as the configured `user` instead of root.
 *
 * Started as root with `user = NAME`, the agent binds its sockets and reads
 * the files only root may read (TLS key, admin token) first, then switches
 * to NAME, its primary group and its supplementary groups, before opening
 * the database. The unix sockets it bound are given to NAME and that primary
 * group before the switch: their mode (0660) then lets in HAProxy's user
 * once it is a member of the group. Started as NAME itself (the systemd
 * unit), nothing changes: the sockets are its already.
 */
#ifndef TOKENGATE_PRIV_H
#define TOKENGATE_PRIV_H

#include <stddef.h>
#include <sys/types.h>

struct priv {
	const char *name; /* borrowed from the configuration; NULL: no user set */
	int drop;	  /* 1: running as root, priv_drop switches */
	uid_t uid;	  /* NAME's uid and primary gid; (uid_t)-1 and */
	gid_t gid;	  /* (gid_t)-1 unless drop: owners left alone */
};

/*
 * Looks up user (empty: none) before anything is bound, so that a bad one
 * stops the agent before it touches a path. Fills *p; returns -1 with err
 * when there is no such user, or when the process runs as neither root nor
 * that user (it could not switch).
 */
int priv_lookup(const char *user, struct priv *p, char *err, size_t errsz);

/*
 * Switches to p's user and groups when p->drop, for good: returns -1 with
 * err if any step fails or if root could be regained afterwards. Logs the
 * switch. A no-op returning 0 otherwise.
 */
int priv_drop(const struct priv *p, char *err, size_t errsz);

#endif
