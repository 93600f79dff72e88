/*
 * spopwire: a minimal SPOP 2.0 codec (HAProxy's Stream Processing Offload
 * Protocol) for the load generator and the end-to-end test tools.
 *
 * It is deliberately independent from the agent's codec in spoa/: written
 * from the spec (doc/SPOE.txt, section 3) and shares no code with it, so a
 * codec bug on one side cannot cancel itself out on the other.
 *
 * Conventions:
 *   - Decoders take a cursor and an end, never read outside [*p, end),
 *     advance *p only on success and return 0, or return -1 and leave *p.
 *   - Encoders mirror them: they write inside [*p, end), advance *p only on
 *     success and return 0, or return -1 when the value does not fit or is
 *     invalid (bytes inside [*p, end) may then have been overwritten).
 *   - Decoded strings (struct spopwire_str) are borrowed views into the
 *     caller's input buffer, valid as long as that buffer is.
 *   - No I/O, no allocation, no global state: safe from any thread.
 */
#ifndef SPOPWIRE_H
#define SPOPWIRE_H

#include <stddef.h>
#include <stdint.h>

/* A 64-bit varint is at most 10 bytes; longer encodings are rejected. */
#define SPOPWIRE_VARINT_MAX 10

/* 4-byte length prefix, then type, flags, and two one-byte-minimum ids. */
#define SPOPWIRE_LEN_SIZE 4
#define SPOPWIRE_FRAME_MIN 7

/* HAProxy's default max-frame-size (tune.bufsize 16384 - 4). */
#define SPOPWIRE_DEFAULT_FRAME_SIZE 16380u
/* The spec's lower bound for any peer's max-frame-size. */
#define SPOPWIRE_MIN_FRAME_SIZE 256u

enum spopwire_frame_type {
	SPOPWIRE_FRAME_UNSET = 0,
	SPOPWIRE_FRAME_HAPROXY_HELLO = 1,
	SPOPWIRE_FRAME_HAPROXY_DISCONNECT = 2,
	SPOPWIRE_FRAME_NOTIFY = 3,
	SPOPWIRE_FRAME_AGENT_HELLO = 101,
	SPOPWIRE_FRAME_AGENT_DISCONNECT = 102,
	SPOPWIRE_FRAME_ACK = 103,
};

#define SPOPWIRE_FLAG_FIN 0x00000001u
#define SPOPWIRE_FLAG_ABORT 0x00000002u

/* Typed data: low nibble is the type, high nibble the flags. */
enum spopwire_type {
	SPOPWIRE_T_NULL = 0,
	SPOPWIRE_T_BOOL = 1,
	SPOPWIRE_T_INT32 = 2,
	SPOPWIRE_T_UINT32 = 3,
	SPOPWIRE_T_INT64 = 4,
	SPOPWIRE_T_UINT64 = 5,
	SPOPWIRE_T_IPV4 = 6,
	SPOPWIRE_T_IPV6 = 7,
	SPOPWIRE_T_STR = 8,
	SPOPWIRE_T_BIN = 9,
	SPOPWIRE_T_COUNT
};

/* BOOL's value is bit 0 of the flags nibble, i.e. 0x10 of the type byte. */
#define SPOPWIRE_BOOL_TRUE 0x10u

enum spopwire_action_type {
	SPOPWIRE_ACT_SET_VAR = 1,
	SPOPWIRE_ACT_UNSET_VAR = 2,
};

enum spopwire_scope {
	SPOPWIRE_SCOPE_PROC = 0,
	SPOPWIRE_SCOPE_SESS = 1,
	SPOPWIRE_SCOPE_TXN = 2,
	SPOPWIRE_SCOPE_REQ = 3,
	SPOPWIRE_SCOPE_RES = 4,
	SPOPWIRE_SCOPE_COUNT
};

/* Status codes of the spec's section 3.5 (those the tools name). */
enum spopwire_status {
	SPOPWIRE_ERR_NONE = 0,
	SPOPWIRE_ERR_IO = 1,
	SPOPWIRE_ERR_TIMEOUT = 2,
	SPOPWIRE_ERR_TOO_BIG = 3,
	SPOPWIRE_ERR_INVALID = 4,
	SPOPWIRE_ERR_NO_VSN = 5,
	SPOPWIRE_ERR_NO_FRAME_SIZE = 6,
	SPOPWIRE_ERR_NO_CAP = 7,
	SPOPWIRE_ERR_BAD_VSN = 8,
	SPOPWIRE_ERR_BAD_FRAME_SIZE = 9,
	SPOPWIRE_ERR_FRAG_NOT_SUPPORTED = 10,
	SPOPWIRE_ERR_INTERLACED_FRAMES = 11,
	SPOPWIRE_ERR_FRAMEID_NOTFOUND = 12,
	SPOPWIRE_ERR_RES = 13,
	SPOPWIRE_ERR_UNKNOWN = 99,
};

/* A borrowed byte string: not NUL-terminated, may contain NULs. */
struct spopwire_str {
	const uint8_t *ptr;
	size_t len;
};

