/* priv: the switch to the configured user (see priv.h). */
#include "priv.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define PRIV_MAX_GROUPS 256

static struct passwd *find_user(const char *user, char *err, size_t errsz)
{
	struct passwd *pw;

	errno = 0;
	pw = getpwnam(user);
	if (!pw) {
		if (errno)
			snprintf(err, errsz, "user: cannot look up \"%s\": %s", user, strerror(errno));
		else
			snprintf(err, errsz, "user: no such user \"%s\"", user);
	}
	return pw;
}

static struct group *find_group(const char *group, char *err, size_t errsz)
{
	struct group *gr;

	errno = 0;
	gr = getgrnam(group);
	if (!gr) {
		if (errno)
			snprintf(err, errsz, "socket_group: cannot look up \"%s\": %s", group, strerror(errno));
		else
			snprintf(err, errsz, "socket_group: no such group \"%s\"", group);
	}
	return gr;
}

/* Whether this process may give a file to gid without privileges: gid is
 * its effective group or one of its supplementary groups. */
static int in_group(gid_t gid)
{
	gid_t list[PRIV_MAX_GROUPS];
	int n = getgroups(PRIV_MAX_GROUPS, list);

	if (getegid() == gid)
		return 1;
	for (int i = 0; i < n; i++)
		if (list[i] == gid)
			return 1;
	return 0;
}

int priv_check_names(const char *user, const char *group, char *err, size_t errsz)
{
	if (user[0] && !find_user(user, err, errsz))
		return -1;
	if (group[0] && !find_group(group, err, errsz))
		return -1;
	return 0;
}

int priv_lookup(const char *user, const char *group, struct priv *p, char *err, size_t errsz)
{
	struct passwd *pw = NULL;
	struct group *gr;

	*p = (struct priv){NULL, 0, (uid_t)-1, (gid_t)-1, (uid_t)-1, (gid_t)-1};
	if (user[0]) {
		pw = find_user(user, err, errsz);
		if (!pw)
			return -1;
		p->name = user;
		if (geteuid() == 0) {
			p->drop = 1;
			p->uid = pw->pw_uid;
			p->gid = pw->pw_gid;
			p->sock_uid = pw->pw_uid;
			p->sock_gid = pw->pw_gid;
		} else if (geteuid() != pw->pw_uid) {
			snprintf(err, errsz, "user: running as uid %d, cannot become %s (start as root, or unset user)",
				 (int)geteuid(), user);
			return -1;
		}
	}
	if (group[0]) {
		gr = find_group(group, err, errsz);
		if (!gr)
			return -1;
		if (geteuid() != 0 && !in_group(gr->gr_gid)) {
			snprintf(err, errsz,
				 "socket_group: running as uid %d, which is not in group %s, so cannot give it the "
				 "sockets (start as root, or run as a member of %s)",
				 (int)geteuid(), group, group);
			return -1;
		}
		p->sock_gid = gr->gr_gid;
	}
	return 0;
}

int priv_drop(const struct priv *p, char *err, size_t errsz)
{
	if (!p->drop)
		return 0;
	/* Groups first: once the uid is not root, they cannot change. */
	if (setgroups(0, NULL) == -1 || initgroups(p->name, p->gid) == -1 || setgid(p->gid) == -1 ||
	    setuid(p->uid) == -1) {
		snprintf(err, errsz, "user: cannot become %s: %s", p->name, strerror(errno));
		return -1;
	}
	if (setuid(0) != -1 || getuid() != p->uid || geteuid() != p->uid || getgid() != p->gid ||
	    getegid() != p->gid) {
		snprintf(err, errsz, "user: could become root again, or kept another id, after switching to %s",
			 p->name);
		return -1;
	}
	LOG_INFO("running as %s (uid %d, gid %d)", p->name, (int)p->uid, (int)p->gid);
	return 0;
}
