/* fallback: the computed answer (see fallback.h). */
#include "fallback.h"

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

/* Appends the code point as UTF-8 if it fits. */
static size_t put_utf8(char *out, size_t n, size_t size, unsigned cp)
{
	char b[4];
	size_t k;

	if (cp < 0x80) {
		b[0] = (char)cp;
		k = 1;
	} else if (cp < 0x800) {
		b[0] = (char)(0xC0 | (cp >> 6));
		b[1] = (char)(0x80 | (cp & 0x3F));
		k = 2;
	} else if (cp < 0x10000) {
		b[0] = (char)(0xE0 | (cp >> 12));
		b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		b[2] = (char)(0x80 | (cp & 0x3F));
		k = 3;
	} else {
		b[0] = (char)(0xF0 | (cp >> 18));
		b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		b[3] = (char)(0x80 | (cp & 0x3F));
		k = 4;
	}
	if (n + k >= size)
		return n;
	memcpy(out + n, b, k);
	return n + k;
}

/* Decodes the JSON string starting at p (just after its opening quote)
 * until the first paragraph break ("\n\n"), the closing quote or the end
 * of the slice. */
static size_t decode_paragraph(const uint8_t *p, const uint8_t *end, char *out, size_t size)
{
	size_t n = 0;

	while (p < end && *p != '"' && n + 1 < size) {
		unsigned c = *p++;

		if (c == '\\') {
			if (p >= end)
				break;
			c = *p++;
			switch (c) {
			case 'n': c = '\n'; break;
			case 't': c = '\t'; break;
			case 'r': c = '\r'; break;
			case 'b': case 'f': c = ' '; break;
			case 'u': {
				unsigned cp = 0;

				if (end - p < 4)
					goto done;
				for (int i = 0; i < 4; i++) {
					int h = hexval(p[i]);

					if (h < 0)
						goto done;
					cp = cp << 4 | (unsigned)h;
				}
				p += 4;
				/* A surrogate pair makes one code point. */
				if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
					unsigned lo = 0;
					int ok = 1;

					for (int i = 0; i < 4; i++) {
						int h = hexval(p[2 + i]);

						ok &= h >= 0;
						lo = lo << 4 | (unsigned)(h < 0 ? 0 : h);
					}
					if (ok && lo >= 0xDC00 && lo < 0xE000) {
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
						p += 6;
					}
				}
				if (cp >= 0xD800 && cp < 0xE000)
					cp = 0xFFFD;
				if (cp == '\n' && n > 0 && out[n - 1] == '\n') {
					n--;
					goto done;
				}
				n = put_utf8(out, n, size, cp);
				continue;
			}
			default: break; /* \" \\ \/ and anything else: the char itself */
			}
		}
		if (c == '\n' && n > 0 && out[n - 1] == '\n') {
			n--; /* a blank line ends the first paragraph */
			break;
		}
		out[n++] = (char)c;
	}
done:
	/* Trim surrounding white space. */
	while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' ' || out[n - 1] == '\r' || out[n - 1] == '\t'))
		n--;
	out[n] = '\0';
	return n;
}

/* The content value of the message whose role is at `role_pos`: the first
 * "content" after it before the next "role", else the last one between
 * the previous "role" and it. */
static const uint8_t *content_of(const uint8_t *body, const uint8_t *end, const uint8_t *prev_role,
				 const uint8_t *role_pos)
{
	const uint8_t *next_role = find_key(role_pos, end, "role");
	const uint8_t *c = find_key(role_pos, end, "content"), *best = NULL, *q;

	if (c && (!next_role || c < next_role))
		return c;
	for (q = find_key(prev_role ? prev_role : body, role_pos, "content"); q;
	     q = find_key(q, role_pos, "content"))
		best = q;
	return best;
}

size_t fallback_last_user_paragraph(const uint8_t *body, size_t len, char *out, size_t size)
{
	const uint8_t *end = body + len, *p = body, *r, *last = NULL, *prev = NULL, *before_last = NULL, *c;

	if (size == 0)
		return 0;
	out[0] = '\0';
	if (!body || len == 0)
		return 0;
	/* The last "role": "user", and the role before it. */
	while ((r = find_key(p, end, "role")) != NULL) {
		if ((size_t)(end - r) >= 6 && memcmp(r, "\"user\"", 6) == 0) {
			before_last = prev;
			last = r;
		}
		prev = r;
		p = r;
	}
	if (!last)
		return 0;
	c = content_of(body, end, before_last, last);
	if (!c || c >= end)
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
