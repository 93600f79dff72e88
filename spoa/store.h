/*
 * store: the SQLite side. The only file that includes sqlite3.h.
 *
 * At start, on the caller's thread: open the database (WAL,
 * synchronous=NORMAL), apply the embedded migrations, load the policy
 * and today's counters. Then one writer thread owns the connection:
 *
 *   - batches from the loop (store_submit) are written one transaction
 *     each: a fold's usage rows to daily_usage (emptying usage_journal),
 *     any other batch's as one usage_journal row (spoa/journal.h); what a
 *     journal left from before (a crash) holds is replayed into
 *     daily_usage first, at once when the thread starts;
 *     a batch the database refuses (locked, read-only, full) is
 *     kept, merged with the next ones and retried, so nothing is lost
 *     once the condition clears;
 *   - when the refusal is one a new connection may cure (read-only, an
 *     I/O error, a file that cannot be opened: store_reopen_cures) and it
 *     lasts (3 writes in a row), the connection is closed and the file
 *     opened again at the same path, at once and then every 0.1 s to 1 s,
 *     with no file of it open in between (so that a file system forced
 *     read-only can be unmounted and mounted again). A reopen never
 *     creates the file and refuses one without this agent's schema
 *     version; it counts only once a write commits. The rules are then
 *     read again (stats.reopens tells the loop, which writes its
 *     counters again: what the file system lost is restored);
 *   - every poll interval it reads PRAGMA data_version, and when another
 *     process changed the database it loads a fresh policy and hands it
 *     to the loop through an ev_async (store_start's on_policy);
 *   - every purge_s it deletes audit rows older than the retention and
 *     prompt_log rows older than their route's, in bounded batches.
 *
 * The loop thread never waits on SQLite: store_submit only takes a mutex
 * for a pointer swap.
 */
#ifndef TOKENGATE_STORE_H
#define TOKENGATE_STORE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "ledger.h"
#include "policy.h"

/*
 * The connection's settings (bench/writerbench.c's plain SQLite baseline
 * uses them too, so that the comparison stays fair):
 *   - WAL lets operators read (and the shell write) while the agent writes;
 *   - synchronous NORMAL syncs at checkpoints only: a crash of this process
 *     loses nothing committed, a power loss may lose what was committed
 *     since the last checkpoint;
 *   - a checkpoint every 10,000 pages, not SQLite's 1,000: a flush of N
 *     random users dirties about N pages of daily_usage, and a checkpoint
 *     copies every page the WAL holds back into the database; at 1,000
 *     nearly every flush of a busy day ended in a checkpoint of most of the
 *     table, at 10,000 (a WAL of up to 40 MB with 4 KB pages) a page is
 *     copied once for several flushes: 2,600 users out of 100,000 per flush
 *     cost 4.5 us of CPU each, not 6.4;
 *   - a page cache of 32 MB: today's rows of a few hundred thousand users
 *     stay in memory instead of being re-read for each flush.
 */
#define STORE_PRAGMAS                                                                                  \
	"PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 10000; " \
	"PRAGMA cache_size = -32768;"

/* Upper bounds (ms) of the flush-duration histogram; the last is +Inf. */
#define STORE_FLUSH_BUCKETS 10
extern const double store_flush_bucket_ms[STORE_FLUSH_BUCKETS - 1];

struct store_stats {
	uint64_t flushes;          /* transactions committed */
	uint64_t flush_errors;     /* transactions refused */
	uint64_t usage_rows;       /* daily_usage rows written (by folds) */
	uint64_t folds;            /* transactions that wrote daily_usage */
	double last_fold_cpu_s;    /* writer CPU time of the last fold: its rows sorted and written, the journal cleared, the commit */
	double fold_cpu_s_total;
	uint64_t journal_rows;     /* user-day rows journaled (usage_journal) */
	uint64_t journal_replayed; /* user-day rows of a journal found at open, replayed */
	uint64_t audit_rows;       /* audit rows written */
	uint64_t audit_purged;     /* audit rows deleted by retention */
	uint64_t prompts_purged;   /* prompt_log rows deleted by retention */
	uint64_t purges;           /* retention cycles run */
	uint64_t purge_scans;      /* purge statements that walked a whole table */
	uint64_t rows_refused;     /* rows the schema refused, skipped */
	uint64_t policy_loads;     /* policies loaded after a change */
	uint64_t policy_errors;    /* changes that could not be loaded */
	double last_flush_ms;      /* writer time of the last transaction */
	double flush_ms_total;
	uint64_t flush_hist[STORE_FLUSH_BUCKETS]; /* not cumulative */
	size_t pending_batches;    /* submitted, not yet written */
	size_t pending_rows;       /* rows waiting, retries included */
	size_t pending_log_rows;   /* of those, audit and prompt rows */
	uint64_t reopens;          /* connections opened again after lasting refusals */
	uint64_t reopen_failures;  /* attempts to open it again that failed */
	int db_ok;                 /* the last write or load worked */
	char last_error[160];
};

