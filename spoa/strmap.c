/* strmap: linear probing with backward-shift deletion (no tombstones, so
 * heavy churn of reservations never degrades lookups). */
#include "strmap.h"

#include <stdlib.h>
#include <string.h>

uint32_t strmap_hash(const char *key, size_t len)
{
	const uint64_t k = 0xff51afd7ed558ccdull;
	uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)len, w;

	for (; len >= 8; key += 8, len -= 8) {
		memcpy(&w, key, 8);
		h = (h ^ w) * k;
		h ^= h >> 32;
	}
	if (len > 0) {
		w = 0;
		for (size_t i = 0; i < len; i++)
			w |= (uint64_t)(uint8_t)key[i] << (8 * i);
		h = (h ^ w) * k;
		h ^= h >> 32;
	}
	/* MurmurHash3's fmix64. */
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return (uint32_t)h;
}

static size_t find(const struct strmap *m, const char *key, size_t len, uint32_t h)
{
	size_t mask = m->cap - 1, i = h & mask;

	for (;;) {
		const struct strmap_slot *s = &m->slots[i];

		if (!s->key)
			return i;
		if (s->hash == h && s->klen == len && memcmp(s->key, key, len) == 0)
			return i;
		i = (i + 1) & mask;
	}
}

void *strmap_get(const struct strmap *m, const char *key, size_t len)
{
	size_t i;

	if (m->count == 0)
		return NULL;
	i = find(m, key, len, strmap_hash(key, len));
	return m->slots[i].key ? m->slots[i].val : NULL;
}

static int grow(struct strmap *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 16;
	struct strmap_slot *old = m->slots, *ns = calloc(ncap, sizeof(*ns));
	size_t ocap = m->cap;

	if (!ns)
		return -1;
	m->slots = ns;
	m->cap = ncap;
	for (size_t i = 0; i < ocap; i++)
		if (old[i].key)
			m->slots[find(m, old[i].key, old[i].klen, old[i].hash)] = old[i];
	free(old);
	return 0;
}

int strmap_put(struct strmap *m, const char *key, size_t len, void *val)
{
	uint32_t h = strmap_hash(key, len);
	size_t i;

	if ((m->count + 1) * 2 > m->cap && grow(m) == -1)
		return -1;
	i = find(m, key, len, h);
	if (!m->slots[i].key)
		m->count++;
	m->slots[i] = (struct strmap_slot){.key = key, .val = val, .hash = h, .klen = (uint32_t)len};
	return 0;
}

void *strmap_del(struct strmap *m, const char *key, size_t len)
{
	size_t mask, i, j;
	void *val;

	if (m->count == 0)
		return NULL;
	mask = m->cap - 1;
	i = find(m, key, len, strmap_hash(key, len));
	if (!m->slots[i].key)
		return NULL;
	val = m->slots[i].val;
	/* Shift back the entries of the probe run that follows, so that no
	 * lookup ever stops early at the hole. */
	j = i;
	for (;;) {
		size_t home;

		j = (j + 1) & mask;
		if (!m->slots[j].key)
			break;
		home = m->slots[j].hash & mask;
		/* Move j into i unless its home lies cyclically in (i, j]. */
		if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
			m->slots[i] = m->slots[j];
			i = j;
		}
	}
	m->slots[i].key = NULL;
	m->count--;
	return val;
}

void strmap_each(const struct strmap *m, void (*fn)(void *val, void *arg), void *arg)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].key)
			fn(m->slots[i].val, arg);
}

void strmap_clear(struct strmap *m)
{
	free(m->slots);
	m->slots = NULL;
	m->cap = m->count = 0;
}
