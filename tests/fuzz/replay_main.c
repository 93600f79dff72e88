/*
 * Replays fuzz corpora through the fuzz target as an ordinary test, so
 * that every input that ever mattered keeps being checked without clang.
 * Usage: fuzz_replay DIR... ; prints "N passed, N failed".
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	if (!f)
		return -1;
	if (fseek(f, 0, SEEK_END) == -1 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) == -1) {
		fclose(f);
		return -1;
	}
	buf = malloc((size_t)n + 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		fclose(f);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned passed = 0, failed = 0;

	for (int i = 1; i < argc; i++) {
		DIR *d = opendir(argv[i]);
		struct dirent *e;

		if (!d) {
			fprintf(stderr, "not ok - cannot open %s\n", argv[i]);
			failed++;
			continue;
		}
		while ((e = readdir(d))) {
			char path[4096];

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
			if (replay_file(path) == 0) {
				passed++;
			} else {
				printf("not ok - %s unreadable\n", path);
				failed++;
			}
		}
		closedir(d);
	}
	/* A crash never gets here: the runner counts it as a failure. */
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
