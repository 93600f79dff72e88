/* store: SQLite, migrations, the writer thread (see store.h). */
#include "store.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daytime.h"
#include "journal.h"
#include "log.h"
#include "politevfs.h"
#include "schema.h"

/* How long a statement waits for a write lock another connection holds.
 * The writer thread's write is retried later with its rows kept, so it
 * waits briefly. The open's migrations and the operators' commands wait
 * long: the running agent's writer holds the lock for each batch, for most
 * of every flush interval under heavy load and over a second for a fold of
 * a million users, and a command should wait that out, not fail. */
#define STORE_WRITER_LOCK_WAIT_MS 200
#define STORE_OPEN_LOCK_WAIT_MS 10000
/* offer_cpu: every 32 rows or writes, the clock; every 0.1 ms, a yield
 * (0.25 ms left a p99 of 0.4-0.7 ms unloaded, 0.1 ms 0.3-0.4 ms). */
#define STORE_OFFER_CALLS 32
#define STORE_OFFER_S 0.0001
#define STORE_RETRY_S 0.5
#define STORE_PROBE_IDLE_S 5.0
#define STORE_PURGE_BATCH 1000
/* A write refused this many times in a row with a code that a new
 * connection may cure (store_reopen_cures) closes the connection. It is
 * then opened again at once, and after each failed attempt STORE_REOPEN_MIN_S
 * later, the wait doubling up to STORE_REOPEN_MAX_S. Between attempts no
 * file of the database is open, so that a file system forced read-only can
 * be unmounted and mounted again under a running agent. */
#define STORE_REOPEN_AFTER 3
#define STORE_REOPEN_MIN_S 0.1
#define STORE_REOPEN_MAX_S 1.0
/* The journal's blob buffer is kept for the next flush up to this size. */
#define STORE_JOURNAL_KEEP_BYTES ((size_t)1 << 20)
/* The newest usage_journal row when the connection opens (0: none). */
#define JOURNAL_TOP_SQL "SELECT coalesce(max(id), 0) FROM usage_journal"

enum stmt_id {
	ST_USAGE,
	ST_USAGE_UPDATE,
	ST_AUDIT,
	ST_STATE,
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_PURGE,
	ST_HEALTH,
	ST_PROMPT,
	ST_PURGE_PROMPTS,
	ST_JOURNAL_ADD,
	ST_JOURNAL_CLEAR,
	ST_JOURNAL_READ,
	ST_JOURNAL_DROP,
	ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
	[ST_USAGE] = "INSERT INTO daily_usage(day, user_id, tokens_in, tokens_out, requests, cost_usd, denials, "
		     "fallbacks, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
		     "ON CONFLICT(day, user_id) DO UPDATE SET tokens_in = excluded.tokens_in, "
		     "tokens_out = excluded.tokens_out, requests = excluded.requests, cost_usd = excluded.cost_usd, "
		     "denials = excluded.denials, fallbacks = excluded.fallbacks, updated_at = excluded.updated_at",
	/* Tried first: after the first flush of the day nearly every dirty
	 * user-day has its row, and an UPDATE by primary key is one B-tree
	 * search where the upsert's failed INSERT costs a second search and
	 * the INSERT-only CHECKs (the day's GLOB). */
	[ST_USAGE_UPDATE] = "UPDATE daily_usage SET tokens_in = ?3, tokens_out = ?4, requests = ?5, cost_usd = ?6, "
			    "denials = ?7, fallbacks = ?8, updated_at = ?9 WHERE day = ?1 AND user_id = ?2",
	[ST_AUDIT] = "INSERT INTO audit_log(decided_at, unique_id, user_id, route, model, provider, action, reason, "
		     "tokens_estimated, tokens_in, tokens_out, cost_usd, status, latency_ms, outcome) "
		     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
	[ST_STATE] = "INSERT INTO agent_state(name, value, updated_at) VALUES (?1, ?2, ?3) "
		     "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_HEALTH] = "INSERT INTO provider_health(provider, state, since, open_until, reason, window_requests, "
		      "window_failures, consecutive_failures, probes_in_flight, servers_up, opened_total, requests_total, "
		      "failures_total, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) "
		      "ON CONFLICT(provider) DO UPDATE SET state = excluded.state, since = excluded.since, "
		      "open_until = excluded.open_until, reason = excluded.reason, "
		      "window_requests = excluded.window_requests, window_failures = excluded.window_failures, "
		      "consecutive_failures = excluded.consecutive_failures, probes_in_flight = excluded.probes_in_flight, "
		      "servers_up = excluded.servers_up, opened_total = excluded.opened_total, "
		      "requests_total = excluded.requests_total, failures_total = excluded.failures_total, "
		      "updated_at = excluded.updated_at",
	[ST_PROMPT] = "INSERT INTO prompt_log(logged_at, unique_id, user_id, route, mode, prompt, output, prompt_bytes, "
		      "output_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
	/* Oldest first in the time index's own order: "ORDER BY id" made
	 * SQLite walk the whole table in rowid order to skip the sort (8 s
	 * a minute on a 10 GB audit_log, holding the write lock). */
	[ST_PURGE_PROMPTS] = "DELETE FROM prompt_log WHERE id IN (SELECT id FROM prompt_log WHERE route = ?1 AND "
			     "logged_at < ?2 ORDER BY logged_at LIMIT ?3)",
	[ST_PURGE] = "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE decided_at < ?1 "
		     "ORDER BY decided_at LIMIT ?2)",
	[ST_JOURNAL_ADD] = "INSERT INTO usage_journal(written_at, rows, counters) VALUES (?1, ?2, ?3)",
	[ST_JOURNAL_CLEAR] = "DELETE FROM usage_journal",
	[ST_JOURNAL_READ] = "SELECT id, counters FROM usage_journal WHERE id <= ?1 ORDER BY id",
	[ST_JOURNAL_DROP] = "DELETE FROM usage_journal WHERE id <= ?1",
};

struct store {
	sqlite3 *db;
	sqlite3_stmt *st[ST_COUNT];
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* Under mu: */
	/* Submitted batches, oldest first. The loop only links them in; the
	 * writer merges (coalesces) them, so the loop never pays for that. */
	struct batch *pending, *pending_tail;
	atomic_bool batch_waiting; /* pending is not empty; read without mu by offer_cpu */
	size_t pending_batches, pending_rows, pending_log_rows;
	struct policy *ready;    /* for the loop */
	struct policy *dispose;  /* chain through... a small array */
	struct policy *dispose_list[8];
	int ndispose;
	struct batch *recycled[2];
	int nrecycled;
	bool stop;
	long retention_days;
	/* Prompt retention per route, from the policy (writer thread only). */
	struct {
		char route[96];
		long days;
	} *prompt_days;
	int nprompt_days;
	long purge_s;
	struct store_stats stats;
	/* Writer thread only: */
	struct batch *carried;   /* refused, to retry */
	/* usage_journal rows up to this id were there when the connection
	 * opened: left by an agent that stopped without its final fold (a
	 * crash), or not yet folded when the file was lost. They are replayed
	 * into daily_usage by the next transaction; 0 once done. */
	int64_t journal_floor;
	double fold_cpu; /* writer thread: CPU time of the fold being written (flush_carried) */
	struct journal_buf journal; /* the blob being written, kept for reuse */
	char *path;              /* what a reopen opens */
	int refused;             /* writes refused in a row that a reopen may cure */
	double next_reopen;      /* while db is NULL (closed): the next attempt */
	double reopen_wait;      /* and the wait after a failed one */
	bool reload;             /* load the policy at the next poll, changed or not */
	char logged_refusal[160]; /* the conditions last logged: each is logged */
	char logged_reopen[160];  /* once per change, not once per attempt */
	long poll_ms;
	int lock_wait_ms;        /* the connection's busy timeout */
	int64_t data_version;
	ev_async async;
	struct ev_loop *loop;
	void (*on_policy)(struct policy *p, void *arg);
	void *arg;
};

const double store_flush_bucket_ms[STORE_FLUSH_BUCKETS - 1] = {1, 2.5, 5, 10, 25, 50, 100, 250, 1000};

static double mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the calling thread: what a fold costs, whatever the lock
 * waits and the scheduler add to its wall time. */
static double thread_cpu_now(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
		return 0;
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The errno of the connection's last failed system call, 0 if unknown.
 * sqlite3_system_errno reads errno when the error is reported, often 0 by
 * then; each file keeps the errno of its own last failure: the WAL (where
 * commits write) first, then the database file. */
static int sys_errno(sqlite3 *db)
{
	sqlite3_file *f = NULL;
	int e = sqlite3_system_errno(db);

	if (!e && sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &f) == SQLITE_OK && f &&
	    f->pMethods)
		f->pMethods->xFileControl(f, SQLITE_FCNTL_LAST_ERRNO, &e);
	if (!e)
		sqlite3_file_control(db, "main", SQLITE_FCNTL_LAST_ERRNO, &e);
	return e;
}

/* SQLite's message, with errno's text where the error came from the file
 * system: "disk I/O error" alone does not tell a failing disk from a file
 * system the kernel forced read-only. */
static void describe(sqlite3 *db, char *out, size_t size)
{
	int e = store_reopen_cures(sqlite3_extended_errcode(db)) ? sys_errno(db) : 0;

	if (e)
		snprintf(out, size, "%s (%s)", sqlite3_errmsg(db), strerror(e));
	else
		snprintf(out, size, "%s", sqlite3_errmsg(db));
}

static void set_error(struct store *s, const char *what)
{
	char msg[140];

	describe(s->db, msg, sizeof(msg));
	pthread_mutex_lock(&s->mu);
	snprintf(s->stats.last_error, sizeof(s->stats.last_error), "%s: %s", what, msg);
	s->stats.db_ok = 0;
	pthread_mutex_unlock(&s->mu);
}

static int exec(sqlite3 *db, const char *sql, char *err, size_t errsz)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errsz, "%s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static int64_t pragma_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st;
	int64_t v = -1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* The schema version this agent writes (the last migration's). */
static unsigned schema_latest(void)
{
	return schema_migration_count ? schema_migrations[schema_migration_count - 1].version : 0;
}

/* err for a statement refused with SQLite's message msg; when the write
 * lock was waited out, what to look for, and that the statement (or
 * transaction) left the database as it was. */
static void refusal(sqlite3 *db, int lock_wait_ms, const char *msg, char *err, size_t errsz)
{
	if ((sqlite3_errcode(db) & 0xff) == SQLITE_BUSY)
		snprintf(err, errsz, "%s: another connection held the write lock for over %d ms (a transaction "
			 "left open in a sqlite3 shell? fuser -v on the database and its -wal file); nothing was changed",
			 msg, lock_wait_ms);
	else
		snprintf(err, errsz, "%s", msg);
}

static int migrate(sqlite3 *db, int lock_wait_ms, const char *path, char *err, size_t errsz)
{
	int64_t have = pragma_int(db, "PRAGMA user_version");
	unsigned latest = schema_latest();
	char sub[256], sql[64];

	if (have < 0) {
		snprintf(err, errsz, "db %s: cannot read user_version: %s", path, sqlite3_errmsg(db));
		return -1;
	}
	if (have > (int64_t)latest) {
		snprintf(err, errsz, "db %s: schema version %lld is newer than this tokengate knows (%u)", path,
			 (long long)have, latest);
		return -1;
	}
	for (unsigned i = 0; i < schema_migration_count; i++) {
		const struct schema_migration *m = &schema_migrations[i];

		if ((int64_t)m->version <= have)
			continue;
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %u", m->version);
		if (exec(db, "BEGIN IMMEDIATE", sub, sizeof(sub)) == -1 || exec(db, m->sql, sub, sizeof(sub)) == -1 ||
		    exec(db, sql, sub, sizeof(sub)) == -1 || exec(db, "COMMIT", sub, sizeof(sub)) == -1) {
			char why[512];

			refusal(db, lock_wait_ms, sub, why, sizeof(why));
			snprintf(err, errsz, "db %s: migration %s failed: %s", path, m->name, why);
			exec(db, "ROLLBACK", sub, sizeof(sub));
			return -1;
		}
		LOG_INFO("db %s: applied migration %s", path, m->name);
	}
	return 0;
}

static void offer_cpu(void);

/* SQLite counts every allocation under a process-wide mutex unless told
 * not to; nothing here reads those counts, and the writer thread makes
 * millions of allocations per second under load. Must run before SQLite
 * initializes, i.e. before the first open; later calls are refused
 * harmlessly (SQLITE_MISUSE). Also makes politevfs the default VFS, so
 * that every connection's writes offer the CPU (offer_cpu). */
static void sqlite_setup(void)
{
	sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	if (politevfs_register(offer_cpu) == -1)
		LOG_WARN("db: cannot register the polite VFS; flushes will not offer the CPU");
}

/* The connection's settings, the same for the first open and a reopen.
 * -1 with SQLite's message in err. */
static int tune(sqlite3 *db, int lock_wait_ms, char *sub, size_t subsz)
{
	sqlite3_busy_timeout(db, lock_wait_ms);
	return exec(db, STORE_PRAGMAS, sub, subsz);
}

static int prepare_all(struct store *s, char *err, size_t errsz)
{
	for (int i = 0; i < ST_COUNT; i++) {
		if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
		    SQLITE_OK) {
			snprintf(err, errsz, "%s", sqlite3_errmsg(s->db));
			return -1;
		}
	}
	return 0;
}

/* Closes the connection (s->db NULL afterwards): every file of the
 * database is closed, its WAL index unmapped. */
static void db_close(struct store *s)
{
	for (int i = 0; i < ST_COUNT; i++) {
		sqlite3_finalize(s->st[i]);
		s->st[i] = NULL;
	}
	sqlite3_close(s->db);
	s->db = NULL;
}

struct store *store_open(const char *path, char *err, size_t errsz)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct store *s = calloc(1, sizeof(*s));
	char sub[256];

