/*
 * libFuzzer target: the usage journal's decoder, which reads blobs back
 * from the database at start (journal_decode). Must never read out of
 * bounds or crash; must refuse a blob whole (fn never called) or hand out
 * rows that satisfy the format; and since the encoding is canonical, the
 * rows of any blob it accepts must encode back to the very same bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct replay {
	const uint8_t *data;
	size_t size;
	struct batch *b;
	long calls;
	int oom;
};

static int valid_row(const struct journal_row *r, const struct replay *rp)
{
	uintptr_t u = (uintptr_t)r->user, lo = (uintptr_t)rp->data, hi = lo + rp->size;

	if (r->user_len < 1 || r->user_len > LEDGER_USER_MAX)
		return 0;
	/* The user is a view into the blob, not a copy: inside it, whole. */
	if (u < lo || u > hi || r->user_len > hi - u)
		return 0;
	if (memchr(r->user, '\0', r->user_len) || strnlen(r->day, sizeof(r->day)) != 10)
		return 0;
	return 1;
}

static void add_row(const struct journal_row *r, void *arg)
{
	struct replay *rp = arg;
	struct batch_usage *u;

	rp->calls++;
	if (!valid_row(r, rp))
		abort();
	if (rp->oom)
		return;
	u = batch_add_usage(rp->b, r->day, r->user, r->user_len);
	if (!u) {
		rp->oom = 1;
		return;
	}
	u->tokens_in = r->tokens_in;
	u->tokens_out = r->tokens_out;
	u->cost_nano = r->cost_nano;
	u->requests = r->requests;
	u->denials = r->denials;
	u->fallbacks = r->fallbacks;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct replay rp = {.data = data, .size = size};
	struct journal_buf out = {0};
	long n;

	/* An exact-size copy: a read one past the input is caught even when
	 * the harness hands a buffer with room after it. */
	uint8_t *copy = malloc(size ? size : 1);

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	rp.data = copy;
	rp.b = batch_new();
	if (!rp.b) {
		free(copy);
		return 0;
	}
	n = journal_decode(copy, size, add_row, &rp);
	if (n == -1 ? rp.calls != 0 : n != rp.calls)
		abort();
	/* Out of memory (-1) proves nothing; any other count must be every
	 * row, encoded to the same bytes. */
	if (n >= 0 && !rp.oom) {
		long m = journal_encode(rp.b, &out);

		if (m != -1 && (m != n || out.len != size || memcmp(out.p, copy, size) != 0))
			abort();
	}
	free(out.p);
	batch_free(rp.b);
	free(copy);
	return 0;
}
