/*
 * Unit tests of the string hash map: insert, replace, lookup and delete
 * across growth; deletion keeps every other key reachable (backward
 * shift, no tombstones); keys that differ only in a byte past the first
 * eight, or only in length, are told apart; and the hash spreads the
 * agent's typical keys (user-N, unique-ids) so that probe runs stay short.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strmap.h"

#define NKEYS 100000

static char keys[NKEYS][24];
static int vals[NKEYS];

static void fill(struct strmap *m, const char *fmt)
{
	for (int i = 0; i < NKEYS; i++) {
		snprintf(keys[i], sizeof(keys[i]), fmt, i);
		vals[i] = i;
		assert_int_equal(strmap_put(m, keys[i], strlen(keys[i]), &vals[i]), 0);
	}
	assert_int_equal(m->count, NKEYS);
}

static void test_put_get_del(void **state)
{
	struct strmap m = {0};
	int other = -1;

	(void)state;
	assert_null(strmap_get(&m, "x", 1));
	assert_null(strmap_del(&m, "x", 1));
	fill(&m, "user-%d");
	for (int i = 0; i < NKEYS; i++)
		assert_ptr_equal(strmap_get(&m, keys[i], strlen(keys[i])), &vals[i]);
	assert_null(strmap_get(&m, "user-100000", 11));
	assert_null(strmap_get(&m, "user-1", 5)); /* a prefix is another key */
	/* Replacing keeps the count. */
	assert_int_equal(strmap_put(&m, keys[7], strlen(keys[7]), &other), 0);
	assert_int_equal(m.count, NKEYS);
	assert_ptr_equal(strmap_get(&m, keys[7], strlen(keys[7])), &other);
	assert_int_equal(strmap_put(&m, keys[7], strlen(keys[7]), &vals[7]), 0);
	/* Delete every third key: the others stay reachable. */
	for (int i = 0; i < NKEYS; i += 3)
		assert_ptr_equal(strmap_del(&m, keys[i], strlen(keys[i])), &vals[i]);
	for (int i = 0; i < NKEYS; i++) {
		void *v = strmap_get(&m, keys[i], strlen(keys[i]));

		if (i % 3 == 0)
			assert_null(v);
		else
			assert_ptr_equal(v, &vals[i]);
	}
	assert_int_equal(m.count, NKEYS - (NKEYS + 2) / 3);
	strmap_clear(&m);
	assert_int_equal(m.count, 0);
}

static void test_keys_told_apart(void **state)
{
	struct strmap m = {0};
	static const char *const k[] = {
		"provider_primary", "provider_primarz", "provider_secondary", "abcdefgh", "abcdefghi",
		"abcdefgh\0",       "",                 "a",                  "b",
	};
	static const size_t len[] = {16, 16, 18, 8, 9, 9, 0, 1, 1};
	int v[9];

	(void)state;
	for (int i = 0; i < 9; i++)
		assert_int_equal(strmap_put(&m, k[i], len[i], &v[i]), 0);
	assert_int_equal(m.count, 9);
	for (int i = 0; i < 9; i++)
		assert_ptr_equal(strmap_get(&m, k[i], len[i]), &v[i]);
	strmap_clear(&m);
}

/* Longest and mean distance of an entry from its home slot. */
static void probe_stats(const struct strmap *m, size_t *longest, double *mean)
{
	size_t mask = m->cap - 1, sum = 0;

	*longest = 0;
	for (size_t i = 0; i < m->cap; i++) {
		size_t d;

		if (!m->slots[i].key)
			continue;
		d = (i - (m->slots[i].hash & mask)) & mask;
		sum += d;
		if (d > *longest)
			*longest = d;
	}
	*mean = (double)sum / (double)m->count;
}

static void test_hash_spreads(void **state)
{
	static const char *const fmts[] = {"user-%d", "b1234-7-%d", "%d", "tenant-42:user:%08d"};

	(void)state;
	for (size_t f = 0; f < sizeof(fmts) / sizeof(fmts[0]); f++) {
		struct strmap m = {0};
		size_t longest;
		double mean;

		fill(&m, fmts[f]);
		probe_stats(&m, &longest, &mean);
		/* Linear probing at <= 50% load with a uniform hash: mean
		 * distance about 0.5, the longest a few dozen at most. */
		assert_true(mean < 1.0);
		assert_true(longest < 64);
		strmap_clear(&m);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_get_del),
		cmocka_unit_test(test_keys_told_apart),
		cmocka_unit_test(test_hash_spreads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
