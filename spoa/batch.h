/*
 * batch: what the loop hands the store thread in one go: the current
 * value of every user-day that changed (since the last batch, or since the
 * last fold), and the audit rows decided since the last batch. Plain
 * copies: the store never touches loop memory.
 */
#ifndef TOKENGATE_BATCH_H
#define TOKENGATE_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger.h"

/* A user-day's counters. The user's name is not inline (a 129-byte array
 * made every row 192 bytes, and batches hold up to one row per active
 * user): it lives in the batch's key arena, after the day, so that the
 * pair is one contiguous key for merging and sorting. */
struct batch_usage {
	int64_t tokens_in, tokens_out, cost_nano;
	int64_t requests, denials, fallbacks;
	uint32_t key_off; /* in batch.keys: "YYYY-MM-DD" then the user, NUL */
	uint8_t user_len;
	char day[11];
};

struct batch_audit {
	int64_t decided_ms;
	int64_t tokens_estimated;
	int64_t tokens_in, tokens_out; /* -1: unknown */
	int64_t cost_nano;
	int32_t status;     /* -1: none */
	int32_t latency_ms; /* -1: none */
	char action[12];
	char reason[32];
	char outcome[12];
	char uid[LEDGER_UID_MAX + 1];
	char user[LEDGER_USER_MAX + 1];
	char route[96];
	char model[64];
	char provider[64];
};

/* A provider's breaker as it is now (provider_health). */
struct batch_health {
	char provider[64];
	char state[12];
	char reason[24];
	int64_t since_ms;
	int64_t open_until_ms; /* -1: none */
	int64_t window_requests, window_failures, consecutive, probes;
	int64_t servers_up; /* -1: unknown */
	int64_t opened_total, requests_total, failures_total;
};

/* A logged prompt and output (prompt_log), per the route's mode. The
 * strings are owned by the batch. */
struct batch_prompt {
	int64_t logged_ms;
	int64_t prompt_bytes, output_bytes; /* -1: none */
	char *prompt, *output;              /* malloc'ed or NULL */
	char uid[LEDGER_UID_MAX + 1];
	char user[LEDGER_USER_MAX + 1];
	char route[96];
	char mode[12];
};

struct batch {
	struct batch_usage *usage;
	size_t nusage, usage_cap;
	struct batch_audit *audit;
	size_t naudit, audit_cap;
	struct batch_health *health;
	size_t nhealth, health_cap;
	struct batch_prompt *prompts;
	size_t nprompts, prompts_cap;
	char *keys; /* the usage rows' day + user strings */
	size_t keys_len, keys_cap;
	char current_day[11];
	/* The usage rows are every user-day changed since the last fold, to
	 * be written to daily_usage (emptying usage_journal); otherwise they
	 * are those changed since the last batch, journaled as one blob. */
	bool fold;
	struct batch *next; /* the store's queue */
};

struct batch *batch_new(void);
/* Empties b, keeping its memory for the next use, except arrays that grew
 * past a few MB (a writer stall), which are given back. */
void batch_reset(struct batch *b);
void batch_free(struct batch *b);

/* Appends a usage row for (day, user) with zero counters and returns it,
 * or NULL on allocation failure. day is "YYYY-MM-DD"; user (len <=
 * LEDGER_USER_MAX) is copied. */
struct batch_usage *batch_add_usage(struct batch *b, const char *day, const char *user, size_t len);

/* The user of a usage row, NUL-terminated, valid until b changes. */
const char *batch_usage_user(const struct batch *b, const struct batch_usage *u);

/* Orders the usage rows by (day, user) as SQLite's BINARY collation does,
 * so that the upserts walk daily_usage's B-tree in key order. */
void batch_sort_usage(struct batch *b);

/* Appends a zeroed row and returns it, or NULL on allocation failure. */
struct batch_audit *batch_add_audit(struct batch *b);
struct batch_health *batch_add_health(struct batch *b);
struct batch_prompt *batch_add_prompt(struct batch *b);

/* Moves src's rows into dst: usage rows of the same user-day keep the
 * newest values (they are absolute), audit rows are appended. Used to
 * merge a batch the database refused with the next one. src is freed.
 * Returns -1 (src kept) on allocation failure. */
int batch_merge(struct batch *dst, struct batch *src);

/* Copies at most size-1 bytes and NUL-terminates. */
void batch_copy(char *dst, size_t size, const char *src, size_t len);

#endif
