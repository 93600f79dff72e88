/* spop: the SPOP 2.0 codec (see spop.h for the cursor contract). */
#include "spop.h"

#include <string.h>

int spop_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	const uint8_t *q = *p;
	uint64_t x;
	unsigned shift = 4;

	if (q >= end)
		return -1;
	x = *q++;
	if (x >= 240) {
		for (;;) {
			uint64_t b, term;

			if (q >= end || q - *p >= (ptrdiff_t)SPOP_VARINT_MAX)
				return -1;
			b = *q++;
			/* The last byte may only carry the bits that still fit. */
			if (shift >= 64 || b > (UINT64_MAX >> shift))
				return -1;
			term = b << shift;
			if (x + term < x)
				return -1;
			x += term;
			if (b < 128)
				break;
			shift += 7;
		}
	}
	*v = x;
	*p = q;
	return 0;
}

size_t spop_varint_len(uint64_t v)
{
	size_t n = 1;

	if (v < 240)
		return 1;
	v = (v - 240) >> 4;
	while (v >= 128) {
		v = (v - 128) >> 7;
		n++;
	}
	return n + 1;
}

int spop_put_varint(uint8_t **p, uint8_t *end, uint64_t v)
{
	uint8_t *q = *p;

	if ((size_t)(end - q) < spop_varint_len(v))
		return -1;
	if (v < 240) {
		*q++ = (uint8_t)v;
	} else {
		*q++ = (uint8_t)(v | 0xF0);
		v = (v - 240) >> 4;
		while (v >= 128) {
			*q++ = (uint8_t)(v | 0x80);
			v = (v - 128) >> 7;
		}
		*q++ = (uint8_t)v;
	}
	*p = q;
	return 0;
}

int spop_get_str(const uint8_t **p, const uint8_t *end, struct spop_str *s)
{
	const uint8_t *q = *p;
	uint64_t len;

	if (spop_get_varint(&q, end, &len) == -1)
		return -1;
	if (len > (uint64_t)(end - q))
		return -1;
	s->ptr = q;
	s->len = (size_t)len;
	*p = q + len;
	return 0;
}

int spop_put_str(uint8_t **p, uint8_t *end, const void *s, size_t len)
{
	uint8_t *q = *p;

	if (spop_put_varint(&q, end, len) == -1 || (size_t)(end - q) < len)
		return -1;
	if (len)
		memcpy(q, s, len);
	*p = q + len;
	return 0;
}

int spop_get_data(const uint8_t **p, const uint8_t *end, struct spop_data *d)
{
	const uint8_t *q = *p;
	uint8_t tf;
	uint64_t u;

	if (q >= end)
		return -1;
	tf = *q++;
	/* Flags only mean something for BOOL; HAProxy ignores them elsewhere
	 * and so do we, but the type nibble must be one we know. */
	d->type = (enum spop_type)(tf & 0x0F);
	switch (d->type) {
	case SPOP_T_NULL:
		break;
	case SPOP_T_BOOL:
		d->v.b = (tf & 0x10) != 0;
		break;
	case SPOP_T_INT32:
		if (spop_get_varint(&q, end, &u) == -1)
			return -1;
		/* Accept both the 32-bit and the sign-extended 64-bit form. */
		if (u <= UINT32_MAX)
			d->v.i = (int32_t)(uint32_t)u;
		else if ((int64_t)u >= INT32_MIN && (int64_t)u < 0)
			d->v.i = (int64_t)u;
		else
			return -1;
		break;
	case SPOP_T_UINT32:
		if (spop_get_varint(&q, end, &u) == -1 || u > UINT32_MAX)
			return -1;
		d->v.u = u;
		break;
	case SPOP_T_INT64:
		if (spop_get_varint(&q, end, &u) == -1)
			return -1;
		d->v.i = (int64_t)u;
		break;
	case SPOP_T_UINT64:
		if (spop_get_varint(&q, end, &u) == -1)
			return -1;
		d->v.u = u;
		break;
	case SPOP_T_IPV4:
		if (end - q < 4)
			return -1;
		memcpy(d->v.ipv4, q, 4);
		q += 4;
		break;
	case SPOP_T_IPV6:
		if (end - q < 16)
			return -1;
		memcpy(d->v.ipv6, q, 16);
		q += 16;
		break;
	case SPOP_T_STR:
	case SPOP_T_BIN:
		if (spop_get_str(&q, end, &d->v.s) == -1)
			return -1;
		break;
	default:
		return -1;
	}
	*p = q;
	return 0;
}

