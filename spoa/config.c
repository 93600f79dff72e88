/* config: the settings table (see config.h). */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum config_type { CFG_STR, CFG_INT, CFG_BOOL };

struct config_key {
	const char *name;
	enum config_type type;
	size_t offset;
	size_t size; /* CFG_STR: buffer size */
	long min, max;
	const char *def;
	const char *help;
};

#define STR(f, d, h) {#f, CFG_STR, offsetof(struct config, f), sizeof(((struct config *)0)->f), 0, 0, d, h}
#define INT(f, lo, hi, d, h) {#f, CFG_INT, offsetof(struct config, f), 0, lo, hi, d, h}
#define BOOL(f, d, h) {#f, CFG_BOOL, offsetof(struct config, f), 0, 0, 1, d, h}

static const struct config_key keys[] = {
	STR(listen, "127.0.0.1:12345", "SPOP listener: HOST:PORT (port 0 = any free port) or a unix socket path"),
	STR(tls_cert, "", "PEM certificate (then its chain) of the SPOP listener: set with tls_key to speak TLS to HAProxy (`ssl` on its server line)"),
	STR(tls_key, "", "PEM private key of tls_cert; refused when others may read it"),
	STR(tls_client_ca, "", "PEM CA file: when set, HAProxy must present a client certificate (`crt` on its server line) signed by it"),
	STR(db, "", "SQLite database file (default: tokengate.db next to the config file, or in the current directory)"),
	STR(secret_file, "", "file holding the HMAC secret for API keys (default: <db>.secret, created 0600 if missing)"),
	STR(user, "", "after binding its sockets, switch to this user (when started as root)"),
	STR(socket_group, "", "group of log_socket and of a unix listen socket, which their modes let in: the group HAProxy runs as (its `group`, e.g. haproxy; HAProxy drops supplementary groups); empty: the primary group of user, or the agent's own group"),
	STR(port_file, "", "write the bound TCP port to this file once listening (for tests and supervisors)"),
	STR(pid_file, "", "write the process id to this file"),
	STR(log_socket, "/tmp/tokengate-log.sock", "unix datagram socket where HAProxy sends one log line per request (TG_AGENT_LOG in haproxy.cfg): how each request ended, with its real usage; empty = none"),
	INT(log_socket_mode, 0, 0777, "0660", "permissions of log_socket (octal): HAProxy's user must be able to write to it"),
	STR(admin_listen, "127.0.0.1:9121", "admin HTTP listener for /metrics, /healthz and /state: HOST:PORT (loopback), or empty for none"),
	STR(admin_port_file, "", "write the admin listener's bound port to this file"),
	STR(admin_token, "", "if set, the admin listener requires \"Authorization: Bearer <token>\" (at most 255 bytes; on the command line every local user sees it in ps: prefer admin_token_file)"),
	STR(admin_token_file, "", "file whose first line is admin_token (trailing whitespace removed); refused when group or others may read it, or when admin_token is set too; read at start"),
	BOOL(admin_allow_public, "false", "allow admin_listen on a non-loopback address"),
	STR(default_backend, "provider_primary", "HAProxy backend that allowed requests are sent to"),
	STR(log_level, "info", "error, warn, info or debug"),
	BOOL(log_syslog, "false", "log to syslog instead of stderr"),
	BOOL(audit_log, "true", "write one audit_log row per decided request"),
	INT(audit_backlog_max, 1000, 100000000, "100000", "audit and prompt rows that may wait for the database (a slow or full disk, a writer behind the loop; about 600 bytes each, up to twice that while an array doubles); beyond, new ones are dropped and counted, usage counters never are"),
	BOOL(ack_only, "false", "benchmark baseline: answer every NOTIFY with an empty decision, no budgets, no database writes"),
	INT(purge_interval_s, 1, 86400, "60", "how often rows past their retention (audit_log, prompt_log) are deleted"),
	INT(db_poll_ms, 50, 60000, "250", "how often the database is checked for operators' changes (limits, keys, settings)"),
	INT(max_connections, 1, 1000000, "1024", "connections served at once; more are accepted and closed at once"),
	INT(max_frame_size, 256, 1048576, "16380", "largest frame we accept; we announce the smaller of this and HAProxy's"),
	INT(hello_timeout_ms, 100, 3600000, "10000", "a new connection must complete its HELLO within this"),
	INT(idle_timeout_ms, 0, 86400000, "600000", "close a connection idle this long (0 = never); keep it above HAProxy's pool idle time"),
	INT(write_buffer_max, 65536, 67108864, "1048576", "bytes queued to one peer before we stop reading from it"),
	INT(frames_per_event, 1, 100000, "256", "frames handled per read event before yielding to other connections"),
	INT(unix_socket_mode, 0, 0777, "0660", "permissions of a unix socket listener (octal)"),
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static void normalise(char *dst, size_t dstsz, const char *src)
{
	size_t i;

	for (i = 0; src[i] && i + 1 < dstsz; i++)
		dst[i] = src[i] == '-' ? '_' : src[i];
	dst[i] = '\0';
}

static const struct config_key *find_key(const char *name)
{
	char norm[64];

	normalise(norm, sizeof(norm), name);
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].name, norm) == 0)
			return &keys[i];
	return NULL;
}

