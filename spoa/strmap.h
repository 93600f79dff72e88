/*
 * strmap: an open-addressing hash map from byte strings to pointers.
 *
 * The map does not own keys or values: a key is borrowed from its value
 * (e.g. a flexible array member) and must live as long as the entry. One
 * slot is 24 bytes; the table stays at most half full, so a million
 * entries cost about 48 MB of slots at worst and usually less.
 */
#ifndef TOKENGATE_STRMAP_H
#define TOKENGATE_STRMAP_H

#include <stddef.h>
#include <stdint.h>

struct strmap_slot {
	const char *key; /* NULL = empty */
	void *val;
	uint32_t hash;
	uint32_t klen;
};

struct strmap {
	struct strmap_slot *slots;
	size_t cap; /* power of two, or 0 */
	size_t count;
};

/* A multiply-xorshift hash taking 8 bytes per step, with a final
 * avalanche so that the low bits (the slot index) depend on every byte.
 * FNV-1a's byte at a time was most of a lookup's cost: every request
 * hashes its user, its unique-id several times, its model and provider.
 * Like FNV-1a it is not keyed: the keys come from HAProxy (unique-ids) and
 * the authentication layer in front of it, not from arbitrary clients. */
uint32_t strmap_hash(const char *key, size_t len);

/* An empty map needs no allocation: `struct strmap m = {0};`. */
void *strmap_get(const struct strmap *m, const char *key, size_t len);

/* Inserts or replaces. Returns 0, or -1 on allocation failure (the map is
 * unchanged). */
int strmap_put(struct strmap *m, const char *key, size_t len, void *val);

/* Removes the entry; returns its value or NULL. */
void *strmap_del(struct strmap *m, const char *key, size_t len);

/* Calls fn on every value (order unspecified). fn must not modify m. */
void strmap_each(const struct strmap *m, void (*fn)(void *val, void *arg), void *arg);

/* Frees the slots (not the values). */
void strmap_clear(struct strmap *m);

#endif
