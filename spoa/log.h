/*
 * log: structured logs, one JSON object per line, to stderr or syslog.
 *
 * LOG() checks the level before formatting anything, so a debug line on the
 * hot path costs one comparison when debug is off. Messages are plain text
 * from our own code; anything that came from a peer goes through
 * log_escape() first, capped in length.
 */
#ifndef TOKENGATE_LOG_H
#define TOKENGATE_LOG_H

#include <stddef.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG, LOG_LVL_COUNT };

extern enum log_level log_threshold;

#define LOG(lvl, ...)                                  \
	do {                                           \
		if ((lvl) <= log_threshold)            \
			log_write((lvl), __VA_ARGS__); \
	} while (0)
#define LOG_ERROR(...) LOG(LOG_LVL_ERROR, __VA_ARGS__)
#define LOG_WARN(...) LOG(LOG_LVL_WARN, __VA_ARGS__)
#define LOG_INFO(...) LOG(LOG_LVL_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) LOG(LOG_LVL_DEBUG, __VA_ARGS__)

/* Parses "error", "warn", "info", "debug"; -1 if unknown. */
int log_level_parse(const char *s);
const char *log_level_str(enum log_level lvl);

/* Sends logs to syslog (ident "tokengate") instead of stderr. */
void log_use_syslog(int on);

/* Formats and writes one line; use LOG() instead. */
void log_write(enum log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Copies at most `max` bytes of untrusted input into out (size outsz) as
 * printable ASCII, non-printable bytes as \xNN; always NUL-terminates.
 * Returns out.
 */
char *log_escape(char *out, size_t outsz, const void *in, size_t len, size_t max);

#endif
