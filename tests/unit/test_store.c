/*
 * Unit test of the store's writer thread against another process's write:
 * while the writer is always behind (a new batch waits each time it
 * commits), an operator's UPDATE from another connection, with the busy
 * handler sqlite3's shell uses (.timeout), must still get the lock.
 * Batches that cost the writer far more than the test keep its own gap
 * between transactions to microseconds, as in an agent far behind.
 *
 * And the store's reopen (issue 7, item 3), on a real SQLite file:
 *
 *   - which SQLite result codes close the connection to open it again
 *     (store_reopen_cures): read-only, I/O errors, files that cannot be
 *     opened; not full, busy, locked, corrupt, not a database, constraints
 *     or out of memory;
 *   - the whole cycle with the writer thread running, through a VFS shim
 *     that makes every write fail (as a file system forced read-only does)
 *     or every open fail (as an unmounted one does): the connection is
 *     closed after lasting refusals, with no file open between attempts;
 *     a missing file is not created and an empty one is not taken for the
 *     database; once the faults clear, every row kept in memory lands.
 *     tests/e2e/test_db_readonly.sh does the same with a real ext4 forced
 *     read-only by the kernel (root only); this one runs anywhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <ev.h>
#include <sqlite3.h>

#include "batch.h"
#include "policy.h"
#include "journal.h"
#include "store.h"

#define PROMPT_BYTES 16384

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void noop_policy(struct policy *p, void *arg)
{
	(void)arg;
	policy_free(p);
}

/* A store on a new file in a new temporary directory (dir: a mkdtemp
 * template; path gets the file's name), opened, its writer not started. */
static struct store *open_temp_store(char *dir, char *path, size_t pathsz)
{
	char err[256];
	struct store *s;

	assert_non_null(mkdtemp(dir));
	snprintf(path, pathsz, "%s/t.db", dir);
	s = store_open(path, err, sizeof(err));
	if (!s)
		fail_msg("store_open: %s", err);
	return s;
}

/* The same, its writer started with these poll and purge intervals. */
static struct store *start_temp_store(char *dir, char *path, size_t pathsz, struct ev_loop *loop, long poll_ms,
				      long purge_s)
{
	struct store *s = open_temp_store(dir, path, pathsz);

	assert_int_equal(store_start(s, loop, poll_ms, purge_s, noop_policy, NULL), 0);
	return s;
}

static int64_t query_int(const char *path, const char *sql)
{
	sqlite3 *db;
	sqlite3_stmt *q;
	int64_t v = -1;

	/* The plain unix VFS: the checks see the file as it is. */
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, "unix"), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
	if (sqlite3_step(q) == SQLITE_ROW)
		v = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	sqlite3_close(db);
	return v;
}

/* A batch the writer takes far longer to store than the test to build:
 * n audit rows and n prompt rows of 16 KB each (how much SQLite writes,
 * not how many rows, sets the writer's time). */
static struct batch *heavy_batch(long round, long n)
{
	struct batch *b = batch_new();

	assert_non_null(b);
	for (long i = 0; i < n; i++) {
		char user[32], uid[48];
		int len = snprintf(user, sizeof(user), "user-%ld", i % 100);
		struct batch_audit *a = batch_add_audit(b);
		struct batch_prompt *pr = batch_add_prompt(b);

		assert_non_null(a);
		assert_non_null(pr);
		snprintf(uid, sizeof(uid), "t-%ld-%ld", round, i);
		a->decided_ms = (int64_t)time(NULL) * 1000;
		a->tokens_estimated = 140;
		batch_copy(a->action, sizeof(a->action), "allow", 5);
		batch_copy(a->reason, sizeof(a->reason), "ok", 2);
		batch_copy(a->outcome, sizeof(a->outcome), "settled", 7);
		batch_copy(a->uid, sizeof(a->uid), uid, strlen(uid));
		batch_copy(a->user, sizeof(a->user), user, (size_t)len);
		batch_copy(a->route, sizeof(a->route), "chat", 4);
		batch_copy(a->model, sizeof(a->model), "gpt-4o-mini", 11);
		batch_copy(a->provider, sizeof(a->provider), "provider_primary", 16);
		pr->logged_ms = a->decided_ms;
		pr->prompt_bytes = PROMPT_BYTES;
		pr->output_bytes = -1;
		assert_non_null(pr->prompt = malloc(PROMPT_BYTES + 1));
		memset(pr->prompt, 'a' + (int)(i % 26), PROMPT_BYTES);
		pr->prompt[PROMPT_BYTES] = '\0';
		batch_copy(pr->uid, sizeof(pr->uid), uid, strlen(uid));
		batch_copy(pr->user, sizeof(pr->user), user, (size_t)len);
		batch_copy(pr->route, sizeof(pr->route), "chat", 4);
		batch_copy(pr->mode, sizeof(pr->mode), "full", 4);
	}
	return b;
}

