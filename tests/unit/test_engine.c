/*
 * Unit tests of the decision engine with an injected clock: budgets,
 * settlement, idempotency, reservation expiry, identity by API key, the
 * global ceiling, and the day boundary in a time zone across DST.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ack.h"
#include "breaker.h"
#include "config.h"
#include "crypto.h"
#include "daytime.h"
#include "engine.h"
#include "ledger.h"
#include "policy.h"
#include "spop.h"

/* 2026-07-01T12:00:00Z */
#define NOON_UTC 1782907200.0

static struct config cfg;

/* A NOTIFY message built by hand: name and a few string/int args. */
struct msgb {
	struct spop_msg m;
	char strs[16][160];
	int n;
};

static void msg_init(struct msgb *b, const char *name)
{
	memset(b, 0, sizeof(*b));
	b->m.name.ptr = (const uint8_t *)name;
	b->m.name.len = strlen(name);
}

static void arg_s(struct msgb *b, const char *name, const char *v)
{
	struct spop_arg *a = &b->m.args[b->m.nargs++];

	snprintf(b->strs[b->n], sizeof(b->strs[0]), "%s", v);
	a->name.ptr = (const uint8_t *)name;
	a->name.len = strlen(name);
	a->value = spop_data_str(b->strs[b->n], strlen(b->strs[b->n]));
	b->n++;
}

static void arg_i(struct msgb *b, const char *name, int64_t v)
{
	struct spop_arg *a = &b->m.args[b->m.nargs++];

	a->name.ptr = (const uint8_t *)name;
	a->name.len = strlen(name);
	a->value = spop_data_int(v);
}

/* What the engine wrote, decoded back into name=value strings. */
struct result {
	char action[16], reason[32], backend[64], fallback[600];
	int64_t limit, remaining, reset_s, retry_after;
	int nactions;
};

static void decode(const uint8_t *buf, const uint8_t *end, struct result *r)
{
	const uint8_t *p = buf;

	memset(r, 0, sizeof(*r));
	r->limit = r->remaining = r->reset_s = r->retry_after = -1;
	while (p < end) {
		struct spop_str name;
		struct spop_data v;
		uint8_t type = *p++, nargs = *p++, scope = *p++;

		assert_int_equal(scope, SPOP_SCOPE_TXN);
		assert_int_equal(spop_get_str(&p, end, &name), 0);
		r->nactions++;
		if (type == SPOP_ACT_UNSET_VAR) {
			assert_int_equal(nargs, 2);
			continue;
		}
		assert_int_equal(type, SPOP_ACT_SET_VAR);
		assert_int_equal(spop_get_data(&p, end, &v), 0);
#define S(field)                                                                               \
	if (spop_str_eq(name, #field)) {                                                       \
		assert_int_equal(v.type, SPOP_T_STR);                                          \
		snprintf(r->field, sizeof(r->field), "%.*s", (int)v.v.s.len, v.v.s.ptr);      \
	}
		S(action) S(reason) S(backend)
		if (spop_str_eq(name, "fallback_text"))
			snprintf(r->fallback, sizeof(r->fallback), "%.*s", (int)v.v.s.len, v.v.s.ptr);
		if (spop_str_eq(name, "limit_tokens"))
			r->limit = v.v.i;
		if (spop_str_eq(name, "remaining_tokens"))
			r->remaining = v.v.i;
		if (spop_str_eq(name, "reset_s"))
			r->reset_s = v.v.i;
		if (spop_str_eq(name, "retry_after"))
			r->retry_after = v.v.i;
	}
}

static void send_msg(struct engine *e, double now, struct msgb *b, struct result *r)
{
	uint8_t buf[4096];
	struct ack a = {.p = buf, .end = buf + sizeof(buf)};

	engine_on_message(e, now, &b->m, &a);
	decode(buf, a.p, r);
}

/* A chat request: body of `len` bytes (estimate len/4) and max_tokens. */
static void request(struct engine *e, double now, const char *uid, const char *user, const char *auth,
		    int64_t len, int64_t max_tokens, struct result *r)
{
	struct msgb b;

	msg_init(&b, "llm-request");
	arg_s(&b, "unique_id", uid);
	if (user)
		arg_s(&b, "user", user);
	if (auth)
		arg_s(&b, "auth", auth);
	arg_s(&b, "path", "/v1/chat/completions");
	arg_s(&b, "model", "gpt-4o-mini");
	arg_i(&b, "content_length", len);
	if (max_tokens >= 0)
		arg_i(&b, "max_tokens", max_tokens);
	send_msg(e, now, &b, r);
}

static void response(struct engine *e, double now, const char *uid, int status, int64_t in, int64_t out,
		     int streamed)
{
	struct msgb b;
	struct result r;

	msg_init(&b, "llm-response");
	arg_s(&b, "unique_id", uid);
	arg_i(&b, "status", status);
	if (in >= 0)
		arg_i(&b, "prompt_tokens", in);
	if (out >= 0)
		arg_i(&b, "completion_tokens", out);
	b.m.args[b.m.nargs].name.ptr = (const uint8_t *)"streamed";
	b.m.args[b.m.nargs].name.len = 8;
	b.m.args[b.m.nargs].value.type = SPOP_T_BOOL;
	b.m.args[b.m.nargs].value.v.b = streamed;
	b.m.nargs++;
	send_msg(e, now, &b, &r);
}

static struct policy *base_policy(int64_t tokens, int64_t requests, double cost_usd, int fallback)
{
	struct policy *p = policy_new();
	char err[128];
	struct policy_limits lim = {tokens, requests, cost_usd < 0 ? POLICY_UNLIMITED : (int64_t)(cost_usd * 1e9)};

	assert_non_null(p);
	assert_int_equal(policy_add_tier(p, "default", lim, fallback), 0);
	assert_int_equal(policy_add_tier(p, "big", (struct policy_limits){1000000, -1, -1}, 0), 0);
	/* $1 and $4 per million tokens: 1000 and 4000 nano-USD per token. */
	assert_int_equal(policy_add_price(p, "gpt-4o-mini", 1.0, 4.0), 0);
	assert_int_equal(policy_finish(p, err, sizeof(err)), 0);
	return p;
}

static struct ledger_usage *usage_of(struct engine *e, const char *user)
{
	return ledger_user(engine_ledger(e), user, strlen(user), false);
}

static int setup(void **state)
{
	(void)state;
	config_defaults(&cfg);
	assert_int_equal(crypto_use_secret("unit-test-secret-0123456789abcdef", 33), 0);
	assert_int_equal(daytime_set_zone("UTC"), 0);
	return 0;
}

static void test_allows_until_spent_then_denies(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(1000, -1, -1, 0), NOON_UTC);
	struct result r;
	char uid[32];
	int allowed = 0;

	(void)state;
	/* Each request reserves 400/4 + 100 = 200 tokens: five fit in 1000. */
	for (int i = 0; i < 8; i++) {
		snprintf(uid, sizeof(uid), "u%d", i);
		request(e, NOON_UTC + i, uid, "alice", NULL, 400, 100, &r);
		if (!strcmp(r.action, "allow")) {
			allowed++;
			assert_string_equal(r.backend, "provider_primary");
			assert_int_equal(r.limit, 1000);
			assert_int_equal(r.remaining, 1000 - 200 * allowed);
		} else {
			assert_string_equal(r.action, "deny");
			assert_string_equal(r.reason, "budget_tokens");
			/* Seconds to the next UTC midnight: 12 h minus elapsed. */
			assert_int_equal(r.retry_after, 43200 - i);
			assert_int_equal(r.remaining, 0);
		}
	}
	assert_int_equal(allowed, 5);
	assert_int_equal(usage_of(e, "alice")->requests, 5);
	assert_int_equal(usage_of(e, "alice")->denials, 3);
	engine_free(e);
}

