/* state: the JSON state dump (see state.h). */
#include "state.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "daytime.h"
#include "ledger.h"
#include "policy.h"

#define STATE_HOT_USERS 10

struct hot {
	const struct ledger_usage *top[STATE_HOT_USERS];
	int n;
};

static int64_t used(const struct ledger_usage *u)
{
	return u->tokens_in + u->tokens_out;
}

/* Keeps the STATE_HOT_USERS largest by tokens, in order. */
static void keep_hot(const struct ledger_usage *u, void *arg)
{
	struct hot *h = arg;
	int i;

	if (h->n == STATE_HOT_USERS && used(u) <= used(h->top[h->n - 1]))
		return;
	if (h->n < STATE_HOT_USERS)
		h->n++;
	for (i = h->n - 1; i > 0 && used(h->top[i - 1]) < used(u); i--)
		h->top[i] = h->top[i - 1];
	h->top[i] = u;
}

static cJSON *limit(int64_t v, double scale)
{
	return v < 0 ? cJSON_CreateNull() : cJSON_CreateNumber((double)v / scale);
}

static void add_tier(void *val, void *arg)
{
	const struct policy_tier *t = val;
	cJSON *o = cJSON_CreateObject();

	cJSON_AddItemToObject(o, "daily_tokens", limit(t->lim.tokens, 1));
	cJSON_AddItemToObject(o, "daily_requests", limit(t->lim.requests, 1));
	cJSON_AddItemToObject(o, "daily_cost_usd", limit(t->lim.cost_nano, 1e9));
	cJSON_AddStringToObject(o, "over_budget_action", t->over_budget_fallback ? "fallback" : "deny");
	cJSON_AddItemToObject(arg, t->name, o);
}

static void add_breaker(const struct breaker *b, void *arg)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "state", breaker_state_str(b->state));
	cJSON_AddNumberToObject(o, "since", b->since);
	if (b->state == BREAKER_OPEN)
		cJSON_AddNumberToObject(o, "open_until", b->open_until);
	if (b->reason && b->state != BREAKER_CLOSED)
		cJSON_AddStringToObject(o, "reason", b->reason);
	cJSON_AddNumberToObject(o, "consecutive_failures", b->consecutive);
	cJSON_AddNumberToObject(o, "probes_in_flight", b->probes_in_flight);
	cJSON_AddNumberToObject(o, "servers_up", b->servers_up);
	cJSON_AddNumberToObject(o, "opened_total", (double)b->opened_total);
	cJSON_AddNumberToObject(o, "requests_total", (double)b->requests_total);
	cJSON_AddNumberToObject(o, "failures_total", (double)b->failures_total);
	cJSON_AddItemToObject(arg, b->name, o);
}

static const char *fallback_str(enum policy_fallback f)
{
	static const char *const names[] = {"none", "backend", "static", "computed"};

	return (unsigned)f < 4 ? names[f] : "?";
}

char *state_json(const struct metrics_sources *m, size_t *len)
{
	struct ledger *l = engine_ledger(m->engine);
	const struct policy *p = engine_policy(m->engine);
	cJSON *root = cJSON_CreateObject(), *o, *arr;
	struct hot hot = {.n = 0};
	char *text;

	if (!root)
		return NULL;
	cJSON_AddStringToObject(root, "version", m->version);
	cJSON_AddStringToObject(root, "day", ledger_day_str(l, ledger_today(l)));
	cJSON_AddStringToObject(root, "time_zone", daytime_zone());

	o = cJSON_AddObjectToObject(root, "settings");
	cJSON_AddNumberToObject(o, "flush_interval_ms", (double)p->flush_interval_ms);
	cJSON_AddNumberToObject(o, "daily_usage_interval_ms", (double)p->daily_usage_interval_ms);
	cJSON_AddNumberToObject(o, "audit_retention_days", (double)p->audit_retention_days);
	cJSON_AddItemToObject(o, "global_daily_cost_ceiling_usd", limit(p->global_ceiling_nano, 1e9));
	cJSON_AddStringToObject(o, "global_ceiling_action", p->global_ceiling_fallback ? "fallback" : "deny");
	cJSON_AddStringToObject(o, "unknown_key_action", p->unknown_key_tier ? p->unknown_key_tier->name : "deny");
	cJSON_AddStringToObject(o, "default_tier", p->default_tier->name);
	cJSON_AddNumberToObject(o, "default_max_tokens", (double)p->default_max_tokens);
	cJSON_AddNumberToObject(o, "reservation_ttl_s", (double)p->reservation_ttl_s);

	o = cJSON_AddObjectToObject(root, "tiers");
	strmap_each(&p->tiers, add_tier, o);
	arr = cJSON_AddArrayToObject(root, "routes");
	for (int i = 0; i < p->nroutes; i++) {
		const struct policy_route *r = &p->routes[i];
		cJSON *e = cJSON_CreateObject(), *chain = cJSON_CreateArray();

		cJSON_AddStringToObject(e, "name", r->name);
		cJSON_AddStringToObject(e, "path_prefix", r->path_prefix);
		cJSON_AddStringToObject(e, "model_glob", r->model_glob);
		for (int k = 0; k < r->nchain; k++)
			cJSON_AddItemToArray(chain, cJSON_CreateString(r->chain[k]->name));
		cJSON_AddItemToObject(e, "chain", chain);
		cJSON_AddNumberToObject(e, "timeout_ms", (double)r->timeout_ms);
		cJSON_AddStringToObject(e, "fallback", fallback_str(r->fallback));
		cJSON_AddStringToObject(e, "prompt_logging", policy_logging_str(r->logging));
		cJSON_AddNumberToObject(e, "prompt_retention_days", r->log_retention_days);
		cJSON_AddItemToArray(arr, e);
	}
	o = cJSON_AddObjectToObject(root, "breakers");
	engine_each_breaker(m->engine, add_breaker, o);
	cJSON_AddNumberToObject(root, "users_with_overrides", (double)p->users.count);
	cJSON_AddNumberToObject(root, "api_keys", (double)p->keys.count);

	o = cJSON_AddObjectToObject(root, "today");
	cJSON_AddNumberToObject(o, "users_active", (double)ledger_user_count(l));
	cJSON_AddNumberToObject(o, "reservations_open", (double)ledger_open_count(l));
	cJSON_AddNumberToObject(o, "cost_usd", (double)ledger_today_cost(l) / 1e9);

	ledger_each_today(l, keep_hot, &hot);
	arr = cJSON_AddArrayToObject(root, "hottest_users");
	for (int i = 0; i < hot.n; i++) {
		const struct ledger_usage *u = hot.top[i];
		struct policy_limits lim;
		cJSON *e = cJSON_CreateObject();

		policy_limits_of(p, u->user, u->len, NULL, &lim);
		cJSON_AddStringToObject(e, "user_id", u->user);
		cJSON_AddNumberToObject(e, "tokens_in", (double)u->tokens_in);
		cJSON_AddNumberToObject(e, "tokens_out", (double)u->tokens_out);
		cJSON_AddNumberToObject(e, "requests", u->requests);
		cJSON_AddNumberToObject(e, "cost_usd", (double)u->cost_nano / 1e9);
		cJSON_AddNumberToObject(e, "denials", u->denials);
		cJSON_AddNumberToObject(e, "fallbacks", u->fallbacks);
		cJSON_AddNumberToObject(e, "open_reservations", u->open);
		cJSON_AddItemToObject(e, "daily_tokens", limit(lim.tokens, 1));
		cJSON_AddItemToArray(arr, e);
	}
	text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text)
		return NULL;
	*len = strlen(text);
	return text;
}
