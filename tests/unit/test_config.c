/*
 * Unit tests of the config file reader (config_load_stream, the parser
 * config_load_file runs on a file): the forms it accepts (comments, blank
 * lines, CRLF, quotes, dashes, a last line without newline, a line of
 * exactly CONFIG_LINE_MAX bytes), and the regressions the fuzz target
 * found or that reading it showed: a short line holding a NUL byte was
 * reported as "line too long"; a file that cannot be read (a directory)
 * loaded as an empty one. And admin_token's bounds (test_admin_token).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"

/* Loads the len bytes at text into c, from defaults; returns the result. */
static int load(struct config *c, const char *text, size_t len, char *err, size_t errsz)
{
	FILE *f = fmemopen((void *)text, len, "r");
	int rc;

	assert_non_null(f);
	config_defaults(c);
	err[0] = '\0';
	rc = config_load_stream(c, f, "t.conf", err, errsz);
	fclose(f);
	return rc;
}

static int load_str(struct config *c, const char *text, char *err, size_t errsz)
{
	return load(c, text, strlen(text), err, errsz);
}

static void test_forms(void **state)
{
	static const char text[] = "# comment\n"
				   "\n"
				   "  \t  \n"
				   "  max-connections =  12  \r\n"
				   "admin_token = \"  two spaces  \"\n"
				   "unix_socket_mode = 0600\n"
				   "audit_log = off\n"
				   "idle_timeout_ms = 0"; /* no final newline */
	struct config c;
	char err[512];

	(void)state;
	assert_int_equal(load(&c, text, sizeof(text) - 1, err, sizeof(err)), 0);
	assert_int_equal(c.max_connections, 12);
	assert_string_equal(c.admin_token, "  two spaces  ");
	assert_int_equal(c.unix_socket_mode, 0600);
	assert_false(c.audit_log);
	assert_int_equal(c.idle_timeout_ms, 0);
	assert_int_equal(config_check_bounds(&c, err, sizeof(err)), 0);
}

static void test_errors_name_the_line(void **state)
{
	struct config c;
	char err[512];

	(void)state;
	assert_int_equal(load_str(&c, "max_connections = 3\n\nno_such = 1\n", err, sizeof(err)), -1);
	assert_string_equal(err, "t.conf:3: no_such: unknown configuration key");
	/* What came before the bad line stays set, within its bounds. */
	assert_int_equal(c.max_connections, 3);
	assert_int_equal(load_str(&c, "listen 127.0.0.1:0\n", err, sizeof(err)), -1);
	assert_string_equal(err, "t.conf:1: expected key = value");
	assert_int_equal(load_str(&c, "idle_timeout_ms = -5\n", err, sizeof(err)), -1);
	assert_string_equal(err, "t.conf:1: idle_timeout_ms: -5 is outside [0, 86400000]");
}

/* Regression (fuzz_config): "log_level = info\0 = x" is 22 bytes, but the
 * old fgets() reader looked for its newline with strchr(), stopped at the
 * NUL and called the line too long. */
static void test_nul_byte(void **state)
{
	static const char text[] = "listen = 127.0.0.1:0\nlog_level = info\0 = x\n";
	struct config c;
	char err[512];

	(void)state;
	assert_int_equal(load(&c, text, sizeof(text) - 1, err, sizeof(err)), -1);
	assert_string_equal(err, "t.conf:2: NUL byte in line");
}

static void test_line_length_bound(void **state)
{
	char text[CONFIG_LINE_MAX + 8];
	struct config c;
	char err[512];
	size_t n;

	(void)state;
	/* A comment of exactly CONFIG_LINE_MAX bytes, with or without a
	 * newline after it, is a line like any other... */
	memset(text, ' ', sizeof(text));
	text[0] = '#';
	assert_int_equal(load(&c, text, CONFIG_LINE_MAX, err, sizeof(err)), 0);
	text[CONFIG_LINE_MAX] = '\n';
	assert_int_equal(load(&c, text, CONFIG_LINE_MAX + 1, err, sizeof(err)), 0);
	/* ...one byte more is refused, never read as two lines. */
	n = (size_t)snprintf(text, sizeof(text), "%s", "max_connections = 5");
	memset(text + n, ' ', sizeof(text) - n);
	assert_int_equal(load(&c, text, CONFIG_LINE_MAX + 1, err, sizeof(err)), -1);
	assert_string_equal(err, "t.conf:1: line too long");
	assert_int_equal(c.max_connections, 1024);
}

/* Regression: fopen() opens a directory, and the first read fails with
 * EISDIR, which the old reader took for the end of an empty file. */
static void test_unreadable_file(void **state)
{
	struct config c;
	char err[512];

	(void)state;
	config_defaults(&c);
	assert_int_equal(config_load_file(&c, "/", err, sizeof(err)), -1);
	assert_string_equal(err, "/: Is a directory");
}

/* The admin listener holds 255 bytes of token: a longer admin_token was
 * once cut to that silently, and then never matched. Both ways of giving
 * the token at once are refused. */
static void test_admin_token(void **state)
{
	char tok[300], err[512];
	struct config c;

	(void)state;
	config_defaults(&c);
	memset(tok, 't', sizeof(tok));
	tok[255] = '\0';
	assert_int_equal(config_set(&c, "admin_token", tok, err, sizeof(err)), 0);
	tok[255] = 't';
	tok[256] = '\0';
	assert_int_equal(config_set(&c, "admin_token", tok, err, sizeof(err)), -1);
	assert_string_equal(err, "admin_token: value longer than 255 bytes");
	assert_int_equal(config_validate(&c, err, sizeof(err)), 0);
	assert_int_equal(config_set(&c, "admin-token-file", "/etc/tokengate/admin.token", err, sizeof(err)), 0);
	assert_int_equal(config_validate(&c, err, sizeof(err)), -1);
	assert_string_equal(err, "admin_token_file: set together with admin_token; set one of them");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_forms),
		cmocka_unit_test(test_errors_name_the_line),
		cmocka_unit_test(test_nul_byte),
		cmocka_unit_test(test_line_length_bound),
		cmocka_unit_test(test_unreadable_file),
		cmocka_unit_test(test_admin_token),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