static void test_settlement_replaces_estimate_once(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(100000, -1, -1, 0), NOON_UTC);
	struct result r;
	struct ledger_usage *u;

	(void)state;
	request(e, NOON_UTC, "id-1", "bob", NULL, 4000, 500, &r);
	assert_string_equal(r.action, "allow");
	u = usage_of(e, "bob");
	assert_int_equal(u->tokens_in, 1000);
	assert_int_equal(u->tokens_out, 500);
	assert_int_equal(u->cost_nano, 1000 * 1000 + 500 * 4000);
	assert_int_equal(ledger_open_count(engine_ledger(e)), 1);

	response(e, NOON_UTC + 1, "id-1", 200, 321, 45, 0);
	assert_int_equal(u->tokens_in, 321);
	assert_int_equal(u->tokens_out, 45);
	assert_int_equal(u->cost_nano, 321 * 1000 + 45 * 4000);
	assert_int_equal(ledger_open_count(engine_ledger(e)), 0);

	/* The same response again, or a late one: nothing changes. */
	response(e, NOON_UTC + 2, "id-1", 200, 9999, 9999, 0);
	assert_int_equal(u->tokens_in, 321);
	assert_int_equal(u->tokens_out, 45);
	assert_int_equal(engine_stats(e)->late_responses, 1);
	assert_int_equal(engine_stats(e)->settled, 1);

	/* A replayed NOTIFY with the same unique-id does not open a second
	 * reservation that could later be settled twice. */
	request(e, NOON_UTC + 3, "id-2", "bob", NULL, 40, 10, &r);
	request(e, NOON_UTC + 3, "id-2", "bob", NULL, 40, 10, &r);
	assert_string_equal(r.action, "allow");
	assert_int_equal(ledger_open_count(engine_ledger(e)), 1);
	assert_int_equal(u->requests, 2);
	assert_int_equal(u->tokens_in, 321 + 10);
	engine_free(e);
}

static void test_streamed_and_failed_answers(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(100000, -1, -1, 0), NOON_UTC);
	struct result r;
	struct ledger_usage *u;

	(void)state;
	request(e, NOON_UTC, "s-1", "carol", NULL, 800, 300, &r);
	response(e, NOON_UTC + 1, "s-1", 200, -1, -1, 1); /* streamed: estimate kept */
	u = usage_of(e, "carol");
	assert_int_equal(u->tokens_in, 200);
	assert_int_equal(u->tokens_out, 300);
	assert_int_equal(engine_stats(e)->settled_estimate, 1);

	request(e, NOON_UTC + 2, "f-1", "carol", NULL, 800, 300, &r);
	response(e, NOON_UTC + 3, "f-1", 500, -1, -1, 0); /* provider error: free */
	assert_int_equal(u->tokens_in, 200);
	assert_int_equal(u->tokens_out, 300);
	assert_int_equal(u->requests, 2);

	request(e, NOON_UTC + 4, "j-1", "carol", NULL, 800, 300, &r);
	response(e, NOON_UTC + 5, "j-1", 200, -1, -1, 0); /* unreadable body */
	assert_int_equal(u->tokens_in, 400);
	assert_int_equal(u->tokens_out, 600);
	engine_free(e);
}

static void test_limits_requests_cost_and_fallback_tier(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(-1, 2, -1, 1), NOON_UTC);
	struct result r;

	(void)state;
	request(e, NOON_UTC, "a", "dave", NULL, 4, 1, &r);
	request(e, NOON_UTC, "b", "dave", NULL, 4, 1, &r);
	assert_string_equal(r.action, "allow");
	request(e, NOON_UTC, "c", "dave", NULL, 4, 1, &r);
	/* The tier sends over-budget users to the fallback. */
	assert_string_equal(r.action, "fallback");
	assert_string_equal(r.reason, "budget_requests");
	assert_true(strlen(r.fallback) > 10);
	assert_int_equal(r.retry_after, -1);
	assert_int_equal(usage_of(e, "dave")->fallbacks, 1);
	engine_free(e);

	/* Cost: $0.01 a day; one request costs 1000 in + 1000 out tokens =
	 * 0.001 + 0.004 = $0.005: two fit, the third does not. */
	e = engine_new(&cfg, base_policy(-1, -1, 0.01, 0), NOON_UTC);
	request(e, NOON_UTC, "a", "erin", NULL, 4000, 1000, &r);
	request(e, NOON_UTC, "b", "erin", NULL, 4000, 1000, &r);
	assert_string_equal(r.action, "allow");
	request(e, NOON_UTC, "c", "erin", NULL, 4000, 1000, &r);
	assert_string_equal(r.action, "deny");
	assert_string_equal(r.reason, "budget_cost");
	engine_free(e);
}

