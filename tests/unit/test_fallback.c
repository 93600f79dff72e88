/*
 * Unit tests of the computed fallback: the tolerant scanner that finds the
 * first paragraph of the last user message in the start of a chat body
 * (cut anywhere), and the bounded, valid UTF-8 answer composed from it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fallback.h"
#include "utf8_valid.h"
#include "policy.h"

#define TEXT "Our assistant is busy \xe2\x80\x94 we received your question:"


/* s[0..n) printable: anything but printable ASCII as \xNN, so that a
 * failure message is readable and never itself invalid UTF-8. Four
 * buffers in rotation: enough for one message. */
static const char *shown(const char *s, size_t n)
{
	static char bufs[4][1024];
	static int next;
	char *b = bufs[next++ % 4];
	size_t k = 0;

	for (size_t i = 0; i < n && k + 5 < sizeof(bufs[0]); i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 0x20 && c < 0x7F && c != '\\')
			b[k++] = (char)c;
		else
			k += (size_t)snprintf(b + k, sizeof(bufs[0]) - k, "\\x%02x", c);
	}
	b[k] = '\0';
	return b;
}

static struct policy_route route(enum policy_fallback kind, const char *text, int max_bytes)
{
	struct policy_route r;

	memset(&r, 0, sizeof(r));
	r.name = "chat";
	r.path_prefix = "/v1/chat/completions";
	r.model_glob = "*";
	r.priority = 10;
	r.timeout_ms = 30000;
	r.fallback = kind;
	r.fallback_backend = kind == POLICY_FALLBACK_BACKEND ? "be_canned" : NULL;
	r.fallback_text = (char *)text;
	r.fallback_max_bytes = max_bytes;
	return r;
}

/* The paragraph of a NUL-terminated body, with a roomy buffer. */
static size_t para(const char *body, char *out, size_t size)
{
	size_t n = fallback_last_user_paragraph((const uint8_t *)body, strlen(body), out, size);

	assert_true(n < size);
	assert_int_equal(out[n], '\0');
	return n;
}

static void expect_para(const char *body, const char *want)
{
	char out[4096];
	size_t n = para(body, out, sizeof(out));

	if (n != strlen(want) || memcmp(out, want, n) != 0)
		fail_msg("got \"%s\" (%zu bytes), want \"%s\"", shown(out, n), n, shown(want, strlen(want)));
}

static void test_last_user_message(void **state)
{
	expect_para("{\"model\":\"gpt-4o-mini\",\"messages\":["
		    "{\"role\":\"system\",\"content\":\"You are terse.\"},"
		    "{\"role\":\"user\",\"content\":\"What is HAProxy?\"},"
		    "{\"role\":\"assistant\",\"content\":\"A load balancer.\"},"
		    "{\"role\":\"user\",\"content\":\"And what is SPOE?\"}],"
		    "\"max_tokens\":100}",
		    "And what is SPOE?");
	/* Pretty-printed, spaces around the colons. */
	expect_para("{\n  \"messages\": [\n    {\n      \"role\" : \"user\",\n      \"content\" :\n"
		    "        \"Hello there\"\n    },\n    {\n      \"role\": \"assistant\",\n"
		    "      \"content\": \"Hi\"\n    }\n  ]\n}\n",
		    "Hello there");
	/* The last user message even when an assistant one follows. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"one\"},"
		    "{\"role\":\"assistant\",\"content\":\"two\"}]}",
		    "one");
	/* Quoted JSON inside the content is not mistaken for keys. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"real\"},"
		    "{\"role\":\"assistant\",\"content\":\"say {\\\"role\\\": \\\"user\\\", "
		    "\\\"content\\\": \\\"fake\\\"}\"}]}",
		    "real");
	/* A role named like a user is not one. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"mine\"},"
		    "{\"role\":\"users\",\"content\":\"theirs\"}]}",
		    "mine");
}

static void test_content_before_role(void **state)
{
	expect_para("{\"messages\":[{\"role\":\"assistant\",\"content\":\"Hello, how can I help?\"},"
		    "{\"content\":\"Tell me about breakers\",\"role\":\"user\"}]}",
		    "Tell me about breakers");
	/* Keys sorted (json.dumps(sort_keys=True), Go maps): content always
	 * comes first; the last message is the user's. */
	expect_para("{\"messages\":[{\"content\":\"Be brief.\",\"role\":\"system\"},"
		    "{\"content\":\"first\",\"role\":\"user\"},"
		    "{\"content\":\"reply\",\"role\":\"assistant\"},"
		    "{\"content\":\"second\",\"role\":\"user\"}],\"model\":\"m\"}",
		    "second");
}

