/* Unit tests of the SPOP codec: vectors from the spec, boundaries, round
 * trips, and input that must be refused without reading out of bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ack.h"
#include "spop.h"

struct vector {
	uint64_t value;
	size_t len;
	uint8_t bytes[10];
};

/* Hand-written from the spec's table and checked against HAProxy. */
static const struct vector vectors[] = {
	{0, 1, {0x00}},
	{239, 1, {0xEF}},
	{240, 2, {0xF0, 0x00}},
	{300, 2, {0xFC, 0x03}},
	{2287, 2, {0xFF, 0x7F}},
	{2288, 3, {0xF0, 0x80, 0x00}},
	{16380, 3, {0xFC, 0xF0, 0x06}},
	{65535, 3, {0xFF, 0xF0, 0x1E}},
	{264431, 3, {0xFF, 0xFF, 0x7F}},
	{264432, 4, {0xF0, 0x80, 0x80, 0x00}},
	{33818863, 4, {0xFF, 0xFF, 0xFF, 0x7F}},
	{33818864, 5, {0xF0, 0x80, 0x80, 0x80, 0x00}},
	{4294967295u, 5, {0xFF, 0xF0, 0xFE, 0xFE, 0x7E}},
	{UINT64_MAX, 10, {0xFF, 0xF0, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x0E}},
};

static void test_varint_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		uint8_t buf[16], *p = buf;
		const uint8_t *q;
		uint64_t v = 0;

		assert_int_equal(spop_put_varint(&p, buf + sizeof(buf), vectors[i].value), 0);
		assert_int_equal((size_t)(p - buf), vectors[i].len);
		assert_memory_equal(buf, vectors[i].bytes, vectors[i].len);
		assert_int_equal(spop_varint_len(vectors[i].value), vectors[i].len);

		q = vectors[i].bytes;
		assert_int_equal(spop_get_varint(&q, vectors[i].bytes + vectors[i].len, &v), 0);
		assert_true(v == vectors[i].value);
		assert_ptr_equal(q, vectors[i].bytes + vectors[i].len);
	}
}

/* Every width boundary round-trips and every truncation is refused. */
static void test_varint_boundaries_and_truncation(void **state)
{
	static const uint64_t edges[] = {239, 240, 2287, 2288, 264431, 264432, 33818863, 33818864,
					 4328786159ull, 4328786160ull, UINT32_MAX, (uint64_t)INT64_MAX,
					 UINT64_MAX - 1, UINT64_MAX};
	(void)state;
	for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
		uint8_t buf[16], *p = buf;
		const uint8_t *q;
		uint64_t v;
		size_t n;

		assert_int_equal(spop_put_varint(&p, buf + sizeof(buf), edges[i]), 0);
		n = (size_t)(p - buf);
		q = buf;
		assert_int_equal(spop_get_varint(&q, buf + n, &v), 0);
		assert_true(v == edges[i]);
		for (size_t cut = 0; cut < n; cut++) {
			q = buf;
			assert_int_equal(spop_get_varint(&q, buf + cut, &v), -1);
			assert_ptr_equal(q, buf); /* the cursor never moves on failure */
		}
		/* Encoding into too small a buffer fails and writes past nothing. */
		for (size_t room = 0; room < n; room++) {
			p = buf;
			assert_int_equal(spop_put_varint(&p, buf + room, edges[i]), -1);
			assert_ptr_equal(p, buf);
		}
	}
}

static void test_varint_refuses_overlong_and_overflow(void **state)
{
	/* 11 bytes: continuation bits all the way. */
	static const uint8_t eleven[] = {0xF0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
	/* 10 bytes whose last byte carries more than the 4 bits left. */
	static const uint8_t overflow[] = {0xFF, 0xF0, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x1E};
	/* 10 bytes, last one still continuing. */
	static const uint8_t cont[] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x8F};
	const uint8_t *q;
	uint64_t v;

	(void)state;
	q = eleven;
	assert_int_equal(spop_get_varint(&q, eleven + sizeof(eleven), &v), -1);
	q = overflow;
	assert_int_equal(spop_get_varint(&q, overflow + sizeof(overflow), &v), -1);
	q = cont;
	assert_int_equal(spop_get_varint(&q, cont + sizeof(cont), &v), -1);
	q = eleven;
	assert_int_equal(spop_get_varint(&q, eleven, &v), -1); /* empty */
}