static void test_user_override_beats_tier(void **state)
{
	struct policy *p = base_policy(100, -1, -1, 0);
	struct engine *e;
	struct result r;
	char err[128];

	(void)state;
	assert_int_equal(policy_add_user(p, "frank", "big", err, sizeof(err)), 0);
	assert_int_equal(policy_add_override(p, "grace", (struct policy_limits){5000, POLICY_UNSET, POLICY_UNSET}), 0);
	e = engine_new(&cfg, p, NOON_UTC);
	request(e, NOON_UTC, "a", "frank", NULL, 400, 100, &r);
	assert_string_equal(r.action, "allow");
	assert_int_equal(r.limit, 1000000);
	request(e, NOON_UTC, "b", "grace", NULL, 400, 100, &r);
	assert_string_equal(r.action, "allow");
	assert_int_equal(r.limit, 5000);
	request(e, NOON_UTC, "c", "heidi", NULL, 400, 100, &r);
	assert_string_equal(r.action, "deny");
	assert_int_equal(r.limit, 100);
	engine_free(e);
}

static void test_api_keys(void **state)
{
	struct policy *p = base_policy(100000, -1, -1, 0);
	char hmac[65], err[128];
	struct engine *e;
	struct result r;

	(void)state;
	crypto_key_hmac("sk-good", 7, hmac);
	assert_int_equal(policy_add_key(p, hmac, "ivan", "big", 0, false), 0);
	crypto_key_hmac("sk-revoked", 10, hmac);
	assert_int_equal(policy_add_key(p, hmac, "ivan", NULL, 0, true), 0);
	crypto_key_hmac("sk-expired", 10, hmac);
	assert_int_equal(policy_add_key(p, hmac, "ivan", NULL, (int64_t)NOON_UTC - 1, false), 0);
	e = engine_new(&cfg, p, NOON_UTC);

	request(e, NOON_UTC, "k1", NULL, "Bearer sk-good", 400, 100, &r);
	assert_string_equal(r.action, "allow");
	assert_int_equal(r.limit, 1000000); /* the key's tier */
	assert_non_null(usage_of(e, "ivan"));
	request(e, NOON_UTC, "k2", NULL, "  bearer   sk-good ", 400, 100, &r);
	assert_string_equal(r.action, "allow");
	request(e, NOON_UTC, "k3", NULL, "Bearer sk-revoked", 400, 100, &r);
	assert_string_equal(r.action, "deny");
	assert_string_equal(r.reason, "unknown_key");
	assert_int_equal(r.retry_after, -1); /* waiting does not fix a bad key */
	request(e, NOON_UTC, "k4", NULL, "Bearer sk-expired", 400, 100, &r);
	assert_string_equal(r.reason, "unknown_key");
	request(e, NOON_UTC, "k5", NULL, "Bearer sk-nobody", 400, 100, &r);
	assert_string_equal(r.reason, "unknown_key");
	request(e, NOON_UTC, "k6", NULL, NULL, 400, 100, &r);
	assert_string_equal(r.reason, "unknown_key");

	/* Unknown keys served with a tier instead, as user "anonymous". */
	p = base_policy(100000, -1, -1, 0);
	assert_int_equal(policy_set(p, "unknown_key_action", "big", err, sizeof(err)), 0);
	assert_int_equal(policy_finish(p, err, sizeof(err)), 0);
	policy_free(engine_set_policy(e, p, NOON_UTC));
	request(e, NOON_UTC, "k7", NULL, "Bearer sk-nobody", 400, 100, &r);
	assert_string_equal(r.action, "allow");
	assert_int_equal(r.limit, 1000000);
	assert_non_null(usage_of(e, "anonymous"));
	engine_free(e);
}

static void test_global_ceiling(void **state)
{
	struct policy *p = base_policy(-1, -1, -1, 0);
	struct engine *e;
	struct result r;
	char err[128];

	(void)state;
	/* Ceiling $0.004; each request's estimate costs $0.005. */
	assert_int_equal(policy_set(p, "global_daily_cost_ceiling_usd", "0.004", err, sizeof(err)), 0);
	e = engine_new(&cfg, p, NOON_UTC);
	request(e, NOON_UTC, "a", "judy", NULL, 4000, 1000, &r);
	assert_string_equal(r.action, "allow");
	request(e, NOON_UTC, "b", "mallory", NULL, 4000, 1000, &r);
	assert_string_equal(r.action, "fallback");
	assert_string_equal(r.reason, "global_ceiling");
	engine_free(e);
}

static void test_reservation_expires_at_estimate(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(-1, -1, -1, 0), NOON_UTC);
	struct result r;
	struct batch *b;

	(void)state;
	request(e, NOON_UTC, "x", "ken", NULL, 400, 100, &r);
	engine_tick(e, NOON_UTC + 599);
	assert_int_equal(ledger_open_count(engine_ledger(e)), 1);
	engine_tick(e, NOON_UTC + 601);
	assert_int_equal(ledger_open_count(engine_ledger(e)), 0);
	assert_int_equal(engine_stats(e)->expired, 1);
	assert_int_equal(usage_of(e, "ken")->tokens_in + usage_of(e, "ken")->tokens_out, 200);
	/* A response after expiry changes nothing. */
	response(e, NOON_UTC + 602, "x", 200, 1, 1, 0);
	assert_int_equal(usage_of(e, "ken")->tokens_in, 100);
	b = engine_take_batch(e, NOON_UTC, false);
	assert_non_null(b);
	assert_int_equal(b->nusage, 1);
	assert_int_equal(b->naudit, 1);
	assert_string_equal(b->audit[0].outcome, "expired");
	assert_string_equal(b->usage[0].day, "2026-07-01");
	assert_int_equal(b->usage[0].tokens_in, 100);
	batch_free(b);
	assert_null(engine_take_batch(e, NOON_UTC, false)); /* nothing changed since */
	engine_free(e);
}