/*
 * Keys sorted, and the conversation does not end with the user: an
 * assistant prefill, or a tool call and its result after the question.
 * The content after the user's "role" belongs to the next message.
 */
static void test_content_before_role_then_another_message(void **state)
{
	expect_para("{\"messages\":[{\"content\":\"Be brief.\",\"role\":\"system\"},"
		    "{\"content\":\"What is the weather in Paris?\",\"role\":\"user\"},"
		    "{\"content\":\"Let me check\",\"role\":\"assistant\"}],\"model\":\"m\"}",
		    "What is the weather in Paris?");
}

static void test_content_parts(void **state)
{
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":["
		    "{\"type\":\"text\",\"text\":\"Describe this picture\"},"
		    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x/y.png\"}}]}]}",
		    "Describe this picture");
	/* The image first: the first part that has text. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"old\"},"
		    "{\"role\":\"user\",\"content\":["
		    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}},"
		    "{ \"type\" : \"text\" , \"text\" : \"What is in it?\\n\\nBe precise.\" }]}]}",
		    "What is in it?");
	/* Anthropic style: system apart, parts with "type": "text". */
	expect_para("{\"system\":\"You are terse.\",\"messages\":[{\"role\":\"user\",\"content\":"
		    "[{\"type\":\"text\",\"text\":\"Summarise RFC 9110\"}]}],\"max_tokens\":64}",
		    "Summarise RFC 9110");
}

static void test_escapes(void **state)
{
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":"
		    "\"a\\nb \\\"q\\\" back\\\\slash \\/ tab\\tx caf\\u00e9 \\u00C9t\\u00e9 "
		    "smile \\ud83d\\ude00 end\"}]}",
		    "a\nb \"q\" back\\slash / tab\tx caf\xc3\xa9 \xc3\x89t\xc3\xa9 smile \xf0\x9f\x98\x80 end");
	/* Three-byte and ASCII code points through \u. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"\\u65e5\\u672c \\u0041\\u0022\"}]}",
		    "\xe6\x97\xa5\xe6\x9c\xac A\"");
	/* Lone surrogates, high or low, become U+FFFD; so does a high one
	 * followed by something that is not a low one. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"x\\ud800y\"}]}", "x\xef\xbf\xbdy");
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"x\\udc00y\"}]}", "x\xef\xbf\xbdy");
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"x\\ud83d\\u0041y\"}]}",
		    "x\xef\xbf\xbd" "Ay");
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"x\\ud83d\\ud83dy\"}]}",
		    "x\xef\xbf\xbd\xef\xbf\xbdy");
	/* Raw UTF-8 passes through. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"na\xc3\xafve \xe6\x97\xa5 \xf0\x9f\x98\x80\"}]}",
		    "na\xc3\xafve \xe6\x97\xa5 \xf0\x9f\x98\x80");
	/* A bad \u escape: what comes before it is kept. */
	{
		char out[64];

		para("{\"messages\":[{\"role\":\"user\",\"content\":\"ok\\u12G4 rest\"}]}", out, sizeof(out));
		assert_memory_equal(out, "ok", 2);
	}
}

