/* ledger: counters and reservations (see ledger.h). */
#include "ledger.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"
#include "usermap.h"

/* A day's user entries are carved out of blocks that are freed together
 * with the day: an entry is never freed alone, and malloc's per-chunk
 * header and 16-byte rounding made up a fifth of an entry's memory. */
struct ledger_block {
	struct ledger_block *next;
	size_t used;
	max_align_t data[];
};

#define LEDGER_BLOCK_SIZE (256 * 1024)

struct ledger_day {
	bool used;
	int32_t day;
	char str[11];
	size_t open;
	struct usermap users;
	struct ledger_block *blocks; /* the newest first */
};

struct ledger {
	struct ledger_day days[LEDGER_DAYS];
	int today; /* index in days, -1 before the first set_today */
	int64_t today_cost;
	struct strmap resv;
	struct ledger_resv *oldest, *newest;
	/* Entries changed since the last flush, and since the last fold: the
	 * first is always part of the second (see mark_dirty). */
	struct dirty_list {
		struct ledger_usage **at;
		size_t n, cap;
	} flush, fold;
	/* Freed reservations, all of the largest size, kept for reuse: a
	 * request and its answer then cost no malloc at all. */
	struct ledger_resv *pool;
	size_t npool;
};

#define LEDGER_POOL_MAX 4096
#define RESV_SIZE (sizeof(struct ledger_resv) + LEDGER_UID_MAX + 1)

struct ledger *ledger_new(void)
{
	struct ledger *l = calloc(1, sizeof(*l));

	if (l)
		l->today = -1;
	return l;
}

static void day_free(struct ledger_day *d)
{
	while (d->blocks) {
		struct ledger_block *b = d->blocks;

		d->blocks = b->next;
		free(b);
	}
	usermap_clear(&d->users);
	memset(d, 0, sizeof(*d));
}

/* size zeroed bytes from the day's blocks, aligned for a ledger_usage. */
static void *day_alloc(struct ledger_day *d, size_t size)
{
	const size_t room = LEDGER_BLOCK_SIZE - offsetof(struct ledger_block, data);
	struct ledger_block *b = d->blocks;
	void *p;

	size = (size + _Alignof(struct ledger_usage) - 1) & ~(_Alignof(struct ledger_usage) - 1);
	if (!b || room - b->used < size) {
		b = malloc(LEDGER_BLOCK_SIZE);
		if (!b)
			return NULL;
		b->next = d->blocks;
		b->used = 0;
		d->blocks = b;
	}
	p = (char *)b->data + b->used;
	b->used += size;
	memset(p, 0, size);
	return p;
}

void ledger_free(struct ledger *l)
{
	if (!l)
		return;
	while (l->oldest)
		ledger_resv_free(l, ledger_take(l, l->oldest->uid, l->oldest->uid_len));
	strmap_clear(&l->resv);
	while (l->pool) {
		struct ledger_resv *r = l->pool;

		l->pool = r->next;
		free(r);
	}
	for (int i = 0; i < LEDGER_DAYS; i++)
		day_free(&l->days[i]);
	free(l->flush.at);
	free(l->fold.at);
	free(l);
}

static struct ledger_day *find_day(const struct ledger *l, int32_t day)
{
	for (int i = 0; i < LEDGER_DAYS; i++)
		if (l->days[i].used && l->days[i].day == day)
			return (struct ledger_day *)&l->days[i];
	return NULL;
}

int ledger_set_today(struct ledger *l, int32_t day, const char *str)
{
	struct ledger_day *d = find_day(l, day);

	if (!d) {
		ledger_evict(l);
		for (int i = 0; i < LEDGER_DAYS && !d; i++)
			if (!l->days[i].used)
				d = &l->days[i];
		if (!d)
			return -1;
		d->used = true;
		d->day = day;
		memcpy(d->str, str, 10);
		d->str[10] = '\0';
	}
	l->today = (int)(d - l->days);
	l->today_cost = 0;
	for (size_t i = 0; i < d->users.cap; i++) {
		const struct ledger_usage *u = usermap_at(&d->users, i);

		if (u)
			l->today_cost += u->cost_nano;
	}
	return 0;
}

int32_t ledger_today(const struct ledger *l)
{
	return l->today >= 0 ? l->days[l->today].day : -1;
}

const char *ledger_day_str(const struct ledger *l, int32_t day)
{
	const struct ledger_day *d = find_day(l, day);

	return d ? d->str : NULL;
}

