/*
 * engine: where a named SPOE message and its arguments become actions.
 *
 * This is the only place the protocol code hands requests to: conn.c
 * decodes a NOTIFY and calls engine_on_message() once per message; the
 * engine answers by writing variables into the ACK. It does no I/O and
 * never blocks: rules come from a policy snapshot, counters from the
 * ledger, and what must be persisted is collected into batches that the
 * caller hands to the store.
 *
 * Messages (arguments by name; any may be missing):
 *   llm-request   unique_id user auth path method content_length model
 *                 max_tokens max_completion_tokens n stream client_ip
 *                 body_head nbsrv_<backend>...
 *   llm-response  unique_id status prompt_tokens completion_tokens streamed
 *                 model backend retry_after
 *
 * and HAProxy's log lines (engine_on_log) for requests whose answer never
 * produced a response event (timeouts, refused connections, clients gone).
 */
#ifndef TOKENGATE_ENGINE_H
#define TOKENGATE_ENGINE_H

#include <stdint.h>

#include "ack.h"
#include "batch.h"
#include "config.h"
#include "ledger.h"
#include "policy.h"
#include "spop.h"

enum engine_action { ENGINE_ALLOW = 0, ENGINE_DENY, ENGINE_FALLBACK, ENGINE_ACTION_COUNT };

enum engine_reason {
	ENGINE_OK = 0,
	ENGINE_BUDGET_TOKENS,
	ENGINE_BUDGET_REQUESTS,
	ENGINE_BUDGET_COST,
	ENGINE_GLOBAL_CEILING,
	ENGINE_UNKNOWN_KEY,
	ENGINE_BAD_REQUEST,
	ENGINE_PROVIDER_UNHEALTHY,
	ENGINE_REASON_COUNT
};

struct engine_stats {
	uint64_t decisions[ENGINE_ACTION_COUNT][ENGINE_REASON_COUNT];
	uint64_t settled;          /* real usage applied */
	uint64_t settled_estimate; /* estimate kept (streamed, unreadable) */
	uint64_t expired;          /* no response before the TTL */
	uint64_t late_responses;   /* response for nothing open: ignored */
	uint64_t tokens_charged;   /* settled tokens, in + out */
	uint64_t cost_nano_charged;
	uint64_t unknown_messages;
	uint64_t audit_dropped; /* rows dropped: audit_backlog_max reached, or no memory */
	uint64_t settled_by_log; /* closed by HAProxy's log line (no response event) */
	uint64_t client_aborts;  /* of those, the client went away: not the provider's fault */
};

struct engine;

/* cfg is borrowed; policy is owned from now on. NULL on failure. */
struct engine *engine_new(const struct config *cfg, struct policy *policy, double now);
void engine_free(struct engine *e);

/* Swaps in a new policy snapshot; returns the old one for the caller to
 * free (off the loop if it is large). */
struct policy *engine_set_policy(struct engine *e, struct policy *p, double now);
const struct policy *engine_policy(const struct engine *e);

/* The ledger, to load today's counters at start. */
struct ledger *engine_ledger(struct engine *e);

/* Decides on one message. `now` is wall-clock Unix time. Unknown
 * messages write nothing. */
void engine_on_message(struct engine *e, double now, const struct spop_msg *msg, struct ack *out);

/*
 * How a request ended, from HAProxy's log line (or the llm-response
 * event): the provider's status (-1 when no provider answered), the
 * termination state %tsc, the usage HAProxy read from the JSON answer, and
 * the start of the answer for prompt logging.
 */
struct engine_end {
	const char *uid;
	size_t uid_len;
	const char *backend;       /* "" when unknown */
	int status;                /* what the client got */
	int provider_status;       /* -1: no answer from a provider */
	const char *tsc;           /* e.g. "----", "sH--", "CD--"; NULL unknown */
	int64_t prompt_tokens;     /* -1: unknown */
	int64_t completion_tokens; /* -1: unknown */
	int streamed;              /* 1 yes, 0 no, -1 unknown */
	int64_t retry_after;       /* the provider's Retry-After, seconds; 0 none */
	struct spop_str output;    /* the start of the answer, or empty */
};

/*
 * A request ended. When its reservation is still open, settles it (real
 * usage when the provider's answer reported it, else the estimate) and
 * tells the provider's breaker what happened: a provider status, or a
 * server-side timeout/refusal/reset counts; a client that went away
 * before any answer does not.
 */
void engine_on_log(struct engine *e, double now, const struct engine_end *end);

struct breaker;
/* Calls fn on every provider's breaker (for metrics). */
void engine_each_breaker(const struct engine *e, void (*fn)(const struct breaker *b, void *arg), void *arg);

/* Rolls the day over and settles expired reservations at their estimate.
 * Call it about once a second. */
void engine_tick(struct engine *e, double now);

/* Settles every open reservation at its estimate (shutdown). */
void engine_expire_all(struct engine *e, double now);

/*
 * What changed since the last call, or NULL if nothing did. The caller
 * owns the batch. It is a fold (batch.fold: its usage rows are every
 * user-day changed since the last fold, for daily_usage) when fold_now is
 * set, when engine_rewrite_usage asked for one, or when
 * engine_fold_interval has passed since the last fold (within half a
 * flush interval, so that the timer's jitter does not skip one); otherwise
 * its usage rows are those changed since the last batch, for the journal.
 * An agent that was idle longer than that interval folds its first change
 * at once.
 */
struct batch *engine_take_batch(struct engine *e, double now, bool fold_now);

/* How often daily_usage is written now (seconds): the policy's
 * daily_usage_interval_ms, or longer when the last fold cost the writer
 * more than a tenth of that in CPU time (ten times that cost, at most 60
 * s), so that writing daily_usage takes about a tenth of a CPU at most
 * however many users change (more while the interval climbs: see README
 * "Durability"). */
double engine_fold_interval(const struct engine *e);

/* The writer's CPU time for the last fold (store_stats.last_fold_cpu_s). */
void engine_set_fold_cpu(struct engine *e, double seconds);

/* Puts every counter held in memory into the next batch again, and makes
 * it a fold, e.g. after the database was opened again: a file system
 * forced read-only drops what it had not yet written, and counters are
 * written as absolute values, so writing them again restores them.
 * Returns how many user-days. */
size_t engine_rewrite_usage(struct engine *e);

/* Hands back an emptied batch for the engine to fill next (it keeps one;
 * any other is freed). */
void engine_recycle(struct engine *e, struct batch *b);

/* Audit and prompt rows handed to the writer and not yet written
 * (store_stats.pending_log_rows): with the engine's own, they count against
 * audit_backlog_max. */
void engine_set_store_pending(struct engine *e, size_t rows);

const struct engine_stats *engine_stats(const struct engine *e);
const char *engine_action_str(enum engine_action a);
const char *engine_reason_str(enum engine_reason r);

#endif
