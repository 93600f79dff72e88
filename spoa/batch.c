/* batch: rows for the store (see batch.h). */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "strmap.h"

struct batch *batch_new(void)
{
	return calloc(1, sizeof(struct batch));
}

static void free_prompts(struct batch *b)
{
	for (size_t i = 0; i < b->nprompts; i++) {
		free(b->prompts[i].prompt);
		free(b->prompts[i].output);
	}
	b->nprompts = 0;
}

/* An array this big is given back on reset rather than kept: a batch is
 * reused so that the loop does not fault in fresh pages every flush, but
 * one that grew while the writer stalled would otherwise keep that memory
 * for good (RSS ratcheting up with the worst stall). 4 MB is about 8,000
 * audit rows, 80,000 requests/s at the 100 ms flush. */
#define BATCH_KEEP_BYTES ((size_t)4 << 20)

void batch_reset(struct batch *b)
{
	free_prompts(b);
	if (b->usage_cap * sizeof(*b->usage) > BATCH_KEEP_BYTES) {
		free(b->usage);
		b->usage = NULL;
		b->usage_cap = 0;
	}
	if (b->audit_cap * sizeof(*b->audit) > BATCH_KEEP_BYTES) {
		free(b->audit);
		b->audit = NULL;
		b->audit_cap = 0;
	}
	if (b->prompts_cap * sizeof(*b->prompts) > BATCH_KEEP_BYTES) {
		free(b->prompts);
		b->prompts = NULL;
		b->prompts_cap = 0;
	}
	if (b->keys_cap > BATCH_KEEP_BYTES) {
		free(b->keys);
		b->keys = NULL;
		b->keys_cap = 0;
	}
	b->nusage = b->naudit = b->nhealth = 0;
	b->keys_len = 0;
	b->current_day[0] = '\0';
	b->fold = false;
	b->next = NULL;
}

void batch_free(struct batch *b)
{
	if (!b)
		return;
	free_prompts(b);
	free(b->usage);
	free(b->audit);
	free(b->health);
	free(b->prompts);
	free(b->keys);
	free(b);
}

static void *grow(void *arr, size_t *cap, size_t n, size_t elem)
{
	size_t ncap;
	void *na;

	if (n < *cap)
		return arr;
	ncap = *cap ? *cap * 2 : 256;
	na = realloc(arr, ncap * elem);
	if (na)
		*cap = ncap;
	return na;
}

#define DAY_LEN 10

/* Room for n more key bytes. */
static int reserve_keys(struct batch *b, size_t n)
{
	size_t cap = b->keys_cap ? b->keys_cap : 4096;
	char *nk;

	if (b->keys_len + n <= b->keys_cap)
		return 0;
	while (cap < b->keys_len + n)
		cap *= 2;
	nk = realloc(b->keys, cap);
	if (!nk)
		return -1;
	b->keys = nk;
	b->keys_cap = cap;
	return 0;
}

struct batch_usage *batch_add_usage(struct batch *b, const char *day, const char *user, size_t len)
{
	struct batch_usage *na, *u;

	if (len > LEDGER_USER_MAX || reserve_keys(b, DAY_LEN + len + 1) == -1)
		return NULL;
	na = grow(b->usage, &b->usage_cap, b->nusage, sizeof(*na));
	if (!na)
		return NULL;
	b->usage = na;
	u = &na[b->nusage++];
	memset(u, 0, sizeof(*u));
	memcpy(u->day, day, DAY_LEN);
	u->day[DAY_LEN] = '\0';
	u->key_off = (uint32_t)b->keys_len;
	u->user_len = (uint8_t)len;
	memcpy(b->keys + b->keys_len, day, DAY_LEN);
	memcpy(b->keys + b->keys_len + DAY_LEN, user, len);
	b->keys[b->keys_len + DAY_LEN + len] = '\0';
	b->keys_len += DAY_LEN + len + 1;
	return u;
}

const char *batch_usage_user(const struct batch *b, const struct batch_usage *u)
{
	return b->keys + u->key_off + DAY_LEN;
}

