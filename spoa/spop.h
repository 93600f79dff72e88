/*
 * spop: the SPOP 2.0 codec. Pure: no I/O, no allocation, no global state.
 *
 * Decoders take a cursor and an end: `int spop_get_x(const uint8_t **p,
 * const uint8_t *end, ...)`. They never read outside [*p, end), advance *p
 * only on success, and return 0 on success, -1 on malformed or truncated
 * input. Encoders mirror them with a writable cursor and return -1 when the
 * output does not fit (nothing useful is written in that case).
 *
 * Decoded strings are borrowed views into the input buffer, valid until
 * that buffer is consumed.
 */
#ifndef TOKENGATE_SPOP_H
#define TOKENGATE_SPOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum spop_frame_type {
	SPOP_FRAME_UNSET = 0,
	SPOP_FRAME_HAPROXY_HELLO = 1,
	SPOP_FRAME_HAPROXY_DISCONNECT = 2,
	SPOP_FRAME_NOTIFY = 3,
	SPOP_FRAME_AGENT_HELLO = 101,
	SPOP_FRAME_AGENT_DISCONNECT = 102,
	SPOP_FRAME_ACK = 103,
};

#define SPOP_FLAG_FIN 0x00000001u
#define SPOP_FLAG_ABORT 0x00000002u

enum spop_type {
	SPOP_T_NULL = 0,
	SPOP_T_BOOL = 1,
	SPOP_T_INT32 = 2,
	SPOP_T_UINT32 = 3,
	SPOP_T_INT64 = 4,
	SPOP_T_UINT64 = 5,
	SPOP_T_IPV4 = 6,
	SPOP_T_IPV6 = 7,
	SPOP_T_STR = 8,
	SPOP_T_BIN = 9,
	SPOP_T_COUNT
};

/* Status codes of HAPROXY-DISCONNECT / AGENT-DISCONNECT (spec 3.5). */
enum spop_status {
	SPOP_ERR_NONE = 0,
	SPOP_ERR_IO = 1,
	SPOP_ERR_TOUT = 2,
	SPOP_ERR_TOO_BIG = 3,
	SPOP_ERR_INVALID = 4,
	SPOP_ERR_NO_VSN = 5,
	SPOP_ERR_NO_FRAME_SIZE = 6,
	SPOP_ERR_NO_CAP = 7,
	SPOP_ERR_BAD_VSN = 8,
	SPOP_ERR_BAD_FRAME_SIZE = 9,
	SPOP_ERR_FRAG_NOT_SUPPORTED = 10,
	SPOP_ERR_INTERLACED_FRAMES = 11,
	SPOP_ERR_FRAMEID_NOTFOUND = 12,
	SPOP_ERR_RES = 13,
	SPOP_ERR_UNKNOWN = 99,
};

enum spop_scope {
	SPOP_SCOPE_PROC = 0,
	SPOP_SCOPE_SESS = 1,
	SPOP_SCOPE_TXN = 2,
	SPOP_SCOPE_REQ = 3,
	SPOP_SCOPE_RES = 4,
	SPOP_SCOPE_COUNT
};

enum spop_action_type {
	SPOP_ACT_SET_VAR = 1,
	SPOP_ACT_UNSET_VAR = 2,
};

/* Smallest frame a peer may announce (spec 3.2). */
#define SPOP_MIN_FRAME_SIZE 256u
/* A frame is at least type + flags + sid + fid. */
#define SPOP_MIN_FRAME_LEN 7u
/* A 64-bit varint never takes more than this. */
#define SPOP_VARINT_MAX 10u
/* One byte on the wire carries the count of a message's arguments. */
#define SPOP_MAX_ARGS 255u

struct spop_str {
	const uint8_t *ptr;
	size_t len;
};

struct spop_data {
	enum spop_type type;
	union {
		bool b;
		int64_t i;  /* INT32, INT64 */
		uint64_t u; /* UINT32, UINT64 */
		uint8_t ipv4[4];
		uint8_t ipv6[16];
		struct spop_str s; /* STR, BIN */
	} v;
};

/* A decoded frame: the bytes after the 4-byte length prefix. */
struct spop_frame {
	uint8_t type;
	uint32_t flags;
	uint64_t sid;
	uint64_t fid;
	const uint8_t *payload;
	size_t payload_len;
};

struct spop_arg {
	struct spop_str name;
	struct spop_data value;
};

/* One message of a NOTIFY; args borrow from the frame. */
struct spop_msg {
	struct spop_str name;
	unsigned nargs;
	struct spop_arg args[SPOP_MAX_ARGS];
};

/* The items of a HAPROXY-HELLO; `have` says which were present. */
#define SPOP_HELLO_HAVE_VERSIONS 0x1u
#define SPOP_HELLO_HAVE_FRAME_SIZE 0x2u
#define SPOP_HELLO_HAVE_CAPS 0x4u
struct spop_hello {
	unsigned have;
	struct spop_str versions;
	uint32_t max_frame_size;
	struct spop_str capabilities;
	struct spop_str engine_id;
	bool healthcheck;
};