bool config_has_key(const char *key)
{
	return find_key(key) != NULL;
}

static int set_key(struct config *c, const struct config_key *k, const char *value,
		   char *err, size_t errsz)
{
	char *field = (char *)c + k->offset;

	switch (k->type) {
	case CFG_STR:
		if (strlen(value) >= k->size) {
			snprintf(err, errsz, "%s: value longer than %zu bytes", k->name, k->size - 1);
			return -1;
		}
		memcpy(field, value, strlen(value) + 1);
		return 0;
	case CFG_INT: {
		char *end;
		long v;

		errno = 0;
		/* Base 0 so that modes may be written in octal (0660). */
		v = strtol(value, &end, 0);
		if (errno || end == value || *end != '\0') {
			snprintf(err, errsz, "%s: \"%s\" is not an integer", k->name, value);
			return -1;
		}
		if (v < k->min || v > k->max) {
			snprintf(err, errsz, "%s: %ld is outside [%ld, %ld]", k->name, v, k->min, k->max);
			return -1;
		}
		memcpy(field, &v, sizeof(v));
		return 0;
	}
	case CFG_BOOL: {
		bool b;

		if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "on") || !strcmp(value, "1"))
			b = true;
		else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "off") || !strcmp(value, "0"))
			b = false;
		else {
			snprintf(err, errsz, "%s: \"%s\" is not a boolean (true/false)", k->name, value);
			return -1;
		}
		memcpy(field, &b, sizeof(b));
		return 0;
	}
	}
	return -1;
}

void config_defaults(struct config *c)
{
	char err[256];

	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < NKEYS; i++)
		if (set_key(c, &keys[i], keys[i].def, err, sizeof(err)) == -1)
			abort(); /* a bad default is our bug */
}

