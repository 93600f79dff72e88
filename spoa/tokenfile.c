/* tokenfile: a short secret from a file (see tokenfile.h). */
#include "tokenfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reads up to size bytes, stopping early at EOF or after the first
 * newline (the rest of the file is not the token's business). */
static ssize_t read_first_line(int fd, char *buf, size_t size)
{
	size_t n = 0;

	while (n < size) {
		ssize_t k = read(fd, buf + n, size - n);

		if (k == -1 && errno == EINTR)
			continue;
		if (k == -1)
			return -1;
		if (k == 0)
			break;
		if (memchr(buf + n, '\n', (size_t)k)) {
			n += (size_t)k;
			break;
		}
		n += (size_t)k;
	}
	return (ssize_t)n;
}

int tokenfile_owner_only(int fd, const char *key, const char *path, char *err, size_t errsz)
{
	struct stat st;

	if (fstat(fd, &st) == -1) {
		snprintf(err, errsz, "%s %s: %s", key, path, strerror(errno));
		return -1;
	}
	if (st.st_mode & (S_IRWXO | S_IWGRP | S_IRGRP)) {
		snprintf(err, errsz, "%s %s: readable or writable by group or others (mode %03o); chmod 600 it", key,
			 path, (unsigned)(st.st_mode & 0777));
		return -1;
	}
	return 0;
}

int tokenfile_read(const char *key, const char *path, char *out, size_t outsz, char *err, size_t errsz)
{
	/* One byte more than the largest out, so that a first line that
	 * does not fit is seen to go on. */
	char buf[1024 + 1];
	struct stat st;
	ssize_t n;
	size_t len;
	int fd;

	if (outsz < 2 || outsz > sizeof(buf) - 1) {
		snprintf(err, errsz, "%s: a token buffer of %zu bytes", key, outsz);
		return -1; /* our bug, reported rather than asserted */
	}
	out[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd == -1) {
		snprintf(err, errsz, "%s %s: %s", key, path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1) {
		snprintf(err, errsz, "%s %s: %s", key, path, strerror(errno));
		close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errsz, "%s %s: not a regular file", key, path);
		close(fd);
		return -1;
	}
	if (tokenfile_owner_only(fd, key, path, err, errsz) == -1) {
		close(fd);
		return -1;
	}
	n = read_first_line(fd, buf, sizeof(buf));
	close(fd);
	if (n == -1) {
		snprintf(err, errsz, "%s %s: %s", key, path, strerror(errno));
		return -1;
	}
	len = (size_t)n;
	{
		char *nl = memchr(buf, '\n', len);

		if (nl)
			len = (size_t)(nl - buf);
	}
	/* A first line that filled buf without ending goes on: too long,
	 * whatever trimming would leave of its part in buf. */
	if (len < sizeof(buf))
		while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\t' || buf[len - 1] == '\r'))
			len--;
	if (len == 0) {
		snprintf(err, errsz, "%s %s: empty (the token is the file's first line)", key, path);
		explicit_bzero(buf, sizeof(buf));
		return -1;
	}
	if (len >= outsz) {
		snprintf(err, errsz, "%s %s: the token is longer than %zu bytes", key, path, outsz - 1);
		explicit_bzero(buf, sizeof(buf));
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)buf[i];

		if (ch < 0x20 || ch == 0x7f) {
			snprintf(err, errsz, "%s %s: the token holds a control character (byte %zu)", key, path, i + 1);
			explicit_bzero(buf, sizeof(buf));
			return -1;
		}
	}
	memcpy(out, buf, len);
	out[len] = '\0';
	explicit_bzero(buf, sizeof(buf));
	return 0;
}
