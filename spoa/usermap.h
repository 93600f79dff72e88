/*
 * usermap: a day's user entries (struct ledger_usage) by user name, for
 * the ledger.
 *
 * A strmap slot is 24 bytes: at 100,000 users its table is 6 MB, out of
 * cache, and a lookup misses twice, on the slot and on the entry whose
 * key it compares. Here a slot is one 8-byte word, the entry's address
 * with 16 bits of the key's hash (a tag) above it: 2 MB at 100,000 users,
 * which mostly stays in cache, and an entry is read only when its tag
 * matches, which is nearly always the entry sought (its counters are
 * used right after, so that read is not an extra miss).
 *
 * The map does not own the entries (the ledger's day blocks do). There
 * is no delete: a day's entries go all together (usermap_clear).
 */
#ifndef TOKENGATE_USERMAP_H
#define TOKENGATE_USERMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ledger_usage;

struct usermap {
	uint64_t *slots; /* 0 = empty; see usermap.c */
	size_t cap;      /* power of two, or 0 */
	size_t count;
	/* Entries whose address does not fit under the tag (none on Linux
	 * x86-64 or aarch64 without pointer tagging), reached by index. */
	struct ledger_usage **wide;
	size_t nwide, wide_cap;
	bool force_wide; /* tests: add entries as if their address did not fit */
};

/* An empty map needs no allocation: `struct usermap m = {0};`. `hash` is
 * always strmap_hash(user, len): the caller computes it once for a
 * lookup and the add that may follow. */
struct ledger_usage *usermap_get(const struct usermap *m, const char *user, size_t len, uint32_t hash);

/* Adds u, keyed by u->user and u->len, which must not be in the map yet.
 * Returns 0, or -1 on allocation failure (the map is unchanged). */
int usermap_add(struct usermap *m, struct ledger_usage *u, uint32_t hash);

/* The entry in slot i (i < m->cap), or NULL: for walking every entry. */
struct ledger_usage *usermap_at(const struct usermap *m, size_t i);

/* Frees the slots (not the entries). */
void usermap_clear(struct usermap *m);

#endif
