/*
 * spopwire: minimal, independent SPOP 2.0 codec. See spopwire.h.
 *
 * Built as part of the tools that use it, e.g.:
 *   cc -std=c11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
 *      -D_GNU_SOURCE -c bench/spopwire.c -o build/spopwire.o
 */
#include "spopwire.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- varints ---------------------------------------------------------- */

/*
 * Peers encoding: x < 240 is one byte. Otherwise the first byte carries the
 * low 4 bits of x with the top 4 bits set; then x = (x - 240) >> 4 and each
 * following byte carries 7 bits with bit 7 as continuation, x becoming
 * (x - 128) >> 7 after each continued byte. The decoder simply adds every
 * byte, continuation bit included, at shifts 0, 4, 11, 18, ...: the bits the
 * encoder subtracted are exactly those.
 */
int
spopwire_put_varint(uint8_t **p, const uint8_t *end, uint64_t v)
{
	uint8_t *q = *p;

	if (q >= end)
		return -1;
	if (v < 240) {
		*q++ = (uint8_t)v;
		*p = q;
		return 0;
	}
	*q++ = (uint8_t)(v | 0xF0);
	v = (v - 240) >> 4;
	while (v >= 128) {
		if (q >= end)
			return -1;
		*q++ = (uint8_t)(v | 0x80);
		v = (v - 128) >> 7;
	}
	if (q >= end)
		return -1;
	*q++ = (uint8_t)v;
	*p = q;
	return 0;
}

int
spopwire_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	const uint8_t *q = *p;
	uint64_t x, add;
	unsigned shift, i;
	uint8_t b;

	if (q >= end)
		return -1;
	x = *q++;
	if (x < 240) {
		*v = x;
		*p = q;
		return 0;
	}
	shift = 4;
	for (i = 1; i < SPOPWIRE_VARINT_MAX; i++) {
		if (q >= end)
			return -1;
		b = *q++;
		add = (uint64_t)b << shift;
		/* Bits shifted out, or a carry out of bit 63: not a 64-bit value. */
		if ((add >> shift) != b || x + add < x)
			return -1;
		x += add;
		if (b < 128) {
			*v = x;
			*p = q;
			return 0;
		}
		shift += 7;
	}
	return -1;
}

size_t
spopwire_varint_size(uint64_t v)
{
	size_t n = 1;

	if (v < 240)
		return 1;
	v = (v - 240) >> 4;
	while (v >= 128) {
		n++;
		v = (v - 128) >> 7;
	}
	return n + 1;
}

/* ---- strings and typed data ------------------------------------------- */

int
spopwire_put_str(uint8_t **p, const uint8_t *end, const void *s, size_t len)
{
	uint8_t *q = *p;

	if (spopwire_put_varint(&q, end, len) == -1)
		return -1;
	if ((size_t)(end - q) < len)
		return -1;
	if (len > 0)
		memcpy(q, s, len);
	*p = q + len;
	return 0;
}

int
spopwire_get_str(const uint8_t **p, const uint8_t *end, struct spopwire_str *s)
{
	const uint8_t *q = *p;
	uint64_t len;

	if (spopwire_get_varint(&q, end, &len) == -1)
		return -1;
	if (len > (uint64_t)(end - q))
		return -1;
	s->ptr = q;
	s->len = (size_t)len;
	*p = q + len;
	return 0;
}

