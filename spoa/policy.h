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

/* A provider: an HAProxy backend, and the thresholds of its breaker. */
struct policy_provider {
	bool enabled;
	int window_s;
	int min_requests;
	double error_rate;
	int consecutive_failures;
	int open_s;
	int half_open_probes;
	char name[];
};

enum policy_fallback { POLICY_FALLBACK_NONE = 0, POLICY_FALLBACK_BACKEND, POLICY_FALLBACK_STATIC, POLICY_FALLBACK_COMPUTED };

#define POLICY_CHAIN_MAX 8

/* A route: which requests, the ordered providers, and what to serve when
 * none of them can answer. */
struct policy_route {
	char *name;
	char *path_prefix;
	char *model_glob;
	int priority;
	long timeout_ms;
	enum policy_fallback fallback;
	char *fallback_backend;
	char *fallback_text;
	int fallback_max_bytes;
	enum policy_logging { POLICY_LOG_OFF = 0, POLICY_LOG_HASH, POLICY_LOG_REDACTED, POLICY_LOG_FULL } logging;
	int log_retention_days;
	int nchain;
	const struct policy_provider *chain[POLICY_CHAIN_MAX];
};

struct policy {
	/* settings */
	char time_zone[64];
	long flush_interval_ms;
	long daily_usage_interval_ms; /* daily_usage written this often, usage_journal between */
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

	struct strmap tiers, users, keys, prices, providers;
	const struct policy_price *default_price; /* model '*', or NULL */
	struct policy_route *routes; /* by priority, then name */
	int nroutes;
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
int policy_add_provider(struct policy *p, const char *name, bool enabled, int window_s, int min_requests,
			double error_rate, int consecutive_failures, int open_s, int half_open_probes);
/* Routes are added in priority order; links in chain order. */
int policy_add_route(struct policy *p, const char *name, const char *path_prefix, const char *model_glob,
		     int priority, long timeout_ms, const char *fallback, const char *fallback_backend,
		     const char *fallback_text, int fallback_max_bytes, char *err, size_t errsz);
/* Prompt logging of a route already added: "off", "hash", "redacted" or
 * "full", and its retention. */
int policy_set_route_logging(struct policy *p, const char *route, const char *mode, int retention_days);
const char *policy_logging_str(enum policy_logging l);
int policy_add_route_provider(struct policy *p, const char *route, const char *provider, char *err,
			      size_t errsz);

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
/* The first route matching path and model (a missing model matches '*'
 * only), or NULL. */
const struct policy_route *policy_route_for(const struct policy *p, const char *path, size_t path_len,
					    const char *model, size_t model_len);
const struct policy_provider *policy_provider(const struct policy *p, const char *name);

/* The model's price, the '*' price, or NULL (free). */
const struct policy_price *policy_price(const struct policy *p, const char *model, size_t len);

#endif
