/*
 * Unit tests of the per-provider circuit breaker with an injected clock:
 * every transition (closed -> open -> half-open -> closed or open again),
 * the thresholds exactly at and one short of their value, the sliding
 * window, 429s with Retry-After, probe slots, counters, the dirty flag
 * and the latency histogram.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "breaker.h"
#include "log.h"
#include "policy.h"

/* An arbitrary Unix time, not on a second boundary. */
#define T0 1782907200.25

static struct policy_provider *provider(int window_s, int min_requests, double error_rate,
					int consecutive_failures, int open_s, int half_open_probes)
{
	static const char name[] = "primary";
	struct policy_provider *p = malloc(sizeof(*p) + strlen(name) + 1);

	assert_non_null(p);
	p->enabled = true;
	p->window_s = window_s;
	p->min_requests = min_requests;
	p->error_rate = error_rate;
	p->consecutive_failures = consecutive_failures;
	p->open_s = open_s;
	p->half_open_probes = half_open_probes;
	memcpy(p->name, name, sizeof(name));
	return p;
}

/* allow() as a request that is not expected to be a probe. */
static bool allow_plain(struct breaker *b, const struct policy_provider *p, double now)
{
	bool probe = true;
	bool ok = breaker_allow(b, p, now, &probe);

	assert_false(probe);
	return ok;
}

static void expect_probe(struct breaker *b, const struct policy_provider *p, double now)
{
	bool probe = false;

	assert_true(breaker_allow(b, p, now, &probe));
	assert_true(probe);
	assert_int_equal(b->state, BREAKER_HALF_OPEN);
}

static void expect_refused(struct breaker *b, const struct policy_provider *p, double now)
{
	bool probe = true;

	assert_false(breaker_allow(b, p, now, &probe));
	assert_false(probe);
}

/* Opens b with p->consecutive_failures failures in a row at `now`. */
static void open_by_failures(struct breaker *b, const struct policy_provider *p, double now)
{
	for (int i = 0; i < p->consecutive_failures; i++) {
		assert_true(allow_plain(b, p, now));
		breaker_result(b, p, now, true, false);
	}
	assert_int_equal(b->state, BREAKER_OPEN);
}

static void test_init(void **state)
{
	struct breaker b;

	breaker_init(&b, "primary", T0);
	assert_int_equal(b.state, BREAKER_CLOSED);
	assert_true(b.since == T0);
	assert_int_equal(b.servers_up, -1);
	assert_true(b.dirty);
	assert_string_equal(b.name, "primary");
	assert_int_equal(b.opened_total, 0);
	assert_int_equal(b.requests_total, 0);
	assert_int_equal(b.failures_total, 0);
	assert_string_equal(breaker_state_str(BREAKER_CLOSED), "closed");
	assert_string_equal(breaker_state_str(BREAKER_HALF_OPEN), "half_open");
	assert_string_equal(breaker_state_str(BREAKER_OPEN), "open");
	assert_string_equal(breaker_state_str(BREAKER_STATE_COUNT), "?");

	/* A long name is cut, not overflowed. */
	char longname[200];

	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	breaker_init(&b, longname, T0);
	assert_int_equal(strlen(b.name), sizeof(b.name) - 1);
}

static void test_opens_after_exactly_consecutive_failures(void **state)
{
	/* The error rate cannot trigger: min_requests is out of reach. */
	struct policy_provider *p = provider(30, 1000, 0.5, 5, 30, 1);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	for (int i = 0; i < 4; i++) {
		assert_true(allow_plain(&b, p, T0 + i));
		breaker_result(&b, p, T0 + i, true, false);
		assert_int_equal(b.state, BREAKER_CLOSED);
		assert_int_equal(b.consecutive, i + 1);
	}
	assert_true(allow_plain(&b, p, T0 + 4));
	breaker_result(&b, p, T0 + 4, true, false);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_string_equal(b.reason, "consecutive_failures");
	assert_true(b.open_until == T0 + 4 + 30);
	assert_true(b.since == T0 + 4);
	assert_int_equal(b.opened_total, 1);
	free(p);
}

static void test_success_resets_the_run(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 3, 30, 1);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	/* F F S F F S F F: never three in a row. */
	for (int round = 0; round < 3; round++) {
		breaker_result(&b, p, T0, true, false);
		breaker_result(&b, p, T0, true, false);
		assert_int_equal(b.consecutive, 2);
		if (round < 2) {
			breaker_result(&b, p, T0, false, false);
			assert_int_equal(b.consecutive, 0);
		}
		assert_int_equal(b.state, BREAKER_CLOSED);
	}
	breaker_result(&b, p, T0, true, false);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_int_equal(b.requests_total, 9);
	assert_int_equal(b.failures_total, 7);
	free(p);
}