int spop_put_data(uint8_t **p, uint8_t *end, const struct spop_data *d)
{
	uint8_t *q = *p;

	if (q >= end)
		return -1;
	switch (d->type) {
	case SPOP_T_NULL:
		*q++ = SPOP_T_NULL;
		break;
	case SPOP_T_BOOL:
		*q++ = (uint8_t)(SPOP_T_BOOL | (d->v.b ? 0x10 : 0));
		break;
	case SPOP_T_INT32:
	case SPOP_T_INT64:
		*q++ = (uint8_t)d->type;
		if (spop_put_varint(&q, end, (uint64_t)d->v.i) == -1)
			return -1;
		break;
	case SPOP_T_UINT32:
	case SPOP_T_UINT64:
		*q++ = (uint8_t)d->type;
		if (spop_put_varint(&q, end, d->v.u) == -1)
			return -1;
		break;
	case SPOP_T_IPV4:
		if (end - q < 5)
			return -1;
		*q++ = SPOP_T_IPV4;
		memcpy(q, d->v.ipv4, 4);
		q += 4;
		break;
	case SPOP_T_IPV6:
		if (end - q < 17)
			return -1;
		*q++ = SPOP_T_IPV6;
		memcpy(q, d->v.ipv6, 16);
		q += 16;
		break;
	case SPOP_T_STR:
	case SPOP_T_BIN:
		*q++ = (uint8_t)d->type;
		if (spop_put_str(&q, end, d->v.s.ptr, d->v.s.len) == -1)
			return -1;
		break;
	default:
		return -1;
	}
	*p = q;
	return 0;
}

int spop_get_kv(const uint8_t **p, const uint8_t *end, struct spop_str *name,
		struct spop_data *value)
{
	const uint8_t *q = *p;

	if (spop_get_str(&q, end, name) == -1 || spop_get_data(&q, end, value) == -1)
		return -1;
	*p = q;
	return 0;
}

static uint32_t be32_get(const uint8_t *b)
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void be32_put(uint8_t *b, uint32_t v)
{
	b[0] = (uint8_t)(v >> 24);
	b[1] = (uint8_t)(v >> 16);
	b[2] = (uint8_t)(v >> 8);
	b[3] = (uint8_t)v;
}

int spop_peek_length(const uint8_t *buf, size_t avail, uint32_t max, uint32_t *len)
{
	if (avail < 4)
		return 0;
	*len = be32_get(buf);
	if (*len < SPOP_MIN_FRAME_LEN || *len > max)
		return -1;
	return 1;
}

int spop_get_frame(const uint8_t *buf, size_t len, struct spop_frame *f)
{
	const uint8_t *p = buf, *end = buf + len;

	if (len < SPOP_MIN_FRAME_LEN)
		return -1;
	f->type = *p++;
	f->flags = be32_get(p);
	p += 4;
	if (spop_get_varint(&p, end, &f->sid) == -1 || spop_get_varint(&p, end, &f->fid) == -1)
		return -1;
	f->payload = p;
	f->payload_len = (size_t)(end - p);
	return 0;
}

uint8_t *spop_begin_frame(uint8_t **p, uint8_t *end, uint8_t type, uint32_t flags,
			  uint64_t sid, uint64_t fid)
{
	uint8_t *start = *p, *q = *p;

	if (end - q < 9)
		return NULL;
	q += 4;
	*q++ = type;
	be32_put(q, flags);
	q += 4;
	if (spop_put_varint(&q, end, sid) == -1 || spop_put_varint(&q, end, fid) == -1)
		return NULL;
	*p = q;
	return start;
}

void spop_end_frame(uint8_t *start, const uint8_t *p)
{
	be32_put(start, (uint32_t)(p - start - 4));
}

int spop_get_message(const uint8_t **p, const uint8_t *end, struct spop_msg *m)
{
	const uint8_t *q = *p;
	unsigned i;

	if (spop_get_str(&q, end, &m->name) == -1 || q >= end)
		return -1;
	m->nargs = *q++;
	for (i = 0; i < m->nargs; i++)
		if (spop_get_kv(&q, end, &m->args[i].name, &m->args[i].value) == -1)
			return -1;
	*p = q;
	return 0;
}

bool spop_str_eq(struct spop_str s, const char *cstr)
{
	size_t n = strlen(cstr);

	return s.len == n && (n == 0 || memcmp(s.ptr, cstr, n) == 0);
}

const struct spop_data *spop_msg_arg(const struct spop_msg *m, const char *name)
{
	for (unsigned i = 0; i < m->nargs; i++)
		if (spop_str_eq(m->args[i].name, name))
			return &m->args[i].value;
	return NULL;
}

static bool is_int_type(enum spop_type t)
{
	return t == SPOP_T_INT32 || t == SPOP_T_UINT32 || t == SPOP_T_INT64 || t == SPOP_T_UINT64;
}

