/* redact: masking of keys, e-mails and card numbers (see redact.h). */
#include "redact.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

static bool is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_token(unsigned char c)
{
	return is_alnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '+' || c == '/' || c == '=';
}

static bool is_email_local(unsigned char c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

static bool is_domain(unsigned char c)
{
	return is_alnum(c) || c == '.' || c == '-';
}

static size_t put(char *out, size_t n, size_t size, const char *s, size_t len)
{
	if (n >= size)
		return n;
	if (len > size - 1 - n)
		len = size - 1 - n;
	memcpy(out + n, s, len);
	return n + len;
}

/* Prefixes of well-known secret formats: OpenAI (sk-, sk_live_...),
 * Stripe (sk_, rk_), AWS access keys, GitHub, GitLab, Slack, Google API keys.
 * What follows must be 12+ token characters. */
static const char *const key_prefixes[] = {
	"sk-", "sk_", "rk_", "pk_live_", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
	"github_pat_", "glpat-", "xoxb-", "xoxp-", "xoxa-", "xoxs-", "AIza",
};

/* True when p starts a word: not glued to a letter or digit before it,
 * except the letter of a JSON escape (\n, \t) which ends a word. */
static bool word_start(const char *begin, const char *p)
{
	if (p == begin || !is_alnum((unsigned char)p[-1]))
		return true;
	return p - begin >= 2 && p[-2] == '\\';
}

/* Length of a key at p, or 0. */
static size_t key_at(const char *begin, const char *p, const char *end)
{
	for (size_t i = 0; i < sizeof(key_prefixes) / sizeof(key_prefixes[0]); i++) {
		size_t plen = strlen(key_prefixes[i]);
		const char *q;

		if ((size_t)(end - p) < plen + 12 || memcmp(p, key_prefixes[i], plen) != 0 || !word_start(begin, p))
			continue;
		for (q = p + plen; q < end && is_token((unsigned char)*q); q++)
			;
		while (q > p + plen && q[-1] == '.')
			q--; /* the end of a sentence, not of the key */
		if (q - p >= (ptrdiff_t)(plen + 12))
			return (size_t)(q - p);
	}
	return 0;
}

/* Length of "Bearer <token>" at p, or 0; *skip is the prefix kept. */
static size_t bearer_at(const char *p, const char *end, size_t *skip)
{
	const char *q;

	if (end - p < 8 || strncasecmp(p, "bearer ", 7) != 0)
		return 0;
	q = p + 7;
	while (q < end && *q == ' ')
		q++;
	*skip = (size_t)(q - p);
	while (q < end && is_token((unsigned char)*q))
		q++;
	return (size_t)(q - p) > *skip + 7 ? (size_t)(q - p) : 0;
}

/* An e-mail address around the '@' at `at`: sets its start and length. */
static bool email_around(const char *begin, const char *at, const char *end, const char **start, size_t *len)
{
	const char *s = at, *e = at + 1, *dot = NULL;

	while (s > begin && is_email_local((unsigned char)s[-1])) {
		/* "\njane@..." : the n belongs to the escape, not the address. */
		if (s - begin >= 2 && s[-2] == '\\')
			break;
		s--;
	}
	while (e < end && is_domain((unsigned char)*e)) {
		if (*e == '.')
			dot = e;
		e++;
	}
	while (e > at + 1 && (e[-1] == '.' || e[-1] == '-'))
		e--;
	if (s == at || !dot || dot >= e - 1 || dot == at + 1)
		return false;
	*start = s;
	*len = (size_t)(e - s);
	return true;
}

/* A card-like number at p: 13-19 digits, single spaces or dashes allowed
 * between them; returns its length or 0. */
static size_t card_at(const char *begin, const char *p, const char *end)
{
	const char *q = p, *last = p;
	int digits = 0;

	if (!word_start(begin, p))
		return 0;
	while (q < end) {
		if (*q >= '0' && *q <= '9') {
			digits++;
			last = q + 1;
			q++;
		} else if ((*q == ' ' || *q == '-') && q + 1 < end && q[1] >= '0' && q[1] <= '9' && digits > 0) {
			q++;
		} else {
			break;
		}
		if (digits > 19)
			return 0;
	}
	if (last < end && is_alnum((unsigned char)*last))
		return 0;
	return digits >= 13 ? (size_t)(last - p) : 0;
}

size_t redact(const char *in, size_t len, char *out, size_t size)
{
	const char *p = in, *end = in + len, *copied = in;
	size_t n = 0, k, skip;

	if (size == 0)
		return 0;
	while (p < end) {
		const char *start = p;
		const char *tag = NULL;
		size_t mlen = 0;

		if ((k = key_at(in, p, end)) > 0) {
			tag = "[REDACTED:key]";
			mlen = k;
		} else if ((k = bearer_at(p, end, &skip)) > 0) {
			/* Keep "Bearer ", hide the token. */
			n = put(out, n, size, copied, (size_t)(p + skip - copied));
			copied = p + skip;
			start = p + skip;
			tag = "[REDACTED:key]";
			mlen = k - skip;
		} else if (*p >= '0' && *p <= '9' && (k = card_at(in, p, end)) > 0) {
			tag = "[REDACTED:card]";
			mlen = k;
		} else if (*p == '@') {
			const char *s;

			if (email_around(copied, p, end, &s, &mlen)) {
				start = s;
				tag = "[REDACTED:email]";
			}
		}
		if (tag) {
			n = put(out, n, size, copied, (size_t)(start - copied));
			n = put(out, n, size, tag, strlen(tag));
			p = start + mlen;
			copied = p;
			continue;
		}
		p++;
	}
	n = put(out, n, size, copied, (size_t)(end - copied));
	out[n] = '\0';
	return n;
}
