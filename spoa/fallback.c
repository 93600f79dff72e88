/* fallback: the computed answer (see fallback.h). */
#include "fallback.h"

#include <stdbool.h>
#include <string.h>

/* The position just after `"key"` followed by optional spaces and ':', or
 * NULL. Searches [p, end) for the next occurrence. */
static const uint8_t *find_key(const uint8_t *p, const uint8_t *end, const char *key)
{
	size_t klen = strlen(key);

	while (p && p < end) {
		const uint8_t *q = memchr(p, '"', (size_t)(end - p));

		if (!q || (size_t)(end - q) < klen + 2)
			return NULL;
		if (memcmp(q + 1, key, klen) == 0 && q[klen + 1] == '"') {
			const uint8_t *v = q + klen + 2;

			while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r'))
				v++;
			if (v < end && *v == ':') {
				v++;
				while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r'))
					v++;
				return v;
			}
		}
		p = q + 1;
	}
	return NULL;
}

static int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Length of the valid UTF-8 sequence at p (shortest form, no surrogates,
 * at most U+10FFFF), 0 if invalid, -1 if cut short by end. */
static int utf8_seq(const uint8_t *p, const uint8_t *end)
{
	uint8_t c = p[0];
	int n;
	unsigned cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		n = 2;
		cp = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3;
		cp = c & 0x0F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	for (int i = 1; i < n; i++) {
		if (p + i >= end)
			return -1;
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3F);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000))) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
		return 0;
	return n;
}

/* Appends bytes if they fit whole; false when they do not (the caller
 * stops there, so the output is always a prefix). */
static bool put_bytes(char *out, size_t *n, size_t size, const void *b, size_t k)
{
	if (*n + k >= size)
		return false;
	memcpy(out + *n, b, k);
	*n += k;
	return true;
}

static bool put_utf8(char *out, size_t *n, size_t size, unsigned cp)
{
	uint8_t b[4];
	size_t k;

	if (cp < 0x80) {
		b[0] = (uint8_t)cp;
		k = 1;
	} else if (cp < 0x800) {
		b[0] = (uint8_t)(0xC0 | (cp >> 6));
		b[1] = (uint8_t)(0x80 | (cp & 0x3F));
		k = 2;
	} else if (cp < 0x10000) {
		b[0] = (uint8_t)(0xE0 | (cp >> 12));
		b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
		b[2] = (uint8_t)(0x80 | (cp & 0x3F));
		k = 3;
	} else {
		b[0] = (uint8_t)(0xF0 | (cp >> 18));
		b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
		b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
		b[3] = (uint8_t)(0x80 | (cp & 0x3F));
		k = 4;
	}
	return put_bytes(out, n, size, b, k);
}

