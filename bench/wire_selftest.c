/*
 * wire_selftest: checks bench/spopwire.c against hand-written vectors taken
 * from the SPOP spec (varints, typed data, HELLO / NOTIFY / ACK /
 * DISCONNECT frames), round trips, and byte-by-byte incremental parsing.
 * Last line of output: "N passed, N failed"; exit status 1 on any failure.
 *
 * Build and run:
 *   cc -std=c11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
 *      -D_GNU_SOURCE bench/wire_selftest.c bench/spopwire.c \
 *      -o build/wire_selftest && build/wire_selftest
 */
#include "spopwire.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static unsigned passed, failed;

#define CHECK(cond) check((cond) != 0, #cond, __LINE__)

static void
check(int ok, const char *what, int line)
{
	if (ok) {
		passed++;
	} else {
		failed++;
		printf("FAIL line %d: %s\n", line, what);
	}
}

/* Literal byte vectors: sizeof - 1 drops the literal's NUL. */
#define VEC(s) { (const uint8_t *)(s), sizeof(s) - 1 }

struct vec {
	const uint8_t *b;
	size_t n;
};

static void
hexdump(const char *label, const uint8_t *p, size_t n)
{
	size_t i;

	printf("  %s:", label);
	for (i = 0; i < n; i++)
		printf(" %02x", p[i]);
	printf("\n");
}

static int
same_bytes(const uint8_t *a, size_t na, struct vec want)
{
	if (na == want.n && memcmp(a, want.b, na) == 0)
		return 1;
	hexdump("got ", a, na);
	hexdump("want", want.b, want.n);
	return 0;
}

static void
test_varint_vectors(void)
{
	static const struct {
		uint64_t v;
		struct vec enc;
	} t[] = {
		{ 0, VEC("\x00") },
		{ 239, VEC("\xef") },
		{ 240, VEC("\xf0\x00") },
		{ 300, VEC("\xfc\x03") },
		{ 2287, VEC("\xff\x7f") },
		{ 2288, VEC("\xf0\x80\x00") },
		{ 16380, VEC("\xfc\xf0\x06") },
		{ 65535, VEC("\xff\xf0\x1e") },
		{ 264432, VEC("\xf0\x80\x80\x00") },
		{ 4294967295u, VEC("\xff\xf0\xfe\xfe\x7e") },
		{ UINT64_MAX, VEC("\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e") },
	};
	uint8_t buf[16], *p;
	const uint8_t *q;
	uint64_t v;
	size_t i, cut;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		p = buf;
		CHECK(spopwire_put_varint(&p, buf + sizeof(buf), t[i].v) == 0);
		CHECK(same_bytes(buf, (size_t)(p - buf), t[i].enc));
		CHECK(spopwire_varint_size(t[i].v) == t[i].enc.n);

		q = t[i].enc.b;
		CHECK(spopwire_get_varint(&q, t[i].enc.b + t[i].enc.n, &v) == 0);
		CHECK(v == t[i].v);
		CHECK(q == t[i].enc.b + t[i].enc.n);

		/* Every truncation fails and leaves the cursor alone. */
		for (cut = 0; cut < t[i].enc.n; cut++) {
			q = t[i].enc.b;
			CHECK(spopwire_get_varint(&q, t[i].enc.b + cut, &v) == -1);
			CHECK(q == t[i].enc.b);
		}
		/* The encoder refuses a buffer one byte short. */
		p = buf;
		CHECK(spopwire_put_varint(&p, buf + t[i].enc.n - 1, t[i].v) == -1);
		CHECK(p == buf);
	}
}