static void test_error_rate_needs_min_requests(void **state)
{
	/* consecutive_failures out of reach: only the rate can open it. */
	struct policy_provider *p = provider(30, 10, 0.5, 1000, 30, 1);
	struct breaker b;
	uint32_t req, fail;

	breaker_init(&b, p->name, T0);
	/* 5 failures in 5 requests: 100%, but below min_requests. */
	for (int i = 0; i < 5; i++)
		breaker_result(&b, p, T0, true, false);
	assert_int_equal(b.state, BREAKER_CLOSED);
	/* 4 successes: 5/9, still below min_requests. */
	for (int i = 0; i < 4; i++)
		breaker_result(&b, p, T0 + 1, false, false);
	breaker_window(&b, p, T0 + 1, &req, &fail);
	assert_int_equal(req, 9);
	assert_int_equal(fail, 5);
	assert_int_equal(b.state, BREAKER_CLOSED);
	/* The tenth: 6/10 >= 0.5. */
	breaker_result(&b, p, T0 + 2, true, false);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_string_equal(b.reason, "error_rate");
	free(p);
}

static void test_error_rate_threshold_is_inclusive(void **state)
{
	struct policy_provider *p = provider(30, 10, 0.5, 1000, 30, 1);
	struct breaker b;

	/* S F S F ... S, then F: exactly 5/10. */
	breaker_init(&b, p->name, T0);
	for (int i = 0; i < 9; i++)
		breaker_result(&b, p, T0, i % 2 == 1, false);
	assert_int_equal(b.state, BREAKER_CLOSED);
	breaker_result(&b, p, T0, true, false);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_string_equal(b.reason, "error_rate");

	/* Just under: 5/10 with a threshold of 0.51 stays closed, and a
	 * success never opens it whatever the rate. */
	p->error_rate = 0.51;
	breaker_init(&b, p->name, T0);
	for (int i = 0; i < 9; i++)
		breaker_result(&b, p, T0, i % 2 == 1, false);
	breaker_result(&b, p, T0, true, false);
	assert_int_equal(b.state, BREAKER_CLOSED);
	/* 6/11 = 0.545: opens. */
	breaker_result(&b, p, T0, true, false);
	assert_int_equal(b.state, BREAKER_OPEN);

	p->error_rate = 0.1;
	breaker_init(&b, p->name, T0);
	breaker_result(&b, p, T0, true, false);
	breaker_result(&b, p, T0, false, false);
	for (int i = 0; i < 20; i++)
		breaker_result(&b, p, T0, false, false);
	/* 1/22 < 0.1 and successes do not re-evaluate. */
	assert_int_equal(b.state, BREAKER_CLOSED);
	free(p);
}

static void test_old_buckets_leave_the_window(void **state)
{
	struct policy_provider *p = provider(30, 4, 0.5, 1000, 30, 1);
	struct breaker b;
	uint32_t req, fail;

	/* Three failures 31 s ago do not count: one new failure is 1/1,
	 * below min_requests. */
	breaker_init(&b, p->name, T0);
	for (int i = 0; i < 3; i++)
		breaker_result(&b, p, T0, true, false);
	breaker_window(&b, p, T0 + 31, &req, &fail);
	assert_int_equal(req, 0);
	assert_int_equal(fail, 0);
	breaker_result(&b, p, T0 + 31, true, false);
	assert_int_equal(b.state, BREAKER_CLOSED);
	breaker_window(&b, p, T0 + 31, &req, &fail);
	assert_int_equal(req, 1);
	assert_int_equal(fail, 1);

	/* 29 s ago they do: 4/4. */
	breaker_init(&b, p->name, T0);
	for (int i = 0; i < 3; i++)
		breaker_result(&b, p, T0, true, false);
	breaker_window(&b, p, T0 + 29, &req, &fail);
	assert_int_equal(req, 3);
	breaker_result(&b, p, T0 + 29, true, false);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_string_equal(b.reason, "error_rate");

	/* One bucket a second: spread over the window they all count. */
	breaker_init(&b, p->name, T0);
	for (int i = 0; i < 30; i++)
		breaker_result(&b, p, T0 + i, false, false);
	breaker_window(&b, p, T0 + 29, &req, &fail);
	assert_int_equal(req, 30);
	breaker_window(&b, p, T0 + 30, &req, &fail);
	assert_int_equal(req, 29);
	/* A bucket slot reused BREAKER_WINDOW_MAX seconds later is fresh. */
	breaker_result(&b, p, T0 + BREAKER_WINDOW_MAX, false, false);
	breaker_window(&b, p, T0 + BREAKER_WINDOW_MAX, &req, &fail);
	assert_int_equal(req, 1);
	free(p);
}