int spop_get_hello(const uint8_t *payload, size_t len, struct spop_hello *h)
{
	const uint8_t *p = payload, *end = payload + len;

	memset(h, 0, sizeof(*h));
	while (p < end) {
		struct spop_str k;
		struct spop_data v;

		if (spop_get_kv(&p, end, &k, &v) == -1)
			return -1;
		if (spop_str_eq(k, "supported-versions")) {
			if (v.type != SPOP_T_STR)
				return -1;
			h->versions = v.v.s;
			h->have |= SPOP_HELLO_HAVE_VERSIONS;
		} else if (spop_str_eq(k, "max-frame-size")) {
			/* HAProxy sends UINT32; any non-negative integer will do. */
			if (!is_int_type(v.type))
				return -1;
			if ((v.type == SPOP_T_INT32 || v.type == SPOP_T_INT64) && v.v.i < 0)
				return -1;
			h->max_frame_size = v.v.u > UINT32_MAX ? UINT32_MAX : (uint32_t)v.v.u;
			h->have |= SPOP_HELLO_HAVE_FRAME_SIZE;
		} else if (spop_str_eq(k, "capabilities")) {
			if (v.type != SPOP_T_STR)
				return -1;
			h->capabilities = v.v.s;
			h->have |= SPOP_HELLO_HAVE_CAPS;
		} else if (spop_str_eq(k, "healthcheck")) {
			if (v.type != SPOP_T_BOOL)
				return -1;
			h->healthcheck = v.v.b;
		} else if (spop_str_eq(k, "engine-id")) {
			if (v.type != SPOP_T_STR)
				return -1;
			h->engine_id = v.v.s;
		}
		/* Unknown items are allowed: later versions may add some. */
	}
	return 0;
}

int spop_get_disconnect(const uint8_t *payload, size_t len, struct spop_disconnect *d)
{
	const uint8_t *p = payload, *end = payload + len;

	memset(d, 0, sizeof(*d));
	while (p < end) {
		struct spop_str k;
		struct spop_data v;

		if (spop_get_kv(&p, end, &k, &v) == -1)
			return -1;
		if (spop_str_eq(k, "status-code") && is_int_type(v.type))
			d->status = v.v.u > UINT32_MAX ? UINT32_MAX : (uint32_t)v.v.u;
		else if (spop_str_eq(k, "message") && v.type == SPOP_T_STR)
			d->message = v.v.s;
	}
	return 0;
}

static bool is_space(uint8_t c)
{
	return c == ' ' || c == '\t';
}

bool spop_list_has(struct spop_str list, const char *word)
{
	const uint8_t *p = list.ptr, *end = list.ptr + list.len;
	size_t wlen = strlen(word);

	while (p < end) {
		const uint8_t *s = p, *e;

		while (p < end && *p != ',')
			p++;
		e = p;
		while (s < e && is_space(*s))
			s++;
		while (e > s && is_space(e[-1]))
			e--;
		if ((size_t)(e - s) == wlen && memcmp(s, word, wlen) == 0)
			return true;
		if (p < end)
			p++;
	}
	return false;
}

/* True when the list names a 2.x version: we speak 2.0, which every 2.x
 * peer also supports (spec 3.2.4: a major version implies its minors). */
static bool versions_ok(struct spop_str list)
{
	const uint8_t *p = list.ptr, *end = list.ptr + list.len;

	while (p < end) {
		while (p < end && (is_space(*p) || *p == ','))
			p++;
		if (end - p >= 2 && p[0] == '2' && p[1] == '.')
			return true;
		while (p < end && *p != ',')
			p++;
	}
	return false;
}

enum spop_status spop_hello_check(const struct spop_hello *h)
{
	if (!(h->have & SPOP_HELLO_HAVE_VERSIONS))
		return SPOP_ERR_NO_VSN;
	if (!(h->have & SPOP_HELLO_HAVE_FRAME_SIZE))
		return SPOP_ERR_NO_FRAME_SIZE;
	if (!(h->have & SPOP_HELLO_HAVE_CAPS))
		return SPOP_ERR_NO_CAP;
	if (!versions_ok(h->versions))
		return SPOP_ERR_BAD_VSN;
	if (h->max_frame_size < SPOP_MIN_FRAME_SIZE)
		return SPOP_ERR_BAD_FRAME_SIZE;
	return SPOP_ERR_NONE;
}

static int put_kv_str(uint8_t **p, uint8_t *end, const char *k, const char *v)
{
	struct spop_data d = spop_data_str(v, strlen(v));

	if (spop_put_str(p, end, k, strlen(k)) == -1)
		return -1;
	return spop_put_data(p, end, &d);
}

