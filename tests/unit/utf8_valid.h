/*
 * utf8_valid: a strict UTF-8 check for tests, written apart from the
 * agent's own decoder (spoa/fallback.c) so that a bug there cannot hide
 * itself. Shared by the fallback unit test and the body fuzz target.
 */
#ifndef TOKENGATE_TEST_UTF8_VALID_H
#define TOKENGATE_TEST_UTF8_VALID_H

#include <stdbool.h>
#include <stddef.h>

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF,
 * no truncated sequence. */
static inline bool utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str, *end = s + len;

	while (s < end) {
		unsigned c = *s++, cp, need;

		if (c < 0x80)
			continue;
		if (c >= 0xC2 && c <= 0xDF)
			need = 1, cp = c & 0x1F;
		else if (c >= 0xE0 && c <= 0xEF)
			need = 2, cp = c & 0x0F;
		else if (c >= 0xF0 && c <= 0xF4)
			need = 3, cp = c & 0x07;
		else
			return false;
		if ((size_t)(end - s) < need)
			return false;
		for (unsigned i = 0; i < need; i++) {
			if ((s[i] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (s[i] & 0x3F);
		}
		s += need;
		if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
	}
	return true;
}

#endif