static void test_open_refuses_until_open_until_then_probes(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 2, 10, 1);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	open_by_failures(&b, p, T0);
	expect_refused(&b, p, T0);
	expect_refused(&b, p, T0 + 5);
	expect_refused(&b, p, T0 + 9.999);
	assert_int_equal(b.state, BREAKER_OPEN);
	/* Results of requests let through before it opened change nothing. */
	breaker_result(&b, p, T0 + 1, true, false);
	breaker_result(&b, p, T0 + 1, false, false);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_int_equal(b.opened_total, 1);

	b.dirty = false;
	expect_probe(&b, p, T0 + 10);
	assert_true(b.since == T0 + 10);
	assert_true(b.dirty);
	assert_int_equal(b.probes_in_flight, 1);
	free(p);
}

static void test_half_open_probe_slots(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 1, 10, 3);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	open_by_failures(&b, p, T0);
	expect_probe(&b, p, T0 + 10);
	expect_probe(&b, p, T0 + 10);
	expect_probe(&b, p, T0 + 10);
	/* The fourth concurrent one is refused, not a probe. */
	expect_refused(&b, p, T0 + 10);
	expect_refused(&b, p, T0 + 11);
	assert_int_equal(b.probes_in_flight, 3);

	/* A probe that never reports frees its slot. */
	b.dirty = false;
	breaker_probe_done(&b);
	assert_true(b.dirty);
	assert_int_equal(b.probes_in_flight, 2);
	expect_probe(&b, p, T0 + 11);
	expect_refused(&b, p, T0 + 11);

	/* A success frees a slot too, without closing yet (1 of 3). */
	breaker_result(&b, p, T0 + 12, false, true);
	assert_int_equal(b.state, BREAKER_HALF_OPEN);
	assert_int_equal(b.probe_successes, 1);
	expect_probe(&b, p, T0 + 12);

	/* probe_done never goes below zero. */
	for (int i = 0; i < 10; i++)
		breaker_probe_done(&b);
	assert_int_equal(b.probes_in_flight, 0);
	b.dirty = false;
	breaker_probe_done(&b);
	assert_false(b.dirty);
	free(p);
}

static void test_probes_succeeding_close_and_clear_the_window(void **state)
{
	struct policy_provider *p = provider(30, 4, 0.5, 3, 10, 2);
	struct breaker b;
	uint32_t req, fail;

	breaker_init(&b, p->name, T0);
	open_by_failures(&b, p, T0);
	expect_probe(&b, p, T0 + 10);
	expect_probe(&b, p, T0 + 10);
	breaker_result(&b, p, T0 + 10.5, false, true);
	assert_int_equal(b.state, BREAKER_HALF_OPEN);
	b.dirty = false;
	breaker_result(&b, p, T0 + 11, false, true);
	assert_int_equal(b.state, BREAKER_CLOSED);
	assert_true(b.since == T0 + 11);
	assert_true(b.dirty);
	assert_int_equal(b.consecutive, 0);
	assert_int_equal(b.probes_in_flight, 0);
	breaker_window(&b, p, T0 + 11, &req, &fail);
	assert_int_equal(req, 0);
	assert_int_equal(fail, 0);
	/* Totals are not history: they stay. */
	assert_int_equal(b.requests_total, 5);
	assert_int_equal(b.failures_total, 3);
	assert_int_equal(b.opened_total, 1);

	/* Closed again: ordinary requests, and the old failures do not
	 * count towards the rate (1 failure among 0 earlier requests). */
	assert_true(allow_plain(&b, p, T0 + 12));
	breaker_result(&b, p, T0 + 12, true, false);
	assert_int_equal(b.state, BREAKER_CLOSED);
	free(p);
}

