/* priv: the switch to the configured user (see priv.h). */
#include "priv.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

int priv_lookup(const char *user, struct priv *p, char *err, size_t errsz)
{
	struct passwd *pw;

	*p = (struct priv){NULL, 0, (uid_t)-1, (gid_t)-1};
	if (!user[0])
		return 0;
	errno = 0;
	pw = getpwnam(user);
	if (!pw) {
		if (errno)
			snprintf(err, errsz, "user: cannot look up \"%s\": %s", user, strerror(errno));
		else
			snprintf(err, errsz, "user: no such user \"%s\"", user);
		return -1;
	}
	p->name = user;
	if (geteuid() != 0) {
		if (geteuid() == pw->pw_uid)
			return 0;
		snprintf(err, errsz, "user: running as uid %d, cannot become %s (start as root, or unset user)",
			 (int)geteuid(), user);
		return -1;
	}
	p->drop = 1;
	p->uid = pw->pw_uid;
	p->gid = pw->pw_gid;
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