static void test_first_paragraph_only(void **state)
{
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"First line\\nsame paragraph\\n\\n"
		    "Second paragraph\"}]}",
		    "First line\nsame paragraph");
	/* Written as \u000a too. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"One\\u000a\\u000aTwo\"}]}", "One");
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"One\\n\\u000aTwo\"}]}", "One");
	/* Three newlines: still the first paragraph. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"One\\n\\n\\nTwo\"}]}", "One");
}

static void test_trailing_whitespace_trimmed(void **state)
{
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"Hello world \\t\\r\\n \"}]}",
		    "Hello world");
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"Hello world \\n\\nmore\"}]}",
		    "Hello world");
	/* Only white space: nothing. */
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\" \\n \\t \"}]}", "");
}

/* "first paragraph ... trimmed": white space before it goes too, and a
 * message that starts with a blank line still has a first paragraph. */
static void test_leading_whitespace_trimmed(void **state)
{
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"   Hello world\"}]}", "Hello world");
	expect_para("{\"messages\":[{\"role\":\"user\",\"content\":\"\\n\\nHello world\\n\\nmore\"}]}",
		    "Hello world");
}

static void test_no_user_message(void **state)
{
	char out[64];

	memset(out, 'x', sizeof(out));
	assert_int_equal(para("{\"messages\":[{\"role\":\"system\",\"content\":\"Be nice\"},"
			      "{\"role\":\"assistant\",\"content\":\"Hi\"}]}",
			      out, sizeof(out)),
			 0);
	assert_string_equal(out, "");
	assert_int_equal(para("{\"prompt\":\"a completion, no messages\"}", out, sizeof(out)), 0);
	assert_int_equal(para("{\"messages\":[]}", out, sizeof(out)), 0);
	/* A user message without a usable content. */
	assert_int_equal(para("{\"messages\":[{\"role\":\"user\"}]}", out, sizeof(out)), 0);
	assert_int_equal(para("{\"messages\":[{\"role\":\"user\",\"content\":null}]}", out, sizeof(out)), 0);
	assert_int_equal(para("{\"messages\":[{\"role\":\"user\",\"content\":42}]}", out, sizeof(out)), 0);
	assert_int_equal(para("{\"messages\":[{\"role\":\"user\",\"content\":[]}]}", out, sizeof(out)), 0);
	assert_int_equal(para("{\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", out, sizeof(out)), 0);
	/* Not JSON at all. */
	assert_int_equal(para("role user content hello", out, sizeof(out)), 0);
	assert_int_equal(para("\"role\"", out, sizeof(out)), 0);
	assert_int_equal(para("\"role\":", out, sizeof(out)), 0);
	assert_int_equal(para("\"role\":\"user\"", out, sizeof(out)), 0);
	assert_int_equal(para("\"role\":\"user\",\"content\":", out, sizeof(out)), 0);
	assert_int_equal(para("\"role\":\"user\",\"content\":[", out, sizeof(out)), 0);
	assert_int_equal(para("\"role\":\"user\",\"content\":[{\"text\":", out, sizeof(out)), 0);
}

/* Every cut of the body inside (or after) the user's content gives a
 * prefix of the full paragraph; cuts before the user's message give
 * nothing. */
static void test_cut_anywhere_in_content(void **state)
{
	static const char body[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},"
				   "{\"role\":\"user\",\"content\":\"Why is \\\"the sky\\\" blue?\\n"
				   "Tell me \\u00e9 \\\\ now.\\n\\nIgnored\"}],\"stream\":true}";
	static const char want[] = "Why is \"the sky\" blue?\nTell me \xc3\xa9 \\ now.";
	const char *user = strstr(body, "{\"role\":\"user\""), *start = strstr(body, "Why");
	char out[4096];

	assert_non_null(user);
	assert_non_null(start);
	expect_para(body, want);
	for (size_t len = 0; len <= strlen(body); len++) {
		size_t n = fallback_last_user_paragraph((const uint8_t *)body, len, out, sizeof(out));

		assert_int_equal(out[n], '\0');
		assert_int_equal(strlen(out), n);
		if (len <= (size_t)(user - body)) {
			/* Before the user's message, only the system one exists. */
			assert_int_equal(n, 0);
			continue;
		}
		if (len < (size_t)(start - body))
			continue; /* see test_cut_between_role_and_content */
		if (strncmp(out, want, n) != 0)
			fail_msg("cut at %zu: \"%s\" is not a prefix of the paragraph", len, shown(out, n));
	}
}