static void
test_varint_bad(void)
{
	/* 11 bytes: continuation never stops within the 10-byte limit. */
	static const uint8_t too_long[] = { 0xf0, 0x80, 0x80, 0x80, 0x80, 0x80,
					    0x80, 0x80, 0x80, 0x80, 0x00 };
	/* UINT64_MAX + 2^60: carry out of bit 63. */
	static const uint8_t carry[] = { 0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe,
					 0xfe, 0xfe, 0xfe, 0x0f };
	/* Bits shifted past bit 63 by the 10th byte. */
	static const uint8_t shifted[] = { 0xf0, 0x80, 0x80, 0x80, 0x80, 0x80,
					   0x80, 0x80, 0x80, 0x10 };
	const uint8_t *q;
	uint64_t v;

	q = too_long;
	CHECK(spopwire_get_varint(&q, too_long + sizeof(too_long), &v) == -1);
	q = carry;
	CHECK(spopwire_get_varint(&q, carry + sizeof(carry), &v) == -1);
	q = shifted;
	CHECK(spopwire_get_varint(&q, shifted + sizeof(shifted), &v) == -1);
	q = too_long;
	CHECK(spopwire_get_varint(&q, too_long, &v) == -1);
}

static void
test_varint_roundtrip(void)
{
	uint64_t x = 0x9E3779B97F4A7C15u, v, w;
	uint8_t buf[16], *p;
	const uint8_t *q;
	unsigned i, bad = 0;

	for (i = 0; i < 200000; i++) {
		/* xorshift64, then keep a random number of low bits. */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		v = x >> (x % 64);
		p = buf;
		if (spopwire_put_varint(&p, buf + sizeof(buf), v) == -1 ||
		    (size_t)(p - buf) != spopwire_varint_size(v) ||
		    (size_t)(p - buf) > SPOPWIRE_VARINT_MAX) {
			bad++;
			continue;
		}
		q = buf;
		if (spopwire_get_varint(&q, p, &w) == -1 || w != v || q != p)
			bad++;
	}
	CHECK(bad == 0);
}