/* A writer far behind (or a database refusing writes) must not let audit
 * rows take all memory: past audit_backlog_max they are dropped and
 * counted, while every usage counter is still kept. */
static void test_audit_rows_bounded_by_backlog(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(-1, -1, -1, 0), NOON_UTC);
	struct result r;
	struct batch *b;
	char uid[16];
	long saved = cfg.audit_backlog_max;

	(void)state;
	cfg.audit_backlog_max = 1000;
	engine_set_store_pending(e, 995); /* the writer still holds 995 rows */
	for (int i = 0; i < 10; i++) {
		snprintf(uid, sizeof(uid), "q%d", i);
		request(e, NOON_UTC, uid, "quota", NULL, 400, 100, &r);
		assert_string_equal(r.action, "allow");
		response(e, NOON_UTC + 1, uid, 200, 10, 5, 0);
	}
	assert_int_equal(engine_stats(e)->audit_dropped, 5);
	assert_int_equal(usage_of(e, "quota")->requests, 10);
	assert_int_equal(usage_of(e, "quota")->tokens_in, 100);
	b = engine_take_batch(e, NOON_UTC, false);
	assert_non_null(b);
	assert_int_equal(b->naudit, 5);
	assert_int_equal(b->nusage, 1);
	batch_free(b);
	/* Once the writer has caught up, rows are kept again. */
	engine_set_store_pending(e, 0);
	request(e, NOON_UTC + 2, "q-after", "quota", NULL, 400, 100, &r);
	response(e, NOON_UTC + 3, "q-after", 200, 10, 5, 0);
	b = engine_take_batch(e, NOON_UTC, false);
	assert_non_null(b);
	assert_int_equal(b->naudit, 1);
	assert_int_equal(engine_stats(e)->audit_dropped, 5);
	batch_free(b);
	cfg.audit_backlog_max = saved;
	engine_free(e);
}

/* Europe/Paris, 2026-10-25 is 25 hours long: midnight is 2026-10-24T22:00Z
 * and the next one 2026-10-25T23:00Z. The counters reset exactly there. */
static void test_day_boundary_across_dst(void **state)
{
	struct policy *p = base_policy(400, -1, -1, 0);
	struct engine *e;
	struct result r;
	char err[128];
	const double start = 1792879200.0; /* 2026-10-24T22:00:00Z = 00:00 CEST */
	const double next = 1792969200.0;  /* 2026-10-25T23:00:00Z = 00:00 CET */
	struct batch *b;

	(void)state;
	assert_int_equal(policy_set(p, "time_zone", "Europe/Paris", err, sizeof(err)), 0);
	e = engine_new(&cfg, p, start + 60);
	request(e, start + 60, "a", "leo", NULL, 400, 100, &r);
	assert_string_equal(r.action, "allow");
	assert_int_equal(r.reset_s, (int64_t)(next - start - 60)); /* 25 h minus a minute */
	request(e, next - 300, "z", "leo", NULL, 400, 100, &r);
	assert_string_equal(r.action, "allow");
	request(e, next - 1, "b", "leo", NULL, 400, 100, &r);
	assert_string_equal(r.action, "deny");
	assert_int_equal(r.retry_after, 1);
	request(e, next, "c", "leo", NULL, 400, 100, &r);
	assert_string_equal(r.action, "allow"); /* a new day, a new budget */
	assert_int_equal(r.remaining, 200);
	b = engine_take_batch(e, NOON_UTC, false);
	assert_non_null(b);
	assert_int_equal(b->nusage, 2);
	assert_string_equal(b->current_day, "2026-10-26");
	for (size_t i = 0; i < b->nusage; i++) {
		if (!strcmp(b->usage[i].day, "2026-10-25")) {
			assert_int_equal(b->usage[i].denials, 1);
			assert_int_equal(b->usage[i].requests, 2);
		} else {
			assert_string_equal(b->usage[i].day, "2026-10-26");
			assert_int_equal(b->usage[i].requests, 1);
		}
	}
	batch_free(b);
	/* Yesterday's open reservation settles against yesterday. */
	response(e, next + 5, "z", 200, 10, 10, 0);
	b = engine_take_batch(e, NOON_UTC, false);
	assert_non_null(b);
	assert_int_equal(b->nusage, 1);
	assert_string_equal(b->usage[0].day, "2026-10-25");
	assert_int_equal(b->usage[0].tokens_in, 100 + 10);
	assert_int_equal(b->usage[0].tokens_out, 100 + 10);
	batch_free(b);
	engine_free(e);
	assert_int_equal(daytime_set_zone("UTC"), 0);
}

/* Which users a batch carries, as one sorted string: "a,b,c". */
static void batch_users(const struct batch *b, char *out, size_t size)
{
	const char *names[16];
	size_t n = 0;

	out[0] = '\0';
	for (size_t i = 0; i < b->nusage && n < 16; i++)
		names[n++] = batch_usage_user(b, &b->usage[i]);
	for (size_t i = 1; i < n; i++)
		for (size_t k = i; k > 0 && strcmp(names[k - 1], names[k]) > 0; k--) {
			const char *t = names[k];

			names[k] = names[k - 1];
			names[k - 1] = t;
		}
	for (size_t i = 0; i < n; i++) {
		strncat(out, names[i], size - strlen(out) - 1);
		if (i + 1 < n)
			strncat(out, ",", size - strlen(out) - 1);
	}
}

