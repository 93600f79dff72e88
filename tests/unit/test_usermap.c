/*
 * Unit tests of the ledger's user index: add and look up 200,000 users
 * across growth; keys are told apart by their bytes, not their tag (same
 * length and a different last byte, the empty key, keys whose 32-bit
 * hashes are equal and so share tag and slot at every size); the hash
 * whose tag would be the reserved "no tag" value; the table grows
 * exactly when it would pass half full; an entry whose address does not
 * fit under the tag is kept aside and still found; and an allocation
 * that fails while growing leaves the map as it was (calloc and realloc
 * are wrapped at link time, see the Makefile).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ledger.h"
#include "strmap.h"
#include "usermap.h"

#define NKEYS 200000

/* Injected allocation failures: the next calloc or realloc fails. */
static bool fail_calloc, fail_realloc;
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);

void *__wrap_calloc(size_t n, size_t size)
{
	if (fail_calloc) {
		fail_calloc = false;
		return NULL;
	}
	return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
	if (fail_realloc) {
		fail_realloc = false;
		return NULL;
	}
	return __real_realloc(p, size);
}

static struct ledger_usage *entries[NKEYS];

static struct ledger_usage *mk(const char *user, size_t len)
{
	struct ledger_usage *u = calloc(1, sizeof(*u) + len + 1);

	assert_non_null(u);
	assert_true(len <= LEDGER_USER_MAX);
	u->len = (uint8_t)len;
	memcpy(u->user, user, len);
	return u;
}

static struct ledger_usage *get(const struct usermap *m, const char *user, size_t len)
{
	return usermap_get(m, user, len, strmap_hash(user, len));
}

/* Adds an entry for user, which must be absent (as the ledger does it). */
static struct ledger_usage *add(struct usermap *m, const char *user, size_t len)
{
	struct ledger_usage *u = mk(user, len);

	assert_null(get(m, user, len));
	assert_int_equal(usermap_add(m, u, strmap_hash(user, len)), 0);
	assert_ptr_equal(get(m, user, len), u);
	return u;
}

static void free_all(struct usermap *m, int n)
{
	for (int i = 0; i < n; i++) {
		free(entries[i]);
		entries[i] = NULL;
	}
	usermap_clear(m);
	assert_int_equal(m->count, 0);
	assert_int_equal(m->cap, 0);
}

static void fill(struct usermap *m, int n, const char *fmt)
{
	char k[32];

	for (int i = 0; i < n; i++) {
		int len = snprintf(k, sizeof(k), fmt, i);

		entries[i] = add(m, k, (size_t)len);
	}
	assert_int_equal(m->count, n);
}

/* Every entry is found under its own key and walked exactly once. */
static void check_all(const struct usermap *m, int n)
{
	size_t walked = 0;

	for (int i = 0; i < n; i++) {
		assert_ptr_equal(get(m, entries[i]->user, entries[i]->len), entries[i]);
		entries[i]->requests = 0;
	}
	for (size_t i = 0; i < m->cap; i++) {
		struct ledger_usage *u = usermap_at(m, i);

		if (u) {
			assert_int_equal(u->requests, 0);
			u->requests = 1;
			walked++;
		}
	}
	assert_int_equal(walked, n);
	assert_int_equal(m->count, n);
	assert_true(m->count * 2 <= m->cap);
	assert_int_equal(m->cap & (m->cap - 1), 0);
}

/* The slot word that holds u. */
static uint64_t slot_of(const struct usermap *m, const struct ledger_usage *u)
{
	for (size_t i = 0; i < m->cap; i++)
		if (usermap_at(m, i) == u)
			return m->slots[i];
	fail();
	return 0;
}

static void test_many(void **state)
{
	struct usermap m = {0};

	(void)state;
	assert_null(get(&m, "x", 1));
	fill(&m, NKEYS, "user-%d");
	check_all(&m, NKEYS);
	assert_int_equal(m.cap, 524288);
	assert_int_equal(m.nwide, 0);
	assert_null(get(&m, "user-200000", 11));
	assert_null(get(&m, "user-1", 5)); /* a prefix is another key */
	assert_null(get(&m, "user-10", 8)); /* and so is a longer one */
	assert_null(get(&m, "", 0));
	free_all(&m, NKEYS);
}

