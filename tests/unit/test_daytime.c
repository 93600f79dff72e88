/* Unit tests of local days: exact boundaries around DST, skipped and
 * repeated midnights, zone validation, and the ISO formatter. Every
 * expected number was checked independently with
 * `TZ=<zone> date -d @<t>` and `zdump -v` (tzdata 2025b). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "daytime.h"

#define HOUR 3600
#define DAY 86400

static void use_zone(const char *zone)
{
	assert_int_equal(daytime_set_zone(zone), 0);
	assert_string_equal(daytime_zone(), zone);
}

static void expect_day(int64_t t, const char *str, int32_t index, int64_t start,
                       int64_t end)
{
	struct daytime_day d;

	memset(&d, 0x5a, sizeof(d));
	daytime_day_of(t, &d);
	assert_string_equal(d.str, str);
	assert_int_equal(d.index, index);
	assert_int_equal(d.start, start);
	assert_int_equal(d.end, end);
	assert_int_equal(daytime_seconds_to_reset(t), end - t);
}

/*
 * What must hold for any t in any zone: t inside [start, end), the
 * neighbours agree on the boundaries (days tile time), str is the index's
 * date (formatted by gmtime_r, not by our arithmetic).
 */
static void check_invariants(int64_t t, int64_t min_len, int64_t max_len)
{
	struct daytime_day d, x;
	time_t midnight;
	struct tm tm;
	char str[16];

	daytime_day_of(t, &d);
	assert_true(d.start <= t);
	assert_true(t < d.end);
	assert_in_range(d.end - d.start, min_len, max_len);
	assert_int_equal(daytime_seconds_to_reset(t), d.end - t);

	midnight = (time_t)d.index * DAY;
	assert_non_null(gmtime_r(&midnight, &tm));
	strftime(str, sizeof(str), "%Y-%m-%d", &tm);
	assert_string_equal(d.str, str);

	daytime_day_of(d.start, &x);
	assert_int_equal(x.index, d.index);
	assert_int_equal(x.start, d.start);
	assert_int_equal(x.end, d.end);
	daytime_day_of(d.end - 1, &x);
	assert_int_equal(x.index, d.index);
	assert_int_equal(x.start, d.start);
	daytime_day_of(d.start - 1, &x);
	assert_true(x.index < d.index);
	assert_int_equal(x.end, d.start);
	daytime_day_of(d.end, &x);
	assert_true(x.index > d.index);
	assert_int_equal(x.start, d.end);
}

/* main() sets TZ=Asia/Tokyo: nothing set yet must still mean UTC. */
static void test_default_is_utc_not_host(void **state)
{
	(void)state;
	assert_string_equal(daytime_zone(), "UTC");
	/* 2026-03-28T23:59:59Z is already the 29th in Tokyo. */
	expect_day(1774742399, "2026-03-28", 20540, 1774656000, 1774742400);
}

static void test_utc_boundaries(void **state)
{
	(void)state;
	use_zone("UTC");
	expect_day(1774742399, "2026-03-28", 20540, 1774656000, 1774742400);
	expect_day(1774742400, "2026-03-29", 20541, 1774742400, 1774828800);
	expect_day(0, "1970-01-01", 0, 0, DAY);
	expect_day(-1, "1969-12-31", -1, -DAY, 0);
	expect_day(951782400, "2000-02-29", 11016, 951782400, 951868800);

	assert_int_equal(daytime_seconds_to_reset(1774742399), 1);
	assert_int_equal(daytime_seconds_to_reset(1774742400), DAY);
	assert_int_equal(daytime_seconds_to_reset(1774742400 + HOUR), 23 * HOUR);
	assert_int_equal(daytime_seconds_to_reset(1774742400 + DAY - 1), 1);
}