static void
test_data(void)
{
	static const uint8_t ip6[16] = { [15] = 1 };
	static const uint8_t ip4[4] = { 127, 0, 0, 1 };
	struct spopwire_data in[10], out;
	uint8_t buf[64], *p;
	const uint8_t *q;
	char txt[128];
	size_t i;

	in[0] = spopwire_null();
	in[1] = spopwire_bool(1);
	in[2] = spopwire_int32(-7);
	in[3] = spopwire_uint32(4294967295u);
	in[4] = spopwire_int64(INT64_MIN);
	in[5] = spopwire_uint64(UINT64_MAX);
	in[6] = spopwire_ipv4(ip4);
	in[7] = spopwire_ipv6(ip6);
	in[8] = spopwire_strz("allow");
	in[9] = spopwire_bin("\x00\xff", 2);
	for (i = 0; i < 10; i++) {
		p = buf;
		CHECK(spopwire_put_data(&p, buf + sizeof(buf), &in[i]) == 0);
		q = buf;
		CHECK(spopwire_get_data(&q, p, &out) == 0);
		CHECK(q == p);
		CHECK(out.type == in[i].type);
		spopwire_format_data(txt, sizeof(txt), &out);
		switch (i) {
		case 0: CHECK(strcmp(txt, "null") == 0); break;
		case 1: CHECK(strcmp(txt, "bool:true") == 0); break;
		case 2: CHECK(strcmp(txt, "int32:-7") == 0); break;
		case 3: CHECK(strcmp(txt, "uint32:4294967295") == 0); break;
		case 4: CHECK(strcmp(txt, "int64:-9223372036854775808") == 0); break;
		case 5: CHECK(strcmp(txt, "uint64:18446744073709551615") == 0); break;
		case 6: CHECK(strcmp(txt, "ipv4:127.0.0.1") == 0); break;
		case 7: CHECK(strcmp(txt, "ipv6:::1") == 0); break;
		case 8: CHECK(strcmp(txt, "str:allow") == 0); break;
		case 9: CHECK(strcmp(txt, "bin:00ff") == 0); break;
		}
	}

	/* Hand-written encodings. */
	{
		static const struct vec bool_false = VEC("\x01");
		static const struct vec bool_true = VEC("\x11");
		static const struct vec i32m1 = VEC("\x02\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e");

		struct spopwire_data d = spopwire_bool(0);

		p = buf;
		CHECK(spopwire_put_data(&p, buf + sizeof(buf), &d) == 0);
		CHECK(same_bytes(buf, (size_t)(p - buf), bool_false));
		d = spopwire_bool(1);
		p = buf;
		CHECK(spopwire_put_data(&p, buf + sizeof(buf), &d) == 0);
		CHECK(same_bytes(buf, (size_t)(p - buf), bool_true));
		d = spopwire_int32(-1);
		p = buf;
		CHECK(spopwire_put_data(&p, buf + sizeof(buf), &d) == 0);
		CHECK(same_bytes(buf, (size_t)(p - buf), i32m1));
	}

	/* Rejections: reserved type, out-of-range 32-bit ints, truncations. */
	{
		static const uint8_t reserved[] = { 0x0a };
		static const uint8_t u32big[] = { 0x03, 0xf0, 0x80, 0x80, 0x80, 0x80, 0x00 };
		static const uint8_t i32big[] = { 0x02, 0xff, 0xf0, 0xfe, 0xfe, 0x7e };
		static const uint8_t strshort[] = { 0x08, 0x05, 'a', 'b' };
		static const uint8_t ip4short[] = { 0x06, 1, 2, 3 };

		q = reserved;
		CHECK(spopwire_get_data(&q, reserved + sizeof(reserved), &out) == -1);
		q = u32big;
		CHECK(spopwire_get_data(&q, u32big + sizeof(u32big), &out) == -1);
		q = i32big;
		CHECK(spopwire_get_data(&q, i32big + sizeof(i32big), &out) == -1);
		q = strshort;
		CHECK(spopwire_get_data(&q, strshort + sizeof(strshort), &out) == -1);
		CHECK(q == strshort);
		q = ip4short;
		CHECK(spopwire_get_data(&q, ip4short + sizeof(ip4short), &out) == -1);
	}

	/* Text formatting of awkward strings. */
	{
		struct spopwire_str s = { (const uint8_t *)"a b\"\x01", 5 };

		spopwire_format_str(txt, sizeof(txt), s, 0, 64);
		CHECK(strcmp(txt, "\"a b\\\"\\x01\"") == 0);
		s.len = 0;
		spopwire_format_str(txt, sizeof(txt), s, 1, 64);
		CHECK(strcmp(txt, "\"\"") == 0);
		s.ptr = (const uint8_t *)"pipelining,async";
		s.len = 16;
		spopwire_format_str(txt, sizeof(txt), s, 0, 64);
		CHECK(strcmp(txt, "pipelining,async") == 0);
		spopwire_format_str(txt, sizeof(txt), s, 0, 4);
		CHECK(strcmp(txt, "pipe...(16 bytes)") == 0);
		spopwire_format_str(txt, 5, s, 0, 64);
		CHECK(strcmp(txt, "pipe") == 0);
	}
}

static void
test_capabilities(void)
{
	struct spopwire_str s;

	s.ptr = (const uint8_t *)" async , pipelining ";
	s.len = strlen((const char *)s.ptr);
	CHECK(spopwire_has_capability(s, "pipelining"));
	CHECK(spopwire_has_capability(s, "async"));
	CHECK(!spopwire_has_capability(s, "fragmentation"));
	s.ptr = (const uint8_t *)"pipelining2,xpipelining";
	s.len = strlen((const char *)s.ptr);
	CHECK(!spopwire_has_capability(s, "pipelining"));
	s.len = 0;
	CHECK(!spopwire_has_capability(s, "pipelining"));
}

/* Feeds v to the frame parser at every prefix length; only the whole frame
 * parses, and its size is returned. */
static void
check_incremental(struct vec v, struct spopwire_frame *f)
{
	size_t cut;
	unsigned bad = 0;

	for (cut = 0; cut < v.n; cut++)
		if (spopwire_frame_parse(v.b, cut, 65535, f) != 0)
			bad++;
	CHECK(bad == 0);
	/* A limit below the announced length fails as soon as the prefix is in. */
	CHECK(spopwire_frame_parse(v.b, 4, (uint32_t)(v.n - 5), f) == -1);
	CHECK(spopwire_frame_parse(v.b, v.n, 65535, f) == (long)v.n);
}

