/*
 * Unit tests of tokenfile_read (admin_token_file): the first line with its
 * trailing blanks removed, and everything it must refuse with a message
 * that names the file: group- or world-readable, not a regular file,
 * empty, a control character, longer than the caller holds (also when the
 * overlong part is only blanks, which must not be trimmed into a token).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tokenfile.h"

static char dir[] = "/tmp/tg-tokenfile.XXXXXX";
static char path[64];

/* Writes len bytes of text to path with mode; returns path. */
static const char *put(const char *text, size_t len, mode_t mode)
{
	FILE *f;

	snprintf(path, sizeof(path), "%s/token", dir);
	unlink(path);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

static int rd(const char *text, mode_t mode, char *out, size_t outsz, char *err, size_t errsz)
{
	err[0] = '\0';
	return tokenfile_read("admin_token_file", put(text, strlen(text), mode), out, outsz, err, errsz);
}

static void test_first_line(void **state)
{
	char out[256], err[512];

	(void)state;
	assert_int_equal(rd("s3cret-token \t\r\nsecond line\n", 0600, out, sizeof(out), err, sizeof(err)), 0);
	assert_string_equal(out, "s3cret-token");
	assert_int_equal(rd("no-newline", 0400, out, sizeof(out), err, sizeof(err)), 0);
	assert_string_equal(out, "no-newline");
	/* Inner blanks are part of it; leading ones too. */
	assert_int_equal(rd(" a b\n", 0600, out, sizeof(out), err, sizeof(err)), 0);
	assert_string_equal(out, " a b");
}

static void test_refused(void **state)
{
	char out[256], err[512], want[600];

	(void)state;
	assert_int_equal(rd("tok\n", 0644, out, sizeof(out), err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "admin_token_file %s: readable or writable by group or others (mode 644); chmod 600 it",
		 path);
	assert_string_equal(err, want);
	assert_string_equal(out, "");
	assert_int_equal(rd("tok\n", 0620, out, sizeof(out), err, sizeof(err)), -1);
	assert_non_null(strstr(err, "(mode 620)"));
	assert_int_equal(rd("", 0600, out, sizeof(out), err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "admin_token_file %s: empty (the token is the file's first line)", path);
	assert_string_equal(err, want);
	assert_int_equal(rd(" \r\n", 0600, out, sizeof(out), err, sizeof(err)), -1);
	assert_string_equal(err, want);
	assert_int_equal(rd("~^\x01~\n", 0600, out, sizeof(out), err, sizeof(err)), -1);
	assert_non_null(strstr(err, ": the token holds a control character (byte 3)"));
	assert_null(strstr(err, "~^")); /* never the token itself */
	assert_int_equal(tokenfile_read("admin_token_file", dir, out, sizeof(out), err, sizeof(err)), -1);
	assert_non_null(strstr(err, ": not a regular file"));
	assert_int_equal(tokenfile_read("admin_token_file", "/nonexistent/t", out, sizeof(out), err, sizeof(err)), -1);
	assert_string_equal(err, "admin_token_file /nonexistent/t: No such file or directory");
}

static void test_length(void **state)
{
	char text[2048], out[256], err[512];

	(void)state;
	memset(text, 'k', sizeof(text));
	text[255] = '\n';
	assert_int_equal(tokenfile_read("k", put(text, 256, 0600), out, sizeof(out), err, sizeof(err)), 0);
	assert_int_equal(strlen(out), 255);
	text[255] = 'k';
	text[256] = '\n';
	assert_int_equal(tokenfile_read("k", put(text, 257, 0600), out, sizeof(out), err, sizeof(err)), -1);
	assert_non_null(strstr(err, ": the token is longer than 255 bytes"));
	/* 255 bytes, then 1,000 blanks on the same line, then more: the line
	 * does not end within what is read, so it is too long, not trimmed. */
	memset(text + 255, ' ', 1000);
	memcpy(text + 1255, "tail\n", 5);
	assert_int_equal(tokenfile_read("k", put(text, 1260, 0600), out, sizeof(out), err, sizeof(err)), -1);
	assert_non_null(strstr(err, ": the token is longer than 255 bytes"));
	assert_string_equal(out, "");
}

static int setup(void **state)
{
	(void)state;
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	return rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_first_line),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_length),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