	pthread_once(&once, sqlite_setup);
	if (!s) {
		snprintf(err, errsz, "db: out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->mu, NULL);
	atomic_init(&s->batch_waiting, false);
	pthread_cond_init(&s->cv, NULL);
	s->retention_days = 30;
	if (!(s->path = strdup(path))) {
		snprintf(err, errsz, "db: out of memory");
		goto fail;
	}
	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK) {
		snprintf(err, errsz, "db %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
		goto fail;
	}
	s->lock_wait_ms = STORE_OPEN_LOCK_WAIT_MS;
	if (tune(s->db, s->lock_wait_ms, sub, sizeof(sub)) == -1) {
		snprintf(err, errsz, "db %s: %s", path, sub);
		goto fail;
	}
	if (migrate(s->db, s->lock_wait_ms, path, err, errsz) == -1)
		goto fail;
	if (prepare_all(s, sub, sizeof(sub)) == -1) {
		snprintf(err, errsz, "db %s: %s", path, sub);
		goto fail;
	}
	s->data_version = pragma_int(s->db, "PRAGMA data_version");
	/* Unreadable, it would count as empty, and the next fold would delete
	 * rows never replayed. */
	if ((s->journal_floor = pragma_int(s->db, JOURNAL_TOP_SQL)) < 0) {
		snprintf(err, errsz, "db %s: cannot read usage_journal: %s", path, sqlite3_errmsg(s->db));
		goto fail;
	}
	s->stats.db_ok = 1;
	return s;
fail:
	db_close(s);
	free(s->path);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
	return NULL;
}

int store_reopen_cures(int code)
{
	switch (code & 0xff) {
	case SQLITE_READONLY:
		/* The file, its directory or the file system refused a
		 * write, or the file was moved or replaced: a connection
		 * opened afresh sees the file system as it is now. */
	case SQLITE_CANTOPEN:
		/* A file (e.g. the WAL) that could not be opened: its file
		 * system may come back (mounted again). */
		return 1;
	case SQLITE_IOERR:
		/* The file system failed a read, write or sync (EIO, or
		 * EROFS from a file system the kernel forced read-only
		 * under open files, which stays so until it is unmounted:
		 * only closing every file lets that happen). Out of memory
		 * is reported as an I/O error too, and a reopen does not
		 * cure that. */
		return code != SQLITE_IOERR_NOMEM;
	default:
		/* SQLITE_FULL clears on the same connection once space
		 * returns; BUSY and LOCKED once the other writer ends;
		 * CORRUPT and NOTADB are in the file's bytes, which a new
		 * connection reads the same (and an operator must look at
		 * them before anything writes there again); CONSTRAINT and
		 * the like are rows the schema refuses, skipped. */
		return 0;
	}
}

/* --- loading ------------------------------------------------------------ */

static int64_t col_limit(sqlite3_stmt *st, int col, int64_t if_null)
{
	if (sqlite3_column_type(st, col) == SQLITE_NULL)
		return if_null;
	return sqlite3_column_int64(st, col) < 0 ? 0 : sqlite3_column_int64(st, col);
}

static int64_t col_cost(sqlite3_stmt *st, int col, int64_t if_null)
{
	double d;

	if (sqlite3_column_type(st, col) == SQLITE_NULL)
		return if_null;
	d = sqlite3_column_double(st, col);
	return d <= 0 ? 0 : llround(d * 1e9);
}

static const char *col_text(sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	return t ? (const char *)t : "";
}

static int load_rows(struct store *s, struct policy *p, const char *sql, int kind, char *err, size_t errsz)
{
	sqlite3_stmt *st;
	int rc, ret = 0;

	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, errsz, "%s", sqlite3_errmsg(s->db));
		return -1;
	}
	while (ret == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		switch (kind) {
		case 0:
			ret = policy_set(p, col_text(st, 0), col_text(st, 1), err, errsz);
			break;
		case 1: {
			struct policy_limits lim = {col_limit(st, 1, POLICY_UNLIMITED),
						    col_limit(st, 2, POLICY_UNLIMITED),
						    col_cost(st, 3, POLICY_UNLIMITED)};

			ret = policy_add_tier(p, col_text(st, 0), lim, strcmp(col_text(st, 4), "fallback") == 0);
			break;
		}
		case 2:
			ret = policy_add_user(p, col_text(st, 0), col_text(st, 1), err, errsz);
			break;
		case 3: {
			struct policy_limits lim = {col_limit(st, 1, POLICY_UNSET), col_limit(st, 2, POLICY_UNSET),
						    col_cost(st, 3, POLICY_UNSET)};

			ret = policy_add_override(p, col_text(st, 0), lim);
			break;
		}
		case 4:
			ret = policy_add_key(p, col_text(st, 0), col_text(st, 1),
					     sqlite3_column_type(st, 2) == SQLITE_NULL ? NULL : col_text(st, 2),
					     sqlite3_column_int64(st, 3), sqlite3_column_int(st, 4) != 0);
			break;
		case 5:
			ret = policy_add_price(p, col_text(st, 0), sqlite3_column_double(st, 1),
					       sqlite3_column_double(st, 2));
			break;
		case 6:
			ret = policy_add_provider(p, col_text(st, 0), sqlite3_column_int(st, 1) != 0,
						  sqlite3_column_int(st, 2), sqlite3_column_int(st, 3),
						  sqlite3_column_double(st, 4), sqlite3_column_int(st, 5),
						  sqlite3_column_int(st, 6), sqlite3_column_int(st, 7));
			break;
		case 7:
			ret = policy_add_route(p, col_text(st, 0), col_text(st, 1), col_text(st, 2),
					       sqlite3_column_int(st, 3), (long)sqlite3_column_int64(st, 4),
					       col_text(st, 5),
					       sqlite3_column_type(st, 6) == SQLITE_NULL ? NULL : col_text(st, 6),
					       col_text(st, 7), sqlite3_column_int(st, 8), err, errsz);
			break;
		case 8:
			ret = policy_add_route_provider(p, col_text(st, 0), col_text(st, 1), err, errsz);
			break;
		case 9:
			ret = policy_set_route_logging(p, col_text(st, 0), col_text(st, 1), sqlite3_column_int(st, 2));
			break;
		}
		if (ret == -1 && !err[0])
			snprintf(err, errsz, "out of memory");
	}
	if (ret == 0 && rc != SQLITE_DONE) {
		snprintf(err, errsz, "%s", sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_finalize(st);
	return ret;
}

static struct policy *load_policy(struct store *s, char *err, size_t errsz)
{
	static const char *const queries[] = {
		"SELECT name, value FROM settings",
		"SELECT name, daily_tokens, daily_requests, daily_cost_usd, over_budget_action FROM tiers",
		"SELECT user_id, tier FROM users",
		"SELECT user_id, daily_tokens, daily_requests, daily_cost_usd FROM user_limits",
		("SELECT key_hmac, user_id, tier, COALESCE(CAST(strftime('%s', expires_at) AS INTEGER), 0), "
		 "revoked_at IS NOT NULL FROM api_keys"),
		"SELECT model, input_usd_per_million, output_usd_per_million FROM model_prices",
		"SELECT name, enabled, window_s, min_requests, error_rate, consecutive_failures, open_s, "
		"half_open_probes FROM providers",
		"SELECT name, path_prefix, model_glob, priority, timeout_ms, fallback, fallback_backend, fallback_text, "
		"fallback_max_bytes FROM routes ORDER BY priority, name",
		"SELECT route, provider FROM route_providers ORDER BY route, position",
		"SELECT name, prompt_logging, prompt_retention_days FROM routes",
	};
	struct policy *p = policy_new();
	char sub[256];

	err[0] = '\0';
	if (!p) {
		snprintf(err, errsz, "out of memory");
		return NULL;
	}
	/* One read transaction: a consistent snapshot of every table. */
	if (exec(s->db, "BEGIN", sub, sizeof(sub)) == -1) {
		snprintf(err, errsz, "%s", sub);
		policy_free(p);
		return NULL;
	}
	for (int k = 0; k < (int)(sizeof(queries) / sizeof(queries[0])); k++) {
		if (load_rows(s, p, queries[k], k, err, errsz) == -1) {
			exec(s->db, "ROLLBACK", sub, sizeof(sub));
			policy_free(p);
			return NULL;
		}
	}
	exec(s->db, "COMMIT", sub, sizeof(sub));
	if (policy_finish(p, err, errsz) == -1) {
		policy_free(p);
		return NULL;
	}
	return p;
}

/* Remembers each route's prompt retention for the purge. */
static void keep_prompt_days(struct store *s, const struct policy *p)
{
	void *n = realloc(s->prompt_days, (size_t)(p->nroutes ? p->nroutes : 1) * sizeof(*s->prompt_days));

	if (!n)
		return;
	s->prompt_days = n;
	s->nprompt_days = p->nroutes;
	for (int i = 0; i < p->nroutes; i++) {
		snprintf(s->prompt_days[i].route, sizeof(s->prompt_days[i].route), "%s", p->routes[i].name);
		s->prompt_days[i].days = p->routes[i].log_retention_days;
	}
}

struct policy *store_load_policy(struct store *s, char *err, size_t errsz)
{
	struct policy *p = load_policy(s, err, errsz);

	if (p) {
		s->retention_days = p->audit_retention_days;
		keep_prompt_days(s, p);
	}
	return p;
}

/* A pass over the journal left from before: into daily_usage (l NULL), or
 * one day's rows into the ledger at start. */
struct replay {
	struct store *s;
	const char *now;
	const char *day; /* store_load_usage: only this day's rows, into l */
	struct ledger *l;
	int failed;
	long rows;
};

static int read_journal(struct store *s, struct replay *rp);

/* daily_usage's rows of the day, then the newer values the journal left
 * from before holds for it (replayed into daily_usage by the writer). */
int store_load_usage(struct store *s, const char *day, struct ledger *l, char *err, size_t errsz)
{
	struct replay rp = {.s = s, .day = day, .l = l};
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(s->db,
			       "SELECT user_id, tokens_in, tokens_out, requests, cost_usd, denials, fallbacks "
			       "FROM daily_usage WHERE day = ?1",
			       -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, errsz, "%s", sqlite3_errmsg(s->db));
		return -1;
	}
	sqlite3_bind_text(st, 1, day, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (ledger_load(l, col_text(st, 0), sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2),
				sqlite3_column_int64(st, 3), llround(sqlite3_column_double(st, 4) * 1e9),
				sqlite3_column_int64(st, 5), sqlite3_column_int64(st, 6)) == -1) {
			snprintf(err, errsz, "out of memory loading today's counters");
			sqlite3_finalize(st);
			return -1;
		}
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		snprintf(err, errsz, "%s", sqlite3_errmsg(s->db));
		return -1;
	}
	if (s->journal_floor > 0 && read_journal(s, &rp) == -1) {
		snprintf(err, errsz, "%s", rp.failed ? "out of memory loading today's counters from usage_journal"
						     : sqlite3_errmsg(s->db));
		return -1;
	}
	return 0;
}

