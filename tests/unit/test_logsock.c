/*
 * Unit tests of the log socket reader: every datagram of a burst larger
 * than one recvmmsg batch arrives, once, in order, with its trailing
 * newline cut; a datagram at the size limit is delivered (truncated), not
 * dropped; the field helpers read key=value lines, matching a key only at
 * the start of a token. Binding replaces a socket left at the path, and
 * refuses (leaving it alone) a regular file, a directory or a symlink there:
 * the agent often runs this as root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "logsock.h"

struct seen {
	int n;
	int bad;
	size_t last_len;
};

static void on_line(const char *line, size_t len, void *arg)
{
	struct seen *s = arg;
	char want[64];

	if (len < 1000) {
		snprintf(want, sizeof(want), "id=req-%d st=200", s->n);
		if (strlen(line) != len || strcmp(line, want) != 0)
			s->bad++;
	}
	s->last_len = len;
	s->n++;
}

static void test_burst_all_delivered(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct seen seen = {0};
	char path[64], err[256], line[64];
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct logsock *ls;
	int fd, sent = 0;

	(void)state;
	snprintf(path, sizeof(path), "/tmp/tg-test-logsock-%ld.sock", (long)getpid());
	ls = logsock_start(loop, path, 0600, (uid_t)-1, (gid_t)-1, on_line, &seen, err, sizeof(err));
	assert_non_null(ls);
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	assert_true(fd >= 0);
	strcpy(sun.sun_path, path);
	/* 300 lines: several batches, more than one read event's worth. The
	 * socket queue may refuse some at once (max_dgram_qlen): then read
	 * and send again, as HAProxy's lines would keep coming. */
	while (sent < 300) {
		int len = snprintf(line, sizeof(line), "id=req-%d st=200\n", sent);

		if (sendto(fd, line, (size_t)len, MSG_DONTWAIT, (struct sockaddr *)&sun, sizeof(sun)) == len)
			sent++;
		else
			ev_run(loop, EVRUN_NOWAIT);
	}
	for (int i = 0; i < 100 && seen.n < sent; i++)
		ev_run(loop, EVRUN_NOWAIT);
	assert_int_equal(seen.n, 300);
	assert_int_equal(seen.bad, 0);

	/* The largest datagram: cut to what the reader keeps, still a line. */
	{
		size_t big = 8192;
		char *b = malloc(big);

		assert_non_null(b);
		memset(b, 'x', big);
		assert_int_equal(sendto(fd, b, big, 0, (struct sockaddr *)&sun, sizeof(sun)), (ssize_t)big);
		for (int i = 0; i < 100 && seen.n < 301; i++)
			ev_run(loop, EVRUN_NOWAIT);
		assert_int_equal(seen.n, 301);
		assert_true(seen.last_len > 1000 && seen.last_len < big);
		free(b);
	}
	close(fd);
	logsock_stop(ls);
	ev_loop_destroy(loop);
}

static void test_fields(void **state)
{
	static const char line[] = "<134>1 tokengate: id=abc-1 be=provider_primary st=200 pt=12 ct=- tsc=----";
	const char *v;

	(void)state;
	assert_int_equal(logsock_field(line, strlen(line), "id", &v), 5);
	assert_memory_equal(v, "abc-1", 5);
	assert_int_equal(logsock_field(line, strlen(line), "tsc", &v), 4);
	assert_int_equal(logsock_field(line, strlen(line), "ts", &v), -1);
	assert_int_equal(logsock_int(line, strlen(line), "st", -1), 200);
	assert_int_equal(logsock_int(line, strlen(line), "pt", -1), 12);
	assert_int_equal(logsock_int(line, strlen(line), "ct", -1), -1);
	assert_int_equal(logsock_int(line, strlen(line), "ra", 7), 7);
}