static void expect_batch(struct engine *e, double now, bool fold_now, bool fold, const char *users)
{
	struct batch *b = engine_take_batch(e, now, fold_now);
	char got[256];

	assert_non_null(b);
	batch_users(b, got, sizeof(got));
	assert_string_equal(got, users);
	assert_int_equal(b->fold, fold);
	batch_free(b);
}

/* Between two folds (daily_usage_interval_ms, 1000 by default, flushes
 * every 100 ms) a batch carries the users changed since the last batch,
 * for the journal; a fold carries every user changed since the last fold,
 * so that it covers everything the journal holds. */
static void test_batches_journal_then_fold(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(-1, -1, -1, 0), NOON_UTC);
	struct result r;
	const double t = NOON_UTC;

	(void)state;
	request(e, t, "1", "ann", NULL, 10, 10, &r);
	request(e, t, "2", "bob", NULL, 10, 10, &r);
	expect_batch(e, t, false, true, "ann,bob"); /* the first batch folds */
	request(e, t + 0.1, "3", "cat", NULL, 10, 10, &r);
	expect_batch(e, t + 0.1, false, false, "cat");
	request(e, t + 0.2, "4", "ann", NULL, 10, 10, &r);
	expect_batch(e, t + 0.2, false, false, "ann");
	assert_null(engine_take_batch(e, t + 0.3, false));
	request(e, t + 0.9, "5", "dan", NULL, 10, 10, &r);
	expect_batch(e, t + 0.9, false, false, "dan");
	/* 0.95 s after the fold: due, within half a flush interval. */
	request(e, t + 0.95, "6", "bob", NULL, 10, 10, &r);
	expect_batch(e, t + 0.95, false, true, "ann,bob,cat,dan");
	/* Nothing changed since: nothing to write, fold or not. */
	assert_null(engine_take_batch(e, t + 2.5, false));
	/* Idle longer than the interval: the first change folds at once. */
	request(e, t + 2.6, "7", "eve", NULL, 10, 10, &r);
	expect_batch(e, t + 2.6, false, true, "eve");
	request(e, t + 2.7, "8", "eve", NULL, 10, 10, &r);
	expect_batch(e, t + 2.7, false, false, "eve");
	/* A stop folds whatever the journal got since the last fold. */
	expect_batch(e, t + 2.8, true, true, "eve");
	/* After the database was opened again: every user, as a fold. */
	assert_int_equal(engine_rewrite_usage(e), 5);
	expect_batch(e, t + 2.9, false, true, "ann,bob,cat,dan,eve");
	request(e, t + 3.0, "9", "ann", NULL, 10, 10, &r);
	expect_batch(e, t + 3.0, false, false, "ann");
	/* The clock stepped back an hour: fold at once, not in an hour. */
	request(e, t - 3600, "10", "bob", NULL, 10, 10, &r);
	expect_batch(e, t - 3600, false, true, "ann,bob");
	request(e, t - 3599.9, "11", "cat", NULL, 10, 10, &r);
	expect_batch(e, t - 3599.9, false, false, "cat");
	engine_free(e);
}

/* A fold that cost the writer more than a tenth of the interval in CPU
 * time spaces the next one out to ten times that cost (60 s at most), so
 * that daily_usage never takes more than a tenth of a CPU. A stop, a
 * reopen and a clock stepped back still fold at once. */
static void test_folds_paced_by_their_cost(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(-1, -1, -1, 0), NOON_UTC);
	struct result r;
	const double t = NOON_UTC;

	(void)state;
	assert_true(engine_fold_interval(e) == 1.0);
	engine_set_fold_cpu(e, 0.05); /* cheap: the setting rules */
	assert_true(engine_fold_interval(e) == 1.0);
	request(e, t, "1", "ann", NULL, 10, 10, &r);
	expect_batch(e, t, false, true, "ann");
	engine_set_fold_cpu(e, 0.3); /* 30 % of a CPU at 1 s: every 3 s */
	assert_true(engine_fold_interval(e) > 2.999 && engine_fold_interval(e) < 3.001);
	request(e, t + 1.0, "2", "bob", NULL, 10, 10, &r);
	expect_batch(e, t + 1.0, false, false, "bob");
	request(e, t + 2.8, "3", "cat", NULL, 10, 10, &r);
	expect_batch(e, t + 2.8, false, false, "cat");
	request(e, t + 2.95, "4", "dan", NULL, 10, 10, &r);
	expect_batch(e, t + 2.95, false, true, "bob,cat,dan");
	/* Never more than 60 s behind, whatever a fold cost. */
	engine_set_fold_cpu(e, 100.0);
	assert_true(engine_fold_interval(e) == 60.0);
	request(e, t + 30, "5", "eve", NULL, 10, 10, &r);
	expect_batch(e, t + 30, false, false, "eve");
	request(e, t + 62.95, "6", "eve", NULL, 10, 10, &r);
	expect_batch(e, t + 62.95, false, true, "eve");
	/* What must fold at once still does. */
	request(e, t + 63, "7", "ann", NULL, 10, 10, &r);
	expect_batch(e, t + 63, true, true, "ann");
	request(e, t + 63.1, "8", "bob", NULL, 10, 10, &r);
	engine_rewrite_usage(e);
	expect_batch(e, t + 63.1, false, true, "ann,bob,cat,dan,eve");
	request(e, t + 10, "9", "cat", NULL, 10, 10, &r);
	expect_batch(e, t + 10, false, true, "cat");
	/* The cost falls (fewer users): so does the interval. */
	engine_set_fold_cpu(e, 0.0);
	request(e, t + 11, "10", "dan", NULL, 10, 10, &r);
	expect_batch(e, t + 11, false, true, "dan");
	engine_free(e);
}

/* daily_usage_interval_ms equal to flush_interval_ms: every batch folds,
 * as before the journal existed. */
