/* Unit tests of redaction: what must be masked, in plain text and inside
 * JSON strings, and what must stay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "redact.h"

static void expect(const char *in, const char *want)
{
	char out[1024];
	size_t n = redact(in, strlen(in), out, sizeof(out));

	assert_int_equal(n, strlen(out));
	assert_string_equal(out, want);
}

static void test_keys(void **state)
{
	(void)state;
	expect("key sk-abcdefghijklmnop1234 end", "key [REDACTED:key] end");
	expect("sk_live_abcdefghijklmnop1234", "[REDACTED:key]");
	expect("aws AKIAIOSFODNN7EXAMPLE.", "aws [REDACTED:key].");
	expect("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "[REDACTED:key]");
	expect("Authorization: Bearer abc.def-ghi_jkl", "Authorization: Bearer [REDACTED:key]");
	/* Too short to be a key, or inside a word: kept. */
	expect("sk-short", "sk-short");
	expect("tasksk-abcdefghijklmnopq", "tasksk-abcdefghijklmnopq");
}

static void test_emails(void **state)
{
	(void)state;
	expect("write to jane.doe+x@example.org now", "write to [REDACTED:email] now");
	/* After a JSON escape the address starts after the escape letter. */
	expect("\"line\\njane@example.org\"", "\"line\\n[REDACTED:email]\"");
	expect("not@an-address", "not@an-address");
	expect("a @ b", "a @ b");
}

static void test_cards(void **state)
{
	(void)state;
	expect("card 4111 1111 1111 1111.", "card [REDACTED:card].");
	expect("4111-1111-1111-1111", "[REDACTED:card]");
	expect("\"card:\\n4111111111111111\"", "\"card:\\n[REDACTED:card]\"");
	expect("\\t4111111111111111", "\\t[REDACTED:card]");
	/* 12 digits, or digits glued to letters: kept. */
	expect("order 123456789012", "order 123456789012");
	expect("id x4111111111111111", "id x4111111111111111");
}

static void test_bounded_output(void **state)
{
	char out[8];

	(void)state;
	assert_int_equal(redact("sk-abcdefghijklmnop1234", 23, out, sizeof(out)), 7);
	assert_string_equal(out, "[REDACT");
	assert_int_equal(redact("anything", 8, out, 1), 0);
	assert_string_equal(out, "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_emails),
		cmocka_unit_test(test_cards),
		cmocka_unit_test(test_bounded_output),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