/* All keys of a production line in one pass, as each alone finds it. */
static void test_fields_in_one_pass(void **state)
{
	static const char line[] =
		"tokengate id=7F000001:9A2C_7F000001:1F90_65F1_0001:1D2E client=127.0.0.1:39724 method=POST "
		"path=\"/v1/chat/completions\" be=provider_primary srv=primary1 st=200 tsc=---- tr=3 ta=4 "
		"bytes_in=312 bytes_out=402 action=allow reason=ok err=- gate=- route=chat pst=200 fb=- pt=12 "
		"ct=2 sm=0 ra=- out=- outh=-";
	static const char *const keys[] = {"id", "be", "tsc", "out", "outh", "st", "pst", "pt", "ct", "sm", "ra", "nope"};
	enum { N = sizeof(keys) / sizeof(keys[0]) };
	struct logsock_val v[N];

	(void)state;
	logsock_fields(line, strlen(line), keys, N, v);
	for (size_t i = 0; i < N; i++) {
		const char *one = NULL;
		long n = logsock_field(line, strlen(line), keys[i], &one);

		assert_int_equal(v[i].len, n);
		if (n >= 0)
			assert_ptr_equal(v[i].ptr, one);
	}
	assert_int_equal(v[0].len, 42);
	assert_int_equal(logsock_val_int(v[6], -1), 200);
	assert_int_equal(logsock_val_int(v[8], -1), 2);
	assert_int_equal(logsock_val_int(v[10], 5), 5); /* "-" */
	assert_int_equal(v[N - 1].len, -1);
	assert_null(v[N - 1].ptr);
}

/* Only a token that starts with key= counts, wherever else the text is. */
static void test_field_token_start(void **state)
{
	static const struct {
		const char *line, *key, *want; /* want NULL: absent */
	} cases[] = {
		{"id=1", "id", "1"},
		{"xid=1 id=2", "id", "2"},
		{"out=id=5 id=7", "id", "7"},
		{"id= st=1", "id", ""},
		{"st=1 id", "id", NULL},
		{"st=1 idx=3", "id", NULL},
		{"st=1 id=", "id", ""},
		{"a  id=9", "id", "9"},
		{"ididid=4", "id", NULL},
		{"id=first id=second", "id", "first"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *v = NULL;
		long n = logsock_field(cases[i].line, strlen(cases[i].line), cases[i].key, &v);

		if (!cases[i].want) {
			assert_int_equal(n, -1);
			continue;
		}
		assert_int_equal(n, (long)strlen(cases[i].want));
		assert_memory_equal(v, cases[i].want, (size_t)n);
	}
}

/* What is at the path before logsock_start, and whether it may go. */
static void test_only_a_socket_is_replaced(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char dir[] = "/tmp/tg-test-logsock-XXXXXX", path[128], target[128], err[256], buf[16];
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct logsock *ls;
	struct stat st;
	FILE *f;
	int fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/log.sock", dir);
	snprintf(target, sizeof(target), "%s/precious", dir);

	/* A regular file: refused with the path named, and still there. */
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("keep me\n", f);
	fclose(f);
	assert_null(logsock_start(loop, path, 0600, (uid_t)-1, (gid_t)-1, on_line, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, path));
	assert_non_null(strstr(err, "is a regular file, not a socket"));
	f = fopen(path, "r");
	assert_non_null(f);
	assert_non_null(fgets(buf, sizeof(buf), f));
	fclose(f);
	assert_string_equal(buf, "keep me\n");
	assert_int_equal(unlink(path), 0);

	/* A directory, a symlink (to a file that must survive too). */
	assert_int_equal(mkdir(path, 0700), 0);
	assert_null(logsock_start(loop, path, 0600, (uid_t)-1, (gid_t)-1, on_line, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "is a directory"));
	assert_int_equal(rmdir(path), 0);
	f = fopen(target, "w");
	assert_non_null(f);
	fclose(f);
	assert_int_equal(symlink(target, path), 0);
	assert_null(logsock_start(loop, path, 0600, (uid_t)-1, (gid_t)-1, on_line, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "is a symbolic link"));
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(stat(target, &st), 0);
	assert_int_equal(unlink(path), 0);

	/* A socket left by an earlier run (nothing reads it): replaced. */
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	assert_true(fd >= 0);
	strcpy(sun.sun_path, path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	ls = logsock_start(loop, path, 0640, (uid_t)-1, (gid_t)-1, on_line, NULL, err, sizeof(err));
	assert_non_null(ls);
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0640);
	logsock_stop(ls);
	assert_int_equal(lstat(path, &st), -1);

	assert_int_equal(unlink(target), 0);
	assert_int_equal(rmdir(dir), 0);
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_all_delivered),
		cmocka_unit_test(test_fields),
		cmocka_unit_test(test_field_token_start),
		cmocka_unit_test(test_fields_in_one_pass),
		cmocka_unit_test(test_only_a_socket_is_replaced),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