struct operator {
	const char *path;
	double start_s;     /* when the writer is busy */
	int tries, ok;
	double worst_s;     /* the longest wait for the lock */
	atomic_int done;
};

/* Three UPDATEs, each with the busy handler of the shell's .timeout 2500. */
static void *operator_main(void *arg)
{
	struct operator *o = arg;
	sqlite3 *op;

	while (now_s() < o->start_s)
		usleep(10000);
	if (sqlite3_open(o->path, &op) != SQLITE_OK) {
		atomic_store(&o->done, 1);
		return NULL;
	}
	sqlite3_busy_timeout(op, 2500);
	for (int i = 0; i < 3; i++) {
		char sql[96], *msg = NULL;
		double t = now_s();

		snprintf(sql, sizeof(sql), "UPDATE tiers SET daily_tokens = %d WHERE name = 'default'", 4240 + i);
		o->tries++;
		if (sqlite3_exec(op, sql, NULL, NULL, &msg) == SQLITE_OK)
			o->ok++;
		else
			fprintf(stderr, "# UPDATE %d: %s after %.2f s\n", i, msg ? msg : "?", now_s() - t);
		if (now_s() - t > o->worst_s)
			o->worst_s = now_s() - t;
		sqlite3_free(msg);
		usleep(300000);
	}
	sqlite3_close(op);
	atomic_store(&o->done, 1);
	return NULL;
}

static void test_operator_update_gets_the_lock(void **state)
{
	char dir[] = "/tmp/tg_store.XXXXXX", path[64], cmd[96];
	struct store *s;
	struct store_stats st;
	struct operator o = {.tries = 0};
	pthread_t th;
	long round = 0;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);

	(void)state;
	s = start_temp_store(dir, path, sizeof(path), loop, 3600000, 86400);

	/* A batch waits at every commit until the operator is done; the
	 * operator starts once the writer has been busy for 0.5 s. */
	o.path = path;
	o.start_s = now_s() + 0.5;
	assert_int_equal(pthread_create(&th, NULL, operator_main, &o), 0);
	while (!atomic_load(&o.done)) {
		if (store_backlog(s) < 2)
			store_submit(s, heavy_batch(round++, 200));
		else
			usleep(500);
		if (now_s() > o.start_s + 30)
			break;
	}
	assert_int_equal(pthread_join(th, NULL), 0);
	store_get_stats(s, &st);
	fprintf(stderr, "# %ld batches submitted, %llu transactions; %d of %d UPDATEs, longest wait %.3f s\n", round,
		(unsigned long long)st.flushes, o.ok, o.tries, o.worst_s);

	assert_int_equal(o.tries, 3);
	assert_int_equal(o.ok, 3);
	assert_int_equal(store_close(s, 60000), 0);
	ev_loop_destroy(loop);

	assert_int_equal(query_int(path, "SELECT daily_tokens FROM tiers WHERE name = 'default'"), 4242);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Retention: rows past audit_retention_days go, the others stay, and the
 * purge reads the time index instead of walking the table (it runs every
 * purge_interval_s on a table that only grows). */