struct ledger_usage *ledger_user(struct ledger *l, const char *user, size_t len, bool create)
{
	struct ledger_day *d;
	struct ledger_usage *u;
	uint32_t hash;

	if (l->today < 0 || len > LEDGER_USER_MAX)
		return NULL;
	d = &l->days[l->today];
	hash = strmap_hash(user, len);
	u = usermap_get(&d->users, user, len, hash);
	if (u || !create)
		return u;
	u = day_alloc(d, sizeof(*u) + len + 1);
	if (!u)
		return NULL;
	u->day = d->day;
	u->len = (uint8_t)len;
	memcpy(u->user, user, len);
	/* On failure the entry's bytes stay in the block until the day goes. */
	if (usermap_add(&d->users, u, hash) == -1)
		return NULL;
	return u;
}

static bool list_add(struct dirty_list *dl, struct ledger_usage *u)
{
	if (dl->n == dl->cap) {
		size_t cap = dl->cap ? dl->cap * 2 : 1024;
		struct ledger_usage **nd = realloc(dl->at, cap * sizeof(*nd));

		if (!nd)
			return false;
		dl->at = nd;
		dl->cap = cap;
	}
	dl->at[dl->n++] = u;
	return true;
}

/* The fold list first: an entry journaled by a flush but missing from the
 * next fold would leave daily_usage behind once that fold empties the
 * journal. Out of memory, the entry stays clean in the lists' eyes and the
 * next change retries. */
static void mark_dirty(struct ledger *l, struct ledger_usage *u)
{
	if (!(u->dirty & LEDGER_DIRTY_FOLD)) {
		if (!list_add(&l->fold, u))
			return;
		u->dirty |= LEDGER_DIRTY_FOLD;
	}
	if (!(u->dirty & LEDGER_DIRTY_FLUSH) && list_add(&l->flush, u))
		u->dirty |= LEDGER_DIRTY_FLUSH;
}

void ledger_charge(struct ledger *l, struct ledger_usage *u, int64_t d_in, int64_t d_out,
		   int64_t d_cost, int d_requests, int d_denials, int d_fallbacks)
{
	u->tokens_in += d_in;
	u->tokens_out += d_out;
	u->cost_nano += d_cost;
	u->requests += (uint32_t)d_requests;
	u->denials += (uint32_t)d_denials;
	u->fallbacks += (uint32_t)d_fallbacks;
	if (l->today >= 0 && u->day == l->days[l->today].day)
		l->today_cost += d_cost;
	mark_dirty(l, u);
}

int64_t ledger_today_cost(const struct ledger *l)
{
	return l->today_cost;
}

int ledger_load(struct ledger *l, const char *user, int64_t tokens_in, int64_t tokens_out,
		int64_t requests, int64_t cost_nano, int64_t denials, int64_t fallbacks)
{
	struct ledger_usage *u = ledger_user(l, user, strlen(user), true);

	if (!u)
		return -1;
	l->today_cost += cost_nano - u->cost_nano;
	u->tokens_in = tokens_in;
	u->tokens_out = tokens_out;
	u->requests = (uint32_t)requests;
	u->cost_nano = cost_nano;
	u->denials = (uint32_t)denials;
	u->fallbacks = (uint32_t)fallbacks;
	return 0;
}

struct ledger_resv *ledger_reserve(struct ledger *l, struct ledger_usage *u, const char *uid,
				   size_t uid_len, double now)
{
	struct ledger_resv *r;
	struct ledger_day *d;

	if (uid_len == 0 || uid_len > LEDGER_UID_MAX || strmap_get(&l->resv, uid, uid_len))
		return NULL;
	if (l->pool) {
		r = l->pool;
		l->pool = r->next;
		l->npool--;
	} else {
		r = malloc(RESV_SIZE);
		if (!r)
			return NULL;
	}
	memset(r, 0, offsetof(struct ledger_resv, model));
	r->model[0] = r->route[0] = r->provider[0] = '\0';
	r->probe = false;
	r->log_mode = 0;
	r->prompt = NULL;
	r->prompt_bytes = 0;
	r->u = u;
	r->created = now;
	r->uid_len = (uint16_t)uid_len;
	memcpy(r->uid, uid, uid_len);
	r->uid[uid_len] = '\0';
	if (strmap_put(&l->resv, r->uid, uid_len, r) == -1) {
		free(r);
		return NULL;
	}
	r->prev = l->newest;
	if (l->newest)
		l->newest->next = r;
	else
		l->oldest = r;
	l->newest = r;
	u->open++;
	d = find_day(l, u->day);
	if (d)
		d->open++;
	return r;
}