/*
 * A cut after the user's "role" but before its "content": nothing of the
 * user's message was read. The content of the message before (here the
 * system prompt) must not be quoted as the user's question.
 */
static void test_cut_between_role_and_content(void **state)
{
	static const char body[] = "{\"messages\":[{\"role\":\"system\",\"content\":\"Internal prompt\"},"
				   "{\"role\":\"user\",\"content\":\"Hello\"}]}";
	const char *role = strstr(body, "\"role\":\"user\""), *start = strstr(body, "Hello");
	char out[64];

	assert_non_null(role);
	for (size_t len = (size_t)(role - body); len <= (size_t)(start - body); len++) {
		size_t n = fallback_last_user_paragraph((const uint8_t *)body, len, out, sizeof(out));

		if (n != 0)
			fail_msg("cut at \"%s\": got \"%s\", want nothing",
				 shown(role, len - (size_t)(role - body)), shown(out, n));
	}
}

static void test_cut_inside_escape(void **state)
{
	static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"caf\\u00e9 \\\"x\\\"\"}]}";
	const char *esc = strstr(body, "\\u00e9");
	char out[64];

	assert_non_null(esc);
	/* "caf\", "caf\u", ... "caf\u00e": what was read so far. */
	for (size_t k = 1; k < 6; k++) {
		size_t len = (size_t)(esc - body) + k;

		assert_int_equal(fallback_last_user_paragraph((const uint8_t *)body, len, out, sizeof(out)), 3);
		assert_string_equal(out, "caf");
	}
	assert_int_equal(fallback_last_user_paragraph((const uint8_t *)body, (size_t)(esc - body) + 6, out,
						      sizeof(out)),
			 5);
	assert_string_equal(out, "caf\xc3\xa9");
	/* Cut after the backslash of \". */
	const char *q = strstr(body, "\\\"x");

	assert_int_equal(fallback_last_user_paragraph((const uint8_t *)body, (size_t)(q - body) + 1, out,
						      sizeof(out)),
			 5);
	assert_string_equal(out, "caf\xc3\xa9");
}

/* A cut between the two halves of a surrogate pair, or inside the second,
 * is a cut like any other: what was read so far, no U+FFFD made up. */
static void test_cut_inside_surrogate_pair(void **state)
{
	static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"ab\\ud83d\\ude00cd\"}]}";
	const char *lo = strstr(body, "\\ude00");
	char out[64];

	assert_non_null(lo);
	for (size_t k = 0; k < 6; k++) {
		size_t len = (size_t)(lo - body) + k;
		size_t n = fallback_last_user_paragraph((const uint8_t *)body, len, out, sizeof(out));

		if (n != 2 || strcmp(out, "ab") != 0)
			fail_msg("cut %zu bytes into \\ude00: got \"%s\", want \"ab\"", k, shown(out, n));
	}
}

/*
 * HAProxy sends the first 6144 bytes of the body: with non-ASCII text the
 * cut lands inside a raw multi-byte character. The paragraph must not end
 * with the partial sequence, and the composed answer must stay UTF-8.
 */