static void test_paris_spring_forward(void **state)
{
	(void)state;
	use_zone("Europe/Paris");
	/* 2026-03-29: 02:00 CET -> 03:00 CEST, a 23-hour day from
	 * 2026-03-28T23:00Z to 2026-03-29T22:00Z. */
	expect_day(1774738800, "2026-03-29", 20541, 1774738800, 1774821600);
	expect_day(1774738800 + 2 * HOUR, "2026-03-29", 20541, 1774738800,
	           1774821600); /* 04:00 CEST, just after the jump */
	expect_day(1774821599, "2026-03-29", 20541, 1774738800, 1774821600);
	expect_day(1774738799, "2026-03-28", 20540, 1774738800 - DAY, 1774738800);
	expect_day(1774821600, "2026-03-30", 20542, 1774821600, 1774821600 + DAY);
	assert_int_equal(daytime_seconds_to_reset(1774738800), 23 * HOUR);
}

static void test_paris_fall_back(void **state)
{
	(void)state;
	use_zone("Europe/Paris");
	/* 2026-10-25: 03:00 CEST -> 02:00 CET, a 25-hour day from
	 * 2026-10-24T22:00Z to 2026-10-25T23:00Z. */
	expect_day(1792879200, "2026-10-25", 20751, 1792879200, 1792969200);
	/* 02:30 local twice: 00:30Z (CEST) and 01:30Z (CET), same day. */
	expect_day(1792879200 + 2 * HOUR + 1800, "2026-10-25", 20751, 1792879200,
	           1792969200);
	expect_day(1792879200 + 3 * HOUR + 1800, "2026-10-25", 20751, 1792879200,
	           1792969200);
	expect_day(1792969199, "2026-10-25", 20751, 1792879200, 1792969200);
	expect_day(1792879199, "2026-10-24", 20750, 1792879200 - DAY, 1792879200);
	expect_day(1792969200, "2026-10-26", 20752, 1792969200, 1792969200 + DAY);
	assert_int_equal(daytime_seconds_to_reset(1792879200), 25 * HOUR);
}

static void test_new_york(void **state)
{
	(void)state;
	use_zone("America/New_York");
	/* 2026-03-08: 23 hours, 05:00Z to 2026-03-09T04:00Z. */
	expect_day(1772946000, "2026-03-08", 20520, 1772946000, 1773028800);
	expect_day(1772946000 + 3 * HOUR, "2026-03-08", 20520, 1772946000,
	           1773028800);
	expect_day(1772945999, "2026-03-07", 20519, 1772946000 - DAY, 1772946000);
	/* 2026-11-01: 25 hours, 04:00Z to 2026-11-02T05:00Z. */
	expect_day(1793505600, "2026-11-01", 20758, 1793505600, 1793595600);
	expect_day(1793595599, "2026-11-01", 20758, 1793505600, 1793595600);
	expect_day(1793595600, "2026-11-02", 20759, 1793595600, 1793595600 + DAY);
	assert_int_equal(daytime_seconds_to_reset(1793505600), 25 * HOUR);
}

/* Midnight itself does not exist: the day starts at 01:00. */
static void test_skipped_midnight(void **state)
{
	(void)state;
	use_zone("America/Santiago");
	/* 2026-09-05 24:00 -04 -> 2026-09-06 01:00 -03 (04:00Z). The 5th is a
	 * normal 24 hours; the 6th starts at 01:00 and lasts 23. */
	expect_day(1788667199, "2026-09-05", 20701, 1788580800, 1788667200);
	assert_int_equal(daytime_seconds_to_reset(1788667199), 1);
	expect_day(1788667200, "2026-09-06", 20702, 1788667200, 1788750000);
	expect_day(1788700000, "2026-09-06", 20702, 1788667200, 1788750000);

	use_zone("America/Havana");
	/* 2026-03-08 00:00 CST -> 01:00 CDT (05:00Z). */
	expect_day(1772945999, "2026-03-07", 20519, 1772859600, 1772946000);
	expect_day(1772946000, "2026-03-08", 20520, 1772946000, 1773028800);

	use_zone("Asia/Beirut");
	/* 2026-03-29 00:00 EET -> 01:00 EEST (2026-03-28T22:00Z). */
	expect_day(1774735199, "2026-03-28", 20540, 1774648800, 1774735200);
	expect_day(1774735200, "2026-03-29", 20541, 1774735200, 1774818000);
}

