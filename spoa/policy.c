/* policy: the rules snapshot (see policy.h). */
#include "policy.h"

#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct policy_limits unlimited = {POLICY_UNLIMITED, POLICY_UNLIMITED, POLICY_UNLIMITED};

struct policy *policy_new(void)
{
	struct policy *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	strcpy(p->time_zone, "UTC");
	p->flush_interval_ms = 100;
	p->daily_usage_interval_ms = 1000;
	p->audit_retention_days = 30;
	p->global_ceiling_nano = POLICY_UNLIMITED;
	p->global_ceiling_fallback = true;
	p->default_max_tokens = 1024;
	p->reservation_ttl_s = 600;
	strcpy(p->fallback_text,
	       "This assistant has reached its usage budget for now. This is an automatic reply; please try again later.");
	if (policy_add_tier(p, "default", unlimited, false) == -1) {
		policy_free(p);
		return NULL;
	}
	p->default_tier = policy_tier(p, "default");
	return p;
}

static void free_val(void *val, void *arg)
{
	(void)arg;
	free(val);
}

static void free_key(void *val, void *arg)
{
	struct policy_key *k = val;

	(void)arg;
	free(k->user_id);
	free(k);
}

static void route_free(struct policy_route *r)
{
	free(r->name);
	free(r->path_prefix);
	free(r->model_glob);
	free(r->fallback_backend);
	free(r->fallback_text);
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->nroutes; i++)
		route_free(&p->routes[i]);
	free(p->routes);
	strmap_each(&p->providers, free_val, NULL);
	strmap_clear(&p->providers);
	strmap_each(&p->tiers, free_val, NULL);
	strmap_each(&p->users, free_val, NULL);
	strmap_each(&p->keys, free_key, NULL);
	strmap_each(&p->prices, free_val, NULL);
	strmap_clear(&p->tiers);
	strmap_clear(&p->users);
	strmap_clear(&p->keys);
	strmap_clear(&p->prices);
	free(p);
}

static int parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int policy_set(struct policy *p, const char *name, const char *value, char *err, size_t errsz)
{
	long v;

	if (!strcmp(name, "time_zone")) {
		if (strlen(value) >= sizeof(p->time_zone) || !value[0])
			goto bad;
		strcpy(p->time_zone, value);
	} else if (!strcmp(name, "flush_interval_ms")) {
		if (parse_long(value, 10, 60000, &v) == -1)
			goto bad;
		p->flush_interval_ms = v;
	} else if (!strcmp(name, "daily_usage_interval_ms")) {
		if (parse_long(value, 10, 60000, &v) == -1)
			goto bad;
		p->daily_usage_interval_ms = v;
	} else if (!strcmp(name, "audit_retention_days")) {
		if (parse_long(value, 0, 36500, &v) == -1)
			goto bad;
		p->audit_retention_days = v;
	} else if (!strcmp(name, "global_daily_cost_ceiling_usd")) {
		char *end;
		double d;

		if (!value[0]) {
			p->global_ceiling_nano = POLICY_UNLIMITED;
			return 0;
		}
		d = strtod(value, &end);
		if (end == value || *end || !(d >= 0) || d > 9e9)
			goto bad;
		p->global_ceiling_nano = llround(d * 1e9);
	} else if (!strcmp(name, "global_ceiling_action")) {
		if (!strcmp(value, "fallback"))
			p->global_ceiling_fallback = true;
		else if (!strcmp(value, "deny"))
			p->global_ceiling_fallback = false;
		else
			goto bad;
	} else if (!strcmp(name, "unknown_key_action")) {
		if (strlen(value) >= sizeof(p->unknown_key_action))
			goto bad;
		strcpy(p->unknown_key_action, value);
	} else if (!strcmp(name, "default_tier")) {
		if (strlen(value) >= sizeof(p->default_tier_name))
			goto bad;
		strcpy(p->default_tier_name, value);
	} else if (!strcmp(name, "default_max_tokens")) {
		if (parse_long(value, 1, 10000000, &v) == -1)
			goto bad;
		p->default_max_tokens = v;
	} else if (!strcmp(name, "reservation_ttl_s")) {
		if (parse_long(value, 1, 86400, &v) == -1)
			goto bad;
		p->reservation_ttl_s = v;
	} else if (!strcmp(name, "fallback_text")) {
		if (strlen(value) >= sizeof(p->fallback_text))
			goto bad;
		strcpy(p->fallback_text, value);
	}
	/* Unknown names are left for later versions and for operators' notes. */
	return 0;
bad:
	snprintf(err, errsz, "settings.%s: invalid value \"%.60s\"", name, value);
	return -1;
}