int config_set(struct config *c, const char *key, const char *value, char *err, size_t errsz)
{
	const struct config_key *k = find_key(key);

	if (!k) {
		snprintf(err, errsz, "%s: unknown configuration key", key);
		return -1;
	}
	return set_key(c, k, value, err, errsz);
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

/*
 * Reads one line of f into line (CONFIG_LINE_MAX + 1 bytes), without its
 * newline, NUL-terminated. Returns its length; -1 at the end of the file;
 * -2 when it is longer than CONFIG_LINE_MAX. *nul tells whether it holds a
 * NUL byte, which C strings would silently cut it at. Byte by byte rather
 * than fgets(), which can say neither where the bytes read end nor whether
 * a full buffer was the whole line.
 */
static long read_line(FILE *f, char *line, bool *nul)
{
	size_t n = 0;
	int ch;

	*nul = false;
	while ((ch = getc(f)) != EOF && ch != '\n') {
		if (n == CONFIG_LINE_MAX)
			return -2;
		if (ch == '\0')
			*nul = true;
		line[n++] = (char)ch;
	}
	if (ch == EOF && n == 0)
		return -1;
	line[n] = '\0';
	return (long)n;
}

int config_load_stream(struct config *c, FILE *f, const char *name, char *err, size_t errsz)
{
	char line[CONFIG_LINE_MAX + 1], sub[256];
	unsigned lineno = 0;
	long len;
	bool nul;

	while ((len = read_line(f, line, &nul)) != -1) {
		char *s, *eq, *key, *value;

		lineno++;
		if (len == -2) {
			snprintf(err, errsz, "%s:%u: line too long", name, lineno);
			return -1;
		}
		if (nul) {
			snprintf(err, errsz, "%s:%u: NUL byte in line", name, lineno);
			return -1;
		}
		s = trim(line);
		if (*s == '\0' || *s == '#')
			continue;
		eq = strchr(s, '=');
		if (!eq) {
			snprintf(err, errsz, "%s:%u: expected key = value", name, lineno);
			return -1;
		}
		*eq = '\0';
		key = trim(s);
		value = trim(eq + 1);
		/* Allow "quoted values" so that trailing spaces can be kept. */
		if (strlen(value) >= 2 && value[0] == '"' && value[strlen(value) - 1] == '"') {
			value[strlen(value) - 1] = '\0';
			value++;
		}
		if (config_set(c, key, value, sub, sizeof(sub)) == -1) {
			snprintf(err, errsz, "%s:%u: %s", name, lineno, sub);
			return -1;
		}
	}
	/* getc() says EOF on a read error too (a directory, an I/O error):
	 * without this, such a file would load as an empty one. */
	if (ferror(f)) {
		snprintf(err, errsz, "%s: %s", name, strerror(errno));
		return -1;
	}
	return 0;
}

int config_load_file(struct config *c, const char *path, char *err, size_t errsz)
{
	FILE *f = fopen(path, "r");
	int rc;

	if (!f) {
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		return -1;
	}
	rc = config_load_stream(c, f, path, err, errsz);
	fclose(f);
	return rc;
}

int config_validate(const struct config *c, char *err, size_t errsz)
{
	if (c->listen[0] == '\0') {
		snprintf(err, errsz, "listen: must not be empty");
		return -1;
	}
	if (!c->tls_cert[0] != !c->tls_key[0]) {
		snprintf(err, errsz, "%s: must be set together with %s", c->tls_cert[0] ? "tls_cert" : "tls_key",
			 c->tls_cert[0] ? "tls_key" : "tls_cert");
		return -1;
	}
	if (c->tls_client_ca[0] && !c->tls_cert[0]) {
		snprintf(err, errsz, "tls_client_ca: needs tls_cert and tls_key (client certificates are a TLS feature)");
		return -1;
	}
	if (c->admin_token[0] && c->admin_token_file[0]) {
		snprintf(err, errsz, "admin_token_file: set together with admin_token; set one of them");
		return -1;
	}
	if (log_level_parse(c->log_level) < 0) {
		snprintf(err, errsz, "log_level: \"%s\" is not one of error, warn, info, debug", c->log_level);
		return -1;
	}
	if (c->default_backend[0] == '\0') {
		snprintf(err, errsz, "default_backend: must not be empty");
		return -1;
	}
	for (const char *p = c->default_backend; *p; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '_' || *p == '-' || *p == '.' || *p == ':')) {
			snprintf(err, errsz, "default_backend: \"%s\" is not a valid HAProxy backend name", c->default_backend);
			return -1;
		}
	}
	return 0;
}

int config_check_bounds(const struct config *c, char *err, size_t errsz)
{
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &keys[i];
		const char *field = (const char *)c + k->offset;

		switch (k->type) {
		case CFG_STR:
			if (!memchr(field, '\0', k->size)) {
				snprintf(err, errsz, "%s: not terminated within %zu bytes", k->name, k->size);
				return -1;
			}
			break;
		case CFG_INT: {
			long v;

			memcpy(&v, field, sizeof(v));
			if (v < k->min || v > k->max) {
				snprintf(err, errsz, "%s: %ld is outside [%ld, %ld]", k->name, v, k->min, k->max);
				return -1;
			}
			break;
		}
		case CFG_BOOL: {
			unsigned char b;

			/* The byte, not the bool: any other value is a trap
			 * representation, and reading it as bool is undefined. */
			memcpy(&b, field, 1);
			if (b > 1) {
				snprintf(err, errsz, "%s: boolean holds %u", k->name, b);
				return -1;
			}
			break;
		}
		}
	}
	return 0;
}

void config_print_help(void *stream)
{
	FILE *f = stream;

	for (size_t i = 0; i < NKEYS; i++) {
		char opt[64];

		normalise(opt, sizeof(opt), keys[i].name);
		for (char *p = opt; *p; p++)
			if (*p == '_')
				*p = '-';
		if (keys[i].def[0])
			fprintf(f, "  --%-20s %s (default: %s)\n", opt, keys[i].help, keys[i].def);
		else
			fprintf(f, "  --%-20s %s\n", opt, keys[i].help);
	}
}