/* Midnight happens twice, or the clock falls back across it. */
static void test_repeated_midnight(void **state)
{
	(void)state;
	use_zone("America/Havana");
	/* 2026-11-01 01:00 CDT -> 00:00 CST: the day starts at the first
	 * 00:00 (04:00Z), not the second (05:00Z), and lasts 25 hours. */
	expect_day(1793505600, "2026-11-01", 20758, 1793505600, 1793595600);
	expect_day(1793505600 + HOUR + 1, "2026-11-01", 20758, 1793505600,
	           1793595600); /* 00:00:01 CST, the second time round */
	expect_day(1793505599, "2026-10-31", 20757, 1793505600 - DAY, 1793505600);

	use_zone("America/Santiago");
	/* 2026-04-04 24:00 -03 -> 23:00 -04: 23:00-24:00 of the 4th happens
	 * twice, so the 4th lasts 25 hours and the 5th starts at 04:00Z. */
	expect_day(1775271600, "2026-04-04", 20547, 1775271600, 1775361600);
	expect_day(1775358000, "2026-04-04", 20547, 1775271600, 1775361600);
	expect_day(1775361599, "2026-04-04", 20547, 1775271600, 1775361600);
	expect_day(1775361600, "2026-04-05", 20548, 1775361600, 1775361600 + DAY);
}

/* Samoa crossed the date line: 2011-12-30 never happened in Apia. */
static void test_skipped_date(void **state)
{
	(void)state;
	use_zone("Pacific/Apia");
	expect_day(1325152800, "2011-12-29", 15337, 1325152800, 1325239200);
	expect_day(1325239199, "2011-12-29", 15337, 1325152800, 1325239200);
	expect_day(1325239200, "2011-12-31", 15339, 1325239200, 1325239200 + DAY);
}

/* The clock set back across midnight: the day that has begun keeps going,
 * so the repeated minutes of the old date do not reopen its budget. */
static void test_clock_set_back_across_midnight(void **state)
{
	(void)state;
	use_zone("America/St_Johns");
	/* 2006-10-29 00:01 NDT -> 2006-10-28 23:01 NST (02:31Z). The 29th
	 * begins at its first 00:00 (02:30Z), keeps the wall clock's second
	 * 23:01-24:00 of the 28th, and ends at 2006-10-30 00:00 NST: 25 h. */
	expect_day(1162088999, "2006-10-28", 13449, 1162002600, 1162089000);
	expect_day(1162089000, "2006-10-29", 13450, 1162089000, 1162179000);
	expect_day(1162089060, "2006-10-29", 13450, 1162089000, 1162179000);
	expect_day(1162092600, "2006-10-29", 13450, 1162089000, 1162179000);
	assert_int_equal(daytime_seconds_to_reset(1162089060), 89940);

	use_zone("Antarctica/Casey");
	/* 2010-03-05 02:00 +11 -> 2010-03-04 23:00 +08: a 27-hour 5th. */
	expect_day(1267707599, "2010-03-04", 14672, 1267621200, 1267707600);
	expect_day(1267714800, "2010-03-05", 14673, 1267707600, 1267804800);
	expect_day(1267716600, "2010-03-05", 14673, 1267707600, 1267804800);
	expect_day(1267804800, "2010-03-06", 14674, 1267804800, 1267891200);

	use_zone("Pacific/Kwajalein");
	/* 1969-09-30 23:59:59 +11 -> 01:00 -12, same date: a 47-hour day. */
	expect_day(-8035200, "1969-09-30", -93, -8074800, -7905600);
	expect_day(-7988400, "1969-09-30", -93, -8074800, -7905600);
}