static void test_probe_failing_reopens(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 1, 10, 2);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	open_by_failures(&b, p, T0);
	expect_probe(&b, p, T0 + 10);
	expect_probe(&b, p, T0 + 10);
	/* One success, then one failure: open again, for open_s from now. */
	breaker_result(&b, p, T0 + 11, false, true);
	breaker_result(&b, p, T0 + 12, true, true);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_string_equal(b.reason, "probe_failed");
	assert_true(b.open_until == T0 + 12 + 10);
	assert_int_equal(b.opened_total, 2);
	assert_int_equal(b.probes_in_flight, 0);
	expect_refused(&b, p, T0 + 21.9);
	/* The late success of a probe of the previous round changes nothing. */
	breaker_result(&b, p, T0 + 13, false, true);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_int_equal(b.probes_in_flight, 0);

	/* The next round starts with no successes counted. */
	expect_probe(&b, p, T0 + 22);
	assert_int_equal(b.probe_successes, 0);
	breaker_result(&b, p, T0 + 22, false, true);
	assert_int_equal(b.state, BREAKER_HALF_OPEN);
	expect_probe(&b, p, T0 + 22);
	breaker_result(&b, p, T0 + 23, false, true);
	assert_int_equal(b.state, BREAKER_CLOSED);
	free(p);
}

static void test_half_open_with_one_probe(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 1, 10, 1);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	open_by_failures(&b, p, T0);
	expect_probe(&b, p, T0 + 10);
	expect_refused(&b, p, T0 + 10);
	breaker_result(&b, p, T0 + 10, false, true);
	assert_int_equal(b.state, BREAKER_CLOSED);
	assert_true(allow_plain(&b, p, T0 + 10));
	free(p);
}

static void test_rate_limited_opens_for_retry_after(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 1000, 30, 1);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	assert_true(allow_plain(&b, p, T0));
	b.dirty = false;
	breaker_rate_limited(&b, p, T0, 5, false);
	assert_true(b.dirty);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_string_equal(b.reason, "rate_limited");
	assert_int_equal(b.opened_total, 1);
	assert_int_equal(b.requests_total, 1);
	assert_int_equal(b.failures_total, 1);
	expect_refused(&b, p, T0 + 4.9);
	expect_probe(&b, p, T0 + 5.0);

	/* A 429 on the probe: open again, and its slot is free. */
	breaker_rate_limited(&b, p, T0 + 5.0, 2, true);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_int_equal(b.probes_in_flight, 0);
	assert_int_equal(b.opened_total, 2);
	expect_refused(&b, p, T0 + 6.9);
	expect_probe(&b, p, T0 + 7.0);
	free(p);
}

static void test_rate_limited_default_and_cap(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 1000, 30, 1);
	struct breaker b;

	/* No Retry-After (0): the provider's open_s. */
	breaker_init(&b, p->name, T0);
	breaker_rate_limited(&b, p, T0, 0, false);
	assert_true(b.open_until == T0 + 30);
	expect_refused(&b, p, T0 + 29.9);
	expect_probe(&b, p, T0 + 30);

	/* A negative one: the same. */
	breaker_init(&b, p->name, T0);
	breaker_rate_limited(&b, p, T0, -12, false);
	assert_true(b.open_until == T0 + 30);

	/* Absurd ones are capped at an hour. */
	breaker_init(&b, p->name, T0);
	breaker_rate_limited(&b, p, T0, 86400, false);
	assert_true(b.open_until == T0 + 3600);
	expect_refused(&b, p, T0 + 3599.9);
	expect_probe(&b, p, T0 + 3600);

	/* Exactly 3600 is not cut. */
	breaker_init(&b, p->name, T0);
	breaker_rate_limited(&b, p, T0, 3600, false);
	assert_true(b.open_until == T0 + 3600);

	/* A fractional Retry-After is kept as is. */
	breaker_init(&b, p->name, T0);
	breaker_rate_limited(&b, p, T0, 0.5, false);
	expect_refused(&b, p, T0 + 0.4);
	expect_probe(&b, p, T0 + 0.5);
	free(p);
}

static void test_counters(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 2, 10, 1);
	struct breaker b;

	breaker_init(&b, p->name, T0);
	breaker_result(&b, p, T0, false, false);
	breaker_result(&b, p, T0, false, false);
	breaker_result(&b, p, T0, true, false);
	assert_int_equal(b.requests_total, 3);
	assert_int_equal(b.failures_total, 1);
	assert_int_equal(b.opened_total, 0);
	breaker_result(&b, p, T0, true, false); /* opens */
	assert_int_equal(b.opened_total, 1);
	expect_probe(&b, p, T0 + 10);
	breaker_result(&b, p, T0 + 10, true, true); /* re-opens */
	assert_int_equal(b.opened_total, 2);
	expect_probe(&b, p, T0 + 20);
	breaker_rate_limited(&b, p, T0 + 20, 1, true); /* re-opens */
	assert_int_equal(b.opened_total, 3);
	expect_probe(&b, p, T0 + 21);
	breaker_result(&b, p, T0 + 21, false, true); /* closes */
	assert_int_equal(b.state, BREAKER_CLOSED);
	assert_int_equal(b.opened_total, 3);
	assert_int_equal(b.requests_total, 7);
	assert_int_equal(b.failures_total, 4);
	free(p);
}