int policy_add_tier(struct policy *p, const char *name, struct policy_limits lim, bool fallback)
{
	size_t n = strlen(name);
	struct policy_tier *t = malloc(sizeof(*t) + n + 1), *old;

	if (!t)
		return -1;
	t->lim = lim;
	t->over_budget_fallback = fallback;
	memcpy(t->name, name, n + 1);
	old = strmap_get(&p->tiers, name, n);
	if (old) {
		/* Users already point at the old one: update it in place. */
		old->lim = lim;
		old->over_budget_fallback = fallback;
		free(t);
		return 0;
	}
	if (strmap_put(&p->tiers, t->name, n, t) == -1) {
		free(t);
		return -1;
	}
	return 0;
}

const struct policy_tier *policy_tier(const struct policy *p, const char *name)
{
	return strmap_get(&p->tiers, name, strlen(name));
}

static struct policy_user *user_entry(struct policy *p, const char *id)
{
	size_t n = strlen(id);
	struct policy_user *u = strmap_get(&p->users, id, n);

	if (u)
		return u;
	u = malloc(sizeof(*u) + n + 1);
	if (!u)
		return NULL;
	u->tier = NULL;
	u->override = (struct policy_limits){POLICY_UNSET, POLICY_UNSET, POLICY_UNSET};
	memcpy(u->id, id, n + 1);
	if (strmap_put(&p->users, u->id, n, u) == -1) {
		free(u);
		return NULL;
	}
	return u;
}

int policy_add_user(struct policy *p, const char *id, const char *tier, char *err, size_t errsz)
{
	const struct policy_tier *t = policy_tier(p, tier);
	struct policy_user *u;

	if (!t) {
		snprintf(err, errsz, "users.%.60s: unknown tier \"%.60s\"", id, tier);
		return -1;
	}
	u = user_entry(p, id);
	if (!u)
		return -1;
	u->tier = t;
	return 0;
}

int policy_add_override(struct policy *p, const char *id, struct policy_limits lim)
{
	struct policy_user *u = user_entry(p, id);

	if (!u)
		return -1;
	u->override = lim;
	return 0;
}

int policy_add_key(struct policy *p, const char *hmac, const char *user_id, const char *tier,
		   int64_t expires_at, bool revoked)
{
	struct policy_key *k;

	if (strlen(hmac) != 64)
		return 0; /* cannot match any HMAC: ignore the row */
	k = calloc(1, sizeof(*k));
	if (!k)
		return -1;
	k->user_id = strdup(user_id);
	if (!k->user_id) {
		free(k);
		return -1;
	}
	memcpy(k->hmac, hmac, 65);
	k->tier = tier ? policy_tier(p, tier) : NULL;
	k->expires_at = expires_at;
	k->revoked = revoked;
	if (strmap_put(&p->keys, k->hmac, 64, k) == -1) {
		free_key(k, NULL);
		return -1;
	}
	return 0;
}

int policy_add_price(struct policy *p, const char *model, double in_usd_per_million,
		     double out_usd_per_million)
{
	size_t n = strlen(model);
	struct policy_price *pr = malloc(sizeof(*pr) + n + 1), *old;

	if (!pr)
		return -1;
	/* USD per million tokens = 1000 nano-USD per token. */
	pr->in_nano_per_token = in_usd_per_million * 1000.0;
	pr->out_nano_per_token = out_usd_per_million * 1000.0;
	memcpy(pr->model, model, n + 1);
	old = strmap_del(&p->prices, model, n);
	free(old);
	if (strmap_put(&p->prices, pr->model, n, pr) == -1) {
		free(pr);
		return -1;
	}
	return 0;
}

