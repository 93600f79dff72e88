/*
 * Unit tests of politevfs: once registered it is SQLite's default VFS, its
 * hook runs before the writes of a WAL-mode commit and of a checkpoint
 * (where the store offers the CPU), and a database written through it
 * reads back the same through it and through another connection.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "politevfs.h"

static unsigned writes_a, writes_b;

static void count_a(void)
{
	writes_a++;
}

static void count_b(void)
{
	writes_b++;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
	char *err = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("%s: %s", sql, err ? err : "?");
}

static int64_t one_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st;
	int64_t v = -1;

	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

static void test_hook_runs_on_commit_and_checkpoint(void **state)
{
	char dir[] = "/tmp/tg-politevfs.XXXXXX", path[64];
	sqlite3 *db, *other;
	unsigned before;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/t.db", dir);
	assert_int_equal(politevfs_register(count_a), 0);
	assert_string_equal(sqlite3_vfs_find(NULL)->zName, "tokengate-polite");

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	exec_ok(db, "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;"
		    "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)");
	before = writes_a;
	exec_ok(db, "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
		    "INSERT INTO t SELECT i, printf('value-%08d', i) FROM n; COMMIT");
	/* A commit of about 30 pages: one write per frame header and page. */
	assert_true(writes_a - before >= 30);

	before = writes_a;
	exec_ok(db, "PRAGMA wal_checkpoint(TRUNCATE)");
	assert_true(writes_a - before >= 15);

	/* Registering again only swaps the hook. */
	assert_int_equal(politevfs_register(count_b), 0);
	before = writes_a;
	exec_ok(db, "UPDATE t SET v = 'x' WHERE k <= 100");
	assert_int_equal(writes_a, before);
	assert_true(writes_b > 0);

	/* What went through it is there, for it and for a plain reader. */
	assert_int_equal(one_int(db, "SELECT count(*) FROM t"), 5000);
	assert_int_equal(sqlite3_open_v2(path, &other, SQLITE_OPEN_READONLY, "unix"), SQLITE_OK);
	assert_int_equal(one_int(other, "SELECT count(*) FROM t WHERE v = 'x'"), 100);
	assert_int_equal(one_int(other, "SELECT sum(k) FROM t"), 5000 * 5001 / 2);
	sqlite3_close(other);
	{
		sqlite3_stmt *st;

		assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
		sqlite3_finalize(st);
	}
	sqlite3_close(db);

	snprintf(path, sizeof(path), "%s/t.db", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/t.db-wal", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/t.db-shm", dir);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hook_runs_on_commit_and_checkpoint),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
