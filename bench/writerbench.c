/*
 * writerbench: what tokengate's SQLite writer costs per flush, against a
 * plain SQLite batch of the same rows, in one run (issue 6, item 5).
 *
 * Two databases made by tokengate's own migrations, each holding today's
 * daily_usage row of U users. For every batch size N, round after round
 * (the order alternating), the same N random distinct users are:
 *
 *   store   put in a struct batch and handed to a started store (the
 *           writer thread, as in the agent) as a fold, i.e. written to
 *           daily_usage; the figure is the writer's own time for that
 *           transaction (store_stats.last_flush_ms)
 *   journal the same, as a flush between two folds: one usage_journal
 *           row (spoa/journal.h) instead of N daily_usage updates
 *   plain   upserted on the main thread with one prepared statement in
 *           one BEGIN IMMEDIATE ... COMMIT, with the store's PRAGMAs
 *           (WAL, synchronous=NORMAL, the same page cache)
 *
 * With -a, every batch also carries N audit_log rows (and the plain side
 * inserts them). Prints one line per size: medians of both, their ratio
 * (plain time / store time: 1.0 = no overhead) and rows per second, and
 * the journal's time.
 *
 * usage: writerbench [-u USERS] [-n SIZES] [-r ROUNDS] [-a] [-d DIR] [--json]
 */
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "batch.h"
#include "daytime.h"
#include "log.h"
#include "store.h"

#define MAX_SIZES 8
#define MAX_ROUNDS 64

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what, const char *why)
{
	fprintf(stderr, "writerbench: %s: %s\n", what, why);
	exit(1);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A database as the agent makes it, with today's row for users 0..U-1. */
static void make_db(const char *path, long users, const char *day)
{
	char err[512], sql[512];
	struct store *s = store_open(path, err, sizeof(err));

	if (!s)
		die(path, err);
	snprintf(sql, sizeof(sql),
		 "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < %ld) "
		 "INSERT INTO daily_usage(day, user_id) SELECT '%s', 'user-' || i FROM n",
		 users - 1, day);
	if (store_exec_params(s, sql, NULL, 0, NULL, err, sizeof(err)) == -1)
		die("preloading users", err);
	store_close(s, 0);
}

/* n distinct users out of u (a partial Fisher-Yates over idx). */
static void pick(long *idx, long u, long n, unsigned *seed)
{
	for (long i = 0; i < n; i++) {
		long j = i + (long)(rand_r(seed) % (unsigned)(u - i)), t = idx[i];

		idx[i] = idx[j];
		idx[j] = t;
	}
}

static void fill_batch(struct batch *b, const long *idx, long n, const char *day, int audit, long round)
{
	for (long i = 0; i < n; i++) {
		char user[32];
		int len = snprintf(user, sizeof(user), "user-%ld", idx[i]);
		struct batch_usage *u = batch_add_usage(b, day, user, (size_t)len);

		if (!u)
			die("batch", "out of memory");
		u->tokens_in = 100 * (round + 1);
		u->tokens_out = 40 * (round + 1);
		u->requests = round + 1;
		u->cost_nano = 1000 * (round + 1);
		if (audit) {
			struct batch_audit *a = batch_add_audit(b);
			char uid[48];

			if (!a)
				die("batch", "out of memory");
			snprintf(uid, sizeof(uid), "wb-%ld-%ld", round, i);
			a->decided_ms = (int64_t)time(NULL) * 1000;
			a->tokens_estimated = 140;
			a->tokens_in = 100;
			a->tokens_out = 40;
			a->cost_nano = 1000;
			a->status = 200;
			a->latency_ms = 12;
			batch_copy(a->action, sizeof(a->action), "allow", 5);
			batch_copy(a->reason, sizeof(a->reason), "ok", 2);
			batch_copy(a->outcome, sizeof(a->outcome), "settled", 7);
			batch_copy(a->uid, sizeof(a->uid), uid, strlen(uid));
			batch_copy(a->user, sizeof(a->user), user, strlen(user));
			batch_copy(a->route, sizeof(a->route), "chat", 4);
			batch_copy(a->model, sizeof(a->model), "gpt-4o-mini", 11);
			batch_copy(a->provider, sizeof(a->provider), "provider_primary", 16);
		}
	}
}

/* The store's writer time for one batch of these rows, a fold (to
 * daily_usage) or a journal flush. */
static double store_flush(struct store *s, const long *idx, long n, const char *day, int audit, long round,
			  bool fold)
{
	struct store_stats before, st;
	struct batch *b = batch_new();
	double t0 = now_ms();

	if (!b)
		die("batch", "out of memory");
	fill_batch(b, idx, n, day, audit, round);
	b->fold = fold;
	store_get_stats(s, &before);
	store_submit(s, b);
	for (;;) {
		store_get_stats(s, &st);
		if (st.flushes > before.flushes)
			return st.last_flush_ms;
		if (st.flush_errors > before.flush_errors)
			die("store", st.last_error);
		if (now_ms() - t0 > 60000)
			die("store", "no flush within 60 s");
		usleep(200);
	}
}

static void check(sqlite3 *db, int rc, const char *what)
{
	if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW)
		die(what, sqlite3_errmsg(db));
}