/*
 * A typed value. Integers are held widened: INT32/INT64 in v.i64,
 * UINT32/UINT64 in v.u64. STR and BIN borrow their bytes (v.str).
 * `flags` is the raw high nibble as received (0 when encoding, except BOOL
 * whose flag is derived from v.b).
 */
struct spopwire_data {
	enum spopwire_type type;
	uint8_t flags;
	union {
		int b;
		int64_t i64;
		uint64_t u64;
		uint8_t ipv4[4];
		uint8_t ipv6[16];
		struct spopwire_str str;
	} v;
};

/* A decoded frame; payload borrows from the parsed buffer. */
struct spopwire_frame {
	uint32_t len;		/* length field (frame without its prefix) */
	uint8_t type;
	uint32_t flags;
	uint64_t sid;
	uint64_t fid;
	const uint8_t *payload;
	size_t payload_len;
};

/* One argument of a NOTIFY message, or one KV pair of a HELLO. */
struct spopwire_arg {
	const char *name;	/* NUL-terminated */
	struct spopwire_data value;
};

/* A decoded ACK action. For unset-var, value.type is SPOPWIRE_T_NULL. */
struct spopwire_action {
	uint8_t type;		/* enum spopwire_action_type */
	uint8_t nargs;
	uint8_t scope;		/* enum spopwire_scope */
	struct spopwire_str name;
	struct spopwire_data value;
};

/* What HAPROXY-HELLO announces. NULL strings are omitted from the frame. */
struct spopwire_hello {
	const char *versions;		/* "supported-versions", e.g. "2.0" */
	uint32_t max_frame_size;	/* announced as UINT32 */
	const char *capabilities;	/* e.g. "pipelining", may be "" */
	int healthcheck;		/* < 0 omitted, else encoded as BOOL */
	const char *engine_id;
};

/* Keys of AGENT-HELLO / AGENT-DISCONNECT that the tools know. */
#define SPOPWIRE_KV_VERSION 0x01u
#define SPOPWIRE_KV_MAX_FRAME_SIZE 0x02u
#define SPOPWIRE_KV_CAPABILITIES 0x04u
#define SPOPWIRE_KV_STATUS_CODE 0x08u
#define SPOPWIRE_KV_MESSAGE 0x10u

struct spopwire_agent_kv {
	unsigned present;	/* SPOPWIRE_KV_* bits of the keys seen */
	unsigned nkv;		/* number of pairs */
	unsigned unknown;	/* pairs with a key not listed above */
	unsigned duplicate;	/* known keys seen more than once (last wins) */
	struct spopwire_data version;
	struct spopwire_data max_frame_size;
	struct spopwire_data capabilities;
	struct spopwire_data status_code;
	struct spopwire_data message;
};

/* ---- varints ---------------------------------------------------------- */

/* Encodes v with the peers' varint encoding (1 to 10 bytes). */
int spopwire_put_varint(uint8_t **p, const uint8_t *end, uint64_t v);

/*
 * Decodes a varint. Fails on truncation, on more than SPOPWIRE_VARINT_MAX
 * bytes, and on values that do not fit in 64 bits.
 */
int spopwire_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v);

/* Number of bytes spopwire_put_varint() would write for v. */
size_t spopwire_varint_size(uint64_t v);

/* ---- strings and typed data ------------------------------------------- */

/* Untyped <LENGTH:varint><BYTES>, as used for KV names, message names and
 * set-var variable names. */
int spopwire_put_str(uint8_t **p, const uint8_t *end, const void *s, size_t len);
int spopwire_get_str(const uint8_t **p, const uint8_t *end, struct spopwire_str *s);

/*
 * Typed data. The encoder writes flags 0 for every type but BOOL. The
 * decoder rejects unknown types (10-15), truncation, and INT32/UINT32 values
 * outside their 32-bit range.
 */
int spopwire_put_data(uint8_t **p, const uint8_t *end, const struct spopwire_data *d);
int spopwire_get_data(const uint8_t **p, const uint8_t *end, struct spopwire_data *d);

/* One KV pair: untyped name, typed value. */
int spopwire_get_kv(const uint8_t **p, const uint8_t *end,
		    struct spopwire_str *name, struct spopwire_data *value);

/* Value constructors; strings are borrowed, not copied. */
struct spopwire_data spopwire_null(void);
struct spopwire_data spopwire_bool(int b);
struct spopwire_data spopwire_int32(int32_t v);
struct spopwire_data spopwire_uint32(uint32_t v);
struct spopwire_data spopwire_int64(int64_t v);
struct spopwire_data spopwire_uint64(uint64_t v);
struct spopwire_data spopwire_ipv4(const uint8_t addr[4]);
struct spopwire_data spopwire_ipv6(const uint8_t addr[16]);
struct spopwire_data spopwire_strz(const char *s);
struct spopwire_data spopwire_strn(const void *s, size_t len);
struct spopwire_data spopwire_bin(const void *s, size_t len);

