/*
 * Unit tests of the log-line limiter: at most `burst` lines per period,
 * the rest held back and reported exactly once, as one summary, either
 * with the next line written or by ratelog_flush() once the period is
 * over; a stale period does not lend its unused lines to a later burst; a
 * clock that goes back does not wedge it; and over a long irregular
 * sequence, lines written + summarised + still held always equal the
 * messages offered.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "ratelog.h"

/* Offers n messages at time now; returns how many may be written, and
 * adds what the written ones reported as held to *reported. */
static unsigned offer(struct ratelog *r, double now, unsigned n, uint64_t *reported)
{
	unsigned written = 0;

	for (unsigned i = 0; i < n; i++) {
		uint64_t held;
		double held_s;

		if (ratelog_allow(r, now, &held, &held_s)) {
			written++;
			*reported += held;
		} else {
			assert_int_equal(held, 0);
		}
	}
	return written;
}

static void test_burst_then_summary(void **state)
{
	struct ratelog r;
	uint64_t held, reported = 0;
	double held_s;

	(void)state;
	ratelog_init(&r, 10, 1.0);
	/* The very first message is written, even at time 0. */
	assert_true(ratelog_allow(&r, 0.0, &held, &held_s));
	assert_int_equal(held, 0);
	/* 9 more fit the period, the next 1,990 are held. */
	assert_int_equal(offer(&r, 0.2, 1999, &reported), 9);
	assert_int_equal(reported, 0);
	assert_int_equal(offer(&r, 0.99, 5, &reported), 0);
	/* The next period's first line carries the summary: every one held. */
	assert_true(ratelog_allow(&r, 1.5, &held, &held_s));
	assert_int_equal(held, 1995);
	assert_float_equal(held_s, 1.3, 1e-6); /* since the first held, at 0.2 */
	/* Reported once: the next line has nothing to report. */
	assert_true(ratelog_allow(&r, 1.6, &held, &held_s));
	assert_int_equal(held, 0);
}

static void test_flush_after_flood(void **state)
{
	struct ratelog r;
	uint64_t reported = 0, held;
	double held_s;

	(void)state;
	ratelog_init(&r, 3, 1.0);
	assert_int_equal(ratelog_flush(&r, 5.0, &held_s), 0); /* nothing yet */
	assert_int_equal(offer(&r, 10.0, 50, &reported), 3);
	/* Not before the period ends: the next line may still carry it. */
	assert_int_equal(ratelog_flush(&r, 10.9, &held_s), 0);
	assert_int_equal(ratelog_flush(&r, 11.0, &held_s), 47);
	assert_float_equal(held_s, 1.0, 1e-6);
	/* Once. */
	assert_int_equal(ratelog_flush(&r, 12.0, &held_s), 0);
	assert_true(ratelog_allow(&r, 12.5, &held, &held_s));
	assert_int_equal(held, 0);
}

/* A period with unused lines long ago must not add them to a new burst. */
static void test_stale_period_lends_nothing(void **state)
{
	struct ratelog r;
	uint64_t reported = 0;

	(void)state;
	ratelog_init(&r, 10, 1.0);
	assert_int_equal(offer(&r, 0.0, 3, &reported), 3);
	assert_int_equal(offer(&r, 100.0, 20, &reported), 10);
	assert_int_equal(offer(&r, 100.5, 20, &reported), 0);
	assert_int_equal(offer(&r, 101.0, 20, &reported), 10);
	assert_int_equal(reported, 30);
}

static void test_clock_back(void **state)
{
	struct ratelog r;
	uint64_t reported = 0;

	(void)state;
	ratelog_init(&r, 2, 1.0);
	assert_int_equal(offer(&r, 1000.0, 5, &reported), 2);
	/* The clock steps back an hour: a new period, not a wait of one. */
	assert_int_equal(offer(&r, 1000.0 - 3600.0, 5, &reported), 2);
	assert_int_equal(reported, 3);
}

/*
 * Whatever the pattern, nothing is lost or counted twice, and the burst
 * holds: periods open at a message and last period_s, so any 2 * burst + 1
 * consecutive written lines reach into a third period and span more than
 * one period.
 */
#define BURST 5
#define PERIOD 0.5
static void test_accounting(void **state)
{
	struct ratelog r;
	uint64_t offered = 0, written = 0, reported = 0;
	double now = 50.0, held_s, ring[2 * BURST + 1];
	unsigned seed = 12345;

	(void)state;
	ratelog_init(&r, BURST, PERIOD);
	for (int step = 0; step < 20000; step++) {
		unsigned n;

		seed = seed * 1103515245u + 12345u;
		now += (double)((seed >> 16) % 100) / 1000.0; /* 0 to 99 ms */
		n = (seed >> 8) % 4;
		for (unsigned i = 0; i < n; i++) {
			uint64_t held;

			offered++;
			if (!ratelog_allow(&r, now, &held, &held_s))
				continue;
			reported += held;
			ring[written % (2 * BURST + 1)] = now;
			written++;
			/* The oldest of the last 2 * BURST + 1 writes is where
			 * this one goes next. */
			if (written >= 2 * BURST + 1)
				assert_true(now - ring[written % (2 * BURST + 1)] > PERIOD);
		}
		if ((seed >> 4) % 7 == 0)
			reported += ratelog_flush(&r, now, &held_s);
	}
	assert_int_equal(written + reported + r.held, offered);
	assert_true(written < offered / 2);
	assert_true(reported > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_summary),
		cmocka_unit_test(test_flush_after_flood),
		cmocka_unit_test(test_stale_period_lends_nothing),
		cmocka_unit_test(test_clock_back),
		cmocka_unit_test(test_accounting),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