struct plain {
	sqlite3 *db;
	sqlite3_stmt *usage, *audit;
};

static void plain_open(struct plain *p, const char *path)
{
	check(p->db, sqlite3_open(path, &p->db), path);
	check(p->db, sqlite3_exec(p->db, STORE_PRAGMAS, NULL, NULL, NULL), "pragmas");
	check(p->db,
	      sqlite3_prepare_v2(p->db,
				 "INSERT INTO daily_usage(day, user_id, tokens_in, tokens_out, requests, cost_usd, "
				 "denials, fallbacks, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, ?7) "
				 "ON CONFLICT(day, user_id) DO UPDATE SET tokens_in = excluded.tokens_in, "
				 "tokens_out = excluded.tokens_out, requests = excluded.requests, "
				 "cost_usd = excluded.cost_usd, updated_at = excluded.updated_at",
				 -1, &p->usage, NULL),
	      "prepare usage");
	check(p->db,
	      sqlite3_prepare_v2(p->db,
				 "INSERT INTO audit_log(decided_at, unique_id, user_id, route, model, provider, "
				 "action, reason, tokens_estimated, tokens_in, tokens_out, cost_usd, status, "
				 "latency_ms, outcome) VALUES (?1, ?2, ?3, 'chat', 'gpt-4o-mini', "
				 "'provider_primary', 'allow', 'ok', 140, 100, 40, 0.000001, 200, 12, 'settled')",
				 -1, &p->audit, NULL),
	      "prepare audit");
}

/* The same rows, plain: one prepared upsert per row in one transaction. */
static double plain_flush(struct plain *p, const long *idx, long n, const char *day, int audit, long round)
{
	char now[32], user[32], uid[48];
	double t0 = now_ms();

	daytime_iso_utc_ms((int64_t)time(NULL) * 1000, now, sizeof(now));
	check(p->db, sqlite3_exec(p->db, "BEGIN IMMEDIATE", NULL, NULL, NULL), "begin");
	for (long i = 0; i < n; i++) {
		snprintf(user, sizeof(user), "user-%ld", idx[i]);
		sqlite3_bind_text(p->usage, 1, day, -1, SQLITE_STATIC);
		sqlite3_bind_text(p->usage, 2, user, -1, SQLITE_STATIC);
		sqlite3_bind_int64(p->usage, 3, 100 * (round + 1));
		sqlite3_bind_int64(p->usage, 4, 40 * (round + 1));
		sqlite3_bind_int64(p->usage, 5, round + 1);
		sqlite3_bind_double(p->usage, 6, 1e-6 * (double)(round + 1));
		sqlite3_bind_text(p->usage, 7, now, -1, SQLITE_STATIC);
		check(p->db, sqlite3_step(p->usage), "upsert");
		sqlite3_reset(p->usage);
		if (audit) {
			snprintf(uid, sizeof(uid), "wbp-%ld-%ld", round, i);
			sqlite3_bind_text(p->audit, 1, now, -1, SQLITE_STATIC);
			sqlite3_bind_text(p->audit, 2, uid, -1, SQLITE_STATIC);
			sqlite3_bind_text(p->audit, 3, user, -1, SQLITE_STATIC);
			check(p->db, sqlite3_step(p->audit), "audit insert");
			sqlite3_reset(p->audit);
		}
	}
	check(p->db, sqlite3_exec(p->db, "COMMIT", NULL, NULL, NULL), "commit");
	return now_ms() - t0;
}

static void noop_policy(struct policy *p, void *arg)
{
	(void)p;
	(void)arg;
}

