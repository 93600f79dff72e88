/*
 * ledger: today's counters per user, and the reservations still waiting
 * for their provider's answer. In memory, on the loop thread only.
 *
 * A user's counters always include the estimates of their open
 * reservations: a reservation is charged when it is made and corrected
 * when it settles. So what the store writes is never less than what was
 * allowed, even if the agent dies before a response comes back.
 */
#ifndef TOKENGATE_LEDGER_H
#define TOKENGATE_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEDGER_USER_MAX 128
#define LEDGER_UID_MAX 128
#define LEDGER_DAYS 4

/* An entry changed since the last batch, and since the last batch that
 * wrote daily_usage (a fold: see engine_take_batch). Every change sets
 * both; a fold clears both. */
#define LEDGER_DIRTY_FLUSH 1
#define LEDGER_DIRTY_FOLD 2

struct ledger_usage {
	int64_t tokens_in;  /* prompt tokens, real or estimated */
	int64_t tokens_out; /* completion tokens, real or estimated */
	int64_t cost_nano;  /* USD x 1e9 */
	uint32_t requests;  /* allowed requests */
	uint32_t denials;
	uint32_t fallbacks;
	uint32_t open; /* reservations not yet settled */
	int32_t day;
	uint8_t dirty; /* LEDGER_DIRTY_* bits */
	uint8_t len;
	char user[]; /* NUL-terminated */
};

/* What a reservation remembers for settlement and the audit row. */
struct ledger_resv {
	struct ledger_resv *prev, *next; /* age order, oldest first */
	struct ledger_usage *u;
	double created;
	int64_t est_in, est_out, est_cost;
	double in_price, out_price; /* nano-USD per token, at decision time */
	char model[64];
	char route[96];
	char provider[64];
	bool probe; /* a half-open breaker's probe: its outcome must be reported */
	uint8_t log_mode;      /* the route's prompt logging at decision time */
	char *prompt;          /* what is logged of the prompt (malloc'ed), or NULL */
	uint32_t prompt_bytes; /* its size before hashing or redaction */
	uint16_t uid_len;
	char uid[]; /* HAProxy's unique-id */
};

struct ledger;

struct ledger *ledger_new(void);
void ledger_free(struct ledger *l);

/*
 * Makes `day` (a daytime day index, with its "YYYY-MM-DD") the current
 * day. Older days stay until their reservations settle and are flushed.
 * Returns -1 if no slot is free for it (more than LEDGER_DAYS days with
 * open reservations).
 */
int ledger_set_today(struct ledger *l, int32_t day, const char *str);
int32_t ledger_today(const struct ledger *l);
/* "YYYY-MM-DD" of a day still held, or NULL. */
const char *ledger_day_str(const struct ledger *l, int32_t day);

/* Today's entry for user, created (zero) when create is set. NULL when
 * absent, or on allocation failure with create. len <= LEDGER_USER_MAX. */
struct ledger_usage *ledger_user(struct ledger *l, const char *user, size_t len, bool create);

/* Adds to an entry's counters (negative deltas settle an estimate) and
 * marks it dirty. Keeps the organisation's daily cost current. */
void ledger_charge(struct ledger *l, struct ledger_usage *u, int64_t d_in, int64_t d_out,
		   int64_t d_cost, int d_requests, int d_denials, int d_fallbacks);

/* Sum of cost_nano over today's users. */
int64_t ledger_today_cost(const struct ledger *l);

/* Loads a row read from the database at start (not marked dirty). A
 * second load of the same user replaces the first (the journal's newer
 * values over daily_usage's). */
int ledger_load(struct ledger *l, const char *user, int64_t tokens_in, int64_t tokens_out,
		int64_t requests, int64_t cost_nano, int64_t denials, int64_t fallbacks);

/* Opens a reservation (caller fills the estimate fields, then charges).
 * Returns NULL when uid is already open (a replayed NOTIFY) or on
 * allocation failure. */
struct ledger_resv *ledger_reserve(struct ledger *l, struct ledger_usage *u, const char *uid,
				   size_t uid_len, double now);

/* The open reservation for uid, left in place, or NULL. */
const struct ledger_resv *ledger_find(const struct ledger *l, const char *uid, size_t uid_len);

/* Removes the open reservation for uid and returns it (the caller frees
 * it with ledger_resv_free), or NULL when there is none: already settled,
 * expired, or never made. This is what makes settlement idempotent. */
struct ledger_resv *ledger_take(struct ledger *l, const char *uid, size_t uid_len);

/* Removes and returns the oldest reservation made before `before`. */
struct ledger_resv *ledger_take_expired(struct ledger *l, double before);

void ledger_resv_free(struct ledger *l, struct ledger_resv *r);

size_t ledger_open_count(const struct ledger *l);
size_t ledger_user_count(const struct ledger *l);

/* Calls fn on every entry changed since the last flush (fold false) or
 * the last fold (fold true), and marks it clean at that level when fn
 * returns true (false, e.g. out of memory: it stays dirty for the next
 * time). A fold's entries are also clean for the next flush. */
void ledger_flush_dirty(struct ledger *l, bool fold, bool (*fn)(const struct ledger_usage *u, void *arg),
			void *arg);
/* Entries changed since the last flush (fold false) or fold (fold true). */
size_t ledger_dirty_count(const struct ledger *l, bool fold);

/* Marks every entry of every day held dirty at both levels, so that the
 * next flush and the next fold write them all again. Returns how many
 * are dirty now. */
size_t ledger_mark_all_dirty(struct ledger *l);

/* Calls fn on every user of the current day. */
void ledger_each_today(const struct ledger *l, void (*fn)(const struct ledger_usage *u, void *arg), void *arg);

/* Frees past days that have no open reservation and nothing to flush. */
void ledger_evict(struct ledger *l);

#endif