static void test_batches_fold_every_flush_when_asked(void **state)
{
	struct policy *p = base_policy(-1, -1, -1, 0);
	struct engine *e;
	struct result r;
	char err[128];

	(void)state;
	assert_int_equal(policy_set(p, "daily_usage_interval_ms", "100", err, sizeof(err)), 0);
	assert_int_equal(policy_set(p, "daily_usage_interval_ms", "9", err, sizeof(err)), -1);
	assert_int_equal(policy_set(p, "daily_usage_interval_ms", "60001", err, sizeof(err)), -1);
	e = engine_new(&cfg, p, NOON_UTC);
	for (int i = 0; i < 5; i++) {
		char uid[8];

		snprintf(uid, sizeof(uid), "f%d", i);
		request(e, NOON_UTC + 0.1 * i, uid, i % 2 ? "odd" : "even", NULL, 10, 10, &r);
		expect_batch(e, NOON_UTC + 0.1 * i, false, true, i % 2 ? "odd" : "even");
	}
	engine_free(e);
}

static void test_bad_input(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(-1, -1, -1, 0), NOON_UTC);
	struct result r;
	char longuser[200];
	struct msgb b;
	uint8_t buf[64];
	struct ack a = {.p = buf, .end = buf + sizeof(buf)};

	(void)state;
	memset(longuser, 'x', sizeof(longuser) - 1);
	longuser[sizeof(longuser) - 1] = '\0';
	request(e, NOON_UTC, "a", longuser, NULL, 400, 100, &r);
	assert_string_equal(r.action, "deny");
	assert_string_equal(r.reason, "bad_request");
	/* Negative or absurd sizes never make a negative reservation. */
	request(e, NOON_UTC, "b", "mia", NULL, -5, -7, &r);
	assert_string_equal(r.action, "allow");
	assert_true(usage_of(e, "mia")->tokens_in == 0);
	assert_true(usage_of(e, "mia")->tokens_out == 1024); /* default max_tokens */
	request(e, NOON_UTC, "c", "mia", NULL, INT64_MAX, INT64_MAX, &r);
	assert_string_equal(r.action, "allow");
	/* Absurd usage in a response is bounded, never wraps the counters. */
	request(e, NOON_UTC, "big", "zoe", NULL, 4, 1, &r);
	response(e, NOON_UTC, "big", 200, INT64_MAX, INT64_MAX, 0);
	assert_true(usage_of(e, "zoe")->tokens_in == (int64_t)1 << 32);
	assert_true(usage_of(e, "zoe")->tokens_out == (int64_t)1 << 32);
	assert_true(usage_of(e, "zoe")->cost_nano > 0);
	/* Unknown messages write nothing (the caller adds the no-op). */
	msg_init(&b, "something-else");
	engine_on_message(e, NOON_UTC, &b.m, &a);
	assert_ptr_equal(a.p, buf);
	engine_free(e);
}

static void test_completion_allowance_fields(void **state)
{
	struct engine *e = engine_new(&cfg, base_policy(-1, -1, -1, 0), NOON_UTC);
	struct result r;
	struct msgb b;

	(void)state;
	msg_init(&b, "llm-request");
	arg_s(&b, "unique_id", "m1");
	arg_s(&b, "user", "nina");
	arg_i(&b, "max_tokens", 50);
	arg_i(&b, "max_completion_tokens", 70);
	arg_i(&b, "n", 3);
	send_msg(e, NOON_UTC, &b, &r);
	assert_string_equal(r.action, "allow");
	/* max_completion_tokens wins; each of the 3 choices may use it all. */
	assert_int_equal(usage_of(e, "nina")->tokens_out, 210);
	engine_free(e);
}

/* A policy with the two providers and a chat route. */
static struct policy *routed_policy(const char *fallback)
{
	struct policy *p = base_policy(-1, -1, -1, 0);
	char err[128];

	/* window 30 s, min 4 requests, 50 %, 3 in a row, open 10 s, 2 probes */
	assert_int_equal(policy_add_provider(p, "provider_primary", true, 30, 4, 0.5, 3, 10, 2), 0);
	assert_int_equal(policy_add_provider(p, "provider_secondary", true, 30, 4, 0.5, 3, 10, 2), 0);
	assert_int_equal(policy_add_route(p, "chat", "/v1/chat/completions", "*", 10, 1500, fallback,
					  !strcmp(fallback, "backend") ? "fallback_local" : NULL, "Sorry, later.", 200,
					  err, sizeof(err)), 0);
	assert_int_equal(policy_add_route_provider(p, "chat", "provider_primary", err, sizeof(err)), 0);
	assert_int_equal(policy_add_route_provider(p, "chat", "provider_secondary", err, sizeof(err)), 0);
	assert_int_equal(policy_finish(p, err, sizeof(err)), 0);
	return p;
}

static void routed_request(struct engine *e, double now, const char *uid, int up_primary, struct result *r)
{
	struct msgb b;

	msg_init(&b, "llm-request");
	arg_s(&b, "unique_id", uid);
	arg_s(&b, "user", "olga");
	arg_s(&b, "path", "/v1/chat/completions");
	arg_s(&b, "model", "gpt-4o-mini");
	arg_i(&b, "content_length", 100);
	arg_i(&b, "max_tokens", 10);
	arg_s(&b, "body_head", "{\"messages\":[{\"role\":\"user\",\"content\":\"What is 2+2?\\n\\nThanks\"}]}");
	if (up_primary >= 0)
		arg_i(&b, "nbsrv_provider_primary", up_primary);
	send_msg(e, now, &b, r);
}

static void routed_response(struct engine *e, double now, const char *uid, const char *backend, int status,
			    int retry_after)
{
	struct msgb b;
	struct result r;

	msg_init(&b, "llm-response");
	arg_s(&b, "unique_id", uid);
	arg_i(&b, "status", status);
	arg_s(&b, "backend", backend);
	if (status == 200) {
		arg_i(&b, "prompt_tokens", 10);
		arg_i(&b, "completion_tokens", 5);
	}
	if (retry_after > 0)
		arg_i(&b, "retry_after", retry_after);
	send_msg(e, now, &b, &r);
}