/* A sweep through whole years, 29 minutes at a time, in zones with
 * every kind of oddity; each call must end and satisfy the invariants. */
static void test_sweep_invariants(void **state)
{
	static const struct {
		const char *zone;
		int64_t from, to, min_len, max_len;
	} sweeps[] = {
		{"UTC", 1767225600, 1798761600, DAY, DAY},
		{"Europe/Paris", 1767225600, 1798761600, 23 * HOUR, 25 * HOUR},
		{"America/New_York", 1767225600, 1798761600, 23 * HOUR, 25 * HOUR},
		{"America/Santiago", 1767225600, 1798761600, 23 * HOUR, 25 * HOUR},
		{"America/Havana", 1767225600, 1798761600, 23 * HOUR, 25 * HOUR},
		{"Asia/Beirut", 1767225600, 1798761600, 23 * HOUR, 25 * HOUR},
		{"Africa/Cairo", 1767225600, 1798761600, 23 * HOUR, 25 * HOUR},
		/* half-hour DST */
		{"Australia/Lord_Howe", 1767225600, 1798761600, 23 * HOUR + 1800,
		 24 * HOUR + 1800},
		{"Asia/Kathmandu", 1767225600, 1798761600, DAY, DAY},
		{"Pacific/Chatham", 1767225600, 1798761600, 23 * HOUR, 25 * HOUR},
		/* 2011 in Samoa: DST both ways and the skipped 30 December */
		{"Pacific/Apia", 1293840000, 1325376000, 23 * HOUR, 25 * HOUR},
		/* clocks set back across midnight */
		{"America/St_Johns", 1136073600, 1167609600, 23 * HOUR, 25 * HOUR},
		{"Antarctica/Casey", 1262304000, 1293840000, DAY, 27 * HOUR},
		{"Pacific/Kwajalein", -31536000, 0, DAY, 47 * HOUR},
		/* Alaska leaves Russia: 18 October 1867 happens twice */
		{"America/Anchorage", -3250368000, -3218832000, DAY, 2 * DAY},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(sweeps) / sizeof(sweeps[0]); i++) {
		use_zone(sweeps[i].zone);
		for (int64_t t = sweeps[i].from; t < sweeps[i].to; t += 29 * 60)
			check_invariants(t, sweeps[i].min_len, sweeps[i].max_len);
	}
}

static void test_zone_validation(void **state)
{
	static const char *const bad[] = {
		"Mars/Olympus_Mons",
		"../../etc/passwd",
		"Europe/../Europe/Paris",
		"Europe/Paris/..",
		"/usr/share/zoneinfo/Europe/Paris",
		"/etc/localtime",
		"",
		"Europe",        /* a directory */
		"zone.tab",      /* a file, but not TZif */
		"Europe/Paris ", /* not a zone name character */
		"Europe/Paris\n",
		"CET-1CEST,M3.5.0,M10.5.0/3", /* POSIX rules are not zones */
		"right/Europe/Paris",         /* leap seconds: not Unix time */
	};
	char longname[400];

	(void)state;
	use_zone("Europe/Paris");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(daytime_set_zone(bad[i]), -1);
		assert_string_equal(daytime_zone(), "Europe/Paris");
	}
	assert_int_equal(daytime_set_zone(NULL), -1);
	memset(longname, 'A', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(daytime_set_zone(longname), -1);

	/* Still Paris, not a silent fallback to UTC. */
	assert_string_equal(daytime_zone(), "Europe/Paris");
	expect_day(1774738800, "2026-03-29", 20541, 1774738800, 1774821600);

	/* Other spellings that name real files work. */
	use_zone("Etc/UTC");
	expect_day(1774742400, "2026-03-29", 20541, 1774742400, 1774828800);
	use_zone("Etc/GMT+5"); /* POSIX sign: UTC-5 */
	expect_day(1774742400, "2026-03-28", 20540, 1774674000, 1774760400);
	use_zone("UTC");
	expect_day(1774742400, "2026-03-29", 20541, 1774742400, 1774828800);
}

