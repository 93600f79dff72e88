/*
 * libFuzzer target: what the agent parses from outside besides SPOP frames:
 * HAProxy's log lines (logsock_field, logsock_int, logsock_base64) and
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const keys[] = {"id", "be", "st", "tsc", "pst", "pt", "ct", "sm", "ra", "out", "outh"};
	char *line = malloc(size ? size : 1);
	unsigned char out[64];
	struct config c;
	char err[256];

	if (!line)
		return 0;
	memcpy(line, data, size);
	/* The log line, exactly as received (no NUL inside the bound). */
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		const char *v;
		long n = logsock_field(line, size, keys[i], &v);

		if (n >= 0 && (v < line || v + n > line + size))
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
