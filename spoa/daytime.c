/* daytime: local calendar days in the configured zone (see daytime.h). */
#include "daytime.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef DAYTIME_ZONEINFO_DIR
#define DAYTIME_ZONEINFO_DIR "/usr/share/zoneinfo"
#endif

/* A budget day is keyed by Unix time; a 32-bit time_t would wrap in 2038
 * and truncate every int64_t we pass to localtime_r/mktime. */
_Static_assert(sizeof(time_t) >= 8, "daytime needs a 64-bit time_t");

#define DAY 86400

/* Longest stretch searched for a day boundary. Real local days last 23 to
 * 25 hours; a date-line jump makes one 48 hours (or skips one). */
#define SEARCH_DAYS 8

/* 0001-01-03T00:00:00Z and 9999-12-28T23:59:59Z: two days inside the
 * four-digit years, so any UTC offset (and D+1) stays inside too. */
#define T_MIN (-62135424000LL)
#define T_MAX (253402041599LL)

/* 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z. */
#define MS_MIN (-62167219200000LL)
#define MS_MAX (253402300799999LL)

static char zone_name[256] = "UTC";
static int zone_ready;

/* Howard Hinnant's days_from_civil: proleptic Gregorian, exact for any
 * year we accept, no table and no libc. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

/* Fixed-width decimal, zero-padded; the high digits of a too-large v are
 * dropped, but our callers clamp first. By hand rather than snprintf
 * because -Wformat-truncation cannot see those clamps. */
static void put_digits(char *p, unsigned v, int width)
{
	while (width-- > 0) {
		p[width] = (char)('0' + v % 10);
		v /= 10;
	}
}

/* "YYYY-MM-DD" plus NUL: 11 bytes. */
static void put_date(char *p, unsigned y, unsigned m, unsigned d)
{
	put_digits(p, y, 4);
	p[4] = '-';
	put_digits(p + 5, m, 2);
	p[7] = '-';
	put_digits(p + 8, d, 2);
	p[10] = '\0';
}

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* The local date of x as a day number; tm receives the broken-down time.
 * localtime_r cannot fail on our clamped range, but if it ever did we fall
 * back to UTC rather than hand garbage to the bisection. */
static int64_t local_index(int64_t x, struct tm *tm)
{
	time_t tt = (time_t)x;
	int64_t days, y;
	int m, d;

	if (localtime_r(&tt, tm) != NULL)
		return days_from_civil((int64_t)tm->tm_year + 1900,
		                       tm->tm_mon + 1, tm->tm_mday);
	days = floor_div(x, DAY);
	civil_from_days(days, &y, &m, &d);
	memset(tm, 0, sizeof(*tm));
	tm->tm_year = (int)(y - 1900);
	tm->tm_mon = m - 1;
	tm->tm_mday = d;
	return days;
}

static int64_t index_of(int64_t x)
{
	struct tm tm;

	return local_index(x, &tm);
}

/* mktime of local 00:00:00 on the date in tm, shifted by add_days. Only a
 * guess: for a skipped or repeated midnight libc may pick either side, so
 * callers check it against localtime_r. */
static int64_t midnight_guess(const struct tm *tm, int add_days)
{
	struct tm g;

	memset(&g, 0, sizeof(g));
	g.tm_year = tm->tm_year;
	g.tm_mon = tm->tm_mon;
	g.tm_mday = tm->tm_mday + add_days;
	g.tm_isdst = -1;
	return (int64_t)mktime(&g);
}

/* First instant whose local date is day (t's own date, tm its local time).
 * A bisection over [lo, t] with index(lo) < day <= index(t) always ends,
 * whatever the zone does; in the usual case the guess is already right. */
static int64_t day_start(int64_t t, int64_t day, const struct tm *tm)
{
	int64_t lo, hi, mid, s;
	int i;

	s = midnight_guess(tm, 0);
	if (s <= t && index_of(s) == day && index_of(s - 1) < day)
		return s;
	lo = t;
	for (i = 0; i < SEARCH_DAYS; i++) {
		lo -= DAY;
		if (index_of(lo) < day)
			break;
	}
	if (i == SEARCH_DAYS)
		return t; /* no earlier date within a week: libc is broken */
	hi = t;
	while (hi - lo > 1) {
		mid = lo + (hi - lo) / 2;
		if (index_of(mid) < day)
			lo = mid;
		else
			hi = mid;
	}
	return hi;
}

/* First instant after t whose local date is later than day: the same
 * bisection, mirrored. Always > t. */
static int64_t day_end(int64_t t, int64_t day, const struct tm *tm)
{
	int64_t lo, hi, mid, e;
	int i;

	e = midnight_guess(tm, 1);
	if (e > t && index_of(e) > day && index_of(e - 1) <= day)
		return e;
	hi = t;
	for (i = 0; i < SEARCH_DAYS; i++) {
		hi += DAY;
		if (index_of(hi) > day)
			break;
	}
	if (i == SEARCH_DAYS)
		return t + DAY; /* no later date within a week: libc is broken */
	lo = t;
	while (hi - lo > 1) {
		mid = lo + (hi - lo) / 2;
		if (index_of(mid) > day)
			hi = mid;
		else
			lo = mid;
	}
	return hi;
}

