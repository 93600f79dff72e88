/*
 * policy: an immutable snapshot of the rules operators keep in SQL:
 * settings, tiers, users with their overrides, API keys and model prices.
 *
 * The store thread builds a fresh snapshot whenever the database changes
 * and hands it to the loop, which swaps it in whole: a decision always
 * sees one consistent set of rules. Limits of -1 mean unlimited.
 */
#ifndef TOKENGATE_POLICY_H
#define TOKENGATE_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "strmap.h"

#define POLICY_UNLIMITED (-1)
#define POLICY_UNSET (-2) /* in user overrides: use the tier's */

struct policy_limits {
	int64_t tokens;
	int64_t requests;
	int64_t cost_nano; /* USD x 1e9 */
};

struct policy_tier {
	struct policy_limits lim;
	bool over_budget_fallback;
	char name[];
};

struct policy_user {
	const struct policy_tier *tier;
	struct policy_limits override; /* fields POLICY_UNSET when not overridden */
	char id[];
};

struct policy_key {
	const struct policy_tier *tier; /* NULL: the user's tier */
	int64_t expires_at;             /* Unix time, 0 = never */
	bool revoked;
	char *user_id;
	char hmac[65];
};

struct policy_price {
	double in_nano_per_token;
	double out_nano_per_token;
	char model[];
};

struct policy {
	/* settings */
	char time_zone[64];
	long flush_interval_ms;
	long audit_retention_days;
	int64_t global_ceiling_nano; /* POLICY_UNLIMITED when none */
	bool global_ceiling_fallback;
	const struct policy_tier *unknown_key_tier; /* NULL: refuse with 401 */
	const struct policy_tier *default_tier;
	long default_max_tokens;
	long reservation_ttl_s;
	char fallback_text[512];
	char unknown_key_action[64]; /* "deny" or a tier name, as written */
	char default_tier_name[64];

	struct strmap tiers, users, keys, prices;
	const struct policy_price *default_price; /* model '*', or NULL */
};

/* A policy with built-in settings and one unlimited tier "default". */
struct policy *policy_new(void);
void policy_free(struct policy *p);

/* Builders, used by the store while loading (all copy their strings).
 * Each returns 0, or -1 with err set (unknown tier, bad value, no memory). */
int policy_set(struct policy *p, const char *name, const char *value, char *err, size_t errsz);
int policy_add_tier(struct policy *p, const char *name, struct policy_limits lim, bool fallback);
int policy_add_user(struct policy *p, const char *id, const char *tier, char *err, size_t errsz);
int policy_add_override(struct policy *p, const char *id, struct policy_limits lim);
int policy_add_key(struct policy *p, const char *hmac, const char *user_id, const char *tier,
		   int64_t expires_at, bool revoked);
int policy_add_price(struct policy *p, const char *model, double in_usd_per_million,
		     double out_usd_per_million);
/* Resolves settings that name tiers; call once after all rows are in. */
int policy_finish(struct policy *p, char *err, size_t errsz);

/* Lookups, on the loop thread. */
const struct policy_tier *policy_tier(const struct policy *p, const char *name);
/* The user's tier and effective limits: override, then tier, then the
 * default tier. tier_hint (from an API key) replaces the user's tier. */
const struct policy_tier *policy_limits_of(const struct policy *p, const char *user, size_t len,
					   const struct policy_tier *tier_hint,
					   struct policy_limits *out);
const struct policy_key *policy_key(const struct policy *p, const char *hmac_hex);
/* The model's price, the '*' price, or NULL (free). */
const struct policy_price *policy_price(const struct policy *p, const char *model, size_t len);

#endif