static void roundtrip(const struct spop_data *in, struct spop_data *out, size_t *len)
{
	uint8_t buf[256], *p = buf;
	const uint8_t *q = buf;

	assert_int_equal(spop_put_data(&p, buf + sizeof(buf), in), 0);
	*len = (size_t)(p - buf);
	assert_int_equal(spop_get_data(&q, p, out), 0);
	assert_ptr_equal(q, p);
	/* Every strict prefix is refused. */
	for (size_t cut = 0; cut < *len; cut++) {
		const uint8_t *r = buf;
		struct spop_data d;

		if (in->type == SPOP_T_NULL || in->type == SPOP_T_BOOL)
			break;
		assert_int_equal(spop_get_data(&r, buf + cut, &d), -1);
	}
}

static void test_data_roundtrip_every_type(void **state)
{
	struct spop_data in, out;
	size_t len;
	static const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
	static const uint8_t bin[] = {0, 1, 2, 0xff, 0xfe};

	(void)state;
	in = (struct spop_data){.type = SPOP_T_NULL};
	roundtrip(&in, &out, &len);
	assert_int_equal(out.type, SPOP_T_NULL);
	assert_int_equal(len, 1);

	for (int b = 0; b < 2; b++) {
		uint8_t buf[4], *p = buf;

		in = (struct spop_data){.type = SPOP_T_BOOL};
		in.v.b = b;
		roundtrip(&in, &out, &len);
		assert_int_equal(out.type, SPOP_T_BOOL);
		assert_int_equal(out.v.b, b);
		/* BOOL's value lives in the flag bits: false 01, true 11. */
		spop_put_data(&p, buf + sizeof(buf), &in);
		assert_int_equal(buf[0], b ? 0x11 : 0x01);
	}

	static const int64_t i32s[] = {0, 1, -1, INT32_MAX, INT32_MIN, 239, 240};
	for (size_t i = 0; i < sizeof(i32s) / sizeof(i32s[0]); i++) {
		in = (struct spop_data){.type = SPOP_T_INT32};
		in.v.i = i32s[i];
		roundtrip(&in, &out, &len);
		assert_int_equal(out.type, SPOP_T_INT32);
		assert_true(out.v.i == i32s[i]);
	}
	static const uint64_t u32s[] = {0, 1, 239, 240, UINT32_MAX};
	for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++) {
		in = (struct spop_data){.type = SPOP_T_UINT32};
		in.v.u = u32s[i];
		roundtrip(&in, &out, &len);
		assert_true(out.v.u == u32s[i]);
	}
	static const int64_t i64s[] = {0, -1, INT64_MAX, INT64_MIN, 33818864};
	for (size_t i = 0; i < sizeof(i64s) / sizeof(i64s[0]); i++) {
		in = (struct spop_data){.type = SPOP_T_INT64};
		in.v.i = i64s[i];
		roundtrip(&in, &out, &len);
		assert_int_equal(out.type, SPOP_T_INT64);
		assert_true(out.v.i == i64s[i]);
	}
	in = (struct spop_data){.type = SPOP_T_UINT64};
	in.v.u = UINT64_MAX;
	roundtrip(&in, &out, &len);
	assert_true(out.v.u == UINT64_MAX);
	assert_int_equal(len, 11);

	in = (struct spop_data){.type = SPOP_T_IPV4};
	memcpy(in.v.ipv4, "\x7f\x00\x00\x01", 4);
	roundtrip(&in, &out, &len);
	assert_memory_equal(out.v.ipv4, "\x7f\x00\x00\x01", 4);
	assert_int_equal(len, 5);

	in = (struct spop_data){.type = SPOP_T_IPV6};
	memcpy(in.v.ipv6, v6, 16);
	roundtrip(&in, &out, &len);
	assert_memory_equal(out.v.ipv6, v6, 16);
	assert_int_equal(len, 17);

	in = spop_data_str("hello", 5);
	roundtrip(&in, &out, &len);
	assert_int_equal(out.type, SPOP_T_STR);
	assert_int_equal(out.v.s.len, 5);
	assert_memory_equal(out.v.s.ptr, "hello", 5);

	in = spop_data_str("", 0);
	roundtrip(&in, &out, &len);
	assert_int_equal(out.v.s.len, 0);

	in = (struct spop_data){.type = SPOP_T_BIN};
	in.v.s.ptr = bin;
	in.v.s.len = sizeof(bin);
	roundtrip(&in, &out, &len);
	assert_int_equal(out.type, SPOP_T_BIN);
	assert_memory_equal(out.v.s.ptr, bin, sizeof(bin));
}