/* Until the first daytime_set_zone(), the zone is UTC rather than whatever
 * TZ or /etc/localtime the host happens to have. */
static void ensure_zone(void)
{
	if (!zone_ready)
		(void)daytime_set_zone("UTC");
}

static int64_t clamp_t(int64_t t)
{
	return t < T_MIN ? T_MIN : t > T_MAX ? T_MAX : t;
}

static int valid_name(const char *name)
{
	const char *p;

	if (name == NULL || name[0] == '\0' || name[0] == '/')
		return 0;
	if (strlen(name) >= sizeof(zone_name) || strstr(name, "..") != NULL)
		return 0;
	for (p = name; *p != '\0'; p++) {
		char c = *p;

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-' ||
		      c == '+' || c == '/'))
			return 0;
	}
	return 1;
}

/* A regular file starting with the TZif magic. Checking the magic keeps
 * "zone.tab" or "tzdata.zi" out: glibc would silently fall back to UTC. */
static int is_tzif(const char *path)
{
	struct stat st;
	char magic[4];
	int fd, ok = 0;

	/* O_NONBLOCK: a FIFO planted in the tree must not hang startup. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd == -1)
		return 0;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    read(fd, magic, sizeof(magic)) == (ssize_t)sizeof(magic) &&
	    memcmp(magic, "TZif", sizeof(magic)) == 0)
		ok = 1;
	close(fd);
	return ok;
}

int daytime_set_zone(const char *iana_name)
{
	char tz[sizeof(DAYTIME_ZONEINFO_DIR) + sizeof(zone_name) + 2];
	int n;

	if (!valid_name(iana_name))
		return -1;
	if (strcmp(iana_name, "UTC") == 0) {
		/* A POSIX rule, not a file: works without tzdata. */
		memcpy(tz, "UTC0", sizeof("UTC0"));
	} else {
		/* The absolute path, so TZDIR cannot make libc load another
		 * file than the one checked here. */
		n = snprintf(tz, sizeof(tz), ":%s/%s", DAYTIME_ZONEINFO_DIR,
		             iana_name);
		if (n < 0 || (size_t)n >= sizeof(tz) || !is_tzif(tz + 1))
			return -1;
	}
	if (setenv("TZ", tz, 1) == -1)
		return -1;
	tzset();
	/* valid_name() bounded the length. */
	memcpy(zone_name, iana_name, strlen(iana_name) + 1);
	zone_ready = 1;
	return 0;
}

const char *daytime_zone(void)
{
	return zone_name;
}

void daytime_day_of(int64_t t, struct daytime_day *out)
{
	struct tm tm;
	int64_t day;

	ensure_zone();
	t = clamp_t(t);
	day = local_index(t, &tm);
	out->index = (int32_t)day;
	put_date(out->str, (unsigned)(tm.tm_year + 1900), (unsigned)(tm.tm_mon + 1),
	         (unsigned)tm.tm_mday);
	out->start = day_start(t, day, &tm);
	out->end = day_end(t, day, &tm);
}

int64_t daytime_seconds_to_reset(int64_t t)
{
	struct tm tm;
	int64_t day;

	ensure_zone();
	t = clamp_t(t);
	day = local_index(t, &tm);
	return day_end(t, day, &tm) - t;
}

void daytime_iso_utc_ms(int64_t unix_ms, char *buf, size_t size)
{
	char s[25]; /* "YYYY-MM-DDTHH:MM:SS.mmmZ" */
	int64_t secs, days, sod, y;
	int m, d, ms;
	size_t n;

	if (size == 0)
		return;
	unix_ms = unix_ms < MS_MIN ? MS_MIN : unix_ms > MS_MAX ? MS_MAX : unix_ms;
	secs = floor_div(unix_ms, 1000);
	ms = (int)(unix_ms - secs * 1000);
	days = floor_div(secs, DAY);
	sod = secs - days * DAY;
	civil_from_days(days, &y, &m, &d);
	put_date(s, (unsigned)y, (unsigned)m, (unsigned)d);
	s[10] = 'T';
	put_digits(s + 11, (unsigned)(sod / 3600), 2);
	s[13] = ':';
	put_digits(s + 14, (unsigned)(sod / 60 % 60), 2);
	s[16] = ':';
	put_digits(s + 17, (unsigned)(sod % 60), 2);
	s[19] = '.';
	put_digits(s + 20, (unsigned)ms, 3);
	s[23] = 'Z';
	s[24] = '\0';
	n = size - 1 < sizeof(s) - 1 ? size - 1 : sizeof(s) - 1;
	memcpy(buf, s, n);
	buf[n] = '\0';
}
