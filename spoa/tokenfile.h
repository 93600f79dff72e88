/*
 * tokenfile: a short secret read from a file, so that it never appears on
 * a command line (where every local user sees it in ps) or in a config
 * file that must stay readable. Used for admin_token_file.
 */
#ifndef TOKENGATE_TOKENFILE_H
#define TOKENGATE_TOKENFILE_H

#include <stddef.h>

/*
 * Reads the token at path: the file's first line, trailing whitespace
 * (newline, CR, spaces, tabs) removed. Refuses, with err naming key and
 * path and never the content: a file that group or others may read or
 * write (like secret_file), anything but a regular file, an empty token,
 * one with a control character (it could not be sent in an HTTP header),
 * or one that does not fit out (outsz bytes, NUL included). Returns 0 with
 * out set, or -1 with out wiped.
 */
int tokenfile_read(const char *key, const char *path, char *out, size_t outsz, char *err, size_t errsz);

/*
 * The rule for every file that holds a secret (secret_file,
 * admin_token_file): only its owner may read or write it. fd is the open
 * file; 0, or -1 with err naming key and path (never the content).
 */
int tokenfile_owner_only(int fd, const char *key, const char *path, char *err, size_t errsz);

#endif