static void test_data_refuses_unknown_types_and_bad_lengths(void **state)
{
	struct spop_data d;
	const uint8_t *q;

	(void)state;
	for (unsigned t = 10; t < 16; t++) {
		uint8_t b[4] = {(uint8_t)t, 0, 0, 0};

		q = b;
		assert_int_equal(spop_get_data(&q, b + sizeof(b), &d), -1);
	}
	/* A string announcing 5 bytes with 3 present. */
	static const uint8_t shortstr[] = {0x08, 0x05, 'a', 'b', 'c'};
	q = shortstr;
	assert_int_equal(spop_get_data(&q, shortstr + sizeof(shortstr), &d), -1);
	/* A length near 2^64 must not wrap the bounds check. */
	static const uint8_t hugestr[] = {0x09, 0xFF, 0xF0, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x0E, 'x'};
	q = hugestr;
	assert_int_equal(spop_get_data(&q, hugestr + sizeof(hugestr), &d), -1);
	/* UINT32 above 2^32-1. */
	static const uint8_t bigu32[] = {0x03, 0xF0, 0x80, 0x80, 0x80, 0x80, 0x00};
	q = bigu32;
	assert_int_equal(spop_get_data(&q, bigu32 + sizeof(bigu32), &d), -1);
	/* IPv6 with 15 bytes. */
	uint8_t v6[16] = {0x07};
	q = v6;
	assert_int_equal(spop_get_data(&q, v6 + 16, &d), -1);
}

static size_t build_hello(uint8_t *buf, size_t size, const char *versions, long frame_size,
			  const char *caps, int healthcheck, uint64_t sid)
{
	uint8_t *p = buf, *start;
	struct spop_data d;

	start = spop_begin_frame(&p, buf + size, SPOP_FRAME_HAPROXY_HELLO, SPOP_FLAG_FIN, sid, 0);
	assert_non_null(start);
	if (versions) {
		d = spop_data_str(versions, strlen(versions));
		assert_int_equal(spop_put_str(&p, buf + size, "supported-versions", 18), 0);
		assert_int_equal(spop_put_data(&p, buf + size, &d), 0);
	}
	if (frame_size >= 0) {
		d = (struct spop_data){.type = SPOP_T_UINT32};
		d.v.u = (uint64_t)frame_size;
		assert_int_equal(spop_put_str(&p, buf + size, "max-frame-size", 14), 0);
		assert_int_equal(spop_put_data(&p, buf + size, &d), 0);
	}
	if (caps) {
		d = spop_data_str(caps, strlen(caps));
		assert_int_equal(spop_put_str(&p, buf + size, "capabilities", 12), 0);
		assert_int_equal(spop_put_data(&p, buf + size, &d), 0);
	}
	if (healthcheck) {
		d = (struct spop_data){.type = SPOP_T_BOOL};
		d.v.b = true;
		assert_int_equal(spop_put_str(&p, buf + size, "healthcheck", 11), 0);
		assert_int_equal(spop_put_data(&p, buf + size, &d), 0);
	}
	spop_end_frame(start, p);
	return (size_t)(p - buf);
}

static void test_hello_decode_and_checks(void **state)
{
	uint8_t buf[512];
	struct spop_frame f;
	struct spop_hello h;
	uint32_t len;
	size_t n;

	(void)state;
	n = build_hello(buf, sizeof(buf), "2.0", 16380, "pipelining,async", 0, 0);
	assert_int_equal(spop_peek_length(buf, n, 16380, &len), 1);
	assert_int_equal(len, n - 4);
	assert_int_equal(spop_get_frame(buf + 4, len, &f), 0);
	assert_int_equal(f.type, SPOP_FRAME_HAPROXY_HELLO);
	assert_int_equal(f.flags, SPOP_FLAG_FIN);
	assert_int_equal(spop_get_hello(f.payload, f.payload_len, &h), 0);
	assert_int_equal(spop_hello_check(&h), SPOP_ERR_NONE);
	assert_int_equal(h.max_frame_size, 16380);
	assert_true(spop_list_has(h.capabilities, "pipelining"));
	assert_true(spop_list_has(h.capabilities, "async"));
	assert_false(spop_list_has(h.capabilities, "fragmentation"));
	assert_false(h.healthcheck);

	struct {
		const char *versions;
		long frame_size;
		const char *caps;
		enum spop_status want;
	} cases[] = {
		{NULL, 16380, "", SPOP_ERR_NO_VSN},
		{"2.0", -1, "", SPOP_ERR_NO_FRAME_SIZE},
		{"2.0", 16380, NULL, SPOP_ERR_NO_CAP},
		{"1.0", 16380, "", SPOP_ERR_BAD_VSN},
		{"3.0, 1.5", 16380, "", SPOP_ERR_BAD_VSN},
		{" 1.0 , 2.1", 16380, "", SPOP_ERR_NONE},
		{"2.0", 255, "", SPOP_ERR_BAD_FRAME_SIZE},
		{"2.0", 256, "", SPOP_ERR_NONE},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		n = build_hello(buf, sizeof(buf), cases[i].versions, cases[i].frame_size, cases[i].caps, 1, 0);
		assert_int_equal(spop_get_frame(buf + 4, n - 4, &f), 0);
		assert_int_equal(spop_get_hello(f.payload, f.payload_len, &h), 0);
		assert_true(h.healthcheck);
		assert_int_equal(spop_hello_check(&h), cases[i].want);
	}
}