static void test_breaker_moves_traffic_to_secondary_and_back(void **state)
{
	struct engine *e = engine_new(&cfg, routed_policy("computed"), NOON_UTC);
	struct result r;
	char uid[16];
	double t = NOON_UTC;
	int i;

	(void)state;
	/* Three 500s in a row from the primary open its breaker. */
	for (i = 0; i < 3; i++) {
		snprintf(uid, sizeof(uid), "f%d", i);
		routed_request(e, t, uid, -1, &r);
		assert_string_equal(r.backend, "provider_primary");
		/* The fallback text rides along, for HAProxy to render if the
		 * provider fails: the route's text and the user's question. */
		assert_string_equal(r.fallback, "Sorry, later.\n\n> What is 2+2?");
		routed_response(e, t, uid, "provider_primary", 500, 0);
	}
	routed_request(e, t + 1, "s1", -1, &r);
	assert_string_equal(r.action, "allow");
	assert_string_equal(r.backend, "provider_secondary");
	routed_response(e, t + 1, "s1", "provider_secondary", 200, 0);
	/* Still open 9 s later; half-open after 10 s: two probes, then the
	 * third request goes to the secondary while they are in flight. */
	routed_request(e, t + 9, "s2", -1, &r);
	assert_string_equal(r.backend, "provider_secondary");
	routed_request(e, t + 11, "p1", -1, &r);
	assert_string_equal(r.backend, "provider_primary");
	routed_request(e, t + 11, "p2", -1, &r);
	assert_string_equal(r.backend, "provider_primary");
	routed_request(e, t + 11, "s3", -1, &r);
	assert_string_equal(r.backend, "provider_secondary");
	/* Both probes succeed: closed, traffic is back. */
	routed_response(e, t + 12, "p1", "provider_primary", 200, 0);
	routed_response(e, t + 12, "p2", "provider_primary", 200, 0);
	routed_request(e, t + 12, "b1", -1, &r);
	assert_string_equal(r.backend, "provider_primary");
	engine_free(e);
}

static void test_provider_429_closes_the_door_for_retry_after(void **state)
{
	struct engine *e = engine_new(&cfg, routed_policy("computed"), NOON_UTC);
	struct result r;

	(void)state;
	routed_request(e, NOON_UTC, "a", -1, &r);
	routed_response(e, NOON_UTC + 0.5, "a", "provider_primary", 429, 5);
	routed_request(e, NOON_UTC + 5.4, "b", -1, &r);
	assert_string_equal(r.backend, "provider_secondary");
	routed_request(e, NOON_UTC + 5.6, "c", -1, &r);
	assert_string_equal(r.backend, "provider_primary"); /* a probe, 5 s after the 429 */
	engine_free(e);
}