static void test_purge_reads_the_time_index(void **state)
{
	char dir[] = "/tmp/tg_store.XXXXXX", path[64], cmd[96];
	struct store *s;
	struct store_stats st;
	struct batch *b;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	int64_t now_ms = (int64_t)time(NULL) * 1000;
	uint64_t purges;
	double t0;

	(void)state;
	s = start_temp_store(dir, path, sizeof(path), loop, 100, 1);
	store_set_retention(s, 30);

	/* 3,000 rows 31 days old, then 2,000 of now. */
	b = heavy_batch(0, 0);
	for (int i = 0; i < 5000; i++) {
		struct batch_audit *a = batch_add_audit(b);

		assert_non_null(a);
		a->decided_ms = i < 3000 ? now_ms - 31LL * 86400 * 1000 : now_ms;
		batch_copy(a->action, sizeof(a->action), "allow", 5);
		batch_copy(a->reason, sizeof(a->reason), "ok", 2);
		batch_copy(a->outcome, sizeof(a->outcome), "settled", 7);
		batch_copy(a->user, sizeof(a->user), "alice", 5);
	}
	store_submit(s, b);
	t0 = now_s();
	do {
		usleep(20000);
		store_get_stats(s, &st);
	} while (st.audit_rows < 5000 && now_s() - t0 < 20);
	assert_int_equal(st.audit_rows, 5000);
	purges = st.purges;
	do {
		usleep(20000);
		store_get_stats(s, &st);
	} while (st.purges < purges + 2 && now_s() - t0 < 20);

	assert_true(st.purges >= purges + 2);
	assert_int_equal(st.audit_purged, 3000);
	assert_int_equal(st.purge_scans, 0);
	assert_int_equal(store_close(s, 10000), 0);
	ev_loop_destroy(loop);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* ---- a VFS that fails on demand --------------------------------------------- */

static atomic_int fail_writes; /* every xWrite fails with SQLITE_IOERR_WRITE */
static atomic_int fail_opens;  /* every xOpen fails with SQLITE_CANTOPEN */
static atomic_int files_open;  /* files open through the shim now */

static sqlite3_vfs *unix_vfs;
static sqlite3_vfs shim_vfs;

struct shim_file {
	sqlite3_file base;
	sqlite3_file *real; /* unix_vfs's file, right after this struct */
};

#define REAL(f) (((struct shim_file *)(f))->real)

static int shim_close(sqlite3_file *f)
{
	atomic_fetch_sub(&files_open, 1);
	return REAL(f)->pMethods->xClose(REAL(f));
}
static int shim_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
	return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int shim_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
	if (atomic_load(&fail_writes))
		return SQLITE_IOERR_WRITE;
	return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int shim_truncate(sqlite3_file *f, sqlite3_int64 n)
{
	if (atomic_load(&fail_writes))
		return SQLITE_IOERR_TRUNCATE;
	return REAL(f)->pMethods->xTruncate(REAL(f), n);
}
static int shim_sync(sqlite3_file *f, int fl)
{
	return REAL(f)->pMethods->xSync(REAL(f), fl);
}
static int shim_size(sqlite3_file *f, sqlite3_int64 *n)
{
	return REAL(f)->pMethods->xFileSize(REAL(f), n);
}
static int shim_lock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xLock(REAL(f), l);
}
static int shim_unlock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xUnlock(REAL(f), l);
}
static int shim_reserved(sqlite3_file *f, int *r)
{
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), r);
}
static int shim_fcntl(sqlite3_file *f, int op, void *a)
{
	return REAL(f)->pMethods->xFileControl(REAL(f), op, a);
}
static int shim_sector(sqlite3_file *f)
{
	return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int shim_devchar(sqlite3_file *f)
{
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int shim_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **p)
{
	return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, ext, p);
}
static int shim_shmlock(sqlite3_file *f, int o, int n, int fl)
{
	return REAL(f)->pMethods->xShmLock(REAL(f), o, n, fl);
}
static void shim_shmbarrier(sqlite3_file *f)
{
	REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int shim_shmunmap(sqlite3_file *f, int del)
{
	return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int shim_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p)
{
	return REAL(f)->pMethods->xFetch(REAL(f), o, n, p);
}
static int shim_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p)
{
	return REAL(f)->pMethods->xUnfetch(REAL(f), o, p);
}

static const sqlite3_io_methods shim_io = {
	3,
	shim_close,
	shim_read,
	shim_write,
	shim_truncate,
	shim_sync,
	shim_size,
	shim_lock,
	shim_unlock,
	shim_reserved,
	shim_fcntl,
	shim_sector,
	shim_devchar,
	shim_shmmap,
	shim_shmlock,
	shim_shmbarrier,
	shim_shmunmap,
	shim_fetch,
	shim_unfetch,
};

static int shim_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
	struct shim_file *sf = (struct shim_file *)f;
	int rc;

	(void)vfs;
	f->pMethods = NULL;
	sf->real = (sqlite3_file *)(sf + 1);
	if (atomic_load(&fail_opens))
		return SQLITE_CANTOPEN;
	rc = unix_vfs->xOpen(unix_vfs, name, sf->real, flags, out);
	if (rc != SQLITE_OK)
		return rc;
	f->pMethods = &shim_io;
	atomic_fetch_add(&files_open, 1);
	return SQLITE_OK;
}