int
spopwire_put_data(uint8_t **p, const uint8_t *end, const struct spopwire_data *d)
{
	uint8_t *q = *p;

	if (q >= end || (unsigned)d->type >= SPOPWIRE_T_COUNT)
		return -1;
	switch (d->type) {
	case SPOPWIRE_T_NULL:
		*q++ = SPOPWIRE_T_NULL;
		break;
	case SPOPWIRE_T_BOOL:
		*q++ = (uint8_t)(SPOPWIRE_T_BOOL | (d->v.b ? SPOPWIRE_BOOL_TRUE : 0));
		break;
	case SPOPWIRE_T_INT32:
	case SPOPWIRE_T_INT64:
		if (d->type == SPOPWIRE_T_INT32 &&
		    (d->v.i64 < INT32_MIN || d->v.i64 > INT32_MAX))
			return -1;
		/* Signed values travel as their 64-bit two's complement. */
		*q++ = (uint8_t)d->type;
		if (spopwire_put_varint(&q, end, (uint64_t)d->v.i64) == -1)
			return -1;
		break;
	case SPOPWIRE_T_UINT32:
	case SPOPWIRE_T_UINT64:
		if (d->type == SPOPWIRE_T_UINT32 && d->v.u64 > UINT32_MAX)
			return -1;
		*q++ = (uint8_t)d->type;
		if (spopwire_put_varint(&q, end, d->v.u64) == -1)
			return -1;
		break;
	case SPOPWIRE_T_IPV4:
		if (end - q < 5)
			return -1;
		*q++ = SPOPWIRE_T_IPV4;
		memcpy(q, d->v.ipv4, 4);
		q += 4;
		break;
	case SPOPWIRE_T_IPV6:
		if (end - q < 17)
			return -1;
		*q++ = SPOPWIRE_T_IPV6;
		memcpy(q, d->v.ipv6, 16);
		q += 16;
		break;
	case SPOPWIRE_T_STR:
	case SPOPWIRE_T_BIN:
		*q++ = (uint8_t)d->type;
		if (spopwire_put_str(&q, end, d->v.str.ptr, d->v.str.len) == -1)
			return -1;
		break;
	default:
		return -1;
	}
	*p = q;
	return 0;
}

int
spopwire_get_data(const uint8_t **p, const uint8_t *end, struct spopwire_data *d)
{
	const uint8_t *q = *p;
	uint64_t u;
	uint8_t t;

	if (q >= end)
		return -1;
	t = *q++;
	memset(d, 0, sizeof(*d));
	d->type = (enum spopwire_type)(t & 0x0F);
	d->flags = (uint8_t)(t & 0xF0);
	switch (d->type) {
	case SPOPWIRE_T_NULL:
		break;
	case SPOPWIRE_T_BOOL:
		d->v.b = (t & SPOPWIRE_BOOL_TRUE) != 0;
		break;
	case SPOPWIRE_T_INT32:
	case SPOPWIRE_T_INT64:
		if (spopwire_get_varint(&q, end, &u) == -1)
			return -1;
		d->v.i64 = (int64_t)u;
		if (d->type == SPOPWIRE_T_INT32 &&
		    (d->v.i64 < INT32_MIN || d->v.i64 > INT32_MAX))
			return -1;
		break;
	case SPOPWIRE_T_UINT32:
	case SPOPWIRE_T_UINT64:
		if (spopwire_get_varint(&q, end, &u) == -1)
			return -1;
		if (d->type == SPOPWIRE_T_UINT32 && u > UINT32_MAX)
			return -1;
		d->v.u64 = u;
		break;
	case SPOPWIRE_T_IPV4:
		if (end - q < 4)
			return -1;
		memcpy(d->v.ipv4, q, 4);
		q += 4;
		break;
	case SPOPWIRE_T_IPV6:
		if (end - q < 16)
			return -1;
		memcpy(d->v.ipv6, q, 16);
		q += 16;
		break;
	case SPOPWIRE_T_STR:
	case SPOPWIRE_T_BIN:
		if (spopwire_get_str(&q, end, &d->v.str) == -1)
			return -1;
		break;
	default:
		return -1;
	}
	*p = q;
	return 0;
}

int
spopwire_get_kv(const uint8_t **p, const uint8_t *end,
		struct spopwire_str *name, struct spopwire_data *value)
{
	const uint8_t *q = *p;

	if (spopwire_get_str(&q, end, name) == -1)
		return -1;
	if (spopwire_get_data(&q, end, value) == -1)
		return -1;
	*p = q;
	return 0;
}

struct spopwire_data
spopwire_null(void)
{
	struct spopwire_data d;

	memset(&d, 0, sizeof(d));
	d.type = SPOPWIRE_T_NULL;
	return d;
}

