/*
 * Unit test of the store's writer thread against another process's write:
 * while the writer is always behind (a new batch waits each time it
 * commits), an operator's UPDATE from another connection, with the busy
 * handler sqlite3's shell uses (.timeout), must still get the lock.
 * Batches that cost the writer far more than the test keep its own gap
 * between transactions to microseconds, as in an agent far behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <ev.h>
#include <sqlite3.h>

#include "batch.h"
#include "policy.h"
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
	char dir[] = "/tmp/tg_store.XXXXXX", path[64], err[256];
	struct store *s;
	struct store_stats st;
	struct operator o = {.tries = 0};
	pthread_t th;
	sqlite3 *db;
	sqlite3_stmt *q;
	long round = 0;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/t.db", dir);
	s = store_open(path, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_start(s, loop, 3600000, 86400, noop_policy, NULL), 0);

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

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT daily_tokens FROM tiers WHERE name = 'default'", -1, &q, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int64(q, 0), 4242);
	sqlite3_finalize(q);
	sqlite3_close(db);
	snprintf(err, sizeof(err), "rm -rf %s", dir);
	assert_int_equal(system(err), 0);
}

/* Retention: rows past audit_retention_days go, the others stay, and the
 * purge reads the time index instead of walking the table (it runs every
 * purge_interval_s on a table that only grows). */
static void test_purge_reads_the_time_index(void **state)
{
	char dir[] = "/tmp/tg_store.XXXXXX", path[64], err[256];
	struct store *s;
	struct store_stats st;
	struct batch *b;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	int64_t now_ms = (int64_t)time(NULL) * 1000;
	uint64_t purges;
	double t0;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/t.db", dir);
	s = store_open(path, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_start(s, loop, 100, 1, noop_policy, NULL), 0);
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
	snprintf(err, sizeof(err), "rm -rf %s", dir);
	assert_int_equal(system(err), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_operator_update_gets_the_lock),
		cmocka_unit_test(test_purge_reads_the_time_index),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