/* --- operators' commands ------------------------------------------------- */

static sqlite3_stmt *prepare_params(struct store *s, const char *sql, const char *const *params, int nparams,
				    char *err, size_t errsz)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, errsz, "%s", sqlite3_errmsg(s->db));
		return NULL;
	}
	for (int i = 0; i < nparams; i++) {
		if (params[i])
			sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_TRANSIENT);
		else
			sqlite3_bind_null(st, i + 1);
	}
	return st;
}

int store_exec_params(struct store *s, const char *sql, const char *const *params, int nparams,
		      int *changes, char *err, size_t errsz)
{
	sqlite3_stmt *st = prepare_params(s, sql, params, nparams, err, errsz);
	int rc;

	if (!st)
		return -1;
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
		refusal(s->db, s->lock_wait_ms, sqlite3_errmsg(s->db), err, errsz);
		return -1;
	}
	if (changes)
		*changes = sqlite3_changes(s->db);
	return 0;
}

void store_set_lock_wait(struct store *s, int ms)
{
	s->lock_wait_ms = ms;
	sqlite3_busy_timeout(s->db, ms);
}

int store_print_rows(struct store *s, const char *sql, const char *const *params, int nparams, void *out,
		     char *err, size_t errsz)
{
	sqlite3_stmt *st = prepare_params(s, sql, params, nparams, err, errsz);
	int rc, rows = 0;

	if (!st)
		return -1;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (rows++)
			fputc('\n', out);
		for (int i = 0; i < sqlite3_column_count(st); i++)
			fprintf(out, "%-22s %s\n", sqlite3_column_name(st, i),
				sqlite3_column_type(st, i) == SQLITE_NULL ? "-" : col_text(st, i));
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		snprintf(err, errsz, "%s", sqlite3_errmsg(s->db));
		return -1;
	}
	return rows;
}