struct spopwire_data
spopwire_bool(int b)
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_BOOL;
	d.v.b = b != 0;
	return d;
}

struct spopwire_data
spopwire_int32(int32_t v)
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_INT32;
	d.v.i64 = v;
	return d;
}

struct spopwire_data
spopwire_uint32(uint32_t v)
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_UINT32;
	d.v.u64 = v;
	return d;
}

struct spopwire_data
spopwire_int64(int64_t v)
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_INT64;
	d.v.i64 = v;
	return d;
}

struct spopwire_data
spopwire_uint64(uint64_t v)
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_UINT64;
	d.v.u64 = v;
	return d;
}

struct spopwire_data
spopwire_ipv4(const uint8_t addr[4])
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_IPV4;
	memcpy(d.v.ipv4, addr, 4);
	return d;
}

struct spopwire_data
spopwire_ipv6(const uint8_t addr[16])
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_IPV6;
	memcpy(d.v.ipv6, addr, 16);
	return d;
}

struct spopwire_data
spopwire_strn(const void *s, size_t len)
{
	struct spopwire_data d = spopwire_null();

	d.type = SPOPWIRE_T_STR;
	d.v.str.ptr = s;
	d.v.str.len = len;
	return d;
}

struct spopwire_data
spopwire_strz(const char *s)
{
	return spopwire_strn(s, strlen(s));
}

struct spopwire_data
spopwire_bin(const void *s, size_t len)
{
	struct spopwire_data d = spopwire_strn(s, len);

	d.type = SPOPWIRE_T_BIN;
	return d;
}

int
spopwire_data_to_u64(const struct spopwire_data *d, uint64_t *v)
{
	switch (d->type) {
	case SPOPWIRE_T_INT32:
	case SPOPWIRE_T_INT64:
		if (d->v.i64 < 0)
			return -1;
		*v = (uint64_t)d->v.i64;
		return 0;
	case SPOPWIRE_T_UINT32:
	case SPOPWIRE_T_UINT64:
		*v = d->v.u64;
		return 0;
	default:
		return -1;
	}
}

int
spopwire_data_streq(const struct spopwire_data *d, const char *s)
{
	size_t n = strlen(s);

	return d->type == SPOPWIRE_T_STR && d->v.str.len == n &&
	       (n == 0 || memcmp(d->v.str.ptr, s, n) == 0);
}

int
spopwire_has_capability(struct spopwire_str s, const char *cap)
{
	size_t n = strlen(cap), i = 0, b, e;

	while (i < s.len) {
		while (i < s.len && (s.ptr[i] == ' ' || s.ptr[i] == '\t'))
			i++;
		b = i;
		while (i < s.len && s.ptr[i] != ',')
			i++;
		e = i;
		while (e > b && (s.ptr[e - 1] == ' ' || s.ptr[e - 1] == '\t'))
			e--;
		if (e - b == n && memcmp(s.ptr + b, cap, n) == 0)
			return 1;
		i++;	/* skip the comma */
	}
	return 0;
}

/* ---- frames ----------------------------------------------------------- */

static void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t
get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int
spopwire_frame_start(uint8_t **p, const uint8_t *end, uint8_t **frame,
		     uint8_t type, uint32_t flags, uint64_t sid, uint64_t fid)
{
	uint8_t *q = *p;

	if (end - q < SPOPWIRE_LEN_SIZE + 5)
		return -1;
	put_be32(q, 0);
	q[4] = type;
	put_be32(q + 5, flags);
	q += SPOPWIRE_LEN_SIZE + 5;
	if (spopwire_put_varint(&q, end, sid) == -1 ||
	    spopwire_put_varint(&q, end, fid) == -1)
		return -1;
	*frame = *p;
	*p = q;
	return 0;
}

size_t
spopwire_frame_finish(uint8_t *frame, const uint8_t *p)
{
	size_t total = (size_t)(p - frame);

	put_be32(frame, (uint32_t)(total - SPOPWIRE_LEN_SIZE));
	return total;
}