int policy_finish(struct policy *p, char *err, size_t errsz)
{
	const char *dt = p->default_tier_name[0] ? p->default_tier_name : "default";

	p->default_tier = policy_tier(p, dt);
	if (!p->default_tier) {
		snprintf(err, errsz, "settings.default_tier: unknown tier \"%s\"", dt);
		return -1;
	}
	p->unknown_key_tier = NULL;
	if (p->unknown_key_action[0] && strcmp(p->unknown_key_action, "deny") != 0) {
		p->unknown_key_tier = policy_tier(p, p->unknown_key_action);
		if (!p->unknown_key_tier) {
			snprintf(err, errsz, "settings.unknown_key_action: \"%s\" is neither deny nor a tier",
				 p->unknown_key_action);
			return -1;
		}
	}
	p->default_price = strmap_get(&p->prices, "*", 1);
	return 0;
}

static int64_t pick(int64_t override, int64_t tier)
{
	return override != POLICY_UNSET ? override : tier;
}

const struct policy_tier *policy_limits_of(const struct policy *p, const char *user, size_t len,
					   const struct policy_tier *tier_hint,
					   struct policy_limits *out)
{
	const struct policy_user *u = strmap_get(&p->users, user, len);
	const struct policy_tier *t = tier_hint ? tier_hint : (u && u->tier ? u->tier : p->default_tier);

	*out = t->lim;
	if (u) {
		out->tokens = pick(u->override.tokens, t->lim.tokens);
		out->requests = pick(u->override.requests, t->lim.requests);
		out->cost_nano = pick(u->override.cost_nano, t->lim.cost_nano);
	}
	return t;
}

const struct policy_key *policy_key(const struct policy *p, const char *hmac_hex)
{
	return strmap_get(&p->keys, hmac_hex, 64);
}

const struct policy_price *policy_price(const struct policy *p, const char *model, size_t len)
{
	const struct policy_price *pr = strmap_get(&p->prices, model, len);

	return pr ? pr : p->default_price;
}