static void test_dirty_flag(void **state)
{
	struct policy_provider *p = provider(30, 1000, 0.5, 1, 10, 1);
	struct breaker b;
	bool probe;

	breaker_init(&b, p->name, T0);
	/* Letting a request through while closed changes nothing. */
	b.dirty = false;
	assert_true(breaker_allow(&b, p, T0, &probe));
	assert_false(b.dirty);

	/* Every outcome does (the window and counters moved). */
	breaker_result(&b, p, T0, false, false);
	assert_true(b.dirty);

	b.dirty = false;
	breaker_servers(&b, p, 2, T0);
	assert_true(b.dirty);
	assert_int_equal(b.servers_up, 2);
	b.dirty = false;
	breaker_servers(&b, p, 2, T0);
	assert_false(b.dirty);
	/* HAProxy sees no server: the breaker opens, saying why. */
	breaker_servers(&b, p, 0, T0);
	assert_true(b.dirty);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_string_equal(b.reason, "haproxy_down");
	assert_true(b.open_until == T0 + 10);
	/* Back to closed through half-open, then a failure opens it again. */
	breaker_servers(&b, p, 1, T0);
	expect_probe(&b, p, T0 + 10);
	breaker_result(&b, p, T0 + 10, false, true);
	assert_int_equal(b.state, BREAKER_CLOSED);

	b.dirty = false;
	breaker_result(&b, p, T0 + 10, true, false);
	assert_int_equal(b.state, BREAKER_OPEN);
	assert_true(b.dirty);

	/* A refusal while open changes nothing. */
	b.dirty = false;
	expect_refused(&b, p, T0 + 11);
	assert_false(b.dirty);
	/* Going half-open does. */
	expect_probe(&b, p, T0 + 20);
	assert_true(b.dirty);
	b.dirty = false;
	expect_refused(&b, p, T0 + 10);
	assert_false(b.dirty);
	free(p);
}

static void test_latency_histogram(void **state)
{
	struct breaker b;

	breaker_init(&b, "primary", T0);
	breaker_latency(&b, 0.1);
	assert_int_equal(b.lat_hist[0], 1);
	breaker_latency(&b, 0.100001);
	assert_int_equal(b.lat_hist[1], 1);
	breaker_latency(&b, 0);
	breaker_latency(&b, -3); /* a clock step: counted as 0 */
	assert_int_equal(b.lat_hist[0], 3);
	/* Each bound lands in its own bucket, just above it in the next. */
	for (int i = 0; i < BREAKER_LAT_BUCKETS - 1; i++) {
		struct breaker c;

		breaker_init(&c, "primary", T0);
		breaker_latency(&c, breaker_lat_bounds[i]);
		breaker_latency(&c, breaker_lat_bounds[i] * 1.000001);
		assert_int_equal(c.lat_hist[i], 1);
		assert_int_equal(c.lat_hist[i + 1], 1);
	}
	breaker_latency(&b, 3600);
	assert_int_equal(b.lat_hist[BREAKER_LAT_BUCKETS - 1], 1);
	uint64_t total = 0;

	for (int i = 0; i < BREAKER_LAT_BUCKETS; i++)
		total += b.lat_hist[i];
	assert_int_equal(total, 5);
	assert_true(b.lat_sum > 3600.200000 && b.lat_sum < 3600.200002);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init),
		cmocka_unit_test(test_opens_after_exactly_consecutive_failures),
		cmocka_unit_test(test_success_resets_the_run),
		cmocka_unit_test(test_error_rate_needs_min_requests),
		cmocka_unit_test(test_error_rate_threshold_is_inclusive),
		cmocka_unit_test(test_old_buckets_leave_the_window),
		cmocka_unit_test(test_open_refuses_until_open_until_then_probes),
		cmocka_unit_test(test_half_open_probe_slots),
		cmocka_unit_test(test_probes_succeeding_close_and_clear_the_window),
		cmocka_unit_test(test_probe_failing_reopens),
		cmocka_unit_test(test_half_open_with_one_probe),
		cmocka_unit_test(test_rate_limited_opens_for_retry_after),
		cmocka_unit_test(test_rate_limited_default_and_cap),
		cmocka_unit_test(test_counters),
		cmocka_unit_test(test_dirty_flag),
		cmocka_unit_test(test_latency_histogram),
	};

	/* Transitions are logged at info: keep the test output to the checks. */
	log_threshold = LOG_LVL_WARN;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