long
spopwire_frame_parse(const uint8_t *buf, size_t avail, uint32_t max_len,
		     struct spopwire_frame *f)
{
	const uint8_t *q, *end;

	memset(f, 0, sizeof(*f));
	if (avail < SPOPWIRE_LEN_SIZE)
		return 0;
	f->len = get_be32(buf);
	if (f->len < SPOPWIRE_FRAME_MIN || f->len > max_len || f->len > INT32_MAX - 4)
		return -1;
	if (avail - SPOPWIRE_LEN_SIZE < f->len)
		return 0;
	q = buf + SPOPWIRE_LEN_SIZE;
	end = q + f->len;
	f->type = q[0];
	f->flags = get_be32(q + 1);
	q += 5;
	if (spopwire_get_varint(&q, end, &f->sid) == -1 ||
	    spopwire_get_varint(&q, end, &f->fid) == -1)
		return -1;
	f->payload = q;
	f->payload_len = (size_t)(end - q);
	return (long)(SPOPWIRE_LEN_SIZE + f->len);
}

static int
put_kv(uint8_t **p, const uint8_t *end, const char *name, const struct spopwire_data *v)
{
	uint8_t *q = *p;

	if (spopwire_put_str(&q, end, name, strlen(name)) == -1 ||
	    spopwire_put_data(&q, end, v) == -1)
		return -1;
	*p = q;
	return 0;
}

long
spopwire_build_hello(uint8_t *buf, size_t cap, const struct spopwire_hello *h)
{
	uint8_t *p = buf, *frame;
	const uint8_t *end = buf + cap;
	struct spopwire_data d;

	if (spopwire_frame_start(&p, end, &frame, SPOPWIRE_FRAME_HAPROXY_HELLO,
				 SPOPWIRE_FLAG_FIN, 0, 0) == -1)
		return -1;
	if (h->versions != NULL) {
		d = spopwire_strz(h->versions);
		if (put_kv(&p, end, "supported-versions", &d) == -1)
			return -1;
	}
	d = spopwire_uint32(h->max_frame_size);
	if (put_kv(&p, end, "max-frame-size", &d) == -1)
		return -1;
	if (h->capabilities != NULL) {
		d = spopwire_strz(h->capabilities);
		if (put_kv(&p, end, "capabilities", &d) == -1)
			return -1;
	}
	if (h->healthcheck >= 0) {
		d = spopwire_bool(h->healthcheck);
		if (put_kv(&p, end, "healthcheck", &d) == -1)
			return -1;
	}
	if (h->engine_id != NULL) {
		d = spopwire_strz(h->engine_id);
		if (put_kv(&p, end, "engine-id", &d) == -1)
			return -1;
	}
	return (long)spopwire_frame_finish(frame, p);
}

long
spopwire_build_disconnect(uint8_t *buf, size_t cap, uint8_t type,
			  uint32_t status, const char *message)
{
	uint8_t *p = buf, *frame;
	const uint8_t *end = buf + cap;
	struct spopwire_data d;

	if (spopwire_frame_start(&p, end, &frame, type, SPOPWIRE_FLAG_FIN, 0, 0) == -1)
		return -1;
	d = spopwire_uint32(status);
	if (put_kv(&p, end, "status-code", &d) == -1)
		return -1;
	d = spopwire_strz(message != NULL ? message : "");
	if (put_kv(&p, end, "message", &d) == -1)
		return -1;
	return (long)spopwire_frame_finish(frame, p);
}

long
spopwire_build_notify(uint8_t *buf, size_t cap, uint64_t sid, uint64_t fid,
		      const char *message, const struct spopwire_arg *args,
		      size_t nargs)
{
	uint8_t *p = buf, *frame;
	const uint8_t *end = buf + cap;
	size_t i;

	if (nargs > 255)
		return -1;
	if (spopwire_frame_start(&p, end, &frame, SPOPWIRE_FRAME_NOTIFY,
				 SPOPWIRE_FLAG_FIN, sid, fid) == -1)
		return -1;
	if (spopwire_put_str(&p, end, message, strlen(message)) == -1 || p >= end)
		return -1;
	*p++ = (uint8_t)nargs;
	for (i = 0; i < nargs; i++)
		if (put_kv(&p, end, args[i].name, &args[i].value) == -1)
			return -1;
	return (long)spopwire_frame_finish(frame, p);
}

