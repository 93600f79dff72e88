/* journal: one flush's usage rows as one blob (see journal.h). */
#include "journal.h"

#include <stdlib.h>
#include <string.h>

#define MAGIC "TGJ1"
#define MAGIC_LEN 4
#define DAY_LEN 10
#define NVALUES 6
/* ceil(64 / 7): a varint carries 7 bits a byte. */
#define VARINT_MAX 10
#define ROW_MAX (DAY_LEN + 1 + LEDGER_USER_MAX + NVALUES * VARINT_MAX)

/* Zigzag keeps small negative values short (-1 is 1, not 10 bytes of
 * 0xff). Done on uint64_t: shifting a negative int64_t is undefined. */
static uint64_t zigzag(int64_t v)
{
	return ((uint64_t)v << 1) ^ (v < 0 ? UINT64_MAX : 0);
}

/* The inverse without converting an out-of-range uint64_t to int64_t
 * (implementation-defined): z >> 1 always fits, and -x - 1 cannot
 * overflow for x <= INT64_MAX. */
static int64_t unzigzag(uint64_t z)
{
	int64_t x = (int64_t)(z >> 1);

	return (z & 1) ? -x - 1 : x;
}

static size_t varint_len(uint64_t z)
{
	size_t n = 1;

	while (z >= 0x80) {
		z >>= 7;
		n++;
	}
	return n;
}

static unsigned char *put_varint(unsigned char *p, uint64_t z)
{
	while (z >= 0x80) {
		*p++ = (unsigned char)(z | 0x80);
		z >>= 7;
	}
	*p++ = (unsigned char)z;
	return p;
}

/* Reads one varint at p[*off], below len. Only the shortest form is
 * accepted, so that a blob has one encoding and decode + encode gives it
 * back: a last byte of 0 (after the first) only pads, and the 10th byte
 * holds bit 63 alone. */
static int get_varint(const unsigned char *p, size_t len, size_t *off, uint64_t *z)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < VARINT_MAX; i++) {
		unsigned char c;

		if (*off >= len)
			return -1;
		c = p[(*off)++];
		if (i == VARINT_MAX - 1 && c > 1)
			return -1;
		v |= (uint64_t)(c & 0x7f) << (7 * i);
		if (!(c & 0x80)) {
			if (i > 0 && c == 0)
				return -1;
			*z = v;
			return 0;
		}
	}
	return -1; /* unreachable: the 10th byte cannot continue */
}

static void row_values(const struct batch_usage *u, int64_t *v)
{
	v[0] = u->tokens_in;
	v[1] = u->tokens_out;
	v[2] = u->cost_nano;
	v[3] = u->requests;
	v[4] = u->denials;
	v[5] = u->fallbacks;
}

static int valid_day(const unsigned char *d);

/* What journal_decode would refuse is not written: one such row would make
 * the whole blob, the flush's every user, unreadable at replay. */
static int encodable(const struct batch *b, const struct batch_usage *u)
{
	return u->user_len > 0 && u->user_len <= LEDGER_USER_MAX &&
	       valid_day((const unsigned char *)u->day) == 0 && !memchr(batch_usage_user(b, u), '\0', u->user_len);
}

static size_t row_len(const struct batch_usage *u)
{
	int64_t v[NVALUES];
	size_t n = DAY_LEN + 1 + u->user_len;

	row_values(u, v);
	for (int i = 0; i < NVALUES; i++)
		n += varint_len(zigzag(v[i]));
	return n;
}

static unsigned char *put_row(unsigned char *p, const struct batch *b, const struct batch_usage *u)
{
	int64_t v[NVALUES];

	memcpy(p, u->day, DAY_LEN);
	p += DAY_LEN;
	*p++ = u->user_len;
	memcpy(p, batch_usage_user(b, u), u->user_len);
	p += u->user_len;
	row_values(u, v);
	for (int i = 0; i < NVALUES; i++)
		p = put_varint(p, zigzag(v[i]));
	return p;
}

/* Room for exactly n bytes. out is left as it was on failure, so that a
 * caller that retries still holds the previous blob. */