/* The items of a HAPROXY-DISCONNECT. */
struct spop_disconnect {
	uint32_t status;
	struct spop_str message;
};

/* --- primitives ------------------------------------------------------- */

int spop_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v);
int spop_put_varint(uint8_t **p, uint8_t *end, uint64_t v);
/* Bytes spop_put_varint() writes for v. */
size_t spop_varint_len(uint64_t v);

/* A length-prefixed string (no type byte), as in names. */
int spop_get_str(const uint8_t **p, const uint8_t *end, struct spop_str *s);
int spop_put_str(uint8_t **p, uint8_t *end, const void *s, size_t len);

/* Typed data. Unknown types and non-zero flags on non-BOOL types fail. */
int spop_get_data(const uint8_t **p, const uint8_t *end, struct spop_data *d);
int spop_put_data(uint8_t **p, uint8_t *end, const struct spop_data *d);

/* A KV pair: a name, then typed data. */
int spop_get_kv(const uint8_t **p, const uint8_t *end, struct spop_str *name,
		struct spop_data *value);

/* --- frames ----------------------------------------------------------- */

/*
 * Looks at the 4-byte length prefix at buf. Returns 0 when fewer than 4
 * bytes are available, 1 with *len set when the length is acceptable, and
 * -1 (with *len set) when it is below SPOP_MIN_FRAME_LEN or above max.
 */
int spop_peek_length(const uint8_t *buf, size_t avail, uint32_t max, uint32_t *len);

/* Decodes the header of the frame bytes [buf, buf+len), the length prefix
 * excluded. payload points into buf. */
int spop_get_frame(const uint8_t *buf, size_t len, struct spop_frame *f);

/*
 * Starts a frame at *p: reserves the length prefix and writes the header.
 * Returns the start (to pass to spop_end_frame) or NULL when it does not fit.
 */
uint8_t *spop_begin_frame(uint8_t **p, uint8_t *end, uint8_t type, uint32_t flags,
			  uint64_t sid, uint64_t fid);
/* Writes the length prefix of the frame begun at start and ending at p. */
void spop_end_frame(uint8_t *start, const uint8_t *p);

/* --- payloads --------------------------------------------------------- */

/* Decodes one message of a NOTIFY's list. */
int spop_get_message(const uint8_t **p, const uint8_t *end, struct spop_msg *m);

/*
 * Decodes a HAPROXY-HELLO payload. Returns 0 on a well-formed KV list
 * (whether or not the mandatory items are present: see h->have), -1 if
 * the list is malformed or an item has the wrong type.
 */
int spop_get_hello(const uint8_t *payload, size_t len, struct spop_hello *h);

/* Decodes a HAPROXY-DISCONNECT payload; missing items are left zero. */
int spop_get_disconnect(const uint8_t *payload, size_t len, struct spop_disconnect *d);

/* True when the comma-separated list has an item equal to word (spaces
 * around items ignored). */
bool spop_list_has(struct spop_str list, const char *word);

/* The mandatory-item status for a hello missing something, 0 if none. */
enum spop_status spop_hello_check(const struct spop_hello *h);

/* Builds a whole AGENT-HELLO frame (length prefix included). */
int spop_put_agent_hello(uint8_t **p, uint8_t *end, uint32_t max_frame_size,
			 const char *capabilities);
/* Builds a whole AGENT-DISCONNECT frame. */
int spop_put_agent_disconnect(uint8_t **p, uint8_t *end, uint32_t status,
			      const char *message);

/* Actions, appended to an ACK payload. */
int spop_put_set_var(uint8_t **p, uint8_t *end, enum spop_scope scope,
		     const char *name, const struct spop_data *value);
int spop_put_unset_var(uint8_t **p, uint8_t *end, enum spop_scope scope,
		       const char *name);

/* Human-readable names, for logs. */
const char *spop_status_str(unsigned status);
const char *spop_frame_type_str(unsigned type);

/* Convenience constructors for typed data. */
static inline struct spop_data spop_data_str(const char *s, size_t len)
{
	struct spop_data d = {.type = SPOP_T_STR};
	d.v.s.ptr = (const uint8_t *)s;
	d.v.s.len = len;
	return d;
}

static inline struct spop_data spop_data_int(int64_t i)
{
	struct spop_data d = {.type = SPOP_T_INT64};
	d.v.i = i;
	return d;
}

/* Compares a view with a C string. */
bool spop_str_eq(struct spop_str s, const char *cstr);

/* The first argument of m named `name`, or NULL. */
const struct spop_data *spop_msg_arg(const struct spop_msg *m, const char *name);

#endif
