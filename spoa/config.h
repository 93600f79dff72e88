/*
 * config: every setting in one typed, bounded table.
 *
 * Order of precedence: built-in defaults, then the config file, then the
 * command line, then config_validate(). Each key is accepted in the file as
 * `key = value` and on the command line as `--key value` or `--key=value`
 * (dashes and underscores are interchangeable).
 */
#ifndef TOKENGATE_CONFIG_H
#define TOKENGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define CONFIG_STR_MAX 512
/* Longest line of a config file, newline excluded: a key, " = " and the
 * longest value, quoted, with room for indentation. */
#define CONFIG_LINE_MAX (CONFIG_STR_MAX + 127)

struct config {
	char listen[CONFIG_STR_MAX];
	char tls_cert[CONFIG_STR_MAX];
	char tls_key[CONFIG_STR_MAX];
	char tls_client_ca[CONFIG_STR_MAX];
	char db[CONFIG_STR_MAX];
	char secret_file[CONFIG_STR_MAX];
	char user[64];
	char socket_group[64];
	char port_file[CONFIG_STR_MAX];
	char log_socket[CONFIG_STR_MAX];
	char admin_listen[CONFIG_STR_MAX];
	char admin_port_file[CONFIG_STR_MAX];
	char admin_token[256]; /* what the admin listener holds (http.h) */
	char admin_token_file[CONFIG_STR_MAX];
	bool admin_allow_public;
	char pid_file[CONFIG_STR_MAX];
	char default_backend[CONFIG_STR_MAX];
	char log_level[16];
	bool log_syslog;
	bool audit_log;
	bool ack_only;
	long db_poll_ms;
	long purge_interval_s;
	long max_connections;
	long max_frame_size;
	long hello_timeout_ms;
	long idle_timeout_ms;
	long write_buffer_max;
	long audit_backlog_max;
	long frames_per_event;
	long unix_socket_mode;
	long log_socket_mode;
};

/* Fills every field with its default. */
void config_defaults(struct config *c);

/*
 * Sets one key from text. Returns 0, or -1 with a message naming the key
 * in err (size errsz).
 */
int config_set(struct config *c, const char *key, const char *value, char *err, size_t errsz);

/* Reads `key = value` lines (# comments, blank lines) from the file at
 * path through config_load_stream(). -1 with err naming the file, the line
 * and the key on the first bad line, or why the file cannot be read. */
int config_load_file(struct config *c, const char *path, char *err, size_t errsz);

/*
 * The parser behind config_load_file(): reads f (borrowed, not closed) to
 * its end, applying each line with config_set(). name is what messages call
 * the file. Returns 0, or -1 with a non-empty err ("NAME:LINE: ...") at the
 * first bad line; keys set before it stay set, each one within its bounds.
 */
int config_load_stream(struct config *c, FILE *f, const char *name, char *err, size_t errsz);

/*
 * Invariant check, for tests and fuzzing: every integer within its declared
 * range, every boolean 0 or 1, every string terminated inside its field.
 * config_set() never lets a value through that breaks one. Returns 0, or -1
 * with err naming the first key that is off.
 */
int config_check_bounds(const struct config *c, char *err, size_t errsz);

/* Cross-key checks after everything is set. */
int config_validate(const struct config *c, char *err, size_t errsz);

/* True if `key` names a setting (dashes or underscores). */
bool config_has_key(const char *key);

/* Prints every key with its default and help text, for --help. */
void config_print_help(void *stream);

#endif
