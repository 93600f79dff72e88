/* unixsock: binding, mode and owner of a unix socket path (see unixsock.h). */
#include "unixsock.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static const char *file_kind(mode_t m)
{
	if (S_ISREG(m))
		return "a regular file";
	if (S_ISDIR(m))
		return "a directory";
	if (S_ISLNK(m))
		return "a symbolic link";
	if (S_ISFIFO(m))
		return "a FIFO";
	if (S_ISCHR(m) || S_ISBLK(m))
		return "a device";
	return "not a socket";
}

/* Whether path's owner differs from uid:gid (-1: any). Not calling lchown
 * when it is already right matters under ops/tokengate.service, whose
 * system call filter (~@privileged) kills a process that calls it: there
 * the sockets are born with the unit's user and group. */
static int chown_needed(const char *path, uid_t uid, gid_t gid)
{
	struct stat st;

	if (uid == (uid_t)-1 && gid == (gid_t)-1)
		return 0;
	if (lstat(path, &st) == -1)
		return 1; /* let lchown report it */
	return (uid != (uid_t)-1 && st.st_uid != uid) || (gid != (gid_t)-1 && st.st_gid != gid);
}

int unixsock_bind(int fd, const char *what, const char *path, long mode, uid_t uid, gid_t gid, char *err,
		  size_t errsz)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct stat st;
	int saved;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "%s %s: path too long (at most %zu bytes)", what, path, sizeof(sun.sun_path) - 1);
		return -1;
	}
	strcpy(sun.sun_path, path);
	/* lstat, not stat: a symlink is refused rather than followed, so a
	 * link planted at the path cannot point the agent elsewhere. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errsz, "%s %s: exists and is %s, not a socket: refusing to replace it", what, path,
				 file_kind(st.st_mode));
			return -1;
		}
		/* A socket left by an earlier run would make bind fail. */
		if (unlink(path) == -1 && errno != ENOENT)
			goto fail;
	} else if (errno != ENOENT) {
		goto fail;
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1)
		goto fail;
	/* The path's inode, not the socket's (fchmod/fchown on a socket fd do
	 * not reach the file the peers open). lchown: never follow a link. */
	if (chmod(path, (mode_t)mode) == -1)
		goto fail_bound;
	if (chown_needed(path, uid, gid) && lchown(path, uid, gid) == -1) {
		saved = errno;
		unlink(path);
		snprintf(err, errsz, "%s %s: cannot give it to uid %d, gid %d: %s", what, path, (int)uid, (int)gid,
			 strerror(saved));
		return -1;
	}
	return 0;
fail_bound:
	saved = errno;
	unlink(path);
	errno = saved;
fail:
	snprintf(err, errsz, "%s %s: %s", what, path, strerror(errno));
	return -1;
}
