/*
 * libFuzzer target: the computed fallback on a request body slice as
 * HAProxy sends it (the first bytes of a client's body, cut anywhere).
 * The whole input is the body; its first byte also picks the route's
 * fallback_max_bytes (64..4000) and its last byte the size of a small
 * output buffer. Every buffer is allocated to its exact size so that ASan
 * sees a write past it. Aborts when an answer is not NUL-terminated, is
 * over its bounds, or is not valid UTF-8 (fallback.h promises all three).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fallback.h"
#include "../unit/utf8_valid.h"
#include "policy.h"

#define CHECK(c)                                                                          \
	do {                                                                              \
		if (!(c)) {                                                               \
			fprintf(stderr, "fuzz_body: %s:%d: error: check failed: %s\n", __FILE__, \
				__LINE__, #c);                                            \
			abort();                                                          \
		}                                                                         \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/* An answer of n bytes in a buffer of size bytes, bounded by max. */
static void check_answer(const char *out, size_t n, size_t size, size_t max, const char *text)
{
	size_t tlen = strlen(text);

	CHECK(n < size);
	CHECK(n <= max);
	CHECK(out[n] == '\0');
	CHECK(strlen(out) == n);
	CHECK(utf8_valid(out, n));
	/* The route's text first, then the quote. */
	CHECK(memcmp(out, text, n < tlen ? n : tlen) == 0);
	if (n > tlen)
		CHECK(n >= tlen + 4 && memcmp(out + tlen, "\n\n> ", 4) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char text[] = "Service busy \xe2\x80\x94 we got your message:";
	struct policy_route r;
	uint8_t *body = malloc(size ? size : 1);
	size_t small = size ? 1 + (size_t)data[size - 1] : 1;
	size_t max = size ? 64 + (size_t)data[0] * (4000 - 64) / 255 : 64;
	char *para = malloc(4096), *tiny = malloc(small), *out = malloc(max + 1);
	size_t n;

	CHECK(body && para && tiny && out);
	memcpy(body, data, size);

	/* The paragraph alone: into a roomy buffer and a small one. */
	n = fallback_last_user_paragraph(body, size, para, 4096);
	CHECK(n < 4096 && para[n] == '\0' && strlen(para) <= n);
	n = fallback_last_user_paragraph(body, size, tiny, small);
	CHECK(n < small && tiny[n] == '\0' && strlen(tiny) <= n);

	memset(&r, 0, sizeof(r));
	r.name = "chat";
	r.path_prefix = "/v1/chat/completions";
	r.model_glob = "*";
	r.fallback_text = (char *)text;
	r.fallback_max_bytes = (int)max;

	/* Computed: bounded by the route, then by a smaller buffer. */
	r.fallback = POLICY_FALLBACK_COMPUTED;
	n = fallback_compose(&r, body, size, out, max + 1);
	check_answer(out, n, max + 1, max, text);
	n = fallback_compose(&r, body, size, tiny, small);
	check_answer(tiny, n, small, max, text);

	/* Static: the text, whatever the body. */
	r.fallback = POLICY_FALLBACK_STATIC;
	n = fallback_compose(&r, body, size, out, max + 1);
	CHECK(n == strlen(text) && strcmp(out, text) == 0);

	/* No text fallback: nothing. */
	r.fallback = POLICY_FALLBACK_BACKEND;
	CHECK(fallback_compose(&r, body, size, out, max + 1) == 0 && out[0] == '\0');

	free(out);
	free(tiny);
	free(para);
	free(body);
	return 0;
}
