/*
 * daytime: calendar days in the configured IANA zone, for budgets that
 * reset at local midnight.
 *
 * The zone is process-wide (TZ + tzset()), UTC until daytime_set_zone()
 * says otherwise, whatever the host's /etc/localtime or inherited TZ is.
 * All functions take the time as an argument so callers (and tests) own
 * the clock.
 *
 * A day is [start, end): start is the first instant the wall clock reads
 * that date, end the first instant it reads a later one. So when midnight
 * is skipped, start is the first existing instant (01:00 in Santiago on
 * 2026-09-06); when it is repeated, the first 00:00 (Havana, 2026-11-01);
 * when a whole date is skipped (Pacific/Apia, 2011-12-30), the next index
 * is two more and end is still its start.
 *
 * The day never goes back: when the clock is set back across midnight
 * (St. John's fell back from 00:01 to 23:01 until 2011, Casey from 02:00
 * to 23:00 in 2010), the repeated minutes of the old date belong to the
 * day already begun. Days therefore tile time, each budget resets once,
 * and str/index name that day rather than what the wall clock shows.
 *
 * Assumes the zone does not change its offset and change it back within
 * 36 hours (no zone in tzdata has done so since 1800); if it ever did,
 * that day's bounds would ignore the pair, and still hold t.
 *
 * Not thread-safe: the zone lives in the environment and libc's tz state.
 * Use daytime_* from one thread, and do not let another thread call
 * setenv()/tzset() meanwhile. daytime_iso_utc_ms() is the exception: pure
 * arithmetic, callable from any thread.
 */
#ifndef TOKENGATE_DAYTIME_H
#define TOKENGATE_DAYTIME_H

#include <stddef.h>
#include <stdint.h>

/* A calendar day in the configured zone. */
struct daytime_day {
	int32_t index;  /* days since 1970-01-01 of the local date (a proleptic Gregorian day number) */
	char str[11];   /* "YYYY-MM-DD" */
	int64_t start;  /* Unix time of the local midnight that starts it */
	int64_t end;    /* Unix time of the next local midnight (start of the next day) */
};

/*
 * Sets the process's zone (TZ + tzset()). iana_name is copied, e.g.
 * "Europe/Paris"; it must name a TZif file under /usr/share/zoneinfo, and
 * may use only [A-Za-z0-9_+-/], with no "..", no leading '/' and no "right/"
 * (leap-second clocks are not Unix time).
 * Returns 0, or -1 if the zone is unknown or the name invalid (also NULL,
 * empty or too long): the zone is then left unchanged. "UTC" always
 * works, even without tzdata.
 * Not thread-safe: call it from the one thread that uses daytime_*.
 */
int daytime_set_zone(const char *iana_name);

/* The current zone's name ("UTC" until set). Borrowed: valid until the next
 * successful daytime_set_zone(). */
const char *daytime_zone(void);

/*
 * The local day containing Unix time t, into *out (never fails).
 * Guarantees out->start <= t < out->end, and consecutive days tile time
 * (the end of one is the start of the next). About 5 localtime_r calls,
 * ~40 within 3 days of an offset change: callers may cache the day until
 * its end. t is clamped to the years 0001..9999 so the date always has
 * four digits.
 */
void daytime_day_of(int64_t t, struct daytime_day *out);

/* Seconds from t until the next local midnight (>= 1): the end of
 * daytime_day_of(t) minus t. */
int64_t daytime_seconds_to_reset(int64_t t);

/*
 * "YYYY-MM-DDTHH:MM:SS.mmmZ" for a UTC timestamp in milliseconds, into buf
 * (>= 25 bytes for the whole string). Independent of the zone. Clamped to
 * the years 0000..9999; a smaller buf gets a truncated, NUL-terminated
 * string (nothing if size is 0).
 */
void daytime_iso_utc_ms(int64_t unix_ms, char *buf, size_t size);

#endif