static void test_haproxy_view_and_unhealthy_fallbacks(void **state)
{
	struct engine *e = engine_new(&cfg, routed_policy("computed"), NOON_UTC);
	struct result r;
	struct msgb b;

	(void)state;
	/* HAProxy sees no server in the primary: skipped, its breaker opens. */
	routed_request(e, NOON_UTC, "a", 0, &r);
	assert_string_equal(r.backend, "provider_secondary");
	routed_request(e, NOON_UTC + 1, "a2", -1, &r);
	assert_string_equal(r.backend, "provider_secondary");
	engine_free(e);

	/* Both providers open: the route's fallback, free of charge. */
	e = engine_new(&cfg, routed_policy("computed"), NOON_UTC);
	for (int i = 0; i < 3; i++) {
		char uid[8];

		snprintf(uid, sizeof(uid), "p%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		routed_response(e, NOON_UTC, uid, "provider_primary", 503, 0);
		snprintf(uid, sizeof(uid), "s%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		routed_response(e, NOON_UTC, uid, "provider_secondary", 502, 0);
	}
	routed_request(e, NOON_UTC + 1, "x", -1, &r);
	assert_string_equal(r.action, "fallback");
	assert_string_equal(r.reason, "provider_unhealthy");
	assert_string_equal(r.fallback, "Sorry, later.\n\n> What is 2+2?");
	assert_int_equal(usage_of(e, "olga")->fallbacks, 1);
	assert_int_equal(usage_of(e, "olga")->requests, 6);
	engine_free(e);

	/* A route without a fallback refuses (HAProxy answers 503). */
	e = engine_new(&cfg, routed_policy("none"), NOON_UTC);
	routed_request(e, NOON_UTC, "a", 0, &r);
	msg_init(&b, "llm-request");
	arg_s(&b, "unique_id", "b");
	arg_s(&b, "user", "olga");
	arg_s(&b, "path", "/v1/chat/completions");
	arg_i(&b, "nbsrv_provider_primary", 0);
	arg_i(&b, "nbsrv_provider_secondary", 0);
	send_msg(e, NOON_UTC, &b, &r);
	assert_string_equal(r.action, "deny");
	assert_string_equal(r.reason, "provider_unhealthy");
	/* HAProxy's view opened both breakers for open_s (10 s): come back then. */
	assert_int_equal(r.retry_after, 10);
	engine_free(e);
}

static void end_line(struct engine *e, double now, const char *uid, int st, int pst, const char *tsc)
{
	struct engine_end end = {.uid = uid, .uid_len = strlen(uid), .backend = "provider_primary", .status = st,
				 .provider_status = pst, .tsc = tsc, .prompt_tokens = -1, .completion_tokens = -1,
				 .streamed = -1};

	engine_on_log(e, now, &end);
}

static void test_log_lines_tell_timeouts_from_clients_gone(void **state)
{
	struct engine *e = engine_new(&cfg, routed_policy("computed"), NOON_UTC);
	struct result r;
	char uid[16];

	(void)state;
	/* Clients that go away never open the provider's breaker. */
	for (int i = 0; i < 5; i++) {
		snprintf(uid, sizeof(uid), "c%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		end_line(e, NOON_UTC + 1, uid, 200, -1, "CD--");
	}
	assert_int_equal(engine_stats(e)->client_aborts, 5);
	/* Nor do HAProxy's own errors before any provider was contacted (LR:
	 * fail-closed, or a decision the client abandoned answered 499/503). */
	for (int i = 0; i < 5; i++) {
		snprintf(uid, sizeof(uid), "l%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		end_line(e, NOON_UTC + 1, uid, 503, -1, "LR--");
		snprintf(uid, sizeof(uid), "p%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		end_line(e, NOON_UTC + 1, uid, 503, -1, "PR--");
	}
	routed_request(e, NOON_UTC + 2, "ok", -1, &r);
	assert_string_equal(r.backend, "provider_primary");
	/* Server timeouts (sH: waiting for headers) do. */
	for (int i = 0; i < 3; i++) {
		snprintf(uid, sizeof(uid), "t%d", i);
		routed_request(e, NOON_UTC + 3, uid, -1, &r);
		end_line(e, NOON_UTC + 4, uid, 504, -1, "sH--");
	}
	routed_request(e, NOON_UTC + 5, "after", -1, &r);
	assert_string_equal(r.backend, "provider_secondary");
	/* Estimates stand for those requests (the provider may have worked). */
	assert_int_equal(engine_stats(e)->settled_by_log, 18);
	/* A line for a request already settled by its response changes nothing. */
	routed_response(e, NOON_UTC + 6, "ok", "provider_primary", 200, 0);
	end_line(e, NOON_UTC + 6, "ok", 504, -1, "sH--");
	assert_int_equal(engine_stats(e)->settled_by_log, 18);
	/* The log line alone settles a normal answer with its real usage. */
	{
		struct engine_end end = {.uid = "u9", .uid_len = 2, .backend = "provider_secondary", .status = 200,
					 .provider_status = 200, .tsc = "----", .prompt_tokens = 7,
					 .completion_tokens = 3, .streamed = 0};
		int64_t before;

		routed_request(e, NOON_UTC + 7, "u9", -1, &r);
		before = usage_of(e, "olga")->tokens_in;
		engine_on_log(e, NOON_UTC + 8, &end);
		assert_int_equal(usage_of(e, "olga")->tokens_in, before - 25 + 7); /* estimate 100/4 replaced */
		assert_int_equal(engine_stats(e)->settled, 2);
	}
	engine_free(e);
	/* An answer HAProxy rejected as invalid (PH, its own 502) is the
	 * provider's fault, also once a fallback route has turned that 502
	 * into a 200 for the client. */
	e = engine_new(&cfg, routed_policy("computed"), NOON_UTC);
	for (int i = 0; i < 3; i++) {
		snprintf(uid, sizeof(uid), "i%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		assert_string_equal(r.backend, "provider_primary");
		end_line(e, NOON_UTC + 1, uid, i == 0 ? 502 : 200, -1, "PH--");
	}
	routed_request(e, NOON_UTC + 2, "after-invalid", -1, &r);
	assert_string_equal(r.backend, "provider_secondary");
	engine_free(e);
	/* A provider that resets while sending its body (SD, sD) failed,
	 * although its status line said 200. */
	e = engine_new(&cfg, routed_policy("computed"), NOON_UTC);
	for (int i = 0; i < 3; i++) {
		snprintf(uid, sizeof(uid), "d%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		assert_string_equal(r.backend, "provider_primary");
		end_line(e, NOON_UTC + 1, uid, 200, 200, i == 1 ? "sD--" : "SD--");
	}
	routed_request(e, NOON_UTC + 2, "after-reset", -1, &r);
	assert_string_equal(r.backend, "provider_secondary");
	engine_free(e);
}

/* Prompt rows count against audit_backlog_max as audit rows do: with the
 * database away, logged prompts must not grow memory without bound. */
static void test_prompt_rows_bounded_by_backlog(void **state)
{
	struct policy *p = routed_policy("computed");
	struct engine *e;
	struct result r;
	struct batch *b;
	char uid[16];
	long saved = cfg.audit_backlog_max;

	(void)state;
	assert_int_equal(policy_set_route_logging(p, "chat", "full", 7), 0);
	e = engine_new(&cfg, p, NOON_UTC);
	cfg.audit_backlog_max = 1000;
	engine_set_store_pending(e, 996); /* 4 rows of room: 2 requests' audit + prompt */
	for (int i = 0; i < 6; i++) {
		snprintf(uid, sizeof(uid), "pl%d", i);
		routed_request(e, NOON_UTC, uid, -1, &r);
		assert_string_equal(r.action, "allow");
		routed_response(e, NOON_UTC + 1, uid, "provider_primary", 200, 0);
	}
	b = engine_take_batch(e, NOON_UTC, false);
	assert_non_null(b);
	assert_int_equal(b->naudit + b->nprompts, 4);
	assert_int_equal(b->nprompts, 2);
	assert_int_equal(engine_stats(e)->audit_dropped, 8);
	batch_free(b);
	cfg.audit_backlog_max = saved;
	engine_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_allows_until_spent_then_denies),
		cmocka_unit_test(test_settlement_replaces_estimate_once),
		cmocka_unit_test(test_streamed_and_failed_answers),
		cmocka_unit_test(test_limits_requests_cost_and_fallback_tier),
		cmocka_unit_test(test_user_override_beats_tier),
		cmocka_unit_test(test_api_keys),
		cmocka_unit_test(test_global_ceiling),
		cmocka_unit_test(test_reservation_expires_at_estimate),
		cmocka_unit_test(test_audit_rows_bounded_by_backlog),
		cmocka_unit_test(test_day_boundary_across_dst),
		cmocka_unit_test(test_batches_journal_then_fold),
		cmocka_unit_test(test_batches_fold_every_flush_when_asked),
		cmocka_unit_test(test_folds_paced_by_their_cost),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_completion_allowance_fields),
		cmocka_unit_test(test_breaker_moves_traffic_to_secondary_and_back),
		cmocka_unit_test(test_provider_429_closes_the_door_for_retry_after),
		cmocka_unit_test(test_haproxy_view_and_unhealthy_fallbacks),
		cmocka_unit_test(test_log_lines_tell_timeouts_from_clients_gone),
		cmocka_unit_test(test_prompt_rows_bounded_by_backlog),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