/* --- writing ------------------------------------------------------------- */

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *t)
{
	if (t[0])
		sqlite3_bind_text(st, i, t, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

static void bind_int_or_null(sqlite3_stmt *st, int i, int64_t v)
{
	if (v >= 0)
		sqlite3_bind_int64(st, i, v);
	else
		sqlite3_bind_null(st, i);
}

static int step_reset(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* The store whose writer runs on this thread (offer_cpu). */
static _Thread_local struct store *writer_of;

/*
 * Called once per row written and, through politevfs, before every write
 * SQLite makes: every STORE_OFFER_S of such work, the CPU is offered to
 * whatever waits for it. A flush of a few thousand users holds a CPU for
 * milliseconds, and a task woken on that CPU waited behind it instead of
 * moving to the idle one: perf sched showed HAProxy and the event loop
 * delayed 2.3-2.8 ms at every flush, the whole p99 of an unloaded gateway
 * (2.5 ms against 0.2 ms with the writer idle). A higher nice value for the
 * thread did not help; giving the CPU up does. When nothing else wants
 * it, sched_yield returns at once. Not while the next batch is already
 * waiting: then the writer has no slack, and the CPU it would give away is
 * what it needs to keep up (at the loop's top rate, yielding regardless
 * dropped 1.7-5.6 % of audit rows at audit_backlog_max in five runs, none
 * in two runs without yielding, 0.5-0.8 % in two runs yielding only while
 * no batch waits: decisions keep the CPU, and what is dropped is counted).
 * Thread-local: only the writer thread writes, but tools and tests may
 * open stores on other threads.
 */
static void offer_cpu(void)
{
	static _Thread_local double offered_at;
	static _Thread_local unsigned calls;
	double now;

	if (++calls < STORE_OFFER_CALLS)
		return;
	if (writer_of && atomic_load_explicit(&writer_of->batch_waiting, memory_order_relaxed))
		return;
	calls = 0;
	now = mono_now();
	if (now - offered_at < STORE_OFFER_S)
		return;
	sched_yield();
	offered_at = mono_now();
}

static void now_iso(char *buf, size_t size)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	daytime_iso_utc_ms((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, buf, size);
}

/*
 * A row the database refused. A constraint failure will fail again on
 * every retry, so in lenient mode it is skipped and counted (the rest of
 * the batch lands); anything else (locked, read-only, full) fails the
 * whole transaction so that it is retried later. True when skipped.
 */
static bool row_refused(struct store *s, bool lenient)
{
	int code = sqlite3_errcode(s->db) & 0xff;

	if (!lenient || (code != SQLITE_CONSTRAINT && code != SQLITE_MISMATCH && code != SQLITE_TOOBIG))
		return false;
	pthread_mutex_lock(&s->mu);
	if (s->stats.rows_refused++ % 100 == 0)
		LOG_ERROR("db: a row was refused and skipped (%s); %llu so far", sqlite3_errmsg(s->db),
			  (unsigned long long)s->stats.rows_refused);
	pthread_mutex_unlock(&s->mu);
	return true;
}

/* One user-day's counters into daily_usage: an UPDATE, then the upsert
 * for a user-day that has no row yet. r's user need not be NUL-terminated. */
static int upsert_usage(struct store *s, const struct journal_row *r, const char *now, bool lenient)
{
	static const int order[2] = {ST_USAGE_UPDATE, ST_USAGE};

	for (int i = 0; i < 2; i++) {
		sqlite3_stmt *st = s->st[order[i]];

		sqlite3_bind_text(st, 1, r->day, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, r->user, (int)r->user_len, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, r->tokens_in);
		sqlite3_bind_int64(st, 4, r->tokens_out);
		sqlite3_bind_int64(st, 5, r->requests);
		sqlite3_bind_double(st, 6, (double)r->cost_nano / 1e9);
		sqlite3_bind_int64(st, 7, r->denials);
		sqlite3_bind_int64(st, 8, r->fallbacks);
		sqlite3_bind_text(st, 9, now, -1, SQLITE_STATIC);
		if (step_reset(st) == -1)
			return row_refused(s, lenient) ? 0 : -1;
		if (order[i] == ST_USAGE_UPDATE && sqlite3_changes(s->db) > 0)
			return 0;
	}
	return 0;
}

/* daily_usage: the current value of every user-day that changed since the
 * last fold (rows in key order: see batch_sort_usage). */
static int write_usage(struct store *s, const struct batch *b, const char *now, bool lenient)
{
	for (size_t i = 0; i < b->nusage; i++) {
		const struct batch_usage *u = &b->usage[i];
		struct journal_row r = {
			.user = batch_usage_user(b, u),
			.user_len = u->user_len,
			.tokens_in = u->tokens_in,
			.tokens_out = u->tokens_out,
			.cost_nano = u->cost_nano,
			.requests = u->requests,
			.denials = u->denials,
			.fallbacks = u->fallbacks,
		};

		memcpy(r.day, u->day, sizeof(r.day));
		offer_cpu();
		if (upsert_usage(s, &r, now, lenient) == -1)
			return -1;
	}
	return 0;
}

/* usage_journal: the user-days that changed since the last batch, one row.
 * A batch with none writes nothing. */
static int write_journal(struct store *s, const struct batch *b, const char *now)
{
	sqlite3_stmt *st = s->st[ST_JOURNAL_ADD];
	long rows;
	int rc;

	if (b->nusage == 0)
		return 0;
	if ((rows = journal_encode(b, &s->journal)) == -1)
		return -1; /* out of memory: the batch is retried */
	offer_cpu();
	sqlite3_bind_text(st, 1, now, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, rows);
	sqlite3_bind_blob64(st, 3, s->journal.p, s->journal.len, SQLITE_STATIC);
	rc = step_reset(st);
	/* A busy day's blob is megabytes (40 bytes or so per user): given
	 * back rather than held between flushes. */
	if (s->journal.cap > STORE_JOURNAL_KEEP_BYTES) {
		free(s->journal.p);
		s->journal = (struct journal_buf){0};
	}
	return rc;
}

static void replay_row(const struct journal_row *r, void *arg)
{
	struct replay *rp = arg;
	char user[LEDGER_USER_MAX + 1];

	if (rp->failed)
		return;
	rp->rows++;
	if (!rp->l) {
		offer_cpu();
		if (upsert_usage(rp->s, r, rp->now, true) == -1)
			rp->failed = 1;
		return;
	}
	if (strcmp(r->day, rp->day) != 0)
		return;
	memcpy(user, r->user, r->user_len);
	user[r->user_len] = '\0';
	if (ledger_load(rp->l, user, r->tokens_in, r->tokens_out, r->requests, r->cost_nano, r->denials,
			r->fallbacks) == -1)
		rp->failed = 1;
}

/*
 * Reads the journal rows up to s->journal_floor in order, decoding each
 * into fn's rows (rp). A blob that does not decode is logged and skipped:
 * it cannot be replayed, and it must not stop every later one. 0, or -1
 * (SQLite's error, or rp->failed).
 */
static int read_journal(struct store *s, struct replay *rp)
{
	sqlite3_stmt *st = s->st[ST_JOURNAL_READ];
	int rc;

	sqlite3_bind_int64(st, 1, s->journal_floor);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && !rp->failed) {
		const void *blob = sqlite3_column_blob(st, 1);
		int len = sqlite3_column_bytes(st, 1);

		if (journal_decode(blob, (size_t)len, replay_row, rp) == -1)
			LOG_ERROR("db: usage_journal row %lld is not a journal this agent wrote (%d bytes); skipped",
				  (long long)sqlite3_column_int64(st, 0), len);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rp->failed)
		return -1;
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

/* Inside a transaction: the journal left from before into daily_usage,
 * then those rows deleted. The rows replayed, or -1. */
static long replay_journal(struct store *s, const char *now)
{
	struct replay rp = {.s = s, .now = now};

	if (s->journal_floor <= 0)
		return 0;
	if (read_journal(s, &rp) == -1)
		return -1;
	sqlite3_bind_int64(s->st[ST_JOURNAL_DROP], 1, s->journal_floor);
	if (step_reset(s->st[ST_JOURNAL_DROP]) == -1)
		return -1;
	return rp.rows;
}

/* audit_log: one row per decided request. */
static int write_audit(struct store *s, const struct batch *b, const char *now, bool lenient)
{
	char when[32];

	for (size_t i = 0; i < b->naudit; i++) {
		const struct batch_audit *a = &b->audit[i];
		sqlite3_stmt *st = s->st[ST_AUDIT];

		offer_cpu();
		daytime_iso_utc_ms(a->decided_ms, when, sizeof(when));
		sqlite3_bind_text(st, 1, when, -1, SQLITE_STATIC);
		bind_text_or_null(st, 2, a->uid);
		bind_text_or_null(st, 3, a->user);
		bind_text_or_null(st, 4, a->route);
		bind_text_or_null(st, 5, a->model);
		bind_text_or_null(st, 6, a->provider);
		sqlite3_bind_text(st, 7, a->action, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 8, a->reason, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 9, a->tokens_estimated);
		bind_int_or_null(st, 10, a->tokens_in);
		bind_int_or_null(st, 11, a->tokens_out);
		sqlite3_bind_double(st, 12, (double)a->cost_nano / 1e9);
		bind_int_or_null(st, 13, a->status);
		bind_int_or_null(st, 14, a->latency_ms);
		sqlite3_bind_text(st, 15, a->outcome, -1, SQLITE_STATIC);
		if (step_reset(st) == -1 && !row_refused(s, lenient))
			return -1;
	}
	return 0;
}

/* provider_health: the breakers as they are now. */
static int write_health(struct store *s, const struct batch *b, const char *now, bool lenient)
{
	for (size_t i = 0; i < b->nhealth; i++) {
		const struct batch_health *h = &b->health[i];
		sqlite3_stmt *st = s->st[ST_HEALTH];
		char since[32], until[32];

		daytime_iso_utc_ms(h->since_ms, since, sizeof(since));
		sqlite3_bind_text(st, 1, h->provider, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, h->state, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, since, -1, SQLITE_STATIC);
		if (h->open_until_ms >= 0) {
			daytime_iso_utc_ms(h->open_until_ms, until, sizeof(until));
			sqlite3_bind_text(st, 4, until, -1, SQLITE_STATIC);
		}
		bind_text_or_null(st, 5, h->reason);
		sqlite3_bind_int64(st, 6, h->window_requests);
		sqlite3_bind_int64(st, 7, h->window_failures);
		sqlite3_bind_int64(st, 8, h->consecutive);
		sqlite3_bind_int64(st, 9, h->probes);
		bind_int_or_null(st, 10, h->servers_up);
		sqlite3_bind_int64(st, 11, h->opened_total);
		sqlite3_bind_int64(st, 12, h->requests_total);
		sqlite3_bind_int64(st, 13, h->failures_total);
		sqlite3_bind_text(st, 14, now, -1, SQLITE_STATIC);
		if (step_reset(st) == -1 && !row_refused(s, lenient))
			return -1;
	}
	return 0;
}

/* prompt_log: what routes that log keep of prompts and outputs. */
static int write_prompts(struct store *s, const struct batch *b, const char *now, bool lenient)
{
	char when[32];

	for (size_t i = 0; i < b->nprompts; i++) {
		const struct batch_prompt *pr = &b->prompts[i];
		sqlite3_stmt *st = s->st[ST_PROMPT];

		offer_cpu();
		daytime_iso_utc_ms(pr->logged_ms, when, sizeof(when));
		sqlite3_bind_text(st, 1, when, -1, SQLITE_STATIC);
		bind_text_or_null(st, 2, pr->uid);
		bind_text_or_null(st, 3, pr->user);
		sqlite3_bind_text(st, 4, pr->route, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 5, pr->mode, -1, SQLITE_STATIC);
		if (pr->prompt)
			sqlite3_bind_text(st, 6, pr->prompt, -1, SQLITE_STATIC);
		if (pr->output)
			sqlite3_bind_text(st, 7, pr->output, -1, SQLITE_STATIC);
		bind_int_or_null(st, 8, pr->prompt_bytes);
		bind_int_or_null(st, 9, pr->output_bytes);
		if (step_reset(st) == -1 && !row_refused(s, lenient))
			return -1;
	}
	return 0;
}

/* agent_state: the current day and the time of this flush. */
static int write_state(struct store *s, const struct batch *b, const char *now, bool lenient)
{
	if (b->current_day[0]) {
		sqlite3_stmt *st = s->st[ST_STATE];

		sqlite3_bind_text(st, 1, "current_day", -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, b->current_day, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, now, -1, SQLITE_STATIC);
		if (step_reset(st) == -1 && !row_refused(s, lenient))
			return -1;
		sqlite3_bind_text(st, 1, "last_flush_at", -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, now, -1, SQLITE_STATIC);
		if (step_reset(st) == -1 && !row_refused(s, lenient))
			return -1;
	}
	return 0;
}

/* After a commit that replayed the journal left from before. */
static void replayed(struct store *s, long rows)
{
	if (s->journal_floor <= 0)
		return;
	s->journal_floor = 0;
	pthread_mutex_lock(&s->mu);
	s->stats.journal_replayed += (uint64_t)rows;
	pthread_mutex_unlock(&s->mu);
	LOG_INFO("db: usage_journal replayed into daily_usage (%ld user-day rows found in it when the database was "
		 "opened)",
		 rows);
}

/*
 * One transaction for the whole batch: 0, or SQLite's error code with
 * everything rolled back. A fold writes its usage rows to daily_usage and
 * empties the journal, which holds nothing they do not cover; any other
 * batch journals its usage rows. A journal left from before goes first.
 */
static int write_batch(struct store *s, const struct batch *b, bool lenient)
{
	char now[32];
	double cpu0;
	long old;
	int code;

	now_iso(now, sizeof(now));
	if (step_reset(s->st[ST_BEGIN]) == -1) {
		code = sqlite3_extended_errcode(s->db);
		set_error(s, "write");
		return code != SQLITE_OK ? code : SQLITE_BUSY;
	}
	if ((old = replay_journal(s, now)) == -1)
		goto fail;
	if (write_audit(s, b, now, lenient) == -1 || write_health(s, b, now, lenient) == -1 ||
	    write_prompts(s, b, now, lenient) == -1 || write_state(s, b, now, lenient) == -1)
		goto fail;
	/* The usage rows last, so that a fold's CPU (its rows, the journal
	 * cleared, and the commit that writes its pages to the WAL, about 8 %
	 * of it at 100,000 users) is one span without the audit rows. */
	cpu0 = thread_cpu_now();
	if (b->fold) {
		if (write_usage(s, b, now, lenient) == -1 || step_reset(s->st[ST_JOURNAL_CLEAR]) == -1)
			goto fail;
	} else if (write_journal(s, b, now) == -1) {
		goto fail;
	}
	if (step_reset(s->st[ST_COMMIT]) == -1)
		goto fail;
	if (b->fold)
		s->fold_cpu += thread_cpu_now() - cpu0;
	replayed(s, old);
	return 0;
fail:
	code = sqlite3_extended_errcode(s->db);
	set_error(s, "write");
	step_reset(s->st[ST_ROLLBACK]);
	return code != SQLITE_OK ? code : SQLITE_ERROR;
}

/* The journal left from before, alone (an empty batch): at start, so that
 * daily_usage is whole again without waiting for traffic. 0 or SQLite's
 * code. */
static int replay_alone(struct store *s)
{
	static const struct batch empty;

	return write_batch(s, &empty, false);
}

static size_t batch_rows(const struct batch *b)
{
	return b ? b->nusage + b->naudit + b->nhealth + b->nprompts : 0;
}

/* The rows that grow with requests (usage rows coalesce per user-day). */
static size_t batch_log_rows(const struct batch *b)
{
	return b ? b->naudit + b->nprompts : 0;
}

/* --- closing and opening again -------------------------------------------- */

/*
 * Commits one agent_state row, name = now: what proves that writes work.
 * Taking the write lock does not: in WAL mode it lives in the WAL index, in
 * memory, and is granted on a file system that refuses every write. 0, or
 * SQLite's extended code with why filled and everything rolled back.
 */
static int write_mark(struct store *s, const char *name, char *why, size_t whysz)
{
	sqlite3_stmt *st = s->st[ST_STATE];
	char now[32];
	int code;

	now_iso(now, sizeof(now));
	if (step_reset(s->st[ST_BEGIN]) == -1) {
		code = sqlite3_extended_errcode(s->db);
		describe(s->db, why, whysz);
		return code != SQLITE_OK ? code : SQLITE_BUSY;
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, now, -1, SQLITE_STATIC);
	if (step_reset(st) == 0 && step_reset(s->st[ST_COMMIT]) == 0)
		return 0;
	code = sqlite3_extended_errcode(s->db);
	describe(s->db, why, whysz);
	step_reset(s->st[ST_ROLLBACK]);
	return code != SQLITE_OK ? code : SQLITE_ERROR;
}

/*
 * Opens the database at s->path again. Never creates it: where the file is
 * gone (its file system not mounted, say) a new empty database would take
 * its place and the operators' limits would silently not apply; so a
 * missing file, or one without this agent's schema, is an error that the
 * next attempt retries. The connection is kept only once a write has
 * committed on it. 0, or -1 with the reason in err and nothing open.
 */
static int reopen(struct store *s, char *err, size_t errsz)
{
	unsigned latest = schema_latest();
	char sub[256];
	int64_t have;

	if (sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		if (s->db)
			describe(s->db, sub, sizeof(sub));
		snprintf(err, errsz, "open: %.140s", s->db ? sub : "out of memory");
		goto fail;
	}
	/* SQLite opens the file read-only, without an error, when the file
	 * system refuses O_RDWR (EROFS). */
	if (sqlite3_db_readonly(s->db, "main") == 1) {
		snprintf(err, errsz, "open: the file system is read-only (the file opens only for reading)");
		goto fail;
	}
	sqlite3_busy_timeout(s->db, s->lock_wait_ms);
	/* Before anything that could write to it (journal_mode would turn an
	 * empty file into a database). */
	have = pragma_int(s->db, "PRAGMA user_version");
	if (have < 0) {
		describe(s->db, sub, sizeof(sub));
		snprintf(err, errsz, "read: %.140s", sub);
		goto fail;
	}
	if (have != (int64_t)latest) {
		snprintf(err, errsz, "schema version %lld where %u was expected: not this agent's database",
			 (long long)have, latest);
		goto fail;
	}
	if (tune(s->db, s->lock_wait_ms, sub, sizeof(sub)) == -1 || prepare_all(s, sub, sizeof(sub)) == -1) {
		snprintf(err, errsz, "%.150s", sub);
		goto fail;
	}
	if (write_mark(s, "db_reopened_at", sub, sizeof(sub)) != 0) {
		snprintf(err, errsz, "write: %.140s", sub);
		goto fail;
	}
	/* The file may not be the one last written (restored, say): whatever
	 * its journal holds is replayed, harmlessly for rows of this run, since
	 * the loop folds every counter it holds again after a reopen. */
	if ((s->journal_floor = pragma_int(s->db, JOURNAL_TOP_SQL)) < 0) {
		describe(s->db, sub, sizeof(sub));
		snprintf(err, errsz, "read usage_journal: %.130s", sub);
		goto fail;
	}
	return 0;
fail:
	db_close(s);
	return -1;
}

/* One attempt to open the database again (s->db is NULL); on failure the
 * next one is scheduled. The reason is logged when it changes. */
static void try_reopen(struct store *s, double now)
{
	char why[160];

	if (reopen(s, why, sizeof(why)) == -1) {
		s->reopen_wait = s->reopen_wait < STORE_REOPEN_MIN_S ? STORE_REOPEN_MIN_S : s->reopen_wait * 2;
		if (s->reopen_wait > STORE_REOPEN_MAX_S)
			s->reopen_wait = STORE_REOPEN_MAX_S;
		s->next_reopen = now + s->reopen_wait;
		pthread_mutex_lock(&s->mu);
		s->stats.reopen_failures++;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "reopen: %.150s", why);
		s->stats.db_ok = 0;
		pthread_mutex_unlock(&s->mu);
		if (strcmp(why, s->logged_reopen) != 0) {
			LOG_ERROR("db %s: cannot open it again, retrying every %g s at most; rows stay in memory: %s",
				  s->path, STORE_REOPEN_MAX_S, why);
			snprintf(s->logged_reopen, sizeof(s->logged_reopen), "%s", why);
		}
		return;
	}
	s->refused = 0;
	s->reopen_wait = 0;
	s->logged_reopen[0] = '\0';
	/* A new connection's data_version does not compare with the old
	 * one's, and the file may have changed meanwhile (restored, say). */
	s->reload = true;
	pthread_mutex_lock(&s->mu);
	s->stats.reopens++;
	/* Up now unless rows wait: then when they are written. */
	if (!s->carried)
		s->stats.db_ok = 1;
	pthread_mutex_unlock(&s->mu);
	LOG_INFO("db %s: opened again, writes work; %zu rows waiting are written next", s->path,
		 batch_rows(s->carried));
}

/* After a write (rc 0 or SQLite's code): a refusal that a reopen may cure
 * and that lasts closes the connection; try_reopen takes over. */
static void after_write(struct store *s, int rc)
{
	if (rc == 0 || !store_reopen_cures(rc)) {
		s->refused = 0;
		return;
	}
	if (++s->refused < STORE_REOPEN_AFTER)
		return;
	LOG_ERROR("db %s: %d writes refused in a row (%s): closing the database to open it again", s->path,
		  s->refused, s->stats.last_error);
	db_close(s);
	s->refused = 0;
	s->reopen_wait = 0;
	s->next_reopen = mono_now();
}

/* Writes carried (merged with what just came); keeps it on failure. */
static void flush_carried(struct store *s)
{
	double t0 = mono_now(), cpu0 = thread_cpu_now(), ms;
	int rc;

	/* In key order, consecutive upserts hit the same B-tree pages while
	 * they are still in the CPU's caches. */
	if (s->carried->fold)
		batch_sort_usage(s->carried);
	/* What the fold's rows cost, not the audit rows written with them:
	 * the loop paces the folds by it (engine_fold_interval). A fold
	 * refused on a constraint and written again leniently counts both
	 * attempts: that CPU was spent too. */
	s->fold_cpu = thread_cpu_now() - cpu0;
	rc = write_batch(s, s->carried, false);

	/* Refused on a constraint: one bad row must not block the others. */
	if ((rc & 0xff) == SQLITE_CONSTRAINT)
		rc = write_batch(s, s->carried, true);

	ms = (mono_now() - t0) * 1000.0;
	pthread_mutex_lock(&s->mu);
	if (rc == 0) {
		s->stats.flushes++;
		if (s->carried->fold) {
			s->stats.usage_rows += s->carried->nusage;
			s->stats.folds++;
			s->stats.last_fold_cpu_s = s->fold_cpu;
			s->stats.fold_cpu_s_total += s->stats.last_fold_cpu_s;
		} else {
			s->stats.journal_rows += s->carried->nusage;
		}
		s->stats.audit_rows += s->carried->naudit;
		s->stats.last_flush_ms = ms;
		s->stats.flush_ms_total += ms;
		{
			int i = 0;

			while (i < STORE_FLUSH_BUCKETS - 1 && ms > store_flush_bucket_ms[i])
				i++;
			s->stats.flush_hist[i]++;
		}
		if (!s->stats.db_ok)
			LOG_INFO("db: writes work again; %zu rows written", batch_rows(s->carried));
		s->stats.db_ok = 1;
		s->logged_refusal[0] = '\0';
	} else {
		s->stats.flush_errors++;
		/* Once per condition: a retry every 0.5 s is no news. */
		if (strcmp(s->stats.last_error, s->logged_refusal) != 0) {
			LOG_ERROR("db: write refused, %zu rows kept for retry: %s", batch_rows(s->carried),
				  s->stats.last_error);
			snprintf(s->logged_refusal, sizeof(s->logged_refusal), "%s", s->stats.last_error);
		}
	}
	pthread_mutex_unlock(&s->mu);
	after_write(s, rc);
	if (rc == 0) {
		pthread_mutex_lock(&s->mu);
		if (s->nrecycled < 2) {
			batch_reset(s->carried);
			s->recycled[s->nrecycled++] = s->carried;
			s->carried = NULL;
		}
		pthread_mutex_unlock(&s->mu);
		batch_free(s->carried);
		s->carried = NULL;
	}
}

/* Deletes rows older than `days` with stmt (cutoff ?1 or ?2, limit last),
 * a bounded batch at a time so that no transaction holds the lock long. */
static int64_t purge_rows(struct store *s, sqlite3_stmt *st, const char *route, long days)
{
	char cutoff[32];
	struct timespec ts;
	int64_t total = 0;
	int n, at = route ? 2 : 1;

	clock_gettime(CLOCK_REALTIME, &ts);
	/* Retention 0 keeps nothing older than now. */
	daytime_iso_utc_ms(((int64_t)ts.tv_sec - (int64_t)days * 86400) * 1000 + ts.tv_nsec / 1000000, cutoff,
			   sizeof(cutoff));
	do {
		if (route)
			sqlite3_bind_text(st, 1, route, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, at, cutoff, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, at + 1, STORE_PURGE_BATCH);
		if (step_reset(st) == -1) {
			set_error(s, "purge");
			break;
		}
		n = sqlite3_changes(s->db);
		total += n;
	} while (n == STORE_PURGE_BATCH);
	/* A purge that walks the table (an index dropped by hand) costs more
	 * as the table grows and holds the write lock meanwhile: say so. */
	if (sqlite3_stmt_status(st, SQLITE_STMTSTATUS_FULLSCAN_STEP, 1) > 0) {
		pthread_mutex_lock(&s->mu);
		if (s->stats.purge_scans++ == 0)
			LOG_WARN("retention: the purge of %s scans the whole table; is its time index missing? "
				 "(schema/README.md)", route ? "prompt_log" : "audit_log");
		pthread_mutex_unlock(&s->mu);
	}
	return total;
}

static void purge(struct store *s, long days)
{
	int64_t audit = purge_rows(s, s->st[ST_PURGE], NULL, days), prompts = 0;

	for (int i = 0; i < s->nprompt_days; i++)
		prompts += purge_rows(s, s->st[ST_PURGE_PROMPTS], s->prompt_days[i].route, s->prompt_days[i].days);
	pthread_mutex_lock(&s->mu);
	s->stats.purges++;
	s->stats.audit_purged += (uint64_t)audit;
	s->stats.prompts_purged += (uint64_t)prompts;
	pthread_mutex_unlock(&s->mu);
	if (audit > 0 || prompts > 0) {
		LOG_INFO("retention: purged %lld audit rows older than %ld days and %lld prompt rows", (long long)audit,
			 days, (long long)prompts);
	}
}

static void check_changes(struct store *s)
{
	int64_t v = pragma_int(s->db, "PRAGMA data_version");
	struct policy *p;
	char err[256];

	if (v == s->data_version && !s->reload)
		return;
	s->data_version = v;
	s->reload = false;
	p = load_policy(s, err, sizeof(err));
	pthread_mutex_lock(&s->mu);
	if (!p) {
		s->stats.policy_errors++;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "policy: %.140s", err);
		pthread_mutex_unlock(&s->mu);
		LOG_ERROR("db changed but the new rules cannot be used, keeping the old ones: %s", err);
		return;
	}
	s->stats.policy_loads++;
	s->retention_days = p->audit_retention_days;
	keep_prompt_days(s, p);
	/* An unconsumed older policy is replaced by this newer one. */
	if (s->ready)
		policy_free(s->ready);
	s->ready = p;
	pthread_mutex_unlock(&s->mu);
	ev_async_send(s->loop, &s->async);
}

/* Merges a list of submitted batches into carried, oldest first, so that
 * each user-day is written once with its newest values. */
static void carry(struct store *s, struct batch *list)
{
	while (list) {
		struct batch *next = list->next;

		list->next = NULL;
		if (!s->carried) {
			s->carried = list;
		} else if (batch_merge(s->carried, list) == -1) {
			LOG_ERROR("db: out of memory merging batches; %zu rows lost", batch_rows(list));
			batch_free(list);
		}
		list = next;
	}
}

/* The outcome of a write that carries no rows of its own (a probe, the
 * replay of a journal left from before): the database's health, the error
 * logged once per condition, the reopen logic. */
static void note_write(struct store *s, int rc, const char *what)
{
	pthread_mutex_lock(&s->mu);
	if (rc == 0) {
		if (!s->stats.db_ok)
			LOG_INFO("db: writes work again");
		s->stats.db_ok = 1;
		s->logged_refusal[0] = '\0';
	} else {
		char why[160];

		snprintf(why, sizeof(why), "%s: %.140s", what, s->stats.last_error);
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "%s", why);
		s->stats.db_ok = 0;
		if (strcmp(why, s->logged_refusal) != 0) {
			LOG_ERROR("db: refused, retrying: %s", why);
			snprintf(s->logged_refusal, sizeof(s->logged_refusal), "%s", why);
		}
	}
	pthread_mutex_unlock(&s->mu);
	after_write(s, rc);
}