static void test_keys_told_apart(void **state)
{
	struct usermap m = {0};
	char a[LEDGER_USER_MAX], b[LEDGER_USER_MAX];
	static const char *const k[] = {
		"user-000001", "user-000002", "user-00000\x01", "abcdefgh", "abcdefghi", "abcdefgh\0", "", "a", "b",
	};
	static const size_t len[] = {11, 11, 11, 8, 9, 9, 0, 1, 1};
	int n = 0;

	(void)state;
	/* The empty key is allowed: ledger_user only bounds the length. */
	for (int i = 0; i < 9; i++)
		entries[n++] = add(&m, k[i], len[i]);
	/* The longest names, differing only in the last byte. */
	memset(a, 'x', sizeof(a));
	memcpy(b, a, sizeof(b));
	b[LEDGER_USER_MAX - 1] = 'y';
	entries[n++] = add(&m, a, sizeof(a));
	assert_null(get(&m, b, sizeof(b)));
	entries[n++] = add(&m, b, sizeof(b));
	check_all(&m, n);
	free_all(&m, n);
}

struct keyhash {
	uint32_t hash;
	int i;
};

static int by_hash(const void *a, const void *b)
{
	const struct keyhash *x = a, *y = b;

	return x->hash < y->hash ? -1 : x->hash > y->hash ? 1 : x->i - y->i;
}

/* Keys "c<i>" in pairs whose 32-bit hashes are equal: each pair shares
 * its tag and its home slot at every table size. About 116 such pairs
 * are expected among 2^20 keys; returns how many were kept (up to max). */
static int colliding_pairs(int (*pairs)[2], int max)
{
	enum { N = 1 << 20 };
	struct keyhash *kh = malloc(N * sizeof(*kh));
	int n = 0;
	char k[16];

	assert_non_null(kh);
	for (int i = 0; i < N; i++) {
		int len = snprintf(k, sizeof(k), "c%d", i);

		kh[i] = (struct keyhash){strmap_hash(k, (size_t)len), i};
	}
	qsort(kh, N, sizeof(*kh), by_hash);
	for (int i = 1; i < N && n < max; i++)
		if (kh[i].hash == kh[i - 1].hash && (i < 2 || kh[i - 2].hash != kh[i].hash)) {
			pairs[n][0] = kh[i - 1].i;
			pairs[n][1] = kh[i].i;
			n++;
		}
	free(kh);
	return n;
}

static void test_tag_collisions(void **state)
{
	struct usermap m = {0};
	int pairs[64][2], np = colliding_pairs(pairs, 64), n = 0;
	char k[16];

	(void)state;
	assert_true(np >= 32);
	/* The first of each pair: its twin, same tag, same slot, is absent. */
	for (int p = 0; p < np; p++) {
		int len = snprintf(k, sizeof(k), "c%d", pairs[p][0]);

		entries[n++] = add(&m, k, (size_t)len);
	}
	for (int p = 0; p < np; p++) {
		int len = snprintf(k, sizeof(k), "c%d", pairs[p][1]);

		assert_null(get(&m, k, (size_t)len));
	}
	/* Then the twins, some added as out-of-range addresses, and enough
	 * other keys to grow the table past a few sizes. */
	for (int p = 0; p < np; p++) {
		int len = snprintf(k, sizeof(k), "c%d", pairs[p][1]);

		m.force_wide = p % 4 == 0;
		entries[n++] = add(&m, k, (size_t)len);
		m.force_wide = false;
		assert_true(slot_of(&m, entries[n - 1]) >> 48 == 0xffff ||
			    slot_of(&m, entries[n - 1]) >> 48 == slot_of(&m, entries[p]) >> 48);
	}
	for (int i = 0; i < 5000; i++) {
		int len = snprintf(k, sizeof(k), "other-%d", i);

		entries[n++] = add(&m, k, (size_t)len);
	}
	check_all(&m, n);
	free_all(&m, n);
}

/* A hash whose top 16 bits are the reserved "no tag" value is stored
 * under another tag: only entries kept aside are compared blindly. */
static void test_reserved_tag(void **state)
{
	struct usermap m = {0};
	char k[16];
	int n = 0, found = 0;

	(void)state;
	for (int i = 0; found < 3; i++) {
		int len = snprintf(k, sizeof(k), "r%d", i);

		if (strmap_hash(k, (size_t)len) >> 16 != 0xffff)
			continue;
		entries[n++] = add(&m, k, (size_t)len);
		assert_int_equal(slot_of(&m, entries[n - 1]) >> 48, 0xfffe);
		found++;
	}
	for (int i = 0; i < 1000; i++) {
		int len = snprintf(k, sizeof(k), "s%d", i);

		entries[n++] = add(&m, k, (size_t)len);
	}
	for (size_t i = 0; i < m.cap; i++)
		assert_true(m.slots[i] >> 48 != 0xffff);
	check_all(&m, n);
	free_all(&m, n);
}

/* The table is the smallest power of two, 16 or more, at most half full:
 * it doubles on the add that would pass half, and every entry is still
 * found after each doubling. */