static void
test_hello(void)
{
	static const struct vec want = VEC(
		"\x00\x00\x00\x58" "\x01" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x12" "supported-versions" "\x08\x03" "2.0"
		"\x0e" "max-frame-size" "\x03\xfc\xf0\x06"
		"\x0c" "capabilities" "\x08\x0a" "pipelining"
		"\x09" "engine-id" "\x08\x01" "e");
	static const struct vec want_hc = VEC(
		"\x00\x00\x00\x4e" "\x01" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x12" "supported-versions" "\x08\x03" "2.0"
		"\x0e" "max-frame-size" "\x03\xfc\xf0\x06"
		"\x0c" "capabilities" "\x08\x00"
		"\x0b" "healthcheck" "\x11");
	struct spopwire_hello h = { "2.0", 16380, "pipelining", -1, "e" };
	struct spopwire_frame f;
	uint8_t buf[256];
	long n;

	n = spopwire_build_hello(buf, sizeof(buf), &h);
	CHECK(n > 0 && same_bytes(buf, (size_t)n, want));
	CHECK(spopwire_build_hello(buf, (size_t)want.n - 1, &h) == -1);
	check_incremental(want, &f);
	CHECK(f.type == SPOPWIRE_FRAME_HAPROXY_HELLO && f.flags == SPOPWIRE_FLAG_FIN);
	CHECK(f.sid == 0 && f.fid == 0 && f.len == 0x58);

	h.capabilities = "";
	h.healthcheck = 1;
	h.engine_id = NULL;
	n = spopwire_build_hello(buf, sizeof(buf), &h);
	CHECK(n > 0 && same_bytes(buf, (size_t)n, want_hc));
}

static void
test_agent_frames(void)
{
	static const struct vec hello = VEC(
		"\x00\x00\x00\x40" "\x65" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x07" "version" "\x08\x03" "2.0"
		"\x0e" "max-frame-size" "\x03\xfc\xf0\x06"
		"\x0c" "capabilities" "\x08\x0a" "pipelining");
	static const struct vec disc = VEC(
		"\x00\x00\x00\x22" "\x66" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x0b" "status-code" "\x03\x04"
		"\x07" "message" "\x08\x03" "bad");
	struct spopwire_agent_kv kv;
	struct spopwire_frame f;
	uint8_t buf[128];
	uint64_t v;
	long n;

	check_incremental(hello, &f);
	CHECK(f.type == SPOPWIRE_FRAME_AGENT_HELLO);
	CHECK(spopwire_parse_agent_kv(f.payload, f.payload + f.payload_len, &kv) == 0);
	CHECK(kv.present == (SPOPWIRE_KV_VERSION | SPOPWIRE_KV_MAX_FRAME_SIZE |
			     SPOPWIRE_KV_CAPABILITIES));
	CHECK(kv.nkv == 3 && kv.unknown == 0 && kv.duplicate == 0);
	CHECK(spopwire_data_streq(&kv.version, "2.0"));
	CHECK(kv.max_frame_size.type == SPOPWIRE_T_UINT32);
	CHECK(spopwire_data_to_u64(&kv.max_frame_size, &v) == 0 && v == 16380);
	CHECK(spopwire_has_capability(kv.capabilities.v.str, "pipelining"));

	check_incremental(disc, &f);
	CHECK(f.type == SPOPWIRE_FRAME_AGENT_DISCONNECT);
	CHECK(spopwire_parse_agent_kv(f.payload, f.payload + f.payload_len, &kv) == 0);
	CHECK(kv.present == (SPOPWIRE_KV_STATUS_CODE | SPOPWIRE_KV_MESSAGE));
	CHECK(spopwire_data_to_u64(&kv.status_code, &v) == 0 && v == 4);
	CHECK(spopwire_data_streq(&kv.message, "bad"));

	n = spopwire_build_disconnect(buf, sizeof(buf), SPOPWIRE_FRAME_AGENT_DISCONNECT, 4, "bad");
	CHECK(n > 0 && same_bytes(buf, (size_t)n, disc));

	/* A truncated KV list fails. */
	CHECK(spopwire_parse_agent_kv(f.payload, f.payload + f.payload_len - 1, &kv) == -1);
}