/*
 * Reads an integer value of any of the four integer types into *v.
 * Returns -1 if d is not an integer or is negative.
 */
int spopwire_data_to_u64(const struct spopwire_data *d, uint64_t *v);

/* 1 if d is a STR equal to the NUL-terminated s, else 0. */
int spopwire_data_streq(const struct spopwire_data *d, const char *s);

/* 1 if s (a comma-separated list, spaces ignored) holds capability cap. */
int spopwire_has_capability(struct spopwire_str s, const char *cap);

/* ---- frames ----------------------------------------------------------- */

/*
 * Starts a frame at *p: reserves the 4-byte length, writes type, flags and
 * the two ids. *frame receives the frame's first byte, to be handed to
 * spopwire_frame_finish() once the payload has been written after it.
 */
int spopwire_frame_start(uint8_t **p, const uint8_t *end, uint8_t **frame,
			 uint8_t type, uint32_t flags, uint64_t sid, uint64_t fid);

/* Fills the length prefix of the frame started at `frame` and ending at p.
 * Returns the total size including the prefix. */
size_t spopwire_frame_finish(uint8_t *frame, const uint8_t *p);

/*
 * Parses one frame at the start of [buf, buf + avail), incrementally:
 * returns the number of bytes consumed (prefix included) when a whole frame
 * is there, 0 when more bytes are needed, -1 on a malformed frame: length
 * below SPOPWIRE_FRAME_MIN or above max_len (checked as soon as the 4-byte
 * prefix is there, before waiting for the body), or bad ids. f->len is set
 * as soon as the prefix is readable, so callers can report it. The payload
 * is not interpreted.
 */
long spopwire_frame_parse(const uint8_t *buf, size_t avail, uint32_t max_len,
			  struct spopwire_frame *f);

/*
 * Whole frame builders: write one complete frame (prefix included) into
 * [buf, buf + cap) and return its size, or -1 if it does not fit.
 */
long spopwire_build_hello(uint8_t *buf, size_t cap, const struct spopwire_hello *h);
long spopwire_build_disconnect(uint8_t *buf, size_t cap, uint8_t type,
			       uint32_t status, const char *message);
/* NOTIFY with one message carrying nargs (<= 255) arguments. */
long spopwire_build_notify(uint8_t *buf, size_t cap, uint64_t sid, uint64_t fid,
			   const char *message, const struct spopwire_arg *args,
			   size_t nargs);
/* ACK with n actions (used by the self-test and test agents). */
long spopwire_build_ack(uint8_t *buf, size_t cap, uint64_t sid, uint64_t fid,
			const struct spopwire_action *acts, size_t n);

/* ---- payloads --------------------------------------------------------- */

/*
 * Parses a whole KV-LIST payload of AGENT-HELLO or AGENT-DISCONNECT (also
 * fits HAPROXY-DISCONNECT). Only decoding errors fail (-1); missing keys and
 * unexpected value types are left for the caller to judge.
 */
int spopwire_parse_agent_kv(const uint8_t *p, const uint8_t *end,
			    struct spopwire_agent_kv *kv);

/* One message header of a NOTIFY payload: name and argument count. The
 * nargs KV pairs follow (read them with spopwire_get_kv()). */
int spopwire_get_message(const uint8_t **p, const uint8_t *end,
			 struct spopwire_str *name, unsigned *nargs);

/*
 * One action of an ACK payload. set-var must have 3 arguments, unset-var 2,
 * the scope must be known; anything else fails, as HAProxy stops processing
 * an ACK at the first action it cannot read.
 */
int spopwire_get_action(const uint8_t **p, const uint8_t *end, struct spopwire_action *a);
int spopwire_put_action(uint8_t **p, const uint8_t *end, const struct spopwire_action *a);

/* ---- text ------------------------------------------------------------- */

/* Names, or NULL for values without one. */
const char *spopwire_frame_type_str(unsigned type);
const char *spopwire_type_str(unsigned type);
const char *spopwire_scope_str(unsigned scope);
const char *spopwire_status_str(unsigned status);

/*
 * Writes s into out, always NUL-terminated when cap > 0, silently cut at
 * cap. quote 0: bare when every byte is in [A-Za-z0-9._/:+@=,-] (an empty
 * string prints nothing); 1: same but an empty string prints ""; 2: always
 * quoted. Quoted strings escape \" \\ and non-printable bytes as \xNN. At
 * most `limit` input bytes are shown, then "...(N bytes)". Returns the
 * length written.
 */
size_t spopwire_format_str(char *out, size_t cap, struct spopwire_str s,
			   int quote, size_t limit);

/* Writes d as "type:value" ("null", "bool:true", "int64:-3", "str:allow",
 * "bin:0a0b", "ipv4:127.0.0.1"). Same termination and return as above. */
size_t spopwire_format_data(char *out, size_t cap, const struct spopwire_data *d);

/* Writes an action as "set-var txn action str:allow" / "unset-var txn x". */
size_t spopwire_format_action(char *out, size_t cap, const struct spopwire_action *a);

#endif /* SPOPWIRE_H */
