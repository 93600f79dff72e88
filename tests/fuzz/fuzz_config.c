/*
 * libFuzzer target: the config file reader. The input is a config file's
 * contents, read through config_load_stream() from a FILE (fmemopen), the
 * code path config_load_file() takes for a real file. Aborts unless:
 *   - every integer, boolean and string is within its declared bounds
 *     afterwards, whether the load succeeded or not;
 *   - an error has a non-empty message "fuzz.conf:LINE: ..." whose LINE is
 *     a line of the input;
 *   - "line too long" names a line that is longer than CONFIG_LINE_MAX and
 *     a success means no line was (a long line must never be cut in two
 *     and read as two settings);
 *   - a line with a NUL byte is refused as such (C strings would read only
 *     its first part); "expected key = value" names a line without '=';
 *   - config_validate() on a loaded configuration fails only with a message.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define NAME "fuzz.conf"

#define CHECK(c)                                                                               \
	do {                                                                                   \
		if (!(c)) {                                                                    \
			fprintf(stderr, "fuzz_config: %s:%d: error: check failed: %s\n", __FILE__, \
				__LINE__, #c);                                                 \
			abort();                                                               \
		}                                                                              \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Line number lineno (from 1) of the input: its start and length, newline
 * excluded. False when the input has fewer lines. */
static int nth_line(const uint8_t *data, size_t size, unsigned long lineno, const uint8_t **start, size_t *len)
{
	size_t i = 0;

	for (unsigned long n = 1; n < lineno; n++) {
		const uint8_t *nl = memchr(data + i, '\n', size - i);

		if (!nl)
			return 0;
		i = (size_t)(nl - data) + 1;
	}
	if (i == size && lineno > 1)
		return 0; /* the input ends with the newline of the line before */
	*start = data + i;
	{
		const uint8_t *nl = memchr(data + i, '\n', size - i);

		*len = nl ? (size_t)(nl - *start) : size - i;
	}
	return 1;
}

static int longest_line(const uint8_t *data, size_t size)
{
	size_t longest = 0, cur = 0;

	for (size_t i = 0; i < size; i++) {
		if (data[i] == '\n') {
			cur = 0;
			continue;
		}
		if (++cur > longest)
			longest = cur;
	}
	return longest > CONFIG_LINE_MAX;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A copy of the exact size, so that ASan sees any read past it. */
	char *copy = malloc(size ? size : 1);
	struct config c;
	char err[512], why[512];
	FILE *f;
	int rc;

	if (!copy)
		return 0;
	if (size)
		memcpy(copy, data, size);
	/* glibc >= 2.22: size 0 is an empty file, NUL bytes are data. */
	f = fmemopen(copy, size, "r");
	if (!f) {
		free(copy);
		return 0;
	}
	config_defaults(&c);
	err[0] = '\0';
	rc = config_load_stream(&c, f, NAME, err, sizeof(err));
	fclose(f);

	CHECK(rc == 0 || rc == -1);
	if (config_check_bounds(&c, why, sizeof(why)) == -1) {
		fprintf(stderr, "fuzz_config: %s (load returned %d: %s)\n", why, rc, err);
		CHECK(!"a setting out of its bounds");
	}
	if (rc == 0) {
		CHECK(!longest_line(data, size));
		err[0] = '\0';
		if (config_validate(&c, err, sizeof(err)) == -1)
			CHECK(err[0] != '\0');
	} else {
		const uint8_t *line;
		unsigned long lineno;
		size_t len;
		char *end;

		CHECK(err[0] != '\0');
		CHECK(strncmp(err, NAME ":", sizeof(NAME)) == 0);
		lineno = strtoul(err + sizeof(NAME), &end, 10);
		CHECK(end > err + sizeof(NAME) && *end == ':');
		CHECK(nth_line(data, size, lineno, &line, &len));
		/* Whole-message comparisons: other messages quote the input,
		 * which may hold any of these words. */
		if (strcmp(end, ": line too long") == 0)
			CHECK(len > CONFIG_LINE_MAX);
		else
			CHECK(len <= CONFIG_LINE_MAX);
		if (strcmp(end, ": NUL byte in line") == 0)
			CHECK(memchr(line, '\0', len));
		else if (strcmp(end, ": line too long") != 0)
			CHECK(!memchr(line, '\0', len));
		if (strcmp(end, ": expected key = value") == 0)
			CHECK(!memchr(line, '=', len));
	}
	free(copy);
	return 0;
}