/* Input outside 0001..9999 is clamped rather than overflowing. */
static void test_extremes(void **state)
{
	struct daytime_day d;

	(void)state;
	use_zone("America/New_York");
	daytime_day_of(INT64_MAX, &d);
	assert_string_equal(d.str, "9999-12-28");
	assert_true(d.start < d.end);
	daytime_day_of(INT64_MIN, &d);
	assert_int_equal(strlen(d.str), 10);
	assert_true(d.start < d.end);
	assert_true(daytime_seconds_to_reset(INT64_MAX) >= 1);
	assert_true(daytime_seconds_to_reset(INT64_MIN) >= 1);
	use_zone("UTC");
	daytime_day_of(INT64_MIN, &d);
	assert_string_equal(d.str, "0001-01-03");
}

static void test_iso_utc_ms(void **state)
{
	char buf[32];

	(void)state;
	/* Whatever the zone: the formatter is UTC. */
	use_zone("Asia/Kathmandu");
	daytime_iso_utc_ms(0, buf, sizeof(buf));
	assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
	daytime_iso_utc_ms(1774742399999, buf, sizeof(buf));
	assert_string_equal(buf, "2026-03-28T23:59:59.999Z");
	daytime_iso_utc_ms(1774742400001, buf, sizeof(buf));
	assert_string_equal(buf, "2026-03-29T00:00:00.001Z");
	daytime_iso_utc_ms(951825600123, buf, sizeof(buf));
	assert_string_equal(buf, "2000-02-29T12:00:00.123Z");
	daytime_iso_utc_ms(-1, buf, sizeof(buf));
	assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
	daytime_iso_utc_ms(-86400000, buf, sizeof(buf));
	assert_string_equal(buf, "1969-12-31T00:00:00.000Z");
	daytime_iso_utc_ms(INT64_MAX, buf, sizeof(buf));
	assert_string_equal(buf, "9999-12-31T23:59:59.999Z");
	daytime_iso_utc_ms(INT64_MIN, buf, sizeof(buf));
	assert_string_equal(buf, "0000-01-01T00:00:00.000Z");

	/* Exactly 25 bytes is enough. */
	daytime_iso_utc_ms(0, buf, 25);
	assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
	/* Shorter: truncated, terminated, nothing past size. */
	memset(buf, '#', sizeof(buf));
	daytime_iso_utc_ms(0, buf, 11);
	assert_string_equal(buf, "1970-01-01");
	assert_int_equal(buf[11], '#');
	memset(buf, '#', sizeof(buf));
	daytime_iso_utc_ms(0, buf, 1);
	assert_int_equal(buf[0], '\0');
	assert_int_equal(buf[1], '#');
	daytime_iso_utc_ms(0, buf, 0);
	assert_int_equal(buf[0], '\0');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		/* first: nothing has set the zone yet */
		cmocka_unit_test(test_default_is_utc_not_host),
		cmocka_unit_test(test_utc_boundaries),
		cmocka_unit_test(test_paris_spring_forward),
		cmocka_unit_test(test_paris_fall_back),
		cmocka_unit_test(test_new_york),
		cmocka_unit_test(test_skipped_midnight),
		cmocka_unit_test(test_repeated_midnight),
		cmocka_unit_test(test_skipped_date),
		cmocka_unit_test(test_clock_set_back_across_midnight),
		cmocka_unit_test(test_sweep_invariants),
		cmocka_unit_test(test_zone_validation),
		cmocka_unit_test(test_extremes),
		cmocka_unit_test(test_iso_utc_ms),
	};

	/* A host zone that disagrees with UTC, to prove we never use it. */
	setenv("TZ", "Asia/Tokyo", 1);
	tzset();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