int main(int argc, char **argv)
{
	long users = 100000, sizes[MAX_SIZES] = {100, 1000, 10000}, rounds = 7;
	int nsizes = 3, audit = 0, json = 0;
	const char *dir = NULL;
	char tmpl[] = "/tmp/writerbench.XXXXXX", spath[600], ppath[600], err[512];
	struct daytime_day today;
	struct store *s;
	struct plain p = {0};
	unsigned seed = 12345;
	long *idx;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-u") && i + 1 < argc) {
			users = atol(argv[++i]);
		} else if (!strcmp(argv[i], "-r") && i + 1 < argc) {
			rounds = atol(argv[++i]);
		} else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
			char *list = argv[++i], *tok, *save = NULL;

			nsizes = 0;
			for (tok = strtok_r(list, ",", &save); tok && nsizes < MAX_SIZES; tok = strtok_r(NULL, ",", &save))
				sizes[nsizes++] = atol(tok);
		} else if (!strcmp(argv[i], "-a")) {
			audit = 1;
		} else if (!strcmp(argv[i], "-d") && i + 1 < argc) {
			dir = argv[++i];
		} else if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else {
			fprintf(stderr, "usage: writerbench [-u USERS (100000)] [-n SIZES (100,1000,10000)] "
					"[-r ROUNDS (7)] [-a: audit rows too] [-d DIR] [--json]\n");
			return 2;
		}
	}
	if (users < 1 || rounds < 1 || rounds > MAX_ROUNDS || nsizes < 1)
		die("arguments", "out of range");
	for (int i = 0; i < nsizes; i++)
		if (sizes[i] < 1 || sizes[i] > users)
			die("arguments", "a batch size must be between 1 and the number of users");
	if (!dir && !(dir = mkdtemp(tmpl)))
		die("mkdtemp", strerror(errno));
	log_threshold = LOG_LVL_WARN;
	daytime_day_of((int64_t)time(NULL), &today);
	snprintf(spath, sizeof(spath), "%s/store.db", dir);
	snprintf(ppath, sizeof(ppath), "%s/plain.db", dir);
	make_db(spath, users, today.str);
	make_db(ppath, users, today.str);
	if (!(s = store_open(spath, err, sizeof(err))))
		die(spath, err);
	if (store_start(s, ev_default_loop(0), 3600000, 86400, noop_policy, NULL) == -1)
		die("store", "cannot start the writer thread");
	plain_open(&p, ppath);
	if (!(idx = malloc((size_t)users * sizeof(*idx))))
		die("malloc", "out of memory");
	for (long i = 0; i < users; i++)
		idx[i] = i;

	if (json)
		printf("{\"users\":%ld,\"rounds\":%ld,\"audit\":%s,\"sizes\":[", users, rounds, audit ? "true" : "false");
	else
		printf("writerbench: %ld users, %ld rounds, %s\n%8s %12s %12s %8s %14s %14s %12s\n", users, rounds,
		       audit ? "usage + audit rows" : "usage rows only", "rows", "store ms", "plain ms",
		       "ratio", "store rows/s", "plain rows/s", "journal ms");
	for (int k = 0; k < nsizes; k++) {
		double st[MAX_ROUNDS], pl[MAX_ROUNDS], jr[MAX_ROUNDS], ratio[MAX_ROUNDS], mst, mpl, mr, mj;
		long n = sizes[k];

		for (long r = 0; r < rounds; r++) {
			pick(idx, users, n, &seed);
			if (r % 2) {
				pl[r] = plain_flush(&p, idx, n, today.str, audit, r);
				st[r] = store_flush(s, idx, n, today.str, audit, r, true);
			} else {
				st[r] = store_flush(s, idx, n, today.str, audit, r, true);
				pl[r] = plain_flush(&p, idx, n, today.str, audit, r);
			}
			/* The next round's fold empties the journal again. */
			jr[r] = store_flush(s, idx, n, today.str, audit, r, false);
			ratio[r] = st[r] > 0 ? pl[r] / st[r] : 0;
		}
		mst = median(st, (int)rounds);
		mpl = median(pl, (int)rounds);
		mr = median(ratio, (int)rounds);
		mj = median(jr, (int)rounds);
		if (json)
			printf("%s{\"rows\":%ld,\"store_ms\":%.3f,\"plain_ms\":%.3f,\"ratio\":%.3f,"
			       "\"store_rows_per_s\":%.0f,\"plain_rows_per_s\":%.0f,\"journal_ms\":%.3f}",
			       k ? "," : "", n, mst, mpl, mr, n / mst * 1e3, n / mpl * 1e3, mj);
		else
			printf("%8ld %12.3f %12.3f %8.2f %14.0f %14.0f %12.3f\n", n, mst, mpl, mr, n / mst * 1e3,
			       n / mpl * 1e3, mj);
	}
	if (json)
		printf("]}\n");
	sqlite3_finalize(p.usage);
	sqlite3_finalize(p.audit);
	sqlite3_close(p.db);
	store_close(s, 5000);
	free(idx);
	return 0;
}
