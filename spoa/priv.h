/*
 * priv: running as the configured `user` instead of root, and the owner of
 * the unix sockets HAProxy writes to.
 *
 * Started as root with `user = NAME`, the agent binds its sockets and reads
 * the files only root may read (TLS key, admin token) first, then switches
 * to NAME, its primary group and its supplementary groups, before opening
 * the database. The unix sockets it bound (log_socket, a unix listen path)
 * are given, before the switch, to NAME and to socket_group, or NAME's
 * primary group when socket_group is empty.
 *
 * socket_group exists because HAProxy, when it switches to its own `user`
 * and `group`, drops every supplementary group: adding HAProxy's user to the
 * agent's group gives HAProxy nothing. The sockets' group must be the one
 * HAProxy runs as.
 */
#ifndef TOKENGATE_PRIV_H
#define TOKENGATE_PRIV_H

#include <stddef.h>
#include <sys/types.h>

struct priv {
	const char *name; /* the user, borrowed from the configuration; NULL: none */
	int drop;	  /* 1: running as root with a user set: priv_drop switches */
	uid_t uid;	  /* the user's uid and primary gid (when drop) */
	gid_t gid;
	uid_t sock_uid;	  /* owner to give the unix sockets; (uid_t)-1 and */
	gid_t sock_gid;	  /* (gid_t)-1: left as bind made them */
};

/*
 * Looks up user and group (either may be empty) before anything is bound,
 * so that a bad one stops the agent before it touches a path. Fills *p;
 * returns -1 with err naming the setting when the user or the group does
 * not exist, when the process runs as neither root nor that user (it could
 * not switch), or when, not running as root, it is not a member of the
 * group (it could not give the sockets to it).
 */
int priv_lookup(const char *user, const char *group, struct priv *p, char *err, size_t errsz);

/*
 * What --check verifies without being root: that user and group (either
 * may be empty) exist. Returns -1 with err naming the one that does not.
 */
int priv_check_names(const char *user, const char *group, char *err, size_t errsz);

/*
 * Switches to p's user and groups when p->drop, for good: returns -1 with
 * err if any step fails or if root could be regained afterwards. Logs the
 * switch. A no-op returning 0 otherwise.
 */
int priv_drop(const struct priv *p, char *err, size_t errsz);

#endif