static int reserve(struct journal_buf *out, size_t n)
{
	unsigned char *np;

	if (n <= out->cap)
		return 0;
	np = realloc(out->p, n);
	if (!np)
		return -1;
	out->p = np;
	out->cap = n;
	return 0;
}

long journal_encode(const struct batch *b, struct journal_buf *out)
{
	size_t need = MAGIC_LEN;
	long rows = 0;
	unsigned char *p;

	/* Sized first, written once: no partial blob on failure. A row is
	 * at most ROW_MAX bytes, so the sum can only wrap on a 32-bit host
	 * with an absurd batch; refuse it rather than write past the end. */
	for (size_t i = 0; i < b->nusage; i++) {
		if (!encodable(b, &b->usage[i]))
			continue;
		if (need > SIZE_MAX - ROW_MAX)
			return -1;
		need += row_len(&b->usage[i]);
		rows++;
	}
	if (reserve(out, need) == -1)
		return -1;
	p = out->p;
	memcpy(p, MAGIC, MAGIC_LEN);
	p += MAGIC_LEN;
	for (size_t i = 0; i < b->nusage; i++)
		if (encodable(b, &b->usage[i]))
			p = put_row(p, b, &b->usage[i]);
	out->len = (size_t)(p - out->p);
	return rows;
}

static int is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* The shape only: "YYYY-MM-DD" in digits. Whether the date exists is the
 * writer's business (daytime made it). */
static int valid_day(const unsigned char *d)
{
	for (int i = 0; i < DAY_LEN; i++) {
		if (i == 4 || i == 7) {
			if (d[i] != '-')
				return -1;
		} else if (!is_digit(d[i])) {
			return -1;
		}
	}
	return 0;
}

/* Parses the row at p[*off], below len, into r; r->user points into p. */
static int get_row(const unsigned char *p, size_t len, size_t *off, struct journal_row *r)
{
	int64_t *v[NVALUES] = {&r->tokens_in, &r->tokens_out, &r->cost_nano, &r->requests, &r->denials, &r->fallbacks};
	size_t ulen;

	/* Compared as remaining bytes: *off <= len always, so no sum wraps. */
	if (len - *off < DAY_LEN + 1 || valid_day(p + *off) == -1)
		return -1;
	memcpy(r->day, p + *off, DAY_LEN);
	r->day[DAY_LEN] = '\0';
	*off += DAY_LEN;
	ulen = p[(*off)++];
	if (ulen == 0 || ulen > LEDGER_USER_MAX || len - *off < ulen)
		return -1;
	/* The ledger's names are C strings: a NUL would cut the user short
	 * when the row is replayed into it. */
	if (memchr(p + *off, '\0', ulen))
		return -1;
	r->user = (const char *)p + *off;
	r->user_len = ulen;
	*off += ulen;
	for (int i = 0; i < NVALUES; i++) {
		uint64_t z;

		if (get_varint(p, len, off, &z) == -1)
			return -1;
		*v[i] = unzigzag(z);
	}
	return 0;
}

/* Walks the rows after the magic, calling fn on each when it is set.
 * Returns the row count, or -1 at the first malformed byte. */
static long walk(const unsigned char *p, size_t len, void (*fn)(const struct journal_row *r, void *arg), void *arg)
{
	size_t off = MAGIC_LEN;
	long n = 0;

	while (off < len) {
		struct journal_row r;

		if (get_row(p, len, &off, &r) == -1)
			return -1;
		if (fn)
			fn(&r, arg);
		n++;
	}
	return n;
}

long journal_decode(const void *blob, size_t len, void (*fn)(const struct journal_row *r, void *arg), void *arg)
{
	const unsigned char *p = blob;

	if (len < MAGIC_LEN || memcmp(p, MAGIC, MAGIC_LEN) != 0)
		return -1;
	/* A replay must apply all of a blob or none of it: validate the
	 * whole first, so that fn never sees the rows before a bad one. */
	if (walk(p, len, NULL, NULL) == -1)
		return -1;
	return walk(p, len, fn, arg);
}
