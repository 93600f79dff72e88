/*
 * Unit tests of the usage journal's blob: a batch survives encode +
 * decode with every value and name intact, the bytes are the documented
 * format (checked against hand-written vectors, not only against the
 * decoder), and anything journal_encode could not have written is
 * refused whole, with the callback never called.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batch.h"
#include "journal.h"

#define MAX_ROWS 64

struct got_row {
	char day[11];
	unsigned char user[LEDGER_USER_MAX];
	size_t user_len;
	int64_t v[6];
};

struct got {
	size_t n;
	struct got_row rows[MAX_ROWS];
};

static void collect(const struct journal_row *r, void *arg)
{
	struct got *g = arg;
	struct got_row *w;

	assert_true(g->n < MAX_ROWS);
	assert_in_range(r->user_len, 1, LEDGER_USER_MAX);
	assert_int_equal(strlen(r->day), 10);
	w = &g->rows[g->n++];
	memcpy(w->day, r->day, sizeof(w->day));
	memcpy(w->user, r->user, r->user_len);
	w->user_len = r->user_len;
	w->v[0] = r->tokens_in;
	w->v[1] = r->tokens_out;
	w->v[2] = r->cost_nano;
	w->v[3] = r->requests;
	w->v[4] = r->denials;
	w->v[5] = r->fallbacks;
}

/* Decodes and insists that a refusal never reached the callback. */
static long decode(const void *blob, size_t len, struct got *g)
{
	long n;

	memset(g, 0, sizeof(*g));
	n = journal_decode(blob, len, collect, g);
	if (n == -1)
		assert_int_equal(g->n, 0);
	else
		assert_int_equal(g->n, (size_t)n);
	return n;
}

static long decode_must_fail(const void *blob, size_t len)
{
	struct got g;
	long n = decode(blob, len, &g);

	assert_int_equal(n, -1);
	assert_int_equal(g.n, 0);
	return n;
}

static struct batch_usage *add(struct batch *b, const char *day, const void *user, size_t len, const int64_t v[6])
{
	struct batch_usage *u = batch_add_usage(b, day, user, len);

	assert_non_null(u);
	u->tokens_in = v[0];
	u->tokens_out = v[1];
	u->cost_nano = v[2];
	u->requests = v[3];
	u->denials = v[4];
	u->fallbacks = v[5];
	return u;
}

static void assert_row(const struct got_row *g, const char *day, const void *user, size_t len, const int64_t v[6])
{
	assert_string_equal(g->day, day);
	assert_int_equal(g->user_len, len);
	assert_memory_equal(g->user, user, len);
	for (int i = 0; i < 6; i++)
		assert_true(g->v[i] == v[i]); /* assert_int_equal would cast to unsigned */
}

/* A blob being built by hand, for the byte-level cases. */
struct blob {
	unsigned char b[4096];
	size_t len;
};

static void put(struct blob *x, const void *p, size_t n)
{
	assert_true(x->len + n <= sizeof(x->b));
	memcpy(x->b + x->len, p, n);
	x->len += n;
}

static void put_byte(struct blob *x, unsigned char c)
{
	put(x, &c, 1);
}

/* A row whose six values are all zero (one byte each). */
static void put_zero_row(struct blob *x, const char *day, const void *user, size_t len)
{
	put(x, day, 10);
	put_byte(x, (unsigned char)len);
	put(x, user, len);
	for (int i = 0; i < 6; i++)
		put_byte(x, 0);
}

static const int64_t zero[6];