static void test_frame_length_prefix(void **state)
{
	static const uint8_t huge[] = {0xFF, 0xFF, 0xFF, 0xFF};
	uint8_t small[4] = {0, 0, 0, 0};
	uint32_t len;

	(void)state;
	assert_int_equal(spop_peek_length(huge, 3, 16380, &len), 0);
	assert_int_equal(spop_peek_length(huge, 4, 16380, &len), -1);
	assert_true(len == 0xFFFFFFFFu);
	for (uint8_t l = 0; l < 7; l++) {
		small[3] = l;
		assert_int_equal(spop_peek_length(small, 4, 16380, &len), -1);
	}
	small[3] = 7;
	assert_int_equal(spop_peek_length(small, 4, 16380, &len), 1);
	/* Exactly the max is fine, one more is not. */
	small[2] = 0x3F;
	small[3] = 0xFC; /* 16380 */
	assert_int_equal(spop_peek_length(small, 4, 16380, &len), 1);
	small[3] = 0xFD;
	assert_int_equal(spop_peek_length(small, 4, 16380, &len), -1);
}

static void test_frame_header_truncation(void **state)
{
	uint8_t buf[64], *p = buf, *start;
	struct spop_frame f;
	size_t n;

	(void)state;
	start = spop_begin_frame(&p, buf + sizeof(buf), SPOP_FRAME_NOTIFY, SPOP_FLAG_FIN, 300, 2288);
	spop_end_frame(start, p);
	n = (size_t)(p - buf) - 4;
	assert_int_equal(spop_get_frame(buf + 4, n, &f), 0);
	assert_int_equal(f.sid, 300);
	assert_int_equal(f.fid, 2288);
	assert_int_equal(f.payload_len, 0);
	for (size_t cut = 0; cut < n; cut++)
		assert_int_equal(spop_get_frame(buf + 4, cut, &f), -1);
	/* The encoded length prefix is big-endian. */
	assert_int_equal(buf[0], 0);
	assert_int_equal(buf[3], n);
}

static void test_message_list_and_counts_that_overrun(void **state)
{
	uint8_t buf[256], *p = buf;
	const uint8_t *q;
	static struct spop_msg m;
	struct spop_data d;

	(void)state;
	assert_int_equal(spop_put_str(&p, buf + sizeof(buf), "llm-request", 11), 0);
	*p++ = 2;
	assert_int_equal(spop_put_str(&p, buf + sizeof(buf), "user", 4), 0);
	d = spop_data_str("alice", 5);
	assert_int_equal(spop_put_data(&p, buf + sizeof(buf), &d), 0);
	assert_int_equal(spop_put_str(&p, buf + sizeof(buf), "", 0), 0); /* unnamed arg */
	d = spop_data_int(-5);
	assert_int_equal(spop_put_data(&p, buf + sizeof(buf), &d), 0);
	q = buf;
	assert_int_equal(spop_get_message(&q, p, &m), 0);
	assert_ptr_equal(q, p);
	assert_true(spop_str_eq(m.name, "llm-request"));
	assert_int_equal(m.nargs, 2);
	assert_non_null(spop_msg_arg(&m, "user"));
	assert_null(spop_msg_arg(&m, "auth"));
	assert_true(spop_msg_arg(&m, "")->v.i == -5);
	/* Claim 3 arguments when 2 are present: refused. */
	buf[12] = 3;
	q = buf;
	assert_int_equal(spop_get_message(&q, p, &m), -1);
	assert_ptr_equal(q, buf);
	/* Every truncation of the valid list is refused. */
	buf[12] = 2;
	for (const uint8_t *cut = buf; cut < p; cut++) {
		q = buf;
		assert_int_equal(spop_get_message(&q, cut, &m), -1);
	}
}