static void
test_notify(void)
{
	static const struct vec want = VEC(
		"\x00\x00\x00\x4b" "\x03" "\x00\x00\x00\x01" "\x01" "\x01"
		"\x01" "m" "\x09"
		"\x01" "s" "\x08\x02" "ab"
		"\x01" "i" "\x04\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e"
		"\x01" "u" "\x03\xfc\x03"
		"\x01" "t" "\x11"
		"\x01" "f" "\x01"
		"\x01" "n" "\x00"
		"\x01" "4" "\x06\x7f\x00\x00\x01"
		"\x01" "6" "\x07" "\x00\x00\x00\x00\x00\x00\x00\x00"
			      "\x00\x00\x00\x00\x00\x00\x00\x01"
		"\x01" "z" "\x09\x02\x00\xff");
	static const uint8_t ip6[16] = { [15] = 1 };
	static const uint8_t ip4[4] = { 127, 0, 0, 1 };
	struct spopwire_arg args[9];
	struct spopwire_str name;
	struct spopwire_data val;
	struct spopwire_frame f;
	const uint8_t *q, *end;
	unsigned nargs, i;
	uint8_t buf[256];
	long n;

	args[0] = (struct spopwire_arg){ "s", spopwire_strz("ab") };
	args[1] = (struct spopwire_arg){ "i", spopwire_int64(-1) };
	args[2] = (struct spopwire_arg){ "u", spopwire_uint32(300) };
	args[3] = (struct spopwire_arg){ "t", spopwire_bool(1) };
	args[4] = (struct spopwire_arg){ "f", spopwire_bool(0) };
	args[5] = (struct spopwire_arg){ "n", spopwire_null() };
	args[6] = (struct spopwire_arg){ "4", spopwire_ipv4(ip4) };
	args[7] = (struct spopwire_arg){ "6", spopwire_ipv6(ip6) };
	args[8] = (struct spopwire_arg){ "z", spopwire_bin("\x00\xff", 2) };

	n = spopwire_build_notify(buf, sizeof(buf), 1, 1, "m", args, 9);
	CHECK(n > 0 && same_bytes(buf, (size_t)n, want));
	CHECK(spopwire_build_notify(buf, (size_t)want.n - 1, 1, 1, "m", args, 9) == -1);

	/* Round trip through the decoder. */
	check_incremental(want, &f);
	CHECK(f.type == SPOPWIRE_FRAME_NOTIFY && f.sid == 1 && f.fid == 1);
	q = f.payload;
	end = f.payload + f.payload_len;
	CHECK(spopwire_get_message(&q, end, &name, &nargs) == 0);
	CHECK(name.len == 1 && name.ptr[0] == 'm' && nargs == 9);
	for (i = 0; i < 9 && i < nargs; i++) {
		CHECK(spopwire_get_kv(&q, end, &name, &val) == 0);
		CHECK(name.len == 1 && name.ptr[0] == args[i].name[0]);
		CHECK(val.type == args[i].value.type);
	}
	CHECK(q == end);

	/* Large ids take their multi-byte varint form. */
	n = spopwire_build_notify(buf, sizeof(buf), 4294967295u, 2288, "m", args, 1);
	CHECK(n > 0);
	CHECK(spopwire_frame_parse(buf, (size_t)n, 65535, &f) == n);
	CHECK(f.sid == 4294967295u && f.fid == 2288);
}

