/* usermap: linear probing over 8-byte slots (see usermap.h).
 *
 * A slot holds tag << 48 | address. User-space addresses fit in 48 bits
 * on Linux x86-64 and aarch64 (4-level page tables, no top-byte tags);
 * one that does not (5-level paging, aarch64 TBI/MTE tags) is kept in
 * m->wide and its slot holds NOTAG << 48 | its index there. NOTAG is
 * never a hash's tag, and such a slot is always compared by key: slower,
 * never wrong, and no entry is ever dropped.
 *
 * The slot index takes the hash's low bits and the tag its high 16, so
 * that the two overlap as little as a 32-bit hash allows (not at all up
 * to 65,536 slots, by 2 bits at 100,000 users). */
#include "usermap.h"

#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "strmap.h"

#define ADDR_BITS 48
#define ADDR_MASK ((UINT64_C(1) << ADDR_BITS) - 1)
#define NOTAG UINT64_C(0xffff)

_Static_assert(sizeof(uintptr_t) <= sizeof(uint64_t), "an address must fit in a slot");

static uint64_t tag_of(uint32_t hash)
{
	uint64_t tag = hash >> 16;

	return tag == NOTAG ? NOTAG - 1 : tag;
}

static struct ledger_usage *entry_of(const struct usermap *m, uint64_t s)
{
	if (s >> ADDR_BITS == NOTAG)
		return m->wide[s & ADDR_MASK];
	return (struct ledger_usage *)(uintptr_t)(s & ADDR_MASK);
}

struct ledger_usage *usermap_get(const struct usermap *m, const char *user, size_t len, uint32_t hash)
{
	uint64_t tag = tag_of(hash);
	size_t mask, i;

	if (m->count == 0)
		return NULL;
	mask = m->cap - 1;
	for (i = hash & mask;; i = (i + 1) & mask) {
		uint64_t s = m->slots[i];

		if (!s)
			return NULL;
		if (s >> ADDR_BITS == tag || s >> ADDR_BITS == NOTAG) {
			struct ledger_usage *u = entry_of(m, s);

			if (u->len == len && memcmp(u->user, user, len) == 0)
				return u;
		}
	}
}

static void place(uint64_t *slots, size_t mask, uint32_t hash, uint64_t s)
{
	size_t i = hash & mask;

	while (slots[i])
		i = (i + 1) & mask;
	slots[i] = s;
}

/* A slot keeps only 16 bits of its hash, so each entry's key is hashed
 * again to find its new place: growth reads every entry, which is
 * amortised over the inserts that filled the table. */
static int grow(struct usermap *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 16;
	uint64_t *ns = calloc(ncap, sizeof(*ns));

	if (!ns)
		return -1;
	for (size_t i = 0; i < m->cap; i++) {
		uint64_t s = m->slots[i];
		const struct ledger_usage *u;

		if (!s)
			continue;
		u = entry_of(m, s);
		place(ns, ncap - 1, strmap_hash(u->user, u->len), s);
	}
	free(m->slots);
	m->slots = ns;
	m->cap = ncap;
	return 0;
}

/* Slots and side array grow first, so that a failure changes nothing. */
int usermap_add(struct usermap *m, struct ledger_usage *u, uint32_t hash)
{
	uint64_t addr = (uintptr_t)u, s;

	if ((m->count + 1) * 2 > m->cap && grow(m) == -1)
		return -1;
	if (addr >> ADDR_BITS == 0 && !m->force_wide) {
		s = tag_of(hash) << ADDR_BITS | addr;
	} else {
		if (m->nwide == m->wide_cap) {
			size_t ncap = m->wide_cap ? m->wide_cap * 2 : 4;
			struct ledger_usage **nw = realloc(m->wide, ncap * sizeof(*nw));

			if (!nw)
				return -1;
			m->wide = nw;
			m->wide_cap = ncap;
		}
		s = NOTAG << ADDR_BITS | m->nwide;
		m->wide[m->nwide++] = u;
	}
	place(m->slots, m->cap - 1, hash, s);
	m->count++;
	return 0;
}

struct ledger_usage *usermap_at(const struct usermap *m, size_t i)
{
	return m->slots[i] ? entry_of(m, m->slots[i]) : NULL;
}

void usermap_clear(struct usermap *m)
{
	free(m->slots);
	free(m->wide);
	memset(m, 0, sizeof(*m));
}