/* An idle agent still learns that its database became read-only, full or
 * locked (and, read-only, closes it to open it again): one small write. */
static void probe_writable(struct store *s)
{
	char why[140];
	int rc = write_mark(s, "last_probe_at", why, sizeof(why));

	if (rc != 0) {
		pthread_mutex_lock(&s->mu);
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "%s", why);
		pthread_mutex_unlock(&s->mu);
	}
	note_write(s, rc, "write probe");
}

static void *writer_main(void *arg)
{
	struct store *s = arg;
	double next_poll = 0, next_purge = 0, next_retry = 0, last_write = mono_now();

	writer_of = s;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		struct batch *got;
		struct policy *dispose[8];
		int ndispose;
		long retention;
		bool stop;
		double now = mono_now();
		struct timespec until;

		if (!s->pending && s->ndispose == 0 && !s->stop) {
			double wait = next_poll - now;

			if (s->carried && next_retry - now < wait)
				wait = next_retry - now;
			if (!s->db && s->next_reopen - now < wait)
				wait = s->next_reopen - now;
			if (wait > 0) {
				clock_gettime(CLOCK_REALTIME, &until);
				until.tv_sec += (time_t)wait;
				until.tv_nsec += (long)((wait - floor(wait)) * 1e9);
				if (until.tv_nsec >= 1000000000L) {
					until.tv_sec++;
					until.tv_nsec -= 1000000000L;
				}
				pthread_cond_timedwait(&s->cv, &s->mu, &until);
			}
		}
		got = s->pending;
		s->pending = s->pending_tail = NULL;
		atomic_store_explicit(&s->batch_waiting, false, memory_order_relaxed);
		s->pending_batches = 0;
		s->pending_rows = 0;
		s->pending_log_rows = 0;
		ndispose = s->ndispose;
		memcpy(dispose, s->dispose_list, sizeof(dispose));
		s->ndispose = 0;
		retention = s->retention_days;
		stop = s->stop;
		pthread_mutex_unlock(&s->mu);

		for (int i = 0; i < ndispose; i++)
			policy_free(dispose[i]);
		carry(s, got);
		now = mono_now();
		/* Closed after lasting refusals (after_write): open it again;
		 * once open, what waits is written and the rules read at once. */
		if (!s->db && now >= s->next_reopen && !stop) {
			try_reopen(s, now);
			if (s->db)
				next_retry = next_poll = last_write = now;
		}
		if (s->db && s->carried && (got || now >= next_retry || stop)) {
			last_write = now;
			flush_carried(s);
			if (s->carried)
				next_retry = now + STORE_RETRY_S;
		}
		if (stop)
			break;
		if (now >= next_poll) {
			if (s->db)
				check_changes(s);
			/* A journal left from before: into daily_usage now, not
			 * at the first batch (which may be long in coming). */
			if (s->db && !s->carried && s->journal_floor > 0) {
				note_write(s, replay_alone(s), "usage_journal replay");
				last_write = now;
			}
			if (s->db && !s->carried && now - last_write >= STORE_PROBE_IDLE_S) {
				probe_writable(s);
				last_write = now;
			}
			next_poll = now + (double)s->poll_ms / 1000.0;
		}
		/* Closed: the purge waits for the reopen. */
		if (now >= next_purge && s->db) {
			purge(s, retention);
			next_purge = now + (double)s->purge_s;
		}
		pthread_mutex_lock(&s->mu);
		s->stats.pending_rows = batch_rows(s->carried) + s->pending_rows;
		s->stats.pending_log_rows = batch_log_rows(s->carried) + s->pending_log_rows;
	}
	return NULL;
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct store *s = (struct store *)((char *)w - offsetof(struct store, async));
	struct policy *p;

	(void)loop;
	(void)revents;
	pthread_mutex_lock(&s->mu);
	p = s->ready;
	s->ready = NULL;
	pthread_mutex_unlock(&s->mu);
	if (p)
		s->on_policy(p, s->arg);
}

