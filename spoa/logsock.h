/*
 * logsock: a unix datagram socket on which HAProxy sends its log lines
 * (haproxy.cfg: `log /path/to/socket format raw local0`). The agent reads
 * them to learn how requests that produced no response event ended:
 * server timeouts and refused connections count against the provider, a
 * client that went away does not.
 *
 * Why this channel: it is the only one HAProxy 2.6 offers for the end of
 * every stream (http-response rules never run for HAProxy's own 502/503/504
 * or for a client abort). Datagrams on a local unix socket are not lost
 * silently: when the agent lags, HAProxy's send fails and it counts the
 * line as dropped; the reservation is then closed by its TTL.
 */
#ifndef TOKENGATE_LOGSOCK_H
#define TOKENGATE_LOGSOCK_H

#include <ev.h>
#include <stddef.h>
#include <sys/types.h>

struct logsock;

typedef void (*logsock_line_fn)(const char *line, size_t len, void *arg);

/* Binds path with the given mode and owner uid:gid (each -1: as bind made
 * it, the process's own), replacing a stale socket but nothing else (see
 * unixsock_bind), and reads datagrams on loop. NULL with err on failure. */
struct logsock *logsock_start(struct ev_loop *loop, const char *path, long mode, uid_t uid, gid_t gid,
			      logsock_line_fn fn, void *arg, char *err, size_t errsz);
void logsock_stop(struct logsock *s);

/* A value in a log line: ptr and len, or len -1 when the key is absent. */
struct logsock_val {
	const char *ptr;
	long len;
};

/*
 * The values of keys[0..nkeys-1] in a log line (a space-separated
 * key=value list; a syslog header before it is skipped naturally), read in
 * one pass: vals[k] is the first token that starts with "keys[k]=".
 */
void logsock_fields(const char *line, size_t len, const char *const keys[], size_t nkeys,
		    struct logsock_val vals[]);

/* The integer in v, or def when absent, "-" or not a number. */
long long logsock_val_int(struct logsock_val v, long long def);

/*
 * The value of `key=` in a log line (a space-separated key=value list; a
 * syslog header before it is skipped naturally). Returns its length and
 * sets *val, or -1 when absent.
 */
long logsock_field(const char *line, size_t len, const char *key, const char **val);

/* The integer value of `key=`, or def when absent, "-" or not a number. */
long long logsock_int(const char *line, size_t len, const char *key, long long def);

/* Decodes base64 (standard alphabet, padding optional) into out; returns
 * the decoded length, or -1 on a character outside the alphabet. */
long logsock_base64(const char *in, size_t len, unsigned char *out, size_t size);

#endif