long
spopwire_build_ack(uint8_t *buf, size_t cap, uint64_t sid, uint64_t fid,
		   const struct spopwire_action *acts, size_t n)
{
	uint8_t *p = buf, *frame;
	const uint8_t *end = buf + cap;
	size_t i;

	if (spopwire_frame_start(&p, end, &frame, SPOPWIRE_FRAME_ACK,
				 SPOPWIRE_FLAG_FIN, sid, fid) == -1)
		return -1;
	for (i = 0; i < n; i++)
		if (spopwire_put_action(&p, end, &acts[i]) == -1)
			return -1;
	return (long)spopwire_frame_finish(frame, p);
}

/* ---- payloads --------------------------------------------------------- */

static int
str_is(struct spopwire_str s, const char *lit)
{
	size_t n = strlen(lit);

	return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

int
spopwire_parse_agent_kv(const uint8_t *p, const uint8_t *end,
			struct spopwire_agent_kv *kv)
{
	static const struct {
		const char *name;
		unsigned bit;
		size_t off;
	} keys[] = {
		{ "version", SPOPWIRE_KV_VERSION, offsetof(struct spopwire_agent_kv, version) },
		{ "max-frame-size", SPOPWIRE_KV_MAX_FRAME_SIZE, offsetof(struct spopwire_agent_kv, max_frame_size) },
		{ "capabilities", SPOPWIRE_KV_CAPABILITIES, offsetof(struct spopwire_agent_kv, capabilities) },
		{ "status-code", SPOPWIRE_KV_STATUS_CODE, offsetof(struct spopwire_agent_kv, status_code) },
		{ "message", SPOPWIRE_KV_MESSAGE, offsetof(struct spopwire_agent_kv, message) },
	};
	struct spopwire_str name;
	struct spopwire_data value;
	size_t i;

	memset(kv, 0, sizeof(*kv));
	while (p < end) {
		if (spopwire_get_kv(&p, end, &name, &value) == -1)
			return -1;
		kv->nkv++;
		for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (str_is(name, keys[i].name))
				break;
		if (i == sizeof(keys) / sizeof(keys[0])) {
			kv->unknown++;
			continue;
		}
		if (kv->present & keys[i].bit)
			kv->duplicate++;
		kv->present |= keys[i].bit;
		memcpy((char *)kv + keys[i].off, &value, sizeof(value));
	}
	return 0;
}

int
spopwire_get_message(const uint8_t **p, const uint8_t *end,
		     struct spopwire_str *name, unsigned *nargs)
{
	const uint8_t *q = *p;

	if (spopwire_get_str(&q, end, name) == -1 || q >= end)
		return -1;
	*nargs = *q++;
	*p = q;
	return 0;
}

int
spopwire_get_action(const uint8_t **p, const uint8_t *end, struct spopwire_action *a)
{
	const uint8_t *q = *p;

	memset(a, 0, sizeof(*a));
	if (end - q < 3)
		return -1;
	a->type = *q++;
	a->nargs = *q++;
	a->scope = *q++;
	if (a->scope >= SPOPWIRE_SCOPE_COUNT)
		return -1;
	switch (a->type) {
	case SPOPWIRE_ACT_SET_VAR:
		if (a->nargs != 3 ||
		    spopwire_get_str(&q, end, &a->name) == -1 ||
		    spopwire_get_data(&q, end, &a->value) == -1)
			return -1;
		break;
	case SPOPWIRE_ACT_UNSET_VAR:
		if (a->nargs != 2 || spopwire_get_str(&q, end, &a->name) == -1)
			return -1;
		a->value = spopwire_null();
		break;
	default:
		return -1;
	}
	*p = q;
	return 0;
}

int
spopwire_put_action(uint8_t **p, const uint8_t *end, const struct spopwire_action *a)
{
	uint8_t *q = *p;

	if (end - q < 3)
		return -1;
	*q++ = a->type;
	*q++ = a->nargs;
	*q++ = a->scope;
	if (spopwire_put_str(&q, end, a->name.ptr, a->name.len) == -1)
		return -1;
	if (a->type == SPOPWIRE_ACT_SET_VAR &&
	    spopwire_put_data(&q, end, &a->value) == -1)
		return -1;
	*p = q;
	return 0;
}

/* ---- text ------------------------------------------------------------- */

const char *
spopwire_frame_type_str(unsigned type)
{
	switch (type) {
	case SPOPWIRE_FRAME_UNSET: return "UNSET";
	case SPOPWIRE_FRAME_HAPROXY_HELLO: return "HAPROXY-HELLO";
	case SPOPWIRE_FRAME_HAPROXY_DISCONNECT: return "HAPROXY-DISCONNECT";
	case SPOPWIRE_FRAME_NOTIFY: return "NOTIFY";
	case SPOPWIRE_FRAME_AGENT_HELLO: return "AGENT-HELLO";
	case SPOPWIRE_FRAME_AGENT_DISCONNECT: return "AGENT-DISCONNECT";
	case SPOPWIRE_FRAME_ACK: return "ACK";
	default: return NULL;
	}
}

const char *
spopwire_type_str(unsigned type)
{
	static const char *const names[SPOPWIRE_T_COUNT] = {
		"null", "bool", "int32", "uint32", "int64", "uint64",
		"ipv4", "ipv6", "str", "bin",
	};

	return type < SPOPWIRE_T_COUNT ? names[type] : NULL;
}

const char *
spopwire_scope_str(unsigned scope)
{
	static const char *const names[SPOPWIRE_SCOPE_COUNT] = {
		"proc", "sess", "txn", "req", "res",
	};

	return scope < SPOPWIRE_SCOPE_COUNT ? names[scope] : NULL;
}

const char *
spopwire_status_str(unsigned status)
{
	switch (status) {
	case 0: return "normal";
	case 1: return "I/O error";
	case 2: return "timeout";
	case 3: return "frame too big";
	case 4: return "invalid frame";
	case 5: return "version not found";
	case 6: return "max-frame-size not found";
	case 7: return "capabilities not found";
	case 8: return "unsupported version";
	case 9: return "bad max-frame-size";
	case 10: return "fragmentation not supported";
	case 11: return "invalid interlaced frames";
	case 12: return "frame-id not found";
	case 13: return "resource allocation error";
	case 99: return "unknown error";
	default: return NULL;
	}
}

/* Appends to out[*n] within cap (keeping room for the NUL); cuts silently. */
static void
out_put(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
	size_t room;

	if (cap == 0 || *n >= cap - 1)
		return;
	room = cap - 1 - *n;
	if (len > room)
		len = room;
	memcpy(out + *n, s, len);
	*n += len;
	out[*n] = '\0';
}

static void
out_fmt(char *out, size_t cap, size_t *n, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void
out_fmt(char *out, size_t cap, size_t *n, const char *fmt, ...)
{
	char tmp[128];
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (r > 0)
		out_put(out, cap, n, tmp, (size_t)r < sizeof(tmp) ? (size_t)r : sizeof(tmp) - 1);
}

static int
is_bare(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || strchr("._/:+@=,-", c) != NULL;
}

size_t
spopwire_format_str(char *out, size_t cap, struct spopwire_str s, int quote, size_t limit)
{
	size_t n = 0, i, shown = s.len < limit ? s.len : limit;
	int bare = quote < 2 && !(quote == 1 && s.len == 0);

	if (cap > 0)
		out[0] = '\0';
	for (i = 0; bare && i < shown; i++)
		if (s.ptr[i] == '\0' || !is_bare(s.ptr[i]))
			bare = 0;
	if (bare) {
		out_put(out, cap, &n, (const char *)s.ptr, shown);
	} else {
		out_put(out, cap, &n, "\"", 1);
		for (i = 0; i < shown; i++) {
			uint8_t c = s.ptr[i];

			if (c == '"' || c == '\\') {
				char e[2] = { '\\', (char)c };
				out_put(out, cap, &n, e, 2);
			} else if (c >= 0x20 && c < 0x7F) {
				out_put(out, cap, &n, (const char *)&c, 1);
			} else {
				out_fmt(out, cap, &n, "\\x%02x", c);
			}
		}
		out_put(out, cap, &n, "\"", 1);
	}
	if (shown < s.len)
		out_fmt(out, cap, &n, "...(%zu bytes)", s.len);
	return n;
}

size_t
spopwire_format_data(char *out, size_t cap, const struct spopwire_data *d)
{
	char ip[INET6_ADDRSTRLEN];
	const char *tn = spopwire_type_str(d->type);
	size_t n = 0, i, shown;

	if (cap > 0)
		out[0] = '\0';
	if (tn == NULL) {
		out_fmt(out, cap, &n, "type%u", (unsigned)d->type);
		return n;
	}
	out_put(out, cap, &n, tn, strlen(tn));
	if (d->type != SPOPWIRE_T_NULL)
		out_put(out, cap, &n, ":", 1);
	switch (d->type) {
	case SPOPWIRE_T_NULL:
		break;
	case SPOPWIRE_T_BOOL:
		out_put(out, cap, &n, d->v.b ? "true" : "false", d->v.b ? 4 : 5);
		break;
	case SPOPWIRE_T_INT32:
	case SPOPWIRE_T_INT64:
		out_fmt(out, cap, &n, "%" PRId64, d->v.i64);
		break;
	case SPOPWIRE_T_UINT32:
	case SPOPWIRE_T_UINT64:
		out_fmt(out, cap, &n, "%" PRIu64, d->v.u64);
		break;
	case SPOPWIRE_T_IPV4:
		inet_ntop(AF_INET, d->v.ipv4, ip, sizeof(ip));
		out_put(out, cap, &n, ip, strlen(ip));
		break;
	case SPOPWIRE_T_IPV6:
		inet_ntop(AF_INET6, d->v.ipv6, ip, sizeof(ip));
		out_put(out, cap, &n, ip, strlen(ip));
		break;
	case SPOPWIRE_T_STR:
		if (cap > n)
			n += spopwire_format_str(out + n, cap - n, d->v.str, 1, 256);
		break;
	case SPOPWIRE_T_BIN:
		shown = d->v.str.len < 128 ? d->v.str.len : 128;
		for (i = 0; i < shown; i++)
			out_fmt(out, cap, &n, "%02x", d->v.str.ptr[i]);
		if (shown < d->v.str.len)
			out_fmt(out, cap, &n, "...(%zu bytes)", d->v.str.len);
		break;
	default:
		break;
	}
	/* Non-zero flags on anything but BOOL are worth seeing. */
	if (d->type != SPOPWIRE_T_BOOL && d->flags != 0)
		out_fmt(out, cap, &n, "(flags=0x%02x)", d->flags);
	return n;
}

size_t
spopwire_format_action(char *out, size_t cap, const struct spopwire_action *a)
{
	const char *scope = spopwire_scope_str(a->scope);
	size_t n = 0;

	if (cap > 0)
		out[0] = '\0';
	if (a->type == SPOPWIRE_ACT_SET_VAR)
		out_put(out, cap, &n, "set-var ", 8);
	else if (a->type == SPOPWIRE_ACT_UNSET_VAR)
		out_put(out, cap, &n, "unset-var ", 10);
	else
		out_fmt(out, cap, &n, "action%u ", a->type);
	if (scope != NULL)
		out_fmt(out, cap, &n, "%s ", scope);
	else
		out_fmt(out, cap, &n, "scope%u ", a->scope);
	if (cap > n)
		n += spopwire_format_str(out + n, cap - n, a->name, 1, 64);
	if (a->type == SPOPWIRE_ACT_SET_VAR) {
		out_put(out, cap, &n, " ", 1);
		if (cap > n)
			n += spopwire_format_data(out + n, cap - n, &a->value);
	}
	return n;
}
