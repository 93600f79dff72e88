/*
 * Unit tests of the ledger's user entries, which live in per-day blocks:
 * many users over more than one block keep their names, counters and
 * alignment; a second day has its own entries; a past day without open
 * reservations or dirty entries is freed by ledger_evict (ASan and
 * valgrind runs of this test catch a leak or a use after free);
 * ledger_mark_all_dirty puts every entry of every day held, changed or
 * only loaded, into the next flush, each once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ledger.h"

#define NUSERS 50000

static bool clean(const struct ledger_usage *u, void *arg)
{
	(void)u;
	(void)arg;
	return true;
}

static void test_many_users_two_days(void **state)
{
	struct ledger *l = ledger_new();
	char name[LEDGER_USER_MAX + 1];
	struct ledger_usage *u;

	(void)state;
	assert_non_null(l);
	assert_int_equal(ledger_set_today(l, 100, "2026-11-28"), 0);
	for (int i = 0; i < NUSERS; i++) {
		/* Names of every length up to the longest allowed. */
		int n = snprintf(name, sizeof(name), "u%d-", i);

		memset(name + n, 'x', (size_t)(i % (LEDGER_USER_MAX - n + 1)));
		name[n + i % (LEDGER_USER_MAX - n + 1)] = '\0';
		u = ledger_user(l, name, strlen(name), true);
		assert_non_null(u);
		assert_int_equal((uintptr_t)u % _Alignof(struct ledger_usage), 0);
		ledger_charge(l, u, i, 1, 0, 1, 0, 0);
	}
	assert_int_equal(ledger_user_count(l), NUSERS);
	for (int i = 0; i < NUSERS; i++) {
		int n = snprintf(name, sizeof(name), "u%d-", i);

		memset(name + n, 'x', (size_t)(i % (LEDGER_USER_MAX - n + 1)));
		name[n + i % (LEDGER_USER_MAX - n + 1)] = '\0';
		u = ledger_user(l, name, strlen(name), false);
		assert_non_null(u);
		assert_string_equal(u->user, name);
		assert_int_equal(u->len, strlen(name));
		assert_int_equal(u->tokens_in, i);
		assert_int_equal(u->requests, 1);
		assert_int_equal(u->day, 100);
	}
	assert_null(ledger_user(l, "nobody", 6, false));

	/* The next day: its own (zero) entries; the old day is kept while
	 * it has dirty entries, freed once they are flushed. */
	assert_int_equal(ledger_set_today(l, 101, "2026-11-29"), 0);
	u = ledger_user(l, "u7-xxxxxxx", 10, true);
	assert_non_null(u);
	assert_int_equal(u->tokens_in, 0);
	assert_int_equal(u->day, 101);
	ledger_evict(l);
	assert_int_equal(ledger_user_count(l), NUSERS + 1);
	/* Journaled only: daily_usage has not got them yet, the day stays. */
	ledger_flush_dirty(l, false, clean, NULL);
	ledger_evict(l);
	assert_int_equal(ledger_user_count(l), NUSERS + 1);
	ledger_flush_dirty(l, true, clean, NULL);
	ledger_evict(l);
	assert_int_equal(ledger_user_count(l), 1);
	assert_null(ledger_day_str(l, 100));
	ledger_free(l);
}

static bool count_clean(const struct ledger_usage *u, void *arg)
{
	size_t *n = arg;

	assert_true(u->dirty);
	(*n)++;
	return true;
}