static void test_round_trip(void **state)
{
	static const int64_t v1[6] = {INT64_MIN, INT64_MAX, 0, -1, 1, 12345678901LL};
	static const int64_t v2[6] = {INT64_MAX, INT64_MIN, -1, 0, 63, -64};
	static const int64_t v3[6] = {64, -65, 8191, -8192, 1000000, 999999999999LL};
	static const int64_t v4[6] = {0, 0, 0, 1, 0, 0};
	static const char spaces[] = "a user with  spaces and \"quotes\" and 'apostrophes'";
	static const unsigned char high[] = {0xc3, 0xa9, 'l', 0xe8, 0x80, 0xff, 0x01, 0x7f};
	char longest[LEDGER_USER_MAX];
	struct batch *b = batch_new();
	struct journal_buf out = {0};
	struct got g;

	(void)state;
	assert_non_null(b);
	for (size_t i = 0; i < sizeof(longest); i++)
		longest[i] = (char)('a' + i % 26);
	add(b, "2026-11-29", "alice", 5, v1);
	add(b, "2026-11-29", longest, sizeof(longest), v2);
	add(b, "2026-11-30", spaces, strlen(spaces), v3);
	add(b, "2026-11-30", high, sizeof(high), v4);
	add(b, "2026-11-30", "alice", 5, zero);
	assert_int_equal(journal_encode(b, &out), 5);
	assert_memory_equal(out.p, "TGJ1", 4);
	assert_int_equal(decode(out.p, out.len, &g), 5);
	assert_row(&g.rows[0], "2026-11-29", "alice", 5, v1);
	assert_row(&g.rows[1], "2026-11-29", longest, sizeof(longest), v2);
	assert_row(&g.rows[2], "2026-11-30", spaces, strlen(spaces), v3);
	assert_row(&g.rows[3], "2026-11-30", high, sizeof(high), v4);
	assert_row(&g.rows[4], "2026-11-30", "alice", 5, zero);
	free(out.p);
	batch_free(b);
}

/* The bytes themselves, from the format in journal.h: a decoder that
 * agreed with a wrong encoder would pass the round trip. */
static void test_exact_bytes(void **state)
{
	static const int64_t v1[6] = {0, -1, 1, 63, -64, 64};
	static const int64_t v2[6] = {INT64_MIN, INT64_MAX, 300, -2, 127, 128};
	static const unsigned char want[] = {
		'T', 'G', 'J', '1',
		'2', '0', '2', '6', '-', '1', '1', '-', '2', '9', 2, 'a', 'l',
		0x00, 0x01, 0x02, 0x7e, 0x7f, 0x80, 0x01,
		'1', '9', '9', '9', '-', '0', '1', '-', '0', '1', 1, 0xff,
		/* INT64_MIN: zigzag 2^64 - 1, nine 0xff and a 1 */
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
		/* INT64_MAX: zigzag 2^64 - 2 */
		0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
		0xd8, 0x04, /* 300: 600 */
		0x03,       /* -2 */
		0xfe, 0x01, /* 127: 254 */
		0x80, 0x02, /* 128: 256 */
	};
	struct batch *b = batch_new();
	struct journal_buf out = {0};
	struct got g;

	(void)state;
	assert_non_null(b);
	add(b, "2026-11-29", "al", 2, v1);
	add(b, "1999-01-01", "\xff", 1, v2);
	assert_int_not_equal(journal_encode(b, &out), -1);
	assert_int_equal(out.len, sizeof(want));
	assert_memory_equal(out.p, want, sizeof(want));
	/* and the hand-written vector decodes without the encoder's help */
	assert_int_equal(decode(want, sizeof(want), &g), 2);
	assert_row(&g.rows[0], "2026-11-29", "al", 2, v1);
	assert_row(&g.rows[1], "1999-01-01", "\xff", 1, v2);
	free(out.p);
	batch_free(b);
}

static void test_empty_batch(void **state)
{
	struct batch *b = batch_new();
	struct journal_buf out = {0};
	struct got g;

	(void)state;
	assert_non_null(b);
	assert_int_not_equal(journal_encode(b, &out), -1);
	assert_int_equal(out.len, 4);
	assert_memory_equal(out.p, "TGJ1", 4);
	assert_int_equal(decode(out.p, out.len, &g), 0);
	assert_int_equal(g.n, 0);
	free(out.p);
	batch_free(b);
}