static void test_cut_inside_raw_utf8(void **state)
{
	static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"caf\xc3\xa9 \xe6\x97\xa5\"}]}";
	const char *e = strstr(body, "\xc3\xa9"), *jp = strstr(body, "\xe6\x97\xa5");
	struct policy_route r = route(POLICY_FALLBACK_COMPUTED, TEXT, 600);
	char out[700];
	size_t n;

	/* After the first byte of é. */
	n = fallback_last_user_paragraph((const uint8_t *)body, (size_t)(e - body) + 1, out, sizeof(out));
	if (!utf8_valid(out, n))
		fail_msg("cut inside \"\\xc3\\xa9\": paragraph \"%s\" ends with a partial sequence", shown(out, n));
	assert_string_equal(out, "caf");
	/* After one and two bytes of 日. */
	for (size_t k = 1; k < 3; k++) {
		n = fallback_last_user_paragraph((const uint8_t *)body, (size_t)(jp - body) + k, out, sizeof(out));
		if (!utf8_valid(out, n) || strcmp(out, "caf\xc3\xa9") != 0)
			fail_msg("cut %zu bytes into \"\\xe6\\x97\\xa5\": got \"%s\"", k, shown(out, n));
	}
	/* The answer built from it. */
	n = fallback_compose(&r, (const uint8_t *)body, (size_t)(e - body) + 1, out, sizeof(out));
	if (!utf8_valid(out, n))
		fail_msg("composed answer \"%s\" is not UTF-8", shown(out, n));
	assert_string_equal(out, TEXT "\n\n> caf");
}

/*
 * The body is the client's bytes: nothing makes them UTF-8. The answer is
 * still promised to be (fallback.h); invalid bytes must not reach it.
 */
static void test_invalid_utf8_in_body(void **state)
{
	/* Latin-1 é, a stray continuation byte, an overlong '/'. */
	static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9 \x80 \xc0\xaf ok\"}]}";
	struct policy_route r = route(POLICY_FALLBACK_COMPUTED, TEXT, 600);
	char out[700];
	size_t n = fallback_compose(&r, (const uint8_t *)body, strlen(body), out, sizeof(out));

	assert_true(n <= 600);
	assert_int_equal(out[n], '\0');
	if (!utf8_valid(out, n))
		fail_msg("answer \"%s\" carries the body's invalid UTF-8", shown(out, n));
	/* Whatever is done with the bad bytes, the rest is kept. */
	assert_non_null(strstr(out, "ok"));
}

static void test_empty_or_null_body(void **state)
{
	char out[16];
	struct policy_route r = route(POLICY_FALLBACK_COMPUTED, TEXT, 600);
	char ans[700];

	memset(out, 'x', sizeof(out));
	assert_int_equal(fallback_last_user_paragraph(NULL, 0, out, sizeof(out)), 0);
	assert_int_equal(out[0], '\0');
	memset(out, 'x', sizeof(out));
	assert_int_equal(fallback_last_user_paragraph((const uint8_t *)"", 0, out, sizeof(out)), 0);
	assert_int_equal(out[0], '\0');
	/* A zero-sized buffer is not written to. */
	out[0] = 'x';
	assert_int_equal(fallback_last_user_paragraph((const uint8_t *)"{}", 2, out, 0), 0);
	assert_int_equal(out[0], 'x');
	/* Room for the NUL only. */
	assert_int_equal(para("{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}", out, 1), 0);
	assert_string_equal(out, "");

	/* The computed answer without a body is the text alone. */
	assert_int_equal(fallback_compose(&r, NULL, 0, ans, sizeof(ans)), strlen(TEXT));
	assert_string_equal(ans, TEXT);
}

/* A small output buffer keeps a prefix of the paragraph made of whole
 * characters: nothing skipped in the middle, nothing cut in half. */