static int cmp_usage(const void *x, const void *y, void *arg)
{
	const struct batch *b = arg;
	const struct batch_usage *ux = x, *uy = y;
	size_t lx = DAY_LEN + ux->user_len, ly = DAY_LEN + uy->user_len;
	int c = memcmp(b->keys + ux->key_off, b->keys + uy->key_off, lx < ly ? lx : ly);

	/* The day has a fixed length, so a byte order on day + user is the
	 * order on (day, user): memcmp, then the shorter first. */
	return c ? c : (lx > ly) - (lx < ly);
}

void batch_sort_usage(struct batch *b)
{
	if (b->nusage > 1)
		qsort_r(b->usage, b->nusage, sizeof(b->usage[0]), cmp_usage, b);
}

struct batch_audit *batch_add_audit(struct batch *b)
{
	struct batch_audit *na = grow(b->audit, &b->audit_cap, b->naudit, sizeof(*na));

	if (!na)
		return NULL;
	b->audit = na;
	memset(&na[b->naudit], 0, sizeof(*na));
	return &na[b->naudit++];
}

struct batch_health *batch_add_health(struct batch *b)
{
	struct batch_health *na = grow(b->health, &b->health_cap, b->nhealth, sizeof(*na));

	if (!na)
		return NULL;
	b->health = na;
	memset(&na[b->nhealth], 0, sizeof(*na));
	return &na[b->nhealth++];
}

struct batch_prompt *batch_add_prompt(struct batch *b)
{
	struct batch_prompt *na = grow(b->prompts, &b->prompts_cap, b->nprompts, sizeof(*na));

	if (!na)
		return NULL;
	b->prompts = na;
	memset(&na[b->nprompts], 0, sizeof(*na));
	return &na[b->nprompts++];
}

int batch_merge(struct batch *dst, struct batch *src)
{
	struct strmap index = {0};

	/* Room first: the index points into dst->usage and dst->keys, which
	 * must not move. */
	if (dst->usage_cap < dst->nusage + src->nusage) {
		size_t cap = dst->nusage + src->nusage;
		struct batch_usage *nu = realloc(dst->usage, cap * sizeof(*nu));

		if (!nu)
			return -1;
		dst->usage = nu;
		dst->usage_cap = cap;
	}
	if (reserve_keys(dst, src->keys_len) == -1)
		return -1;
	/* Index dst's user-days so that src's newer values replace them. */
	for (size_t i = 0; i < dst->nusage; i++)
		if (strmap_put(&index, dst->keys + dst->usage[i].key_off, DAY_LEN + dst->usage[i].user_len,
			       &dst->usage[i]) == -1)
			goto fail;
	for (size_t i = 0; i < src->nusage; i++) {
		const struct batch_usage *s = &src->usage[i];
		struct batch_usage *d = strmap_get(&index, src->keys + s->key_off, DAY_LEN + s->user_len);
		uint32_t off;

		if (!d) {
			d = batch_add_usage(dst, s->day, batch_usage_user(src, s), s->user_len);
			if (!d)
				goto fail;
		}
		off = d->key_off;
		*d = *s;
		d->key_off = off;
	}
	for (size_t i = 0; i < src->naudit; i++) {
		struct batch_audit *a = batch_add_audit(dst);

		if (!a)
			goto fail;
		*a = src->audit[i];
	}
	/* Prompt rows move with their strings. */
	for (size_t i = 0; i < src->nprompts; i++) {
		struct batch_prompt *pr = batch_add_prompt(dst);

		if (!pr)
			goto fail;
		*pr = src->prompts[i];
		src->prompts[i].prompt = src->prompts[i].output = NULL;
	}
	/* Health rows are upserted in order: the newest wins. */
	for (size_t i = 0; i < src->nhealth; i++) {
		struct batch_health *h = batch_add_health(dst);

		if (!h)
			goto fail;
		*h = src->health[i];
	}
	if (src->current_day[0])
		memcpy(dst->current_day, src->current_day, sizeof(dst->current_day));
	/* A fold's rows are every user-day changed since the fold before: with
	 * the newer rows merged in, still a superset of everything journaled. */
	dst->fold = dst->fold || src->fold;
	strmap_clear(&index);
	batch_free(src);
	return 0;
fail:
	strmap_clear(&index);
	return -1;
}

void batch_copy(char *dst, size_t size, const char *src, size_t len)
{
	if (len >= size)
		len = size - 1;
	if (len)
		memcpy(dst, src, len);
	dst[len] = '\0';
}