static void test_encode_replaces(void **state)
{
	static const int64_t v[6] = {1, 2, 3, 4, 5, 6};
	static const unsigned char want[] = {
		'T', 'G', 'J', '1', '2', '0', '2', '6', '-', '0', '1', '-', '0', '2', 1, 'z', 2, 4, 6, 8, 10, 12,
	};
	struct batch *b = batch_new();
	struct journal_buf out = {0};
	char user[32];
	struct got g;

	(void)state;
	assert_non_null(b);
	/* A buffer that holds more than the next blob needs. */
	out.cap = 1000;
	out.p = malloc(out.cap);
	assert_non_null(out.p);
	memset(out.p, 0xa5, out.cap);
	out.len = 999;
	add(b, "2026-01-02", "z", 1, v);
	assert_int_not_equal(journal_encode(b, &out), -1);
	assert_int_equal(out.len, sizeof(want));
	assert_memory_equal(out.p, want, sizeof(want));
	/* Then one that must grow, then the empty one again. */
	batch_reset(b);
	for (int i = 0; i < 50; i++) {
		snprintf(user, sizeof(user), "user-%02d-%s", i, "padding-padding-padding");
		add(b, "2026-01-03", user, strlen(user), v);
	}
	assert_int_not_equal(journal_encode(b, &out), -1);
	assert_true(out.len > 1000);
	assert_int_equal(decode(out.p, out.len, &g), 50);
	assert_row(&g.rows[49], "2026-01-03", "user-49-padding-padding-padding", 31, v);
	batch_reset(b);
	assert_int_not_equal(journal_encode(b, &out), -1);
	assert_int_equal(out.len, 4);
	assert_memory_equal(out.p, "TGJ1", 4);
	free(out.p);
	batch_free(b);
}

/* Rows the batch should never hold are left out, not written broken:
 * the decoder would refuse the whole blob for one of them. */
static void test_encode_skips_bad_users(void **state)
{
	static const int64_t v[6] = {7, 7, 7, 7, 7, 7};
	struct batch *b = batch_new();
	struct journal_buf out = {0};
	struct batch_usage *u;
	struct got g;

	(void)state;
	assert_non_null(b);
	add(b, "2026-11-29", "", 0, v);
	add(b, "2026-11-29", "kept", 4, v);
	u = add(b, "2026-11-29", "forged", 6, v);
	u->user_len = LEDGER_USER_MAX + 1;
	add(b, "2026-11-29", "nul\0inside", 10, v);
	add(b, "2026-1x-29", "badday", 6, v);
	assert_int_equal(journal_encode(b, &out), 1);
	assert_int_equal(decode(out.p, out.len, &g), 1);
	assert_row(&g.rows[0], "2026-11-29", "kept", 4, v);
	free(out.p);
	batch_free(b);
}

/* Every prefix of a valid blob: one that ends on a row boundary is a
 * well-formed blob of fewer rows, any other is a truncated row. */
static void test_truncation(void **state)
{
	static const int64_t v[3][6] = {
		{INT64_MIN, INT64_MAX, -1, 0, 1, 2},
		{300, 70000, -70000, 1LL << 40, -(1LL << 50), 5},
		{0, 0, 0, 0, 0, INT64_MAX},
	};
	static const char *const users[3] = {"first", "the second user", "3"};
	struct batch *b = batch_new();
	struct journal_buf out = {0};
	size_t bounds[4];
	unsigned tried_ok = 0, tried_bad = 0;
	struct got g;

	(void)state;
	assert_non_null(b);
	for (int i = 0; i < 3; i++)
		add(b, i < 2 ? "2026-11-29" : "2026-11-30", users[i], strlen(users[i]), v[i]);
	assert_int_not_equal(journal_encode(b, &out), -1);
	/* The boundaries, from each row's own length. */
	bounds[0] = 4;
	for (int i = 0; i < 3; i++) {
		struct batch *one = batch_new();
		struct journal_buf o1 = {0};

		assert_non_null(one);
		add(one, "2026-11-29", users[i], strlen(users[i]), v[i]);
		assert_int_not_equal(journal_encode(one, &o1), -1);
		bounds[i + 1] = bounds[i] + o1.len - 4;
		free(o1.p);
		batch_free(one);
	}
	assert_int_equal(bounds[3], out.len);
	for (size_t len = 0; len < out.len; len++) {
		long want = -1;

		for (int i = 0; i < 3; i++)
			if (len == bounds[i])
				want = i;
		/* A copy of exactly len bytes, so that ASan sees a read past. */
		{
			unsigned char *cut = malloc(len ? len : 1);

			assert_non_null(cut);
			memcpy(cut, out.p, len);
			assert_int_equal(decode(cut, len, &g), want);
			free(cut);
		}
		if (want == -1) {
			tried_bad++;
			continue;
		}
		tried_ok++;
		for (long i = 0; i < want; i++)
			assert_row(&g.rows[i], i < 2 ? "2026-11-29" : "2026-11-30", users[i], strlen(users[i]), v[i]);
	}
	assert_int_equal(tried_ok, 3);
	assert_int_equal(tried_bad, out.len - 3);
	assert_int_equal(decode(out.p, out.len, &g), 3);
	free(out.p);
	batch_free(b);
}

