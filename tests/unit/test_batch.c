/*
 * Unit tests of the batches the loop hands to the store: usage rows keep
 * their user in the batch's key arena (growing past its first block), the
 * sort orders rows as daily_usage's primary key does, and a merge keeps
 * the newest values of each user-day with the right names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "batch.h"

static struct batch_usage *add(struct batch *b, const char *day, const char *user, int64_t tokens)
{
	struct batch_usage *u = batch_add_usage(b, day, user, strlen(user));

	assert_non_null(u);
	u->tokens_in = tokens;
	return u;
}

static void test_add_keeps_names(void **state)
{
	struct batch *b = batch_new();
	char user[32];

	(void)state;
	/* Enough rows for the arena and the row array to be reallocated. */
	for (int i = 0; i < 5000; i++) {
		snprintf(user, sizeof(user), "user-%d", i);
		add(b, "2026-11-29", user, i);
	}
	assert_int_equal(b->nusage, 5000);
	for (int i = 0; i < 5000; i++) {
		snprintf(user, sizeof(user), "user-%d", i);
		assert_string_equal(batch_usage_user(b, &b->usage[i]), user);
		assert_int_equal(b->usage[i].user_len, strlen(user));
		assert_string_equal(b->usage[i].day, "2026-11-29");
		assert_int_equal(b->usage[i].tokens_in, i);
	}
	/* A user of the longest allowed name, and one longer: refused. */
	{
		char longest[LEDGER_USER_MAX + 2];

		memset(longest, 'y', sizeof(longest));
		assert_non_null(batch_add_usage(b, "2026-11-29", longest, LEDGER_USER_MAX));
		assert_null(batch_add_usage(b, "2026-11-29", longest, LEDGER_USER_MAX + 1));
	}
	batch_reset(b);
	assert_int_equal(b->nusage, 0);
	add(b, "2026-11-30", "again", 1);
	assert_string_equal(batch_usage_user(b, &b->usage[0]), "again");
	batch_free(b);
}

static void test_sort_is_key_order(void **state)
{
	struct batch *b = batch_new();
	static const char *const want[][2] = {
		{"2026-11-28", "zed"},   {"2026-11-29", "user-1"}, {"2026-11-29", "user-10"},
		{"2026-11-29", "user-100"}, {"2026-11-29", "user-9"}, {"2026-11-29", "usf"},
	};

	(void)state;
	add(b, "2026-11-29", "user-9", 9);
	add(b, "2026-11-29", "user-100", 100);
	add(b, "2026-11-29", "usf", 0);
	add(b, "2026-11-28", "zed", 26);
	add(b, "2026-11-29", "user-1", 1);
	add(b, "2026-11-29", "user-10", 10);
	batch_sort_usage(b);
	assert_int_equal(b->nusage, 6);
	for (size_t i = 0; i < 6; i++) {
		assert_string_equal(b->usage[i].day, want[i][0]);
		assert_string_equal(batch_usage_user(b, &b->usage[i]), want[i][1]);
	}
	/* Rows moved with their values. */
	assert_int_equal(b->usage[0].tokens_in, 26);
	assert_int_equal(b->usage[3].tokens_in, 100);
	batch_free(b);
}

static void test_merge_newest_wins(void **state)
{
	struct batch *dst = batch_new(), *src = batch_new();
	char user[32];
	int found = 0;

	(void)state;
	add(dst, "2026-11-29", "alice", 1);
	add(dst, "2026-11-29", "bob", 2);
	batch_add_audit(dst);
	add(src, "2026-11-29", "bob", 20);
	add(src, "2026-11-28", "bob", 7); /* same user, other day: its own row */
	/* Enough new users for dst's arena to have to grow during the merge. */
	for (int i = 0; i < 1000; i++) {
		snprintf(user, sizeof(user), "new-user-%d", i);
		add(src, "2026-11-29", user, 1000 + i);
	}
	batch_add_audit(src);
	assert_int_equal(batch_merge(dst, src), 0); /* src freed */
	assert_int_equal(dst->nusage, 2 + 1 + 1000);
	assert_int_equal(dst->naudit, 2);
	for (size_t i = 0; i < dst->nusage; i++) {
		const struct batch_usage *u = &dst->usage[i];
		const char *name = batch_usage_user(dst, u);

		assert_int_equal(strlen(name), u->user_len);
		if (!strcmp(name, "alice")) {
			assert_int_equal(u->tokens_in, 1);
			found++;
		} else if (!strcmp(name, "bob") && !strcmp(u->day, "2026-11-29")) {
			assert_int_equal(u->tokens_in, 20);
			found++;
		} else if (!strcmp(name, "bob")) {
			assert_string_equal(u->day, "2026-11-28");
			assert_int_equal(u->tokens_in, 7);
			found++;
		} else {
			int n;

			assert_int_equal(sscanf(name, "new-user-%d", &n), 1);
			assert_int_equal(u->tokens_in, 1000 + n);
		}
	}
	assert_int_equal(found, 3);
	batch_free(dst);
}

/* A reset keeps the arrays of an ordinary batch, and gives back those
 * that grew past a few MB while the writer stalled. */
static void test_reset_sheds_what_a_stall_grew(void **state)
{
	struct batch *b = batch_new();
	size_t small_cap;

	(void)state;
	assert_non_null(b);
	for (int i = 0; i < 100; i++)
		assert_non_null(batch_add_audit(b));
	small_cap = b->audit_cap;
	batch_reset(b);
	assert_int_equal(b->naudit, 0);
	assert_int_equal(b->audit_cap, small_cap);
	assert_non_null(b->audit);
	for (int i = 0; i < 100000; i++)
		assert_non_null(batch_add_audit(b));
	assert_true(b->audit_cap * sizeof(*b->audit) > ((size_t)4 << 20));
	batch_reset(b);
	assert_int_equal(b->audit_cap, 0);
	assert_null(b->audit);
	assert_non_null(batch_add_audit(b)); /* and it grows again from scratch */
	batch_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_keeps_names),
		cmocka_unit_test(test_sort_is_key_order),
		cmocka_unit_test(test_merge_newest_wins),
		cmocka_unit_test(test_reset_sheds_what_a_stall_grew),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
