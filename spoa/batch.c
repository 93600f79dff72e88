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

void batch_reset(struct batch *b)
{
	free_prompts(b);
	b->nusage = b->naudit = b->nhealth = 0;
	b->current_day[0] = '\0';
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

struct batch_usage *batch_add_usage(struct batch *b)
{
	struct batch_usage *na = grow(b->usage, &b->usage_cap, b->nusage, sizeof(*na));

	if (!na)
		return NULL;
	b->usage = na;
	memset(&na[b->nusage], 0, sizeof(*na));
	return &na[b->nusage++];
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
	char key[11 + LEDGER_USER_MAX + 2];

	/* Room first: the index points into dst->usage, which must not move. */
	if (dst->usage_cap < dst->nusage + src->nusage) {
		size_t cap = dst->nusage + src->nusage;
		struct batch_usage *nu = realloc(dst->usage, cap * sizeof(*nu));

		if (!nu)
			return -1;
		dst->usage = nu;
		dst->usage_cap = cap;
	}
	/* Index dst's user-days so that src's newer values replace them. */
	for (size_t i = 0; i < dst->nusage; i++)
		if (strmap_put(&index, (const char *)&dst->usage[i], sizeof(dst->usage[i].day) + strlen(dst->usage[i].user),
			       &dst->usage[i]) == -1)
			goto fail;
	for (size_t i = 0; i < src->nusage; i++) {
		const struct batch_usage *s = &src->usage[i];
		struct batch_usage *d;
		size_t klen = sizeof(s->day) + strlen(s->user);

		memcpy(key, s, klen);
		d = strmap_get(&index, key, klen);
		if (!d) {
			d = batch_add_usage(dst);
			if (!d)
				goto fail;
		}
		*d = *s;
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