static void test_bad_magic(void **state)
{
	static const char *const bad[] = {"TGJ2", "tgj1", "TGJ", "", "XGJ1", "TGJ0"};
	struct blob x = {0};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		decode_must_fail(bad[i], strlen(bad[i]));
	decode_must_fail(NULL, 0);
	/* A valid row behind a wrong magic. */
	put(&x, "TGJ2", 4);
	put_zero_row(&x, "2026-11-29", "bob", 3);
	decode_must_fail(x.b, x.len);
	x.b[3] = '1';
	assert_int_equal(journal_decode(x.b, x.len, NULL, NULL), 1); /* the control */
}

/* A row with one value spelled out as the given bytes, the others 0. */
static long decode_with_value(const unsigned char *val, size_t n, struct got *g)
{
	struct blob x = {0};

	put(&x, "TGJ1", 4);
	put(&x, "2026-11-29", 10);
	put_byte(&x, 1);
	put_byte(&x, 'u');
	put(&x, val, n);
	for (int i = 0; i < 5; i++)
		put_byte(&x, 0);
	return decode(x.b, x.len, g);
}

static void test_bad_varints(void **state)
{
	static const unsigned char eleven[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
	static const unsigned char eleven_ff[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
	static const unsigned char bit64[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02};
	static const unsigned char bit70[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x40};
	static const unsigned char tenth_continues[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81};
	static const unsigned char overlong_zero[] = {0x80, 0x00};
	static const unsigned char overlong_one[] = {0x82, 0x80, 0x00};
	static const unsigned char overlong_ten[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
	/* The largest: zigzag 2^64 - 1 is INT64_MIN. */
	static const unsigned char top[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
	static const unsigned char two_bytes[] = {0x81, 0x01}; /* 129: -65 */
	struct got g;

	(void)state;
	assert_int_equal(decode_with_value(eleven, sizeof(eleven), &g), -1);
	assert_int_equal(decode_with_value(eleven_ff, sizeof(eleven_ff), &g), -1);
	assert_int_equal(decode_with_value(bit64, sizeof(bit64), &g), -1);
	assert_int_equal(decode_with_value(bit70, sizeof(bit70), &g), -1);
	assert_int_equal(decode_with_value(tenth_continues, sizeof(tenth_continues), &g), -1);
	/* Not the shortest form: journal_encode never writes it, and one
	 * value with two spellings would break the blob's canonicity. */
	assert_int_equal(decode_with_value(overlong_zero, sizeof(overlong_zero), &g), -1);
	assert_int_equal(decode_with_value(overlong_one, sizeof(overlong_one), &g), -1);
	assert_int_equal(decode_with_value(overlong_ten, sizeof(overlong_ten), &g), -1);
	/* The controls: the same shapes, well formed. */
	assert_int_equal(decode_with_value(top, sizeof(top), &g), 1);
	assert_true(g.rows[0].v[0] == INT64_MIN);
	assert_true(g.rows[0].v[5] == 0);
	assert_int_equal(decode_with_value(two_bytes, sizeof(two_bytes), &g), 1);
	assert_true(g.rows[0].v[0] == -65);
}

static void test_bad_day(void **state)
{
	static const char good[] = "2026-11-29";
	struct got g;

	(void)state;
	for (int i = 0; i < 10; i++) {
		static const char subst[] = {'x', '/', ':', ' ', '\0', '-', '5', (char)0xb2};

		for (size_t k = 0; k < sizeof(subst); k++) {
			struct blob x = {0};
			char day[10];
			int ok;

			memcpy(day, good, 10);
			day[i] = subst[k];
			ok = (i == 4 || i == 7) ? subst[k] == '-' : subst[k] == '5';
			put(&x, "TGJ1", 4);
			put_zero_row(&x, day, "u", 1);
			assert_int_equal(decode(x.b, x.len, &g), ok ? 1 : -1);
			if (ok)
				assert_memory_equal(g.rows[0].day, day, 10);
		}
	}
}

static void test_bad_user(void **state)
{
	unsigned char name[255]; /* the most a length byte can announce */
	struct blob x;
	struct got g;

	(void)state;
	memset(name, 'n', sizeof(name));
	/* Length 0, then 129 with all 129 bytes present. */
	memset(&x, 0, sizeof(x));
	put(&x, "TGJ1", 4);
	put_zero_row(&x, "2026-11-29", name, 0);
	decode_must_fail(x.b, x.len);
	memset(&x, 0, sizeof(x));
	put(&x, "TGJ1", 4);
	put_zero_row(&x, "2026-11-29", name, LEDGER_USER_MAX + 1);
	decode_must_fail(x.b, x.len);
	memset(&x, 0, sizeof(x));
	put(&x, "TGJ1", 4);
	put_zero_row(&x, "2026-11-29", name, 255);
	decode_must_fail(x.b, x.len);
	/* 128 is the limit, and allowed. */
	memset(&x, 0, sizeof(x));
	put(&x, "TGJ1", 4);
	put_zero_row(&x, "2026-11-29", name, LEDGER_USER_MAX);
	assert_int_equal(decode(x.b, x.len, &g), 1);
	assert_int_equal(g.rows[0].user_len, LEDGER_USER_MAX);
	/* A NUL anywhere in the name: first, middle, last. */
	for (size_t at = 0; at < 5; at += 2) {
		unsigned char five[5] = {'a', 'b', 'c', 'd', 'e'};

		five[at] = '\0';
		memset(&x, 0, sizeof(x));
		put(&x, "TGJ1", 4);
		put_zero_row(&x, "2026-11-29", "fine", 4);
		put_zero_row(&x, "2026-11-29", five, 5);
		decode_must_fail(x.b, x.len);
	}
}

/* Bytes after the last row: the start of no row, or of a broken one. */
static void test_trailing_bytes(void **state)
{
	static const unsigned char tails[][3] = {{0x00}, {'\n'}, {'2'}, {0xff}};
	struct blob x;
	struct got g;

	(void)state;
	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
		memset(&x, 0, sizeof(x));
		put(&x, "TGJ1", 4);
		put_zero_row(&x, "2026-11-29", "bob", 3);
		assert_int_equal(decode(x.b, x.len, &g), 1);
		put_byte(&x, tails[i][0]);
		decode_must_fail(x.b, x.len);
	}
	/* A whole day and length but not the user: still trailing junk. */
	memset(&x, 0, sizeof(x));
	put(&x, "TGJ1", 4);
	put_zero_row(&x, "2026-11-29", "bob", 3);
	put(&x, "2026-11-29\x05", 11);
	decode_must_fail(x.b, x.len);
	/* Trailing bytes right after the magic. */
	memset(&x, 0, sizeof(x));
	put(&x, "TGJ1\n", 5);
	decode_must_fail(x.b, x.len);
}

/* A bad row after good ones: the good ones are not handed out either. */
static void test_all_or_nothing(void **state)
{
	struct blob x = {0};
	struct got g;

	(void)state;
	put(&x, "TGJ1", 4);
	for (int i = 0; i < 10; i++)
		put_zero_row(&x, "2026-11-29", "good", 4);
	assert_int_equal(decode(x.b, x.len, &g), 10);
	put_zero_row(&x, "2026-11-2x", "bad", 3);
	decode_must_fail(x.b, x.len);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_exact_bytes),
		cmocka_unit_test(test_empty_batch),
		cmocka_unit_test(test_encode_replaces),
		cmocka_unit_test(test_encode_skips_bad_users),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_bad_magic),
		cmocka_unit_test(test_bad_varints),
		cmocka_unit_test(test_bad_day),
		cmocka_unit_test(test_bad_user),
		cmocka_unit_test(test_trailing_bytes),
		cmocka_unit_test(test_all_or_nothing),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