int store_start(struct store *s, struct ev_loop *loop, long poll_ms, long purge_s,
		void (*on_policy)(struct policy *p, void *arg), void *arg)
{
	s->purge_s = purge_s > 0 ? purge_s : 60;
	store_set_lock_wait(s, STORE_WRITER_LOCK_WAIT_MS);
	s->loop = loop;
	s->poll_ms = poll_ms;
	s->on_policy = on_policy;
	s->arg = arg;
	ev_async_init(&s->async, async_cb);
	ev_async_start(loop, &s->async);
	/* The loop must not stay alive for this watcher alone. */
	ev_unref(loop);
	if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
		LOG_ERROR("db: cannot start the writer thread: %s", strerror(errno));
		return -1;
	}
	s->started = true;
	return 0;
}

void store_submit(struct store *s, struct batch *b)
{
	b->next = NULL;
	pthread_mutex_lock(&s->mu);
	if (s->pending_tail)
		s->pending_tail->next = b;
	else
		s->pending = b;
	s->pending_tail = b;
	atomic_store_explicit(&s->batch_waiting, true, memory_order_relaxed);
	s->pending_batches++;
	s->pending_rows += batch_rows(b);
	s->pending_log_rows += batch_log_rows(b);
	s->stats.pending_rows = batch_rows(s->carried) + s->pending_rows;
	s->stats.pending_log_rows = batch_log_rows(s->carried) + s->pending_log_rows;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

struct batch *store_recycled(struct store *s)
{
	struct batch *b = NULL;

	pthread_mutex_lock(&s->mu);
	if (s->nrecycled > 0)
		b = s->recycled[--s->nrecycled];
	pthread_mutex_unlock(&s->mu);
	return b;
}

size_t store_backlog(struct store *s)
{
	size_t n;

	pthread_mutex_lock(&s->mu);
	n = s->pending_batches;
	pthread_mutex_unlock(&s->mu);
	return n;
}

void store_dispose_policy(struct store *s, struct policy *p)
{
	pthread_mutex_lock(&s->mu);
	if (s->ndispose < 8) {
		s->dispose_list[s->ndispose++] = p;
		p = NULL;
		pthread_cond_signal(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	policy_free(p); /* the list is full: free it here */
}

void store_set_retention(struct store *s, long days)
{
	pthread_mutex_lock(&s->mu);
	s->retention_days = days;
	pthread_mutex_unlock(&s->mu);
}

void store_get_stats(struct store *s, struct store_stats *out)
{
	pthread_mutex_lock(&s->mu);
	*out = s->stats;
	out->pending_batches = s->pending_batches;
	pthread_mutex_unlock(&s->mu);
}

size_t store_close(struct store *s, long final_wait_ms)
{
	size_t lost = 0;
	double deadline = mono_now() + (double)final_wait_ms / 1000.0;

	if (!s)
		return 0;
	if (s->started) {
		pthread_mutex_lock(&s->mu);
		s->stop = true;
		pthread_cond_signal(&s->cv);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->thread, NULL);
		ev_ref(s->loop);
		ev_async_stop(s->loop, &s->async);
	}
	/* The thread is gone: what is left is ours to retry until the
	 * deadline (a lock held by another process may clear). */
	carry(s, s->pending);
	s->pending = s->pending_tail = NULL;
	while (s->carried) {
		if (!s->db)
			try_reopen(s, mono_now());
		if (s->db)
			flush_carried(s);
		if (!s->carried || mono_now() >= deadline)
			break;
		nanosleep(&(struct timespec){0, 100000000L}, NULL);
	}
	lost = batch_rows(s->carried);
	if (lost)
		LOG_ERROR("db: %zu rows could not be written before exit: %s", lost, s->stats.last_error);
	batch_free(s->carried);
	policy_free(s->ready);
	for (int i = 0; i < s->nrecycled; i++)
		batch_free(s->recycled[i]);
	for (int i = 0; i < s->ndispose; i++)
		policy_free(s->dispose_list[i]);
	db_close(s);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s->prompt_days);
	free(s->journal.p);
	free(s->path);
	free(s);
	return lost;
}