static bool is_ws(unsigned c)
{
	return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

/*
 * Decodes the JSON string starting at p (just after its opening quote)
 * into valid UTF-8: leading white space skipped, stopping at the first
 * blank line (the end of the first paragraph), the closing quote, the end
 * of the slice, or when the output is full. Invalid bytes become U+FFFD;
 * a character or escape cut by the end of the slice is dropped.
 */
static size_t decode_paragraph(const uint8_t *p, const uint8_t *end, char *out, size_t size)
{
	size_t n = 0, line_start = 0;
	bool started = false;

	while (p < end && *p != '"') {
		unsigned cp;

		if (*p == '\\') {
			if (end - p < 2)
				break;
			switch (p[1]) {
			case 'n': cp = '\n'; p += 2; break;
			case 't': cp = '\t'; p += 2; break;
			case 'r': cp = '\r'; p += 2; break;
			case 'b': case 'f': cp = ' '; p += 2; break;
			case 'u': {
				cp = 0;
				if (end - p < 6)
					goto done;
				for (int i = 2; i < 6; i++) {
					int h = hexval(p[i]);

					if (h < 0) {
						cp = 0xFFFD;
						break;
					}
					cp = cp << 4 | (unsigned)h;
				}
				p += 6;
				if (cp >= 0xD800 && cp < 0xDC00) {
					/* A high surrogate needs its low half: cut by the end
					 * of the slice, the character is dropped. */
					unsigned lo = 0;
					int ok = end - p >= 6 && p[0] == '\\' && p[1] == 'u';

					/* Cut only if what follows could still be "\uDCxx". */
					if (!ok && end - p < 6 && (p == end || (p[0] == '\\' && (end - p < 2 || p[1] == 'u'))))
						goto done;
					for (int i = 2; ok && i < 6; i++) {
						int h = hexval(p[i]);

						ok = h >= 0;
						lo = lo << 4 | (unsigned)(h < 0 ? 0 : h);
					}
					if (ok && lo >= 0xDC00 && lo < 0xE000) {
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
						p += 6;
					} else {
						cp = 0xFFFD;
					}
				} else if (cp >= 0xDC00 && cp < 0xE000) {
					cp = 0xFFFD;
				}
				break;
			}
			default: cp = p[1]; p += 2; break; /* \" \\ \/ and the rest: themselves */
			}
			if (cp < 0x20 && cp != '\n' && cp != '\t')
				cp = ' ';
			if (!started && is_ws(cp))
				continue;
			started = true;
			if (cp == '\r')
				continue;
			if (cp == '\n') {
				/* A line with nothing but white space ends the paragraph. */
				bool blank = true;

				for (size_t k = line_start; k < n; k++)
					blank &= is_ws((unsigned char)out[k]);
				if (blank && n > 0)
					break;
				if (!put_bytes(out, &n, size, "\n", 1))
					break;
				line_start = n;
				continue;
			}
			if (!put_utf8(out, &n, size, cp))
				break;
			continue;
		}
		{
			int k = utf8_seq(p, end);

			if (k < 0)
				break; /* cut by the end of the slice */
			if (k == 0) {
				p++;
				if (!started)
					started = true;
				if (!put_utf8(out, &n, size, 0xFFFD))
					break;
				continue;
			}
			if (k == 1 && (*p < 0x20 || is_ws(*p))) {
				/* Raw control characters are not valid in JSON strings;
				 * treat them as space. */
				p++;
				if (!started)
					continue;
				if (!put_bytes(out, &n, size, " ", 1))
					break;
				continue;
			}
			started = true;
			if (!put_bytes(out, &n, size, p, (size_t)k))
				break;
			p += k;
		}
	}
done:
	while (n > 0 && is_ws((unsigned char)out[n - 1]))
		n--;
	if (size > 0)
		out[n] = '\0';
	return n;
}

/*
 * A tolerant walk over the "messages" array of a chat body that may be cut
 * anywhere: tracks strings and nesting, and for each message object (depth
 * 2 under the array) its "role" and where its "content" value starts.
 * Returns the content of the last message whose role is "user" and whose
 * content was seen, or NULL.
 */
static const uint8_t *last_user_content(const uint8_t *body, const uint8_t *end)
{
	const uint8_t *p = find_key(body, end, "messages"), *found = NULL;
	const uint8_t *content = NULL, *key = NULL;
	size_t keylen = 0;
	int depth = 0;
	bool user = false, expect_role = false;

	if (!p || p >= end || *p != '[')
		return NULL;
	for (; p < end; p++) {
		uint8_t c = *p;

		if (c == '"') {
			const uint8_t *s = p + 1, *q = s;

			while (q < end && *q != '"')
				q += *q == '\\' ? 2 : 1;
			if (q >= end)
				break; /* cut inside a string */
			if (depth == 2) {
				const uint8_t *after = q + 1;

				while (after < end && is_ws(*after))
					after++;
				if (after < end && *after == ':') {
					key = s;
					keylen = (size_t)(q - s);
					if (keylen == 7 && !memcmp(s, "content", 7)) {
						const uint8_t *v = after + 1;

						while (v < end && is_ws(*v))
							v++;
						content = v < end ? v : NULL;
					}
					expect_role = keylen == 4 && !memcmp(s, "role", 4);
				} else if (expect_role) {
					user = (size_t)(q - s) == 4 && !memcmp(s, "user", 4);
					expect_role = false;
				}
			}
			p = q;
			continue;
		}
		if (c == '[' || c == '{') {
			depth++;
			if (depth == 2 && c == '{') {
				content = NULL;
				user = false;
			}
		} else if (c == ']' || c == '}') {
			if (depth == 2 && c == '}' && user && content)
				found = content;
			if (--depth <= 0)
				break; /* the end of the messages array */
		}
	}
	/* A message cut by the end of the slice counts if both were seen. */
	if (depth >= 2 && user && content)
		found = content;
	(void)key;
	return found;
}

size_t fallback_last_user_paragraph(const uint8_t *body, size_t len, char *out, size_t size)
{
	const uint8_t *end, *c;

	if (size == 0)
		return 0;
	out[0] = '\0';
	if (!body || len == 0)
		return 0;
	end = body + len;
	c = last_user_content(body, end);
	if (!c)
		return 0;
	if (*c == '[') {
		/* Parts: the first text part. */
		c = find_key(c, end, "text");
		if (!c)
			return 0;
	}
	if (c >= end || *c != '"')
		return 0;
	return decode_paragraph(c + 1, end, out, size);
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
		max--;
	return max;
}

size_t fallback_compose(const struct policy_route *r, const uint8_t *body, size_t len, char *out, size_t size)
{
	size_t bound = (size_t)r->fallback_max_bytes + 1, n, t;
	char para[4096];

	if (size == 0)
		return 0;
	out[0] = '\0';
	if (r->fallback != POLICY_FALLBACK_STATIC && r->fallback != POLICY_FALLBACK_COMPUTED)
		return 0;
	if (bound > size)
		bound = size;
	t = utf8_cut(r->fallback_text, strlen(r->fallback_text), bound - 1);
	memcpy(out, r->fallback_text, t);
	n = t;
	if (r->fallback == POLICY_FALLBACK_COMPUTED &&
	    fallback_last_user_paragraph(body, len, para, sizeof(para)) > 0 && n + 5 < bound - 1) {
		static const char sep[] = "\n\n> ";
		size_t room = bound - 1 - n - (sizeof(sep) - 1), plen = utf8_cut(para, strlen(para), room);

		memcpy(out + n, sep, sizeof(sep) - 1);
		n += sizeof(sep) - 1;
		memcpy(out + n, para, plen);
		n += plen;
	}
	out[n] = '\0';
	return n;
}