/* For one test, the shim becomes the default VFS, which store_open uses. */
static int shim_setup(void **state)
{
	(void)state;
	unix_vfs = sqlite3_vfs_find("unix");
	if (!unix_vfs)
		return -1;
	shim_vfs = *unix_vfs;
	shim_vfs.zName = "tg-faulty";
	shim_vfs.szOsFile = (int)sizeof(struct shim_file) + unix_vfs->szOsFile;
	shim_vfs.xOpen = shim_open;
	shim_vfs.pNext = NULL;
	return sqlite3_vfs_register(&shim_vfs, 1) == SQLITE_OK ? 0 : -1;
}

static int shim_teardown(void **state)
{
	(void)state;
	sqlite3_vfs_unregister(&shim_vfs);
	return 0;
}

/* ---- helpers --------------------------------------------------------------- */

/* A batch with user u's day at tokens_in = tokens and one audit row. */
static void submit(struct store *s, int64_t tokens)
{
	struct batch *b = batch_new();
	struct batch_usage *u;
	struct batch_audit *a;

	assert_non_null(b);
	u = batch_add_usage(b, "2026-11-29", "u", 1);
	assert_non_null(u);
	u->tokens_in = tokens;
	u->requests = tokens / 10;
	b->fold = true; /* what the loop sends after a reopen */
	a = batch_add_audit(b);
	assert_non_null(a);
	a->decided_ms = 1795996800000LL + tokens;
	a->tokens_in = a->tokens_out = -1;
	a->status = a->latency_ms = -1;
	batch_copy(a->user, sizeof(a->user), "u", 1);
	batch_copy(a->action, sizeof(a->action), "allow", 5);
	batch_copy(a->reason, sizeof(a->reason), "ok", 2);
	batch_copy(a->outcome, sizeof(a->outcome), "expired", 7);
	store_submit(s, b);
}

static struct store_stats wst;

/* Polls the store's stats every 10 ms until cond holds, for at most 5 s. */
#define WAIT_FOR(s, cond)                                                          \
	do {                                                                       \
		int waited_ = 0;                                                   \
		for (;;) {                                                         \
			store_get_stats((s), &wst);                                 \
			if (cond)                                                  \
				break;                                             \
			if (waited_ >= 5000)                                       \
				fail_msg("%s not within 5 s (last error: %s)", #cond, \
					 wst.last_error);                           \
			nanosleep(&(struct timespec){0, 10000000L}, NULL);         \
			waited_ += 10;                                             \
		}                                                                  \
	} while (0)


static void move(const char *dir, const char *from, const char *to)
{
	static const char *const suffix[] = {"", "-wal", "-shm"};
	char a[256], b[256];

	for (int i = 0; i < 3; i++) {
		snprintf(a, sizeof(a), "%s/%s%s", dir, from, suffix[i]);
		snprintf(b, sizeof(b), "%s/%s%s", dir, to, suffix[i]);
		if (access(a, F_OK) == 0)
			assert_int_equal(rename(a, b), 0);
	}
}

/* ---- tests ------------------------------------------------------------------ */

static void test_codes(void **state)
{
	static const int cured[] = {
		SQLITE_READONLY,	  SQLITE_READONLY_RECOVERY, SQLITE_READONLY_CANTLOCK, SQLITE_READONLY_ROLLBACK,
		SQLITE_READONLY_DBMOVED,  SQLITE_READONLY_CANTINIT, SQLITE_READONLY_DIRECTORY, SQLITE_IOERR,
		SQLITE_IOERR_READ,	  SQLITE_IOERR_SHORT_READ,  SQLITE_IOERR_WRITE,	      SQLITE_IOERR_FSYNC,
		SQLITE_IOERR_TRUNCATE,	  SQLITE_IOERR_FSTAT,	    SQLITE_IOERR_SHMOPEN,      SQLITE_IOERR_SHMMAP,
		SQLITE_IOERR_CORRUPTFS,	  SQLITE_CANTOPEN,	    SQLITE_CANTOPEN_ISDIR,     SQLITE_CANTOPEN_NOTEMPDIR,
	};
	static const int not_cured[] = {
		SQLITE_OK,	      SQLITE_ERROR,	       SQLITE_FULL,	       SQLITE_BUSY,
		SQLITE_BUSY_SNAPSHOT, SQLITE_LOCKED,	       SQLITE_CORRUPT,	       SQLITE_CORRUPT_INDEX,
		SQLITE_NOTADB,	      SQLITE_NOMEM,	       SQLITE_IOERR_NOMEM,     SQLITE_CONSTRAINT,
		SQLITE_CONSTRAINT_CHECK, SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_MISMATCH, SQLITE_TOOBIG,
		SQLITE_PROTOCOL,      SQLITE_PERM,	       SQLITE_MISUSE,	       SQLITE_INTERRUPT,
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cured) / sizeof(cured[0]); i++)
		if (!store_reopen_cures(cured[i]))
			fail_msg("code %d (%s) should lead to a reopen", cured[i], sqlite3_errstr(cured[i]));
	for (size_t i = 0; i < sizeof(not_cured) / sizeof(not_cured[0]); i++)
		if (store_reopen_cures(not_cured[i]))
			fail_msg("code %d (%s) should not lead to a reopen", not_cured[i], sqlite3_errstr(not_cured[i]));
}

