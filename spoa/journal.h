/*
 * journal: one flush's usage rows as one blob (usage_journal.counters).
 *
 * Between two writes of daily_usage (settings.daily_usage_interval_ms)
 * each flush commits its changed user-days as a single row of
 * usage_journal: one sequential insert, where writing daily_usage costs
 * one B-tree update per user. A crash therefore still loses at most one
 * flush interval; the next start replays the journal into daily_usage.
 *
 * The format:
 *
 *   "TGJ1"                                   4 bytes
 *   then per row:
 *     day         10 bytes, "YYYY-MM-DD"
 *     user_len    1 byte, 1..LEDGER_USER_MAX
 *     user        user_len bytes (any byte but NUL)
 *     tokens_in, tokens_out, cost_nano, requests, denials, fallbacks
 *                 6 zigzag-encoded LEB128 varints (at most 10 bytes each)
 *
 * The values are absolute (a user-day's counters now), not deltas: applied
 * in id order, the newest value of each user-day is the one that stays,
 * and replaying a blob twice changes nothing.
 */
#ifndef TOKENGATE_JOURNAL_H
#define TOKENGATE_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

struct journal_row {
	char day[11];     /* NUL-terminated */
	const char *user; /* in the blob, NOT NUL-terminated */
	size_t user_len;
	int64_t tokens_in, tokens_out, cost_nano;
	int64_t requests, denials, fallbacks;
};

/* A growable output buffer; zero-initialise it, free(buf.p) when done. */
struct journal_buf {
	unsigned char *p;
	size_t len, cap;
};

/* Replaces out's content with the encoding of b's usage rows (the magic
 * alone when it has none). The number of rows encoded, or -1 on
 * allocation failure, out then left as it was. Rows journal_decode would refuse (an empty user, one longer
 * than LEDGER_USER_MAX or holding a NUL, a day not YYYY-MM-DD) are not
 * encoded: the batch never holds such rows, and one would make the whole
 * blob unreadable. */
long journal_encode(const struct batch *b, struct journal_buf *out);

/* Checks the whole blob first; if it is well formed, calls fn on each row
 * in order and returns the number of rows. -1, with fn never called, when
 * it is not something journal_encode wrote (bad magic, truncated row, a
 * day that is not YYYY-MM-DD digits, a user of length 0 or over
 * LEDGER_USER_MAX or holding a NUL, a varint longer than its shortest
 * form or over 64 bits, trailing bytes): so that an accepted blob
 * encodes back to the same bytes. */
long journal_decode(const void *blob, size_t len, void (*fn)(const struct journal_row *r, void *arg), void *arg);

#endif