int policy_add_provider(struct policy *p, const char *name, bool enabled, int window_s, int min_requests,
			double error_rate, int consecutive_failures, int open_s, int half_open_probes)
{
	size_t n = strlen(name);
	struct policy_provider *pr;

	if (n == 0 || n >= 64 || strmap_get(&p->providers, name, n))
		return 0; /* unusable as a backend name, or a duplicate: ignored */
	pr = malloc(sizeof(*pr) + n + 1);
	if (!pr)
		return -1;
	pr->enabled = enabled;
	pr->window_s = window_s < 1 ? 1 : window_s > 300 ? 300 : window_s;
	pr->min_requests = min_requests < 1 ? 1 : min_requests;
	pr->error_rate = error_rate <= 0 || error_rate > 1 ? 1 : error_rate;
	pr->consecutive_failures = consecutive_failures < 1 ? 1 : consecutive_failures;
	pr->open_s = open_s < 1 ? 1 : open_s;
	pr->half_open_probes = half_open_probes < 1 ? 1 : half_open_probes;
	memcpy(pr->name, name, n + 1);
	if (strmap_put(&p->providers, pr->name, n, pr) == -1) {
		free(pr);
		return -1;
	}
	return 0;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

int policy_add_route(struct policy *p, const char *name, const char *path_prefix, const char *model_glob,
		     int priority, long timeout_ms, const char *fallback, const char *fallback_backend,
		     const char *fallback_text, int fallback_max_bytes, char *err, size_t errsz)
{
	struct policy_route *nr = realloc(p->routes, (size_t)(p->nroutes + 1) * sizeof(*nr)), *r;

	if (!nr)
		return -1;
	p->routes = nr;
	r = &p->routes[p->nroutes];
	memset(r, 0, sizeof(*r));
	if (!strcmp(fallback, "none"))
		r->fallback = POLICY_FALLBACK_NONE;
	else if (!strcmp(fallback, "backend"))
		r->fallback = POLICY_FALLBACK_BACKEND;
	else if (!strcmp(fallback, "static"))
		r->fallback = POLICY_FALLBACK_STATIC;
	else if (!strcmp(fallback, "computed"))
		r->fallback = POLICY_FALLBACK_COMPUTED;
	else {
		snprintf(err, errsz, "routes.%.60s: unknown fallback \"%.20s\"", name, fallback);
		return -1;
	}
	if (r->fallback == POLICY_FALLBACK_BACKEND && (!fallback_backend || !fallback_backend[0])) {
		snprintf(err, errsz, "routes.%.60s: fallback 'backend' needs fallback_backend", name);
		return -1;
	}
	r->name = strdup(name);
	r->path_prefix = strdup(path_prefix);
	r->model_glob = strdup(model_glob[0] ? model_glob : "*");
	r->fallback_backend = dup_or_null(fallback_backend);
	r->fallback_text = strdup(fallback_text);
	r->priority = priority;
	r->timeout_ms = timeout_ms < 100 ? 100 : timeout_ms;
	r->fallback_max_bytes = fallback_max_bytes < 64 ? 64 : fallback_max_bytes > 4000 ? 4000 : fallback_max_bytes;
	p->nroutes++;
	if (!r->name || !r->path_prefix || !r->model_glob || !r->fallback_text ||
	    (fallback_backend && !r->fallback_backend))
		return -1;
	return 0;
}

int policy_add_route_provider(struct policy *p, const char *route, const char *provider, char *err,
			      size_t errsz)
{
	const struct policy_provider *pr = policy_provider(p, provider);

	for (int i = 0; i < p->nroutes; i++) {
		struct policy_route *r = &p->routes[i];

		if (strcmp(r->name, route) != 0)
			continue;
		if (!pr) {
			snprintf(err, errsz, "route_providers: %.60s names unknown provider %.60s", route, provider);
			return -1;
		}
		if (r->nchain < POLICY_CHAIN_MAX)
			r->chain[r->nchain++] = pr;
		return 0;
	}
	return 0; /* a route that does not exist: nothing to chain */
}

int policy_set_route_logging(struct policy *p, const char *route, const char *mode, int retention_days)
{
	for (int i = 0; i < p->nroutes; i++) {
		struct policy_route *r = &p->routes[i];

		if (strcmp(r->name, route) != 0)
			continue;
		if (!strcmp(mode, "hash"))
			r->logging = POLICY_LOG_HASH;
		else if (!strcmp(mode, "redacted"))
			r->logging = POLICY_LOG_REDACTED;
		else if (!strcmp(mode, "full"))
			r->logging = POLICY_LOG_FULL;
		else
			r->logging = POLICY_LOG_OFF;
		r->log_retention_days = retention_days < 0 ? 0 : retention_days;
	}
	return 0;
}

const char *policy_logging_str(enum policy_logging l)
{
	static const char *const names[] = {"off", "hash", "redacted", "full"};

	return (unsigned)l < 4 ? names[l] : "off";
}

const struct policy_provider *policy_provider(const struct policy *p, const char *name)
{
	return strmap_get(&p->providers, name, strlen(name));
}

const struct policy_route *policy_route_for(const struct policy *p, const char *path, size_t path_len,
					    const char *model, size_t model_len)
{
	char m[128];

	if (model_len >= sizeof(m))
		model_len = sizeof(m) - 1;
	if (model_len)
		memcpy(m, model, model_len);
	m[model_len] = '\0';
	for (int i = 0; i < p->nroutes; i++) {
		const struct policy_route *r = &p->routes[i];
		size_t plen = strlen(r->path_prefix);

		if (path_len < plen || (plen && memcmp(path, r->path_prefix, plen) != 0))
			continue;
		if (strcmp(r->model_glob, "*") != 0 && (model_len == 0 || fnmatch(r->model_glob, m, 0) != 0))
			continue;
		return r;
	}
	return NULL;
}