static void
test_ack(void)
{
	static const struct vec want = VEC(
		"\x00\x00\x00\x18" "\x67" "\x00\x00\x00\x01" "\x01" "\x01"
		"\x01\x03\x02" "\x06" "action" "\x08\x05" "allow");
	static const uint8_t two[] = {
		0x01, 0x03, 0x02, 0x01, 'a', 0x04, 0x05,	/* set-var txn a int64:5 */
		0x02, 0x02, 0x04, 0x01, 'b',			/* unset-var res b */
	};
	static const uint8_t bad_nargs[] = { 0x01, 0x02, 0x02, 0x01, 'a', 0x00 };
	static const uint8_t bad_scope[] = { 0x01, 0x03, 0x05, 0x01, 'a', 0x00 };
	static const uint8_t bad_type[] = { 0x03, 0x00, 0x02 };
	struct spopwire_action a, out;
	struct spopwire_frame f;
	const uint8_t *q, *end;
	uint8_t buf[128];
	char txt[128];
	long n;

	check_incremental(want, &f);
	CHECK(f.type == SPOPWIRE_FRAME_ACK && f.sid == 1 && f.fid == 1);
	q = f.payload;
	end = f.payload + f.payload_len;
	CHECK(spopwire_get_action(&q, end, &out) == 0 && q == end);
	spopwire_format_action(txt, sizeof(txt), &out);
	CHECK(strcmp(txt, "set-var txn action str:allow") == 0);

	memset(&a, 0, sizeof(a));
	a.type = SPOPWIRE_ACT_SET_VAR;
	a.nargs = 3;
	a.scope = SPOPWIRE_SCOPE_TXN;
	a.name.ptr = (const uint8_t *)"action";
	a.name.len = 6;
	a.value = spopwire_strz("allow");
	n = spopwire_build_ack(buf, sizeof(buf), 1, 1, &a, 1);
	CHECK(n > 0 && same_bytes(buf, (size_t)n, want));

	q = two;
	end = two + sizeof(two);
	CHECK(spopwire_get_action(&q, end, &out) == 0);
	spopwire_format_action(txt, sizeof(txt), &out);
	CHECK(strcmp(txt, "set-var txn a int64:5") == 0);
	CHECK(spopwire_get_action(&q, end, &out) == 0 && q == end);
	spopwire_format_action(txt, sizeof(txt), &out);
	CHECK(strcmp(txt, "unset-var res b") == 0);

	q = bad_nargs;
	CHECK(spopwire_get_action(&q, bad_nargs + sizeof(bad_nargs), &out) == -1);
	q = bad_scope;
	CHECK(spopwire_get_action(&q, bad_scope + sizeof(bad_scope), &out) == -1);
	q = bad_type;
	CHECK(spopwire_get_action(&q, bad_type + sizeof(bad_type), &out) == -1);
	q = two;
	CHECK(spopwire_get_action(&q, two + 6, &out) == -1);
}

static void
test_frame_bad(void)
{
	static const uint8_t zero[] = { 0, 0, 0, 0 };
	static const uint8_t six[] = { 0, 0, 0, 6, 0x67, 0, 0, 0, 1, 0 };
	/* Declares 7 bytes but its sid varint runs past the frame end. */
	static const uint8_t sid_overrun[] = { 0, 0, 0, 7, 0x67, 0, 0, 0, 1, 0xf0, 0x80 };
	static const uint8_t huge[] = { 0xff, 0xff, 0xff, 0xff };
	struct spopwire_frame f;

	CHECK(spopwire_frame_parse(zero, sizeof(zero), 16380, &f) == -1);
	CHECK(spopwire_frame_parse(six, sizeof(six), 16380, &f) == -1);
	CHECK(spopwire_frame_parse(sid_overrun, sizeof(sid_overrun), 16380, &f) == -1);
	CHECK(spopwire_frame_parse(huge, sizeof(huge), UINT32_MAX, &f) == -1);
	CHECK(f.len == UINT32_MAX);
}

int
main(void)
{
	test_varint_vectors();
	test_varint_bad();
	test_varint_roundtrip();
	test_data();
	test_capabilities();
	test_hello();
	test_agent_frames();
	test_notify();
	test_ack();
	test_frame_bad();
	printf("%u passed, %u failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