static void test_reopen_cycle(void **state)
{
	char dir[] = "/tmp/tg-test-store-XXXXXX", path[256];
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct store *s;
	struct stat sb;
	uint64_t fails;

	(void)state;
	assert_non_null(loop);
	s = start_temp_store(dir, path, sizeof(path), loop, 20, 3600);

	submit(s, 10);
	WAIT_FOR(s, wst.flushes >= 1 && wst.pending_rows == 0);

	/* Writes fail: kept, refused 3 times in a row, then the connection is
	 * closed and opened again, which gets as far as its write check. */
	atomic_store(&fail_writes, 1);
	submit(s, 20);
	WAIT_FOR(s, wst.reopen_failures >= 1);
	assert_true(wst.flush_errors >= 3);
	assert_int_equal(wst.db_ok, 0);
	assert_non_null(strstr(wst.last_error, "reopen: write: disk I/O error"));
	submit(s, 30); /* while closed: kept too */

	/* Unmounted: opens fail. Between attempts nothing is open. */
	atomic_store(&fail_opens, 1);
	WAIT_FOR(s, strstr(wst.last_error, "unable to open") && atomic_load(&files_open) == 0);

	/* Nothing at the path: no database is created there. */
	move(dir, "t.db", "away.db");
	atomic_store(&fail_opens, 0);
	fails = wst.reopen_failures;
	WAIT_FOR(s, wst.reopen_failures >= fails + 2);
	assert_int_not_equal(access(path, F_OK), 0);

	/* An empty file there is not taken for the database, nor written. */
	fclose(fopen(path, "w"));
	WAIT_FOR(s, strstr(wst.last_error, "schema version 0 where"));
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 0);
	assert_int_equal(unlink(path), 0);

	/* Back, and writable: every kept row lands, the newest value wins. */
	move(dir, "away.db", "t.db");
	atomic_store(&fail_writes, 0);
	WAIT_FOR(s, wst.db_ok && wst.pending_rows == 0 && wst.reopens == 1);
	assert_int_equal(store_close(s, 1000), 0);
	ev_loop_destroy(loop);
	assert_int_equal(atomic_load(&files_open), 0);

	assert_int_equal(query_int(path, "SELECT tokens_in FROM daily_usage WHERE user_id = 'u'"), 30);
	assert_int_equal(query_int(path, "SELECT count(*) FROM audit_log WHERE user_id = 'u'"), 3);
	assert_int_equal(query_int(path, "SELECT count(*) FROM agent_state WHERE name = 'db_reopened_at'"), 1);
	move(dir, "t.db", "done.db");
	for (const char *const *f = (const char *const[]){"done.db", "done.db-wal", "done.db-shm", NULL}; *f; f++) {
		char p[300];

		snprintf(p, sizeof(p), "%s/%s", dir, *f);
		unlink(p);
	}
	assert_int_equal(rmdir(dir), 0);
}

/* A batch of usage rows for one day: "user=tokens_in" pairs. */
static void submit_usage(struct store *s, const char *day, bool fold, const char *const *users, const int64_t *tokens,
			 int n)
{
	struct batch *b = batch_new();

	assert_non_null(b);
	for (int i = 0; i < n; i++) {
		struct batch_usage *u = batch_add_usage(b, day, users[i], strlen(users[i]));

		assert_non_null(u);
		u->tokens_in = tokens[i];
		u->tokens_out = 2 * tokens[i];
		u->requests = 1;
		u->cost_nano = 1500000000LL * tokens[i]; /* $1.5 per token: exact in a double */
	}
	b->fold = fold;
	memcpy(b->current_day, day, sizeof(b->current_day));
	store_submit(s, b);
}

static void exec_sql(const char *path, const char *sql)
{
	sqlite3 *db;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
}