static void test_growth_boundaries(void **state)
{
	struct usermap m = {0};
	char k[16];

	(void)state;
	for (int i = 0; i < 20000; i++) {
		int len = snprintf(k, sizeof(k), "g%d", i);
		size_t before = m.cap, want = 16;

		entries[i] = add(&m, k, (size_t)len);
		while ((size_t)(i + 1) * 2 > want)
			want *= 2;
		assert_int_equal(m.cap, want);
		if (m.cap != before)
			check_all(&m, i + 1);
	}
	free_all(&m, 20000);
}

/* Fills m until the next add must grow the slots, then makes that
 * growth fail: -1, and the map is as it was. */
static int fail_growth(struct usermap *m, int n, const char *fmt)
{
	char k[16];
	int len;
	struct ledger_usage *u;
	uint64_t *slots;
	size_t cap;

	while ((m->count + 1) * 2 <= m->cap || m->cap == 0) {
		len = snprintf(k, sizeof(k), fmt, n);
		entries[n] = add(m, k, (size_t)len);
		n++;
	}
	slots = m->slots;
	cap = m->cap;
	len = snprintf(k, sizeof(k), fmt, n);
	u = mk(k, (size_t)len);
	fail_calloc = true;
	assert_int_equal(usermap_add(m, u, strmap_hash(k, (size_t)len)), -1);
	assert_false(fail_calloc);
	assert_ptr_equal(m->slots, slots);
	assert_int_equal(m->cap, cap);
	assert_null(get(m, k, (size_t)len));
	check_all(m, n);
	/* The same add succeeds once memory is back. */
	assert_int_equal(usermap_add(m, u, strmap_hash(k, (size_t)len)), 0);
	entries[n++] = u;
	check_all(m, n);
	return n;
}

static void test_alloc_failure(void **state)
{
	struct usermap m = {0};
	int n = 0;
	char k[16];
	int len;
	struct ledger_usage *u;

	(void)state;
	/* The first table, then a few growths. */
	len = snprintf(k, sizeof(k), "f%d", 0);
	u = mk(k, (size_t)len);
	fail_calloc = true;
	assert_int_equal(usermap_add(&m, u, strmap_hash(k, (size_t)len)), -1);
	assert_null(m.slots);
	assert_int_equal(m.count, 0);
	assert_null(get(&m, k, (size_t)len));
	free(u);
	for (int r = 0; r < 4; r++)
		n = fail_growth(&m, n, "f%d");
	/* Entries kept aside: growing their array fails the same way. */
	m.force_wide = true;
	while (m.nwide < m.wide_cap || m.nwide == 0) {
		len = snprintf(k, sizeof(k), "f%d", n);
		entries[n++] = add(&m, k, (size_t)len);
	}
	len = snprintf(k, sizeof(k), "f%d", n);
	u = mk(k, (size_t)len);
	fail_realloc = true;
	assert_int_equal(usermap_add(&m, u, strmap_hash(k, (size_t)len)), -1);
	assert_false(fail_realloc);
	assert_null(get(&m, k, (size_t)len));
	check_all(&m, n);
	assert_int_equal(usermap_add(&m, u, strmap_hash(k, (size_t)len)), 0);
	entries[n++] = u;
	m.force_wide = false;
	/* And growing the slots with entries aside. */
	n = fail_growth(&m, n, "f%d");
	free_all(&m, n);
}

/* Entries whose address does not fit under the tag, every one, then one
 * in three, through growth: all found, all walked, none dropped. */
static void test_wide_entries(void **state)
{
	struct usermap m = {0};
	char k[16];
	size_t aside = 0;

	(void)state;
	m.force_wide = true;
	fill(&m, NKEYS, "w%d");
	assert_int_equal(m.nwide, NKEYS);
	check_all(&m, NKEYS);
	assert_null(get(&m, "w200000", 7));
	free_all(&m, NKEYS);
	for (int i = 0; i < NKEYS; i++) {
		int len = snprintf(k, sizeof(k), "v%d", i);

		m.force_wide = i % 3 == 0;
		entries[i] = add(&m, k, (size_t)len);
	}
	m.force_wide = false;
	assert_int_equal(m.nwide, (NKEYS + 2) / 3);
	check_all(&m, NKEYS);
	for (size_t i = 0; i < m.cap; i++)
		aside += m.slots[i] >> 48 == 0xffff;
	assert_int_equal(aside, m.nwide);
	assert_null(get(&m, "v200000", 7));
	free_all(&m, NKEYS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_many),
		cmocka_unit_test(test_keys_told_apart),
		cmocka_unit_test(test_tag_collisions),
		cmocka_unit_test(test_reserved_tag),
		cmocka_unit_test(test_growth_boundaries),
		cmocka_unit_test(test_alloc_failure),
		cmocka_unit_test(test_wide_entries),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