static void test_small_buffer_keeps_a_prefix(void **state)
{
	static const char esc[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"ab\\u00e9cdef\"}]}";
	static const char raw[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"ab\xc3\xa9" "cdef\"}]}";
	static const char full[] = "ab\xc3\xa9" "cdef";
	char out[16];

	for (size_t size = 1; size <= sizeof(full); size++) {
		size_t n = para(esc, out, size);

		if (!utf8_valid(out, n) || strncmp(out, full, n) != 0)
			fail_msg("\\u00e9, size %zu: got \"%s\", not a prefix of \"%s\"", size, shown(out, n),
				 shown(full, strlen(full)));
		n = para(raw, out, size);
		if (!utf8_valid(out, n) || strncmp(out, full, n) != 0)
			fail_msg("raw \\xc3\\xa9, size %zu: got \"%s\", not whole characters", size, shown(out, n));
	}
	assert_int_equal(para(esc, out, sizeof(out)), strlen(full));
}

static void test_compose_static(void **state)
{
	struct policy_route r = route(POLICY_FALLBACK_STATIC, TEXT, 600);
	static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"question\"}]}";
	char out[700];

	/* The text, exactly: the body is not looked at. */
	assert_int_equal(fallback_compose(&r, (const uint8_t *)body, strlen(body), out, sizeof(out)),
			 strlen(TEXT));
	assert_string_equal(out, TEXT);
	assert_int_equal(fallback_compose(&r, NULL, 0, out, sizeof(out)), strlen(TEXT));
	assert_string_equal(out, TEXT);
	/* An empty text: nothing. */
	r.fallback_text = "";
	assert_int_equal(fallback_compose(&r, (const uint8_t *)body, strlen(body), out, sizeof(out)), 0);
	assert_string_equal(out, "");
}

static void test_compose_computed(void **state)
{
	struct policy_route r = route(POLICY_FALLBACK_COMPUTED, TEXT, 600);
	static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"Old\"},"
				   "{\"role\":\"assistant\",\"content\":\"Reply\"},"
				   "{\"role\":\"user\",\"content\":\"Is it down?\\n\\nDetails follow.\"}]}";
	char out[700];
	size_t n = fallback_compose(&r, (const uint8_t *)body, strlen(body), out, sizeof(out));

	assert_string_equal(out, TEXT "\n\n> Is it down?");
	assert_int_equal(n, strlen(out));
	/* No user message: the text alone, no empty quote. */
	n = fallback_compose(&r, (const uint8_t *)"{\"prompt\":\"x\"}", 14, out, sizeof(out));
	assert_int_equal(n, strlen(TEXT));
	assert_string_equal(out, TEXT);
	/* size 0: nothing written. */
	out[0] = 'x';
	assert_int_equal(fallback_compose(&r, (const uint8_t *)body, strlen(body), out, 0), 0);
	assert_int_equal(out[0], 'x');
}

static void test_compose_no_text_fallback(void **state)
{
	static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"question\"}]}";
	struct policy_route none = route(POLICY_FALLBACK_NONE, "", 600);
	struct policy_route backend = route(POLICY_FALLBACK_BACKEND, "", 600);
	char out[700];

	memset(out, 'x', sizeof(out));
	assert_int_equal(fallback_compose(&none, (const uint8_t *)body, strlen(body), out, sizeof(out)), 0);
	assert_string_equal(out, "");
	memset(out, 'x', sizeof(out));
	assert_int_equal(fallback_compose(&backend, (const uint8_t *)body, strlen(body), out, sizeof(out)), 0);
	assert_string_equal(out, "");
	/* Even with a text configured. */
	backend.fallback_text = TEXT;
	assert_int_equal(fallback_compose(&backend, (const uint8_t *)body, strlen(body), out, sizeof(out)), 0);
	assert_string_equal(out, "");
}

/* At every bound from 64 to 200: never over it, never half a character,
 * always a prefix of the unbounded answer, the whole of it when it fits. */
static void test_compose_bounds_multibyte(void **state)
{
	/* Mixed 1-, 2-, 3- and 4-byte characters, raw and escaped. */
	static const char body[] =
		"{\"messages\":[{\"role\":\"user\",\"content\":\"Gr\xc3\xbc\xc3\x9f" "e \xe6\x97\xa5\xe6\x9c\xac"
		"\xe8\xaa\x9e \\u00e9\\u00e8 \xf0\x9f\x98\x80\\ud83d\\ude00 \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2"
		"\xd0\xb5\xd1\x82 \xe2\x82\xac\xe2\x82\xac\xe2\x82\xac \xce\xb1\xce\xb2\xce\xb3 "
		"\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89\xf0\x9f\x8e\x89 "
		"\xc3\xa0\xc3\xa1\xc3\xa2\xc3\xa3 end\"}]}";
	struct policy_route r = route(POLICY_FALLBACK_COMPUTED, TEXT, 4000);
	char full[4096], out[4096];
	size_t nfull = fallback_compose(&r, (const uint8_t *)body, strlen(body), full, sizeof(full));

	assert_true(nfull > strlen(TEXT) + 4 + 60);
	assert_true(nfull < 200);
	assert_true(utf8_valid(full, nfull));
	assert_memory_equal(full, TEXT "\n\n> Gr\xc3\xbc\xc3\x9f" "e ", strlen(TEXT) + 4 + 7);

	for (int max = 64; max <= 200; max++) {
		size_t n;

		r.fallback_max_bytes = max;
		memset(out, 'x', sizeof(out));
		n = fallback_compose(&r, (const uint8_t *)body, strlen(body), out, sizeof(out));
		if (n > (size_t)max)
			fail_msg("max %d: %zu bytes", max, n);
		assert_int_equal(out[n], '\0');
		assert_int_equal(strlen(out), n);
		if (!utf8_valid(out, n))
			fail_msg("max %d: a UTF-8 sequence is split", max);
		if (memcmp(out, full, n) != 0)
			fail_msg("max %d: not a prefix of the full answer", max);
		if ((size_t)max >= nfull)
			assert_int_equal(n, nfull);
		else
			/* Cut on a character boundary, as late as possible. */
			assert_true(n + 4 > (size_t)max);
		/* The caller's buffer bounds it too. */
		for (size_t size = 1; size < 80; size += 7) {
			size_t m = fallback_compose(&r, (const uint8_t *)body, strlen(body), out, size);

			assert_true(m < size);
			assert_int_equal(out[m], '\0');
			assert_true(utf8_valid(out, m));
			assert_memory_equal(out, full, m);
		}
	}
}

/* The configured text itself is cut on a character boundary if it ever
 * exceeds the bound (the schema forbids it; the code must not trust it). */
static void test_compose_text_longer_than_bound(void **state)
{
	char text[300], out[512];
	struct policy_route r;

	text[0] = '\0';
	for (int i = 0; i < 40; i++)
		strcat(text, "\xe2\x82\xac\xc3\xa9"); /* 5 bytes each */
	r = route(POLICY_FALLBACK_STATIC, text, 64);
	for (int max = 64; max < 80; max++) {
		size_t n;

		r.fallback_max_bytes = max;
		n = fallback_compose(&r, NULL, 0, out, sizeof(out));
		assert_true(n <= (size_t)max);
		assert_true(n + 3 > (size_t)max);
		assert_true(utf8_valid(out, n));
		assert_memory_equal(out, text, n);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_last_user_message),
		cmocka_unit_test(test_content_before_role),
		cmocka_unit_test(test_content_before_role_then_another_message),
		cmocka_unit_test(test_content_parts),
		cmocka_unit_test(test_escapes),
		cmocka_unit_test(test_first_paragraph_only),
		cmocka_unit_test(test_trailing_whitespace_trimmed),
		cmocka_unit_test(test_leading_whitespace_trimmed),
		cmocka_unit_test(test_no_user_message),
		cmocka_unit_test(test_cut_anywhere_in_content),
		cmocka_unit_test(test_cut_between_role_and_content),
		cmocka_unit_test(test_cut_inside_escape),
		cmocka_unit_test(test_cut_inside_surrogate_pair),
		cmocka_unit_test(test_cut_inside_raw_utf8),
		cmocka_unit_test(test_invalid_utf8_in_body),
		cmocka_unit_test(test_empty_or_null_body),
		cmocka_unit_test(test_small_buffer_keeps_a_prefix),
		cmocka_unit_test(test_compose_static),
		cmocka_unit_test(test_compose_computed),
		cmocka_unit_test(test_compose_no_text_fallback),
		cmocka_unit_test(test_compose_bounds_multibyte),
		cmocka_unit_test(test_compose_text_longer_than_bound),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
