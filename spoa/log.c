/* log: JSON-lines logging (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_LVL_INFO;
static int use_syslog;

static const char *const level_names[LOG_LVL_COUNT] = {"error", "warn", "info", "debug"};

int log_level_parse(const char *s)
{
	for (int i = 0; i < LOG_LVL_COUNT; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

const char *log_level_str(enum log_level lvl)
{
	return (unsigned)lvl < LOG_LVL_COUNT ? level_names[lvl] : "?";
}

void log_use_syslog(int on)
{
	if (on && !use_syslog)
		openlog("tokengate", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	use_syslog = on;
}

/* Appends s to out as the inside of a JSON string. */
static size_t json_escape(char *out, size_t outsz, const char *s)
{
	size_t n = 0;

	for (; *s && n + 7 < outsz; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20) {
			n += (size_t)snprintf(out + n, outsz - n, "\\u%04x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	out[n] = '\0';
	return n;
}

void log_write(enum log_level lvl, const char *fmt, ...)
{
	char msg[1024], esc[2048], line[2300];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_escape(esc, sizeof(esc), msg);

	if (use_syslog) {
		static const int prio[LOG_LVL_COUNT] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
		syslog(prio[lvl], "{\"level\":\"%s\",\"msg\":\"%s\"}", level_names[lvl], esc);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line),
		     "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"msg\":\"%s\"}\n",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     ts.tv_nsec / 1000000, level_names[lvl], esc);
	if (n > (int)sizeof(line) - 1)
		n = (int)sizeof(line) - 1;
	/* One write per line so lines from a crash-time flush never interleave. */
	if (write(STDERR_FILENO, line, (size_t)n) == -1)
		return;
}

char *log_escape(char *out, size_t outsz, const void *in, size_t len, size_t max)
{
	const unsigned char *p = in;
	size_t n = 0;

	if (outsz == 0)
		return out;
	if (len > max)
		len = max;
	for (size_t i = 0; i < len && n + 5 < outsz; i++) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
			out[n++] = (char)p[i];
		else
			n += (size_t)snprintf(out + n, outsz - n, "\\x%02x", p[i]);
	}
	out[n] = '\0';
	return out;
}