static void test_mark_all_dirty(void **state)
{
	struct ledger *l = ledger_new();
	struct ledger_usage *u;
	size_t n = 0;

	(void)state;
	assert_non_null(l);
	assert_int_equal(ledger_set_today(l, 100, "2026-11-28"), 0);
	u = ledger_user(l, "a", 1, true);
	assert_non_null(u);
	ledger_charge(l, u, 10, 20, 0, 1, 0, 0);
	assert_int_equal(ledger_set_today(l, 101, "2026-11-29"), 0);
	/* Loaded at start (clean), then one of them changed. */
	assert_int_equal(ledger_load(l, "b", 1, 2, 1, 0, 0, 0), 0);
	assert_int_equal(ledger_load(l, "c", 3, 4, 1, 0, 0, 0), 0);
	u = ledger_user(l, "b", 1, false);
	assert_non_null(u);
	ledger_charge(l, u, 5, 5, 0, 1, 0, 0);
	assert_int_equal(ledger_dirty_count(l, false), 2);
	assert_int_equal(ledger_dirty_count(l, true), 2);

	/* Nothing is lost by marking twice: each entry is listed once. */
	assert_int_equal(ledger_mark_all_dirty(l), 3);
	assert_int_equal(ledger_mark_all_dirty(l), 3);
	ledger_flush_dirty(l, true, count_clean, &n);
	assert_int_equal(n, 3);
	assert_int_equal(ledger_dirty_count(l, true), 0);
	assert_int_equal(ledger_dirty_count(l, false), 0);

	/* The past day, flushed, goes; marking again then covers today's. */
	ledger_evict(l);
	assert_int_equal(ledger_user_count(l), 2);
	assert_int_equal(ledger_mark_all_dirty(l), 2);
	n = 0;
	ledger_flush_dirty(l, true, count_clean, &n);
	assert_int_equal(n, 2);
	ledger_free(l);
}

static bool refuse(const struct ledger_usage *u, void *arg)
{
	(void)u;
	(void)arg;
	return false;
}

/* Two levels: changed since the last flush (journal) and since the last
 * fold (daily_usage). A fold clears both; a flush only its own. */
static void test_flush_and_fold_levels(void **state)
{
	struct ledger *l = ledger_new();
	struct ledger_usage *a, *b;
	size_t n = 0;

	(void)state;
	assert_non_null(l);
	assert_int_equal(ledger_set_today(l, 100, "2026-11-28"), 0);
	a = ledger_user(l, "a", 1, true);
	b = ledger_user(l, "b", 1, true);
	ledger_charge(l, a, 1, 1, 0, 1, 0, 0);
	ledger_flush_dirty(l, false, count_clean, &n);
	assert_int_equal(n, 1);
	assert_int_equal(ledger_dirty_count(l, false), 0);
	assert_int_equal(ledger_dirty_count(l, true), 1);
	assert_int_equal(a->dirty, LEDGER_DIRTY_FOLD);

	ledger_charge(l, b, 1, 1, 0, 1, 0, 0);
	ledger_charge(l, a, 1, 1, 0, 1, 0, 0);
	assert_int_equal(ledger_dirty_count(l, false), 2);
	assert_int_equal(ledger_dirty_count(l, true), 2); /* a once */

	/* A fold that fails for every entry keeps them dirty at both levels. */
	ledger_flush_dirty(l, true, refuse, NULL);
	assert_int_equal(ledger_dirty_count(l, false), 2);
	assert_int_equal(ledger_dirty_count(l, true), 2);
	n = 0;
	ledger_flush_dirty(l, true, count_clean, &n);
	assert_int_equal(n, 2);
	assert_int_equal(ledger_dirty_count(l, false), 0);
	assert_int_equal(ledger_dirty_count(l, true), 0);
	assert_int_equal(a->dirty, 0);
	assert_int_equal(b->dirty, 0);
	ledger_free(l);
}

/* At start daily_usage's row, then the journal's newer one for the same
 * user: the second replaces the first, the day's cost counted once. */
static void test_load_twice_replaces(void **state)
{
	struct ledger *l = ledger_new();
	struct ledger_usage *u;

	(void)state;
	assert_non_null(l);
	assert_int_equal(ledger_set_today(l, 100, "2026-11-28"), 0);
	assert_int_equal(ledger_load(l, "a", 10, 20, 1, 5000, 0, 0), 0);
	assert_int_equal(ledger_load(l, "b", 1, 1, 1, 700, 0, 0), 0);
	assert_int_equal(ledger_load(l, "a", 15, 30, 2, 8000, 1, 1), 0);
	u = ledger_user(l, "a", 1, false);
	assert_non_null(u);
	assert_int_equal(u->tokens_in, 15);
	assert_int_equal(u->tokens_out, 30);
	assert_int_equal(u->requests, 2);
	assert_int_equal(u->denials, 1);
	assert_int_equal(ledger_today_cost(l), 8000 + 700);
	assert_int_equal(ledger_dirty_count(l, true), 0);
	ledger_free(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_many_users_two_days),
		cmocka_unit_test(test_mark_all_dirty),
		cmocka_unit_test(test_flush_and_fold_levels),
		cmocka_unit_test(test_load_twice_replaces),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
