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
 * and truncate every int64_t we pass to localtime_r. */
_Static_assert(sizeof(time_t) >= 8, "daytime needs a 64-bit time_t");

#define DAY 86400

/* The zone is modelled over t +- WINDOW_HALF, sampled every WINDOW_STEP.
 * A day lasts 23 to 25 hours, 48 when a date-line jump repeats a date
 * (Alaska, 1867): any day containing t lies inside the window. */
#define WINDOW_HALF (3 * DAY)
#define WINDOW_STEP (WINDOW_HALF / 2)
#define WINDOW_SAMPLES 5
#define WINDOW_PIECES 16

/* 0001-01-03T00:00:00Z and 9999-12-28T23:59:59Z: two days inside the
 * four-digit years, so any UTC offset (and D+1) stays inside too. */
#define T_MIN (-62135424000LL)
#define T_MAX (253402041599LL)

/* 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z. */
#define MS_MIN (-62167219200000LL)
#define MS_MAX (253402300799999LL)

static char zone_name[256] = "UTC";
static int zone_ready;

/* Howard Hinnant's civil_from_days: proleptic Gregorian, exact for any
 * year we accept, no table and no libc. */
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

/* The zone's UTC offset at x (what localtime_r adds to x to get the wall
 * clock). localtime_r cannot fail on our clamped range; if it ever did,
 * UTC is a sane answer. */
static int64_t offset_at(int64_t x)
{
	time_t tt = (time_t)x;
	struct tm tm;

	if (localtime_r(&tt, &tm) == NULL)
		return 0;
	return (int64_t)tm.tm_gmtoff;
}

/*
 * The zone around t as pieces of constant offset: piece i covers
 * [from[i], from[i + 1]) (the last one up to `last` included) and its wall
 * clock is x + off[i]. With it, days are plain arithmetic: no mktime,
 * whose pick for a skipped or repeated midnight is libc's choice (glibc
 * takes the second 00:00 of a repeated midnight), and no search that could
 * fail to end.
 */
struct window {
	int64_t from[WINDOW_PIECES];
	int64_t off[WINDOW_PIECES];
	int n;
	int64_t last;
};

/* Adds the offset changes in (a, b], known offsets oa and ob, in order.
 * Equal ends are taken as "no change": a change and its undoing less than
 * WINDOW_STEP apart would be missed. tzdata has none: since 1800, offset
 * changes are at least four days apart. */
static void window_split(struct window *w, int64_t a, int64_t oa, int64_t b,
                         int64_t ob)
{
	int64_t mid, om;

	if (oa == ob)
		return;
	if (b - a == 1) {
		if (w->n < WINDOW_PIECES) {
			w->from[w->n] = b;
			w->off[w->n] = ob;
			w->n++;
		}
		return;
	}
	mid = a + (b - a) / 2;
	om = offset_at(mid);
	window_split(w, a, oa, mid, om);
	window_split(w, mid, om, b, ob);
}

/* Cost: WINDOW_SAMPLES localtime_r calls, plus about 18 for each offset
 * change within WINDOW_HALF of t. */
static void window_build(struct window *w, int64_t t)
{
	int64_t x[WINDOW_SAMPLES], o[WINDOW_SAMPLES];
	int k;

	for (k = 0; k < WINDOW_SAMPLES; k++) {
		x[k] = t - WINDOW_HALF + k * WINDOW_STEP;
		o[k] = offset_at(x[k]);
	}
	w->from[0] = x[0];
	w->off[0] = o[0];
	w->n = 1;
	w->last = x[WINDOW_SAMPLES - 1];
	for (k = 0; k + 1 < WINDOW_SAMPLES; k++)
		window_split(w, x[k], o[k], x[k + 1], o[k + 1]);
}

static int64_t piece_last(const struct window *w, int i)
{
	return i + 1 < w->n ? w->from[i + 1] - 1 : w->last;
}

/* The latest wall clock reading at or before t: the clock may be set back,
 * the day never is. */
static int64_t wall_high(const struct window *w, int64_t t)
{
	int64_t high = INT64_MIN, y;
	int i;

	for (i = 0; i < w->n && w->from[i] <= t; i++) {
		y = piece_last(w, i) < t ? piece_last(w, i) : t;
		if (y + w->off[i] > high)
			high = y + w->off[i];
	}
	return high;
}

/* The first instant whose wall clock reads wall or later; an instant past
 * the window if none does. A clock set forward over wall (a skipped
 * midnight) reaches it at the jump. */
static int64_t first_reaching(const struct window *w, int64_t wall)
{
	int i;

	for (i = 0; i < w->n; i++) {
		if (w->from[i] + w->off[i] >= wall)
			return w->from[i];
		if (piece_last(w, i) + w->off[i] >= wall)
			return wall - w->off[i];
	}
	return w->last + 1;
}

/* The day index of t, and optionally its bounds. start <= t < end by
 * construction: wall_high(t) reaches the day's midnight but not the next. */
static int64_t day_bounds(int64_t t, int64_t *start, int64_t *end)
{
	struct window w;
	int64_t day;

	window_build(&w, t);
	day = floor_div(wall_high(&w, t), DAY);
	if (start != NULL)
		*start = first_reaching(&w, day * DAY);
	*end = first_reaching(&w, (day + 1) * DAY);
	return day;
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
	/* right/ zones count leap seconds: their clock is not Unix time. */
	if (strncmp(name, "right/", 6) == 0)
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
	int64_t day, y;
	int m, d;

	ensure_zone();
	day = day_bounds(clamp_t(t), &out->start, &out->end);
	out->index = (int32_t)day;
	civil_from_days(day, &y, &m, &d);
	put_date(out->str, (unsigned)y, (unsigned)m, (unsigned)d);
}

int64_t daytime_seconds_to_reset(int64_t t)
{
	int64_t end;

	ensure_zone();
	t = clamp_t(t);
	(void)day_bounds(t, NULL, &end);
	return end - t;
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
