/*
 * Unit tests of the ledger's user entries, which live in per-day blocks:
 * many users over more than one block keep their names, counters and
 * alignment; a second day has its own entries; a past day without open
 * reservations or dirty entries is freed by ledger_evict (ASan and
 * valgrind runs of this test catch a leak or a use after free).
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
	ledger_flush_dirty(l, clean, NULL);
	ledger_evict(l);
	assert_int_equal(ledger_user_count(l), 1);
	assert_null(ledger_day_str(l, 100));
	ledger_free(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_many_users_two_days),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
