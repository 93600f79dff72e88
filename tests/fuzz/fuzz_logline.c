/*
 * libFuzzer target: what the agent parses from outside besides SPOP frames:
 * HAProxy's log lines (logsock_fields, logsock_int, logsock_base64) and
 * configuration text (config_set, key = value lines). Must never read out
 * of bounds, crash, or write past its buffers.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "logsock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The definition, one key at a time: the first "key=" at the start of the
 * line or after a space; its value runs to the next space. */
static long field_by_definition(const char *line, size_t len, const char *key, const char **val)
{
	size_t klen = strlen(key);

	for (size_t i = 0; i + klen < len; i++) {
		if ((i == 0 || line[i - 1] == ' ') && memcmp(line + i, key, klen) == 0 && line[i + klen] == '=') {
			const char *v = line + i + klen + 1, *sp = memchr(v, ' ', len - i - klen - 1);

			*val = v;
			return (long)((sp ? sp : line + len) - v);
		}
	}
	return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const keys[] = {"id", "be", "st", "tsc", "pst", "pt", "ct", "sm", "ra", "out", "outh"};
	enum { NKEYS = sizeof(keys) / sizeof(keys[0]) };
	struct logsock_val all[NKEYS];
	char *line = malloc(size ? size : 1);
	unsigned char out[64];
	struct config c;
	char err[256];

	if (!line)
		return 0;
	memcpy(line, data, size);
	/* The log line, exactly as received (no NUL inside the bound). All
	 * keys in one pass must find what the definition finds for each. */
	logsock_fields(line, size, keys, NKEYS, all);
	for (size_t i = 0; i < NKEYS; i++) {
		const char *v = NULL, *want = NULL;
		long n = logsock_field(line, size, keys[i], &v), wn = field_by_definition(line, size, keys[i], &want);

		if (n >= 0 && (v < line || v + n > line + size))
			abort();
		if (n != wn || all[i].len != wn || (wn >= 0 && (v != want || all[i].ptr != want)))
			abort();
		(void)logsock_int(line, size, keys[i], -1);
		if (n > 0 && logsock_base64(v, (size_t)n, out, sizeof(out)) > (long)sizeof(out))
			abort();
	}
	/* The same bytes as "key = value" configuration: split at the first
	 * '=' and hand both halves to the table. */
	config_defaults(&c);
	{
		char *text = malloc(size + 1), *eq;

		if (text) {
			memcpy(text, data, size);
			text[size] = '\0';
			eq = strchr(text, '=');
			if (eq) {
				*eq = '\0';
				(void)config_set(&c, text, eq + 1, err, sizeof(err));
				(void)config_validate(&c, err, sizeof(err));
			}
			free(text);
		}
	}
	free(line);
	return 0;
}