static void unlink_resv(struct ledger *l, struct ledger_resv *r)
{
	struct ledger_day *d = find_day(l, r->u->day);

	strmap_del(&l->resv, r->uid, r->uid_len);
	if (r->prev)
		r->prev->next = r->next;
	else
		l->oldest = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		l->newest = r->prev;
	r->prev = r->next = NULL;
	r->u->open--;
	if (d)
		d->open--;
}

const struct ledger_resv *ledger_find(const struct ledger *l, const char *uid, size_t uid_len)
{
	return strmap_get(&l->resv, uid, uid_len);
}

struct ledger_resv *ledger_take(struct ledger *l, const char *uid, size_t uid_len)
{
	struct ledger_resv *r = strmap_get(&l->resv, uid, uid_len);

	if (r)
		unlink_resv(l, r);
	return r;
}

struct ledger_resv *ledger_take_expired(struct ledger *l, double before)
{
	struct ledger_resv *r = l->oldest;

	if (!r || r->created >= before)
		return NULL;
	unlink_resv(l, r);
	return r;
}

void ledger_resv_free(struct ledger *l, struct ledger_resv *r)
{
	if (!r)
		return;
	free(r->prompt);
	r->prompt = NULL;
	if (l->npool >= LEDGER_POOL_MAX) {
		free(r);
		return;
	}
	r->next = l->pool;
	l->pool = r;
	l->npool++;
}

size_t ledger_open_count(const struct ledger *l)
{
	return l->resv.count;
}

size_t ledger_user_count(const struct ledger *l)
{
	size_t n = 0;

	for (int i = 0; i < LEDGER_DAYS; i++)
		if (l->days[i].used)
			n += l->days[i].users.count;
	return n;
}

/* Drops the entries no longer dirty at `bit` from dl, keeping the order. */
static void list_compact(struct dirty_list *dl, uint8_t bit)
{
	size_t kept = 0;

	for (size_t i = 0; i < dl->n; i++)
		if (dl->at[i]->dirty & bit)
			dl->at[kept++] = dl->at[i];
	dl->n = kept;
}

void ledger_flush_dirty(struct ledger *l, bool fold, bool (*fn)(const struct ledger_usage *u, void *arg),
			void *arg)
{
	struct dirty_list *dl = fold ? &l->fold : &l->flush;
	uint8_t clean = fold ? LEDGER_DIRTY_FLUSH | LEDGER_DIRTY_FOLD : LEDGER_DIRTY_FLUSH;

	for (size_t i = 0; i < dl->n; i++)
		if (fn(dl->at[i], arg))
			dl->at[i]->dirty &= (uint8_t)~clean;
	list_compact(dl, fold ? LEDGER_DIRTY_FOLD : LEDGER_DIRTY_FLUSH);
	if (fold)
		list_compact(&l->flush, LEDGER_DIRTY_FLUSH);
}

size_t ledger_dirty_count(const struct ledger *l, bool fold)
{
	return fold ? l->fold.n : l->flush.n;
}

size_t ledger_mark_all_dirty(struct ledger *l)
{
	for (int i = 0; i < LEDGER_DAYS; i++) {
		struct ledger_day *d = &l->days[i];

		if (!d->used)
			continue;
		for (size_t k = 0; k < d->users.cap; k++) {
			struct ledger_usage *u = usermap_at(&d->users, k);

			if (u)
				mark_dirty(l, u);
		}
	}
	return l->fold.n;
}

void ledger_evict(struct ledger *l)
{
	for (int i = 0; i < LEDGER_DAYS; i++) {
		struct ledger_day *d = &l->days[i];
		bool dirty = false;

		if (!d->used || i == l->today || d->open > 0)
			continue;
		for (size_t k = 0; k < l->fold.n && !dirty; k++)
			dirty = l->fold.at[k]->day == d->day;
		if (!dirty)
			day_free(d);
	}
}

void ledger_each_today(const struct ledger *l, void (*fn)(const struct ledger_usage *u, void *arg), void *arg)
{
	const struct ledger_day *d;

	if (l->today < 0)
		return;
	d = &l->days[l->today];
	for (size_t i = 0; i < d->users.cap; i++) {
		const struct ledger_usage *u = usermap_at(&d->users, i);

		if (u)
			fn(u, arg);
	}
}