static int put_kv_uint32(uint8_t **p, uint8_t *end, const char *k, uint32_t v)
{
	struct spop_data d = {.type = SPOP_T_UINT32};

	d.v.u = v;
	if (spop_put_str(p, end, k, strlen(k)) == -1)
		return -1;
	return spop_put_data(p, end, &d);
}

int spop_put_agent_hello(uint8_t **p, uint8_t *end, uint32_t max_frame_size,
			 const char *capabilities)
{
	uint8_t *q = *p, *start;

	/* Flags exactly FIN and ids as single zero bytes: HAProxy's health
	 * check compares these raw bytes. */
	start = spop_begin_frame(&q, end, SPOP_FRAME_AGENT_HELLO, SPOP_FLAG_FIN, 0, 0);
	if (!start || put_kv_str(&q, end, "version", "2.0") == -1 ||
	    put_kv_uint32(&q, end, "max-frame-size", max_frame_size) == -1 ||
	    put_kv_str(&q, end, "capabilities", capabilities) == -1)
		return -1;
	spop_end_frame(start, q);
	*p = q;
	return 0;
}

int spop_put_agent_disconnect(uint8_t **p, uint8_t *end, uint32_t status,
			      const char *message)
{
	uint8_t *q = *p, *start;

	start = spop_begin_frame(&q, end, SPOP_FRAME_AGENT_DISCONNECT, SPOP_FLAG_FIN, 0, 0);
	if (!start || put_kv_uint32(&q, end, "status-code", status) == -1 ||
	    put_kv_str(&q, end, "message", message) == -1)
		return -1;
	spop_end_frame(start, q);
	*p = q;
	return 0;
}

int spop_put_set_var(uint8_t **p, uint8_t *end, enum spop_scope scope,
		     const char *name, const struct spop_data *value)
{
	uint8_t *q = *p;

	if (end - q < 3 || (unsigned)scope >= SPOP_SCOPE_COUNT)
		return -1;
	*q++ = SPOP_ACT_SET_VAR;
	*q++ = 3;
	*q++ = (uint8_t)scope;
	if (spop_put_str(&q, end, name, strlen(name)) == -1 || spop_put_data(&q, end, value) == -1)
		return -1;
	*p = q;
	return 0;
}

int spop_put_unset_var(uint8_t **p, uint8_t *end, enum spop_scope scope, const char *name)
{
	uint8_t *q = *p;

	if (end - q < 3 || (unsigned)scope >= SPOP_SCOPE_COUNT)
		return -1;
	*q++ = SPOP_ACT_UNSET_VAR;
	*q++ = 2;
	*q++ = (uint8_t)scope;
	if (spop_put_str(&q, end, name, strlen(name)) == -1)
		return -1;
	*p = q;
	return 0;
}

const char *spop_status_str(unsigned status)
{
	switch (status) {
	case SPOP_ERR_NONE: return "normal";
	case SPOP_ERR_IO: return "I/O error";
	case SPOP_ERR_TOUT: return "a timeout occurred";
	case SPOP_ERR_TOO_BIG: return "frame is too big";
	case SPOP_ERR_INVALID: return "invalid frame received";
	case SPOP_ERR_NO_VSN: return "version value not found";
	case SPOP_ERR_NO_FRAME_SIZE: return "max-frame-size value not found";
	case SPOP_ERR_NO_CAP: return "capabilities value not found";
	case SPOP_ERR_BAD_VSN: return "unsupported version";
	case SPOP_ERR_BAD_FRAME_SIZE: return "max-frame-size too big or too small";
	case SPOP_ERR_FRAG_NOT_SUPPORTED: return "payload fragmentation is not supported";
	case SPOP_ERR_INTERLACED_FRAMES: return "invalid interlaced frames";
	case SPOP_ERR_FRAMEID_NOTFOUND: return "frame-id not found";
	case SPOP_ERR_RES: return "resource allocation error";
	default: return "an unknown error occurred";
	}
}

const char *spop_frame_type_str(unsigned type)
{
	switch (type) {
	case SPOP_FRAME_UNSET: return "UNSET";
	case SPOP_FRAME_HAPROXY_HELLO: return "HAPROXY-HELLO";
	case SPOP_FRAME_HAPROXY_DISCONNECT: return "HAPROXY-DISCONNECT";
	case SPOP_FRAME_NOTIFY: return "NOTIFY";
	case SPOP_FRAME_AGENT_HELLO: return "AGENT-HELLO";
	case SPOP_FRAME_AGENT_DISCONNECT: return "AGENT-DISCONNECT";
	case SPOP_FRAME_ACK: return "ACK";
	default: return "unknown";
	}
}