struct store;

/* Opens (creating if needed) and migrates the database. NULL with err.
 * The path is kept: the writer opens it again after lasting refusals. */
struct store *store_open(const char *path, char *err, size_t errsz);

/* Loads the policy (settings, tiers, users, overrides, keys, prices).
 * Before store_start only. NULL with err. */
struct policy *store_load_policy(struct store *s, char *err, size_t errsz);

/* Loads the counters of `day` ("YYYY-MM-DD") into the ledger, whose
 * current day must be that day: daily_usage's, then the newer ones of a
 * journal left from before. Before store_start only. */
int store_load_usage(struct store *s, const char *day, struct ledger *l, char *err, size_t errsz);

/*
 * Starts the writer thread. on_policy runs on the loop thread with a new
 * policy it then owns. poll_ms is how often data_version is read.
 */
int store_start(struct store *s, struct ev_loop *loop, long poll_ms, long purge_s,
		void (*on_policy)(struct policy *p, void *arg), void *arg);

/* Hands a batch to the writer (owned by the store from now on). */
void store_submit(struct store *s, struct batch *b);

/* Batches submitted and not yet taken by the writer. The loop holds its
 * next batch back while this is non-zero: its dirty set then coalesces in
 * memory for free instead of being merged later. */
size_t store_backlog(struct store *s);

/* A written batch, emptied, for the loop to fill again (its arrays are
 * already grown, so the loop does not fault in fresh pages every flush),
 * or NULL. */
struct batch *store_recycled(struct store *s);

/* Frees a policy on the writer thread (a large one takes a while). */
void store_dispose_policy(struct store *s, struct policy *p);

/* Sets how many days of audit rows to keep (0 = purge everything at the
 * next cycle); from the policy. */
void store_set_retention(struct store *s, long days);

void store_get_stats(struct store *s, struct store_stats *out);

/* 1 when a write that failed with SQLite's (extended) result code `code`
 * may work on a connection opened afresh: read-only (SQLITE_READONLY_*),
 * an I/O error other than out of memory (SQLITE_IOERR_*), a file that
 * could not be opened (SQLITE_CANTOPEN_*). 0 for everything else: full,
 * busy, locked, corrupt, not a database, constraints, out of memory. */
int store_reopen_cures(int code);

/*
 * Operators' one-shot commands (tokengate key/limit/usage), before
 * store_start. Each is one statement or transaction. -1 with err set.
 * Text arguments may be NULL for "not given".
 */
int store_exec_params(struct store *s, const char *sql, const char *const *params, int nparams,
		      int *changes, char *err, size_t errsz);
/* How long statements wait for a write lock that another connection
 * holds before failing with "database is locked": 10 s from store_open
 * (its migrations, these commands), 200 ms once store_start has started
 * the writer, which retries later with its rows kept. */
void store_set_lock_wait(struct store *s, int ms);
/* Runs a query and prints each row as "column: value" lines, rows
 * separated by a blank line, to the stdio stream out. Returns rows. */
int store_print_rows(struct store *s, const char *sql, const char *const *params, int nparams, void *out,
		     char *err, size_t errsz);

/* Writes what is pending (retrying a refused batch for up to
 * final_wait_ms), stops the thread, closes the database, frees s.
 * Returns the number of rows that could not be written. */
size_t store_close(struct store *s, long final_wait_ms);

#endif