/* A usage_journal row as the agent writes it: one user-day. */
static void journal_row(const char *path, const char *day, const char *user, int64_t tokens)
{
	struct batch *b = batch_new();
	struct batch_usage *u;
	struct journal_buf out = {0};
	sqlite3 *db;
	sqlite3_stmt *q;

	assert_non_null(b);
	u = batch_add_usage(b, day, user, strlen(user));
	assert_non_null(u);
	u->tokens_in = tokens;
	u->requests = 1;
	assert_int_equal(journal_encode(b, &out), 1);
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO usage_journal(written_at, rows, counters) VALUES ('x', 1, ?1)",
					    -1, &q, NULL),
			 SQLITE_OK);
	sqlite3_bind_blob(q, 1, out.p, (int)out.len, SQLITE_STATIC);
	assert_int_equal(sqlite3_step(q), SQLITE_DONE);
	sqlite3_finalize(q);
	sqlite3_close(db);
	free(out.p);
	batch_free(b);
}

static void remove_temp_db(const char *dir)
{
	for (const char *const *f = (const char *const[]){"t.db", "t.db-wal", "t.db-shm", NULL}; *f; f++) {
		char p[300];

		snprintf(p, sizeof(p), "%s/%s", dir, *f);
		unlink(p);
	}
	assert_int_equal(rmdir(dir), 0);
}

/*
 * Between folds, batches go to usage_journal, not daily_usage. A store
 * closed without a last fold (as after a crash) leaves the journal: the
 * next start loads the newest values from it, and its writer replays it
 * into daily_usage (every day, not only today's), skipping a blob it
 * cannot decode. A fold writes daily_usage and empties the journal.
 */
static void test_journal_then_fold_and_replay(void **state)
{
	char dir[] = "/tmp/tg-test-store-XXXXXX", path[256], err[256];
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct store *s;
	struct ledger *l;
	struct ledger_usage *u;

	(void)state;
	assert_non_null(loop);
	s = start_temp_store(dir, path, sizeof(path), loop, 20, 3600);
	submit_usage(s, "2026-11-29", false, (const char *const[]){"ann", "bob"}, (const int64_t[]){10, 5}, 2);
	WAIT_FOR(s, wst.flushes >= 1 && wst.pending_rows == 0);
	submit_usage(s, "2026-11-28", false, (const char *const[]){"old"}, (const int64_t[]){7}, 1);
	submit_usage(s, "2026-11-29", false, (const char *const[]){"ann"}, (const int64_t[]){20}, 1);
	WAIT_FOR(s, wst.journal_rows >= 4 && wst.pending_rows == 0);
	assert_int_equal(wst.usage_rows, 0);
	assert_int_equal(wst.folds, 0);
	assert_true(wst.fold_cpu_s_total == 0); /* a journal row is not a fold */
	assert_int_equal(store_close(s, 1000), 0);
	assert_int_equal(query_int(path, "SELECT count(*) FROM daily_usage"), 0);
	assert_true(query_int(path, "SELECT count(*) FROM usage_journal") >= 2);
	assert_int_equal(query_int(path, "SELECT sum(rows) FROM usage_journal"), 4);
	/* Something else wrote a row that is not a journal: skipped, dropped,
	 * and the rows after it still count. */
	exec_sql(path, "INSERT INTO usage_journal(written_at, rows, counters) VALUES ('x', 1, x'54474a3100')");
	journal_row(path, "2026-11-29", "late", 9);

	/* The next start: today's counters are the journal's newest. */
	s = store_open(path, err, sizeof(err));
	assert_non_null(s);
	l = ledger_new();
	assert_non_null(l);
	assert_int_equal(ledger_set_today(l, 20786, "2026-11-29"), 0);
	assert_int_equal(store_load_usage(s, "2026-11-29", l, err, sizeof(err)), 0);
	u = ledger_user(l, "ann", 3, false);
	assert_non_null(u);
	assert_int_equal(u->tokens_in, 20);
	assert_int_equal(u->tokens_out, 40);
	assert_int_equal(ledger_user(l, "bob", 3, false)->tokens_in, 5);
	assert_null(ledger_user(l, "old", 3, false)); /* another day */
	assert_int_equal(ledger_user(l, "late", 4, false)->tokens_in, 9);
	assert_int_equal(ledger_today_cost(l), 1500000000LL * (20 + 5));
	ledger_free(l);
	/* Its writer replays the journal at once, with no batch to write. */
	assert_int_equal(store_start(s, loop, 20, 3600, noop_policy, NULL), 0);
	WAIT_FOR(s, wst.journal_replayed >= 5);
	assert_int_equal(query_int(path, "SELECT count(*) FROM usage_journal"), 0);
	assert_int_equal(query_int(path, "SELECT tokens_in FROM daily_usage WHERE user_id = 'late'"), 9);
	assert_int_equal(query_int(path, "SELECT tokens_in FROM daily_usage WHERE user_id = 'ann'"), 20);
	assert_int_equal(query_int(path, "SELECT tokens_out FROM daily_usage WHERE user_id = 'bob'"), 10);
	assert_int_equal(query_int(path, "SELECT cost_usd * 10 FROM daily_usage WHERE user_id = 'bob'"), 75);
	assert_int_equal(query_int(path, "SELECT tokens_in FROM daily_usage WHERE user_id = 'old' AND day = '2026-11-28'"),
			 7);

	/* Journaled, then folded: daily_usage gets the fold's values and the
	 * journal is empty again. */
	submit_usage(s, "2026-11-29", false, (const char *const[]){"cat"}, (const int64_t[]){3}, 1);
	WAIT_FOR(s, wst.journal_rows >= 1 && wst.pending_rows == 0);
	assert_int_equal(query_int(path, "SELECT count(*) FROM usage_journal"), 1);
	assert_int_equal(query_int(path, "SELECT count(*) FROM daily_usage WHERE user_id = 'cat'"), 0);
	submit_usage(s, "2026-11-29", true, (const char *const[]){"cat", "ann"}, (const int64_t[]){4, 21}, 2);
	WAIT_FOR(s, wst.folds >= 1 && wst.pending_rows == 0);
	assert_int_equal(wst.usage_rows, 2);
	/* Its CPU time paces the next folds (engine_fold_interval). */
	assert_true(wst.last_fold_cpu_s > 0 && wst.last_fold_cpu_s < 1);
	assert_true(wst.fold_cpu_s_total == wst.last_fold_cpu_s);
	assert_int_equal(query_int(path, "SELECT count(*) FROM usage_journal"), 0);
	assert_int_equal(query_int(path, "SELECT tokens_in FROM daily_usage WHERE user_id = 'cat'"), 4);
	assert_int_equal(query_int(path, "SELECT tokens_in FROM daily_usage WHERE user_id = 'ann'"), 21);
	assert_int_equal(store_close(s, 1000), 0);
	ev_loop_destroy(loop);
	remove_temp_db(dir);
}