static void test_actions_all_scopes(void **state)
{
	uint8_t buf[128], *p;
	struct spop_data d = spop_data_str("allow", 5);

	(void)state;
	for (int s = 0; s < SPOP_SCOPE_COUNT; s++) {
		p = buf;
		assert_int_equal(spop_put_set_var(&p, buf + sizeof(buf), (enum spop_scope)s, "action", &d), 0);
		/* 01 03 <scope> <name> <value> */
		assert_int_equal(buf[0], SPOP_ACT_SET_VAR);
		assert_int_equal(buf[1], 3);
		assert_int_equal(buf[2], s);
		assert_int_equal(buf[3], 6);
		assert_memory_equal(buf + 4, "action", 6);
		assert_int_equal(buf[10], SPOP_T_STR);
		assert_int_equal(buf[11], 5);
		assert_int_equal((size_t)(p - buf), 17);
		p = buf;
		assert_int_equal(spop_put_unset_var(&p, buf + sizeof(buf), (enum spop_scope)s, "x"), 0);
		assert_memory_equal(buf, ((uint8_t[]){2, 2, (uint8_t)s, 1, 'x'}), 5);
		assert_int_equal((size_t)(p - buf), 5);
	}
	p = buf;
	assert_int_equal(spop_put_set_var(&p, buf + sizeof(buf), SPOP_SCOPE_COUNT, "x", &d), -1);
	/* An action that does not fit is dropped whole by the ack writer. */
	struct ack a = {.p = buf, .end = buf + 20};
	ack_set_cstr(&a, "action", "allow");
	ack_set_cstr(&a, "backend", "provider_primary");
	assert_int_equal(a.nactions, 1);
	assert_int_equal(a.dropped, 1);
	assert_ptr_equal(a.p, buf + 17);
}

static void test_agent_frames_exact_bytes(void **state)
{
	uint8_t buf[256], *p = buf;
	struct spop_frame f;
	struct spop_disconnect d;
	uint32_t len;

	(void)state;
	assert_int_equal(spop_put_agent_hello(&p, buf + sizeof(buf), 16380, "pipelining"), 0);
	/* type 101, flags exactly 00 00 00 01, sid and fid single zero bytes */
	assert_memory_equal(buf + 4, ((uint8_t[]){101, 0, 0, 0, 1, 0, 0}), 7);
	assert_int_equal(spop_peek_length(buf, (size_t)(p - buf), 16380, &len), 1);
	assert_int_equal(len, (size_t)(p - buf) - 4);

	p = buf;
	assert_int_equal(spop_put_agent_disconnect(&p, buf + sizeof(buf), 4, "invalid"), 0);
	assert_int_equal(spop_get_frame(buf + 4, (size_t)(p - buf) - 4, &f), 0);
	assert_int_equal(f.type, SPOP_FRAME_AGENT_DISCONNECT);
	assert_int_equal(spop_get_disconnect(f.payload, f.payload_len, &d), 0);
	assert_int_equal(d.status, 4);
	assert_true(spop_str_eq(d.message, "invalid"));
	/* Too small an output buffer: refused. */
	p = buf;
	assert_int_equal(spop_put_agent_hello(&p, buf + 20, 16380, "pipelining"), -1);
}

static void test_garbage_never_crashes(void **state)
{
	uint8_t buf[512];
	static struct spop_msg m;
	unsigned seed = 12345;

	(void)state;
	for (int round = 0; round < 20000; round++) {
		size_t n = (size_t)(rand_r(&seed) % sizeof(buf));
		const uint8_t *q;
		struct spop_frame f;
		struct spop_hello h;

		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)rand_r(&seed);
		if (spop_get_frame(buf, n, &f) == 0) {
			assert_true(f.payload >= buf && f.payload + f.payload_len == buf + n);
			q = f.payload;
			while (q < buf + n && spop_get_message(&q, buf + n, &m) == 0)
				assert_true(q <= buf + n);
			spop_get_hello(f.payload, f.payload_len, &h);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_varint_vectors),
		cmocka_unit_test(test_varint_boundaries_and_truncation),
		cmocka_unit_test(test_varint_refuses_overlong_and_overflow),
		cmocka_unit_test(test_data_roundtrip_every_type),
		cmocka_unit_test(test_data_refuses_unknown_types_and_bad_lengths),
		cmocka_unit_test(test_hello_decode_and_checks),
		cmocka_unit_test(test_frame_length_prefix),
		cmocka_unit_test(test_frame_header_truncation),
		cmocka_unit_test(test_message_list_and_counts_that_overrun),
		cmocka_unit_test(test_actions_all_scopes),
		cmocka_unit_test(test_agent_frames_exact_bytes),
		cmocka_unit_test(test_garbage_never_crashes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