/*
 * The journal left from before cannot be replayed while another process
 * holds the write lock: /healthz's db_ok says so and the reason is kept;
 * once the lock goes the replay lands, and health is back without waiting
 * for traffic or the idle probe.
 */
static void test_journal_replay_waits_for_the_lock(void **state)
{
	char dir[] = "/tmp/tg-test-store-XXXXXX", path[256], err[256];
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct store *s;
	sqlite3 *other;

	(void)state;
	assert_non_null(loop);
	s = start_temp_store(dir, path, sizeof(path), loop, 20, 3600);
	assert_int_equal(store_close(s, 1000), 0);
	journal_row(path, "2026-11-29", "ann", 11);
	journal_row(path, "2026-11-29", "ann", 12);

	assert_int_equal(sqlite3_open_v2(path, &other, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
	assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE; UPDATE settings SET value = value WHERE name = 'time_zone'",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	s = store_open(path, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_start(s, loop, 20, 3600, noop_policy, NULL), 0);
	WAIT_FOR(s, wst.db_ok == 0 && strstr(wst.last_error, "usage_journal replay") &&
			    strstr(wst.last_error, "locked"));
	assert_int_equal(wst.journal_replayed, 0);
	assert_int_equal(query_int(path, "SELECT count(*) FROM usage_journal"), 2);

	assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(other);
	WAIT_FOR(s, wst.journal_replayed == 2 && wst.db_ok == 1);
	assert_int_equal(query_int(path, "SELECT count(*) FROM usage_journal"), 0);
	assert_int_equal(query_int(path, "SELECT tokens_in FROM daily_usage WHERE user_id = 'ann'"), 12);
	assert_int_equal(store_close(s, 1000), 0);
	ev_loop_destroy(loop);
	remove_temp_db(dir);
}

/* Another connection holding the write lock (BEGIN IMMEDIATE and a write)
 * for hold_s, then committing. */
struct lock_holder {
	const char *path;
	double hold_s;
	atomic_bool held;
};

static void *hold_lock_main(void *arg)
{
	struct lock_holder *h = arg;
	sqlite3 *db;

	if (sqlite3_open_v2(h->path, &db, SQLITE_OPEN_READWRITE, "unix") != SQLITE_OK ||
	    sqlite3_exec(db, "BEGIN IMMEDIATE; UPDATE settings SET value = value WHERE name = 'time_zone'", NULL, NULL,
			 NULL) != SQLITE_OK)
		abort();
	atomic_store(&h->held, true);
	usleep((useconds_t)(h->hold_s * 1e6));
	sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	sqlite3_close(db);
	return NULL;
}

static void hold_lock(pthread_t *th, struct lock_holder *h)
{
	atomic_store(&h->held, false);
	assert_int_equal(pthread_create(th, NULL, hold_lock_main, h), 0);
	while (!atomic_load(&h->held))
		usleep(1000);
}

/* An operator's command (tokengate limit set, key create...) that meets
 * the write lock waits for it; when it is held past the wait, the command
 * fails saying so and changes nothing. */
static void test_operator_command_and_a_held_lock(void **state)
{
	char dir[] = "/tmp/tg-test-store-XXXXXX", path[256], err[512];
	struct lock_holder h = {.hold_s = 0.5};
	struct store *s;
	pthread_t th;
	double t0, waited;

	(void)state;
	s = open_temp_store(dir, path, sizeof(path));
	h.path = path;

	/* Held for 0.5 s: waited out (the writer's 200 ms would not). */
	hold_lock(&th, &h);
	t0 = now_s();
	if (store_exec_params(s, "INSERT INTO user_limits(user_id, daily_tokens) VALUES ('zed', 5)", NULL, 0, NULL,
			      err, sizeof(err)) == -1)
		fail_msg("the command did not wait for the lock: %s", err);
	waited = now_s() - t0;
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(waited > 0.3);
	assert_int_equal(query_int(path, "SELECT daily_tokens FROM user_limits WHERE user_id = 'zed'"), 5);

	/* Held past the wait: refused, with who to look for, nothing changed. */
	store_set_lock_wait(s, 100);
	h.hold_s = 1.0;
	hold_lock(&th, &h);
	assert_int_equal(store_exec_params(s, "UPDATE user_limits SET daily_tokens = 6 WHERE user_id = 'zed'", NULL, 0,
					   NULL, err, sizeof(err)),
			 -1);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_non_null(strstr(err, "database is locked"));
	assert_non_null(strstr(err, "held the write lock for over 100 ms"));
	assert_non_null(strstr(err, "nothing was changed"));
	assert_int_equal(query_int(path, "SELECT daily_tokens FROM user_limits WHERE user_id = 'zed'"), 5);
	assert_int_equal(store_close(s, 0), 0);
	remove_temp_db(dir);
}

/* The open's migrations wait for a lock another connection holds too: an
 * upgraded agent started, or its command run, while the old one writes. */
static void test_migration_waits_for_the_lock(void **state)
{
	char dir[] = "/tmp/tg-test-store-XXXXXX", path[256], err[512];
	struct lock_holder h = {.hold_s = 0.5};
	struct store *s;
	sqlite3 *db;
	pthread_t th;
	int64_t latest;

	(void)state;
	assert_int_equal(store_close(open_temp_store(dir, path, sizeof(path)), 0), 0);
	/* The last migration pending again (it only rewrites descriptions). */
	latest = query_int(path, "PRAGMA user_version");
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
	{
		char sql[64];

		snprintf(sql, sizeof(sql), "PRAGMA user_version = %lld", (long long)(latest - 1));
		assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	}
	sqlite3_close(db);

	h.path = path;
	hold_lock(&th, &h);
	s = store_open(path, err, sizeof(err));
	assert_int_equal(pthread_join(th, NULL), 0);
	if (!s)
		fail_msg("store_open did not wait for the lock: %s", err);
	assert_int_equal(store_close(s, 0), 0);
	assert_int_equal(query_int(path, "PRAGMA user_version"), latest);
	remove_temp_db(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_operator_update_gets_the_lock),
		cmocka_unit_test(test_purge_reads_the_time_index),
		cmocka_unit_test(test_codes),
		cmocka_unit_test_setup_teardown(test_reopen_cycle, shim_setup, shim_teardown),
		cmocka_unit_test(test_journal_then_fold_and_replay),
		cmocka_unit_test(test_journal_replay_waits_for_the_lock),
		cmocka_unit_test(test_operator_command_and_a_held_lock),
		cmocka_unit_test(test_migration_waits_for_the_lock),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
