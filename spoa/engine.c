/* engine: budget decisions and settlement (see engine.h). */
#include "engine.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "breaker.h"
#include "crypto.h"
#include "daytime.h"
#include "fallback.h"
#include "log.h"
#include "redact.h"
#include "strmap.h"

/* A max_tokens above this is treated as this: bounds the reservation a
 * single request can make, whatever the client writes. */
#define ENGINE_MAX_TOKENS_CAP 10000000
#define ENGINE_MAX_CHOICES 128
#define ENGINE_MAX_USAGE ((int64_t)1 << 32)
#define ENGINE_HEALTH_REFRESH_S 5.0
/* Writing daily_usage gets about this share of a CPU: a fold that cost
 * the writer c seconds is followed by the next one no sooner than c /
 * share later. With 100,000 users changing every second a fold costs
 * about 0.15 s here: at the default interval of 1 s, 15 % of a CPU taken
 * from the decisions and from whatever else shares the machine. */
#define ENGINE_FOLD_CPU_SHARE 0.1
/* Whatever the fold costs, daily_usage is never further behind than the
 * longest interval an operator may set. */
#define ENGINE_FOLD_INTERVAL_MAX_S 60.0
/* Likewise for the announced body size (4 GB). */
#define ENGINE_MAX_BODY ((int64_t)1 << 32)

struct engine {
	const struct config *cfg;
	struct policy *policy;
	struct ledger *ledger;
	struct batch *batch;
	struct daytime_day today;
	bool day_changed; /* the next batch says so even if nothing else changed */
	bool fold_due;    /* the next batch is a fold (engine_rewrite_usage) */
	double folded_at; /* when the last fold was taken */
	double fold_cpu;  /* writer CPU seconds of the last fold (engine_set_fold_cpu) */
	struct batch *spare;
	struct strmap breakers; /* provider name -> struct breaker, kept across policies */
	double health_at;       /* last time every breaker was snapshotted */
	double health_now;      /* the time of the snapshot being taken */
	int64_t unhealthy_retry; /* Retry-After of the provider_unhealthy being refused */
	size_t store_pending;    /* audit/prompt rows the writer has not written yet (engine_set_store_pending) */
	struct engine_stats stats;
};

static const char *const action_names[ENGINE_ACTION_COUNT] = {"allow", "deny", "fallback"};
static const char *const reason_names[ENGINE_REASON_COUNT] = {
	"ok", "budget_tokens", "budget_requests", "budget_cost", "global_ceiling", "unknown_key", "bad_request",
	"provider_unhealthy",
};

const char *engine_action_str(enum engine_action a)
{
	return (unsigned)a < ENGINE_ACTION_COUNT ? action_names[a] : "?";
}

const char *engine_reason_str(enum engine_reason r)
{
	return (unsigned)r < ENGINE_REASON_COUNT ? reason_names[r] : "?";
}

/* Seconds to the next day boundary; today is current (engine_on_message
 * rolls it first), so no time-zone conversion per request. */
static int64_t reset_in(const struct engine *e, double now)
{
	int64_t s = e->today.end - (int64_t)now;

	return s > 0 ? s : 1;
}

static void roll_day(struct engine *e, double now)
{
	daytime_day_of((int64_t)now, &e->today);
	e->day_changed = true;
	if (ledger_set_today(e->ledger, e->today.index, e->today.str) == -1)
		LOG_ERROR("more than %d days of reservations open: counters for %s cannot start", LEDGER_DAYS,
			  e->today.str);
}

static void apply_zone(const struct policy *p)
{
	if (strcmp(daytime_zone(), p->time_zone) != 0 && daytime_set_zone(p->time_zone) == -1)
		LOG_ERROR("settings.time_zone: unknown zone \"%s\"; days stay in %s", p->time_zone, daytime_zone());
}

#ifndef NDEBUG
static bool arg_table_ok(void);
#endif

struct engine *engine_new(const struct config *cfg, struct policy *policy, double now)
{
	struct engine *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	assert(arg_table_ok());
	e->cfg = cfg;
	e->policy = policy;
	e->ledger = ledger_new();
	e->batch = batch_new();
	if (!e->ledger || !e->batch) {
		engine_free(e);
		return NULL;
	}
	apply_zone(policy);
	roll_day(e, now);
	return e;
}

static void free_breaker(void *val, void *arg)
{
	(void)arg;
	free(val);
}

/* The breaker of a provider, created closed on first use. */
static struct breaker *breaker_of(struct engine *e, const char *name, double now)
{
	size_t n = strlen(name);
	struct breaker *b = strmap_get(&e->breakers, name, n);

	if (b)
		return b;
	b = malloc(sizeof(*b));
	if (!b)
		return NULL;
	breaker_init(b, name, now);
	if (strmap_put(&e->breakers, b->name, strlen(b->name), b) == -1) {
		free(b);
		return NULL;
	}
	return b;
}

void engine_each_breaker(const struct engine *e, void (*fn)(const struct breaker *b, void *arg), void *arg)
{
	strmap_each(&e->breakers, (void (*)(void *, void *))fn, arg);
}

void engine_free(struct engine *e)
{
	if (!e)
		return;
	ledger_free(e->ledger);
	batch_free(e->batch);
	batch_free(e->spare);
	strmap_each(&e->breakers, free_breaker, NULL);
	strmap_clear(&e->breakers);
	policy_free(e->policy);
	free(e);
}

struct policy *engine_set_policy(struct engine *e, struct policy *p, double now)
{
	struct policy *old = e->policy;

	e->policy = p;
	if (strcmp(old->time_zone, p->time_zone) != 0) {
		apply_zone(p);
		roll_day(e, now);
	}
	return old;
}

const struct policy *engine_policy(const struct engine *e)
{
	return e->policy;
}

struct ledger *engine_ledger(struct engine *e)
{
	return e->ledger;
}

const struct engine_stats *engine_stats(const struct engine *e)
{
	return &e->stats;
}

/* --- arguments --------------------------------------------------------- */

/* The arguments the engine reads, found in one pass over the message. */
enum arg_id {
	A_UNIQUE_ID, A_USER, A_AUTH, A_PATH, A_MODEL, A_CONTENT_LENGTH, A_MAX_COMPLETION_TOKENS,
	A_MAX_TOKENS, A_N, A_STREAM, A_STATUS, A_PROMPT_TOKENS, A_COMPLETION_TOKENS, A_STREAMED,
	A_BODY_HEAD, A_BACKEND, A_RETRY_AFTER, A_OUTPUT_HEAD,
	A_COUNT
};

static const struct {
	const char *name;
	size_t len;
} arg_names[A_COUNT] = {
#define ARG(s) {s, sizeof(s) - 1}
	ARG("unique_id"), ARG("user"), ARG("auth"), ARG("path"), ARG("model"), ARG("content_length"),
	ARG("max_completion_tokens"), ARG("max_tokens"), ARG("n"), ARG("stream"), ARG("status"),
	ARG("prompt_tokens"), ARG("completion_tokens"), ARG("streamed"), ARG("body_head"), ARG("backend"),
	ARG("retry_after"), ARG("output_head"),
#undef ARG
};

/* Which of arg_names a name is, or A_COUNT. Called for every argument of
 * every message: a switch on the length leaves at most three candidates,
 * each compared with a memcmp of constant size that the compiler turns
 * into a few integer comparisons (a scan of the table with libc's memcmp
 * cost as much as the rest of the message's decoding). */
static int arg_id(const uint8_t *p, size_t len)
{
#define NAME(s, id)                                      \
	if (memcmp(p, s, sizeof(s) - 1) == 0)            \
		return id;
	switch (len) {
	case 1:
		NAME("n", A_N) break;
	case 4:
		NAME("user", A_USER) NAME("auth", A_AUTH) NAME("path", A_PATH) break;
	case 5:
		NAME("model", A_MODEL) break;
	case 6:
		NAME("stream", A_STREAM) NAME("status", A_STATUS) break;
	case 7:
		NAME("backend", A_BACKEND) break;
	case 8:
		NAME("streamed", A_STREAMED) break;
	case 9:
		NAME("unique_id", A_UNIQUE_ID) NAME("body_head", A_BODY_HEAD) break;
	case 10:
		NAME("max_tokens", A_MAX_TOKENS) break;
	case 11:
		NAME("retry_after", A_RETRY_AFTER) NAME("output_head", A_OUTPUT_HEAD) break;
	case 13:
		NAME("prompt_tokens", A_PROMPT_TOKENS) break;
	case 14:
		NAME("content_length", A_CONTENT_LENGTH) break;
	case 17:
		NAME("completion_tokens", A_COMPLETION_TOKENS) break;
	case 21:
		NAME("max_completion_tokens", A_MAX_COMPLETION_TOKENS) break;
	}
	return A_COUNT;
#undef NAME
}

#ifndef NDEBUG
/* arg_id knows every name of arg_names (checked once, in engine_new). */
static bool arg_table_ok(void)
{
	for (int k = 0; k < A_COUNT; k++)
		if (arg_id((const uint8_t *)arg_names[k].name, arg_names[k].len) != k)
			return false;
	return true;
}
#endif

/* args[id] = the first argument of that name, or NULL. */
static void index_args(const struct spop_msg *m, const struct spop_data *args[A_COUNT])
{
	memset(args, 0, A_COUNT * sizeof(args[0]));
	for (unsigned i = 0; i < m->nargs; i++) {
		int k = arg_id(m->args[i].name.ptr, m->args[i].name.len);

		if (k < A_COUNT && !args[k])
			args[k] = &m->args[i].value;
	}
}

static struct spop_str arg_str(const struct spop_data *d)
{
	struct spop_str none = {NULL, 0};

	if (!d || (d->type != SPOP_T_STR && d->type != SPOP_T_BIN))
		return none;
	return d->v.s;
}

/* An integer argument, or def when missing or not a number. HAProxy sends
 * integers as INT64, but json_query may hand us a string. */
static int64_t arg_int(const struct spop_data *d, int64_t def)
{
	char buf[24];

	if (!d)
		return def;
	switch (d->type) {
	case SPOP_T_INT32:
	case SPOP_T_INT64:
		return d->v.i;
	case SPOP_T_UINT32:
	case SPOP_T_UINT64:
		return d->v.u > INT64_MAX ? INT64_MAX : (int64_t)d->v.u;
	case SPOP_T_BOOL:
		return d->v.b;
	case SPOP_T_STR:
		if (d->v.s.len == 0 || d->v.s.len >= sizeof(buf))
			return def;
		memcpy(buf, d->v.s.ptr, d->v.s.len);
		buf[d->v.s.len] = '\0';
		{
			char *end;
			long long v = strtoll(buf, &end, 10);

			return *end ? def : v;
		}
	default:
		return def;
	}
}

/* HAProxy's usable-server count for a backend (argument nbsrv_<name>),
 * or -1 when not sent. */
static int nbsrv_of(const struct spop_msg *m, const char *backend)
{
	size_t blen = strlen(backend);

	for (unsigned i = 0; i < m->nargs; i++) {
		const struct spop_str *n = &m->args[i].name;

		if (n->len == 6 + blen && memcmp(n->ptr, "nbsrv_", 6) == 0 && memcmp(n->ptr + 6, backend, blen) == 0)
			return (int)arg_int(&m->args[i].value, -1);
	}
	return -1;
}

static bool arg_bool(const struct spop_data *d)
{
	if (!d)
		return false;
	if (d->type == SPOP_T_BOOL)
		return d->v.b;
	if (d->type == SPOP_T_STR)
		return spop_str_eq(d->v.s, "true") || spop_str_eq(d->v.s, "1");
	return arg_int(d, 0) != 0;
}

/* --- audit -------------------------------------------------------------- */

/*
 * A writer that cannot keep up (or a database that refuses writes) must
 * not make audit and prompt rows eat all memory: once audit_backlog_max of
 * them wait, new ones are dropped and counted. Usage rows never are: they
 * coalesce per user-day, so they are bounded by the users anyway. The
 * writer's share is refreshed at every flush tick, so the bound can be
 * passed by one flush interval's rows.
 */
static bool backlog_full(struct engine *e)
{
	size_t waiting = e->batch->naudit + e->batch->nprompts + e->store_pending;

	if (waiting < (size_t)e->cfg->audit_backlog_max)
		return false;
	if (e->stats.audit_dropped++ % 10000 == 0)
		LOG_WARN("audit_log: %zu audit and prompt rows wait for the database (audit_backlog_max); dropping "
			 "new ones, %llu so far (usage counters are kept)",
			 waiting, (unsigned long long)e->stats.audit_dropped);
	return true;
}

static struct batch_audit *audit_row(struct engine *e, double decided, const char *action,
				     const char *reason, const char *outcome)
{
	struct batch_audit *a;

	if (!e->cfg->audit_log || backlog_full(e))
		return NULL;
	a = batch_add_audit(e->batch);
	if (!a) {
		e->stats.audit_dropped++;
		return NULL;
	}
	a->decided_ms = (int64_t)(decided * 1000.0);
	a->tokens_in = a->tokens_out = -1;
	a->status = a->latency_ms = -1;
	batch_copy(a->action, sizeof(a->action), action, strlen(action));
	batch_copy(a->reason, sizeof(a->reason), reason, strlen(reason));
	batch_copy(a->outcome, sizeof(a->outcome), outcome, strlen(outcome));
	return a;
}

static void audit_resv(struct engine *e, const struct ledger_resv *r, double now, const char *outcome,
		       int64_t in, int64_t out, int64_t cost, int status)
{
	struct batch_audit *a = audit_row(e, r->created, "allow", "ok", outcome);

	if (!a)
		return;
	batch_copy(a->uid, sizeof(a->uid), r->uid, r->uid_len);
	batch_copy(a->user, sizeof(a->user), r->u->user, r->u->len);
	batch_copy(a->route, sizeof(a->route), r->route, strlen(r->route));
	batch_copy(a->model, sizeof(a->model), r->model, strlen(r->model));
	batch_copy(a->provider, sizeof(a->provider), r->provider, strlen(r->provider));
	a->tokens_estimated = r->est_in + r->est_out;
	a->tokens_in = in;
	a->tokens_out = out;
	a->cost_nano = cost;
	a->status = status;
	a->latency_ms = (int32_t)llround((now - r->created) * 1000.0);
}

/* --- decisions ------------------------------------------------------------ */

struct request {
	struct spop_str uid, user, auth, path, model, body_head;
	const struct policy_route *route;
	int64_t content_length, max_tokens, n;
	bool stream;
};

/* "Bearer <key>" (any case, spaces around) -> the key. */
static struct spop_str bearer_key(struct spop_str auth)
{
	struct spop_str k = {NULL, 0};
	const uint8_t *p, *end;

	if (!auth.ptr)
		return k;
	p = auth.ptr;
	end = auth.ptr + auth.len;
	while (p < end && *p == ' ')
		p++;
	if (end - p < 7 || strncasecmp((const char *)p, "bearer ", 7) != 0)
		return k;
	p += 7;
	while (p < end && *p == ' ')
		p++;
	while (end > p && (end[-1] == ' ' || end[-1] == '\r'))
		end--;
	k.ptr = p;
	k.len = (size_t)(end - p);
	return k;
}

/*
 * Who is asking: the identity header set by the auth layer in front, else
 * the API key. Writes the user id into user (NUL-terminated) and the tier
 * an API key imposes into *tier. Returns false for an unknown, revoked or
 * expired key (or no identity at all) that the policy refuses.
 */
static bool identify(struct engine *e, double now, const struct request *rq, char *user, size_t usersz,
		     const struct policy_tier **tier, enum engine_reason *why)
{
	const struct policy *p = e->policy;
	struct spop_str key;
	char hmac[CRYPTO_HMAC_HEX_LEN + 1];
	const struct policy_key *k;

	*tier = NULL;
	if (rq->user.len > 0) {
		if (rq->user.len > LEDGER_USER_MAX) {
			*why = ENGINE_BAD_REQUEST;
			return false;
		}
		batch_copy(user, usersz, (const char *)rq->user.ptr, rq->user.len);
		return true;
	}
	key = bearer_key(rq->auth);
	if (key.len > 0) {
		crypto_key_hmac((const char *)key.ptr, key.len, hmac);
		k = policy_key(p, hmac);
		if (k && !k->revoked && (k->expires_at == 0 || k->expires_at > (int64_t)now)) {
			batch_copy(user, usersz, k->user_id, strlen(k->user_id));
			*tier = k->tier;
			return true;
		}
	}
	/* Unknown, revoked, expired, or no key: the policy says what then. */
	if (!p->unknown_key_tier) {
		*why = ENGINE_UNKNOWN_KEY;
		return false;
	}
	batch_copy(user, usersz, "anonymous", 9);
	*tier = p->unknown_key_tier;
	return true;
}

static void put_limits(struct ack *out, const struct policy_limits *lim, const struct ledger_usage *u,
		       int64_t reset_s)
{
	if (lim->tokens >= 0) {
		int64_t used = u ? u->tokens_in + u->tokens_out : 0, left = lim->tokens - used;

		ack_set_int(out, "limit_tokens", lim->tokens);
		ack_set_int(out, "remaining_tokens", left > 0 ? left : 0);
	}
	ack_set_int(out, "reset_s", reset_s);
}

/* Which limit, if any, the estimate would cross. */
static enum engine_reason over_budget(const struct policy_limits *lim, const struct ledger_usage *u,
				      int64_t tokens, int64_t cost)
{
	if (lim->requests >= 0 && (int64_t)u->requests + 1 > lim->requests)
		return ENGINE_BUDGET_REQUESTS;
	if (lim->tokens >= 0 && u->tokens_in + u->tokens_out + tokens > lim->tokens)
		return ENGINE_BUDGET_TOKENS;
	if (lim->cost_nano >= 0 && u->cost_nano + cost > lim->cost_nano)
		return ENGINE_BUDGET_COST;
	return ENGINE_OK;
}

/* The answer HAProxy renders when this request cannot (or did not) get a
 * provider's: the route's, or the settings' text when no route matched. */
static void put_fallback_text(struct engine *e, const struct request *rq, struct ack *out)
{
	char text[4096];
	size_t n = 0;

	if (rq->route)
		n = fallback_compose(rq->route, rq->body_head.ptr, rq->body_head.len, text, sizeof(text));
	if (n > 0) {
		ack_set_str(out, "fallback_text", text, n);
		return;
	}
	/* A route without a fallback of its own still gets the settings'
	 * text when a fallback was decided (over-budget tier, global
	 * ceiling): an answer without text would read as "no decision".
	 * Sent from where it is, at most what the buffer above holds, as the
	 * copy through snprintf did (it cost more than the rest of the ACK). */
	n = strnlen(e->policy->fallback_text, sizeof(text) - 1);
	if (n > 0)
		ack_set_str(out, "fallback_text", e->policy->fallback_text, n);
}

static void refuse(struct engine *e, double now, const struct request *rq, const char *user,
		   struct ledger_usage *u, enum engine_action action, enum engine_reason why,
		   const struct policy_limits *lim, int64_t est, struct ack *out)
{
	int64_t reset_s = reset_in(e, now);
	struct batch_audit *a;

	e->stats.decisions[action][why]++;
	/* The decisive variable first: HAProxy stops at a malformed action. */
	ack_set_cstr(out, "action", engine_action_str(action));
	ack_set_cstr(out, "reason", engine_reason_str(why));
	if (action == ENGINE_DENY) {
		/* Only a budget comes back by itself, at the day boundary. */
		if (why == ENGINE_PROVIDER_UNHEALTHY)
			ack_set_int(out, "retry_after", e->unhealthy_retry);
		else if (why != ENGINE_UNKNOWN_KEY && why != ENGINE_BAD_REQUEST)
			ack_set_int(out, "retry_after", reset_s);
	} else if (rq->route && rq->route->fallback == POLICY_FALLBACK_BACKEND) {
		ack_set_cstr(out, "backend", rq->route->fallback_backend);
	} else {
		put_fallback_text(e, rq, out);
	}
	if (rq->route)
		ack_set_cstr(out, "route", rq->route->name);
	if (lim)
		put_limits(out, lim, u, reset_s);
	if (u)
		ledger_charge(e->ledger, u, 0, 0, 0, 0, action == ENGINE_DENY, action == ENGINE_FALLBACK);
	a = audit_row(e, now, engine_action_str(action), engine_reason_str(why),
		      action == ENGINE_DENY ? "refused" : "fallback");
	if (a) {
		batch_copy(a->uid, sizeof(a->uid), (const char *)rq->uid.ptr, rq->uid.len);
		batch_copy(a->user, sizeof(a->user), user, strlen(user));
		if (rq->route)
			batch_copy(a->route, sizeof(a->route), rq->route->name, strlen(rq->route->name));
		else
			batch_copy(a->route, sizeof(a->route), (const char *)rq->path.ptr, rq->path.len);
		batch_copy(a->model, sizeof(a->model), (const char *)rq->model.ptr, rq->model.len);
		a->tokens_estimated = est;
	}
}

/* What the route's logging mode keeps of a text: its SHA-256, the text
 * with secrets masked, or the text. malloc'ed; NULL when there is none. */
static char *logged_text(enum policy_logging mode, struct spop_str t)
{
	char *out;
	size_t size;

	if (!t.ptr || t.len == 0 || mode == POLICY_LOG_OFF)
		return NULL;
	switch (mode) {
	case POLICY_LOG_HASH:
		out = malloc(65);
		if (out)
			crypto_sha256_hex(t.ptr, t.len, out);
		return out;
	case POLICY_LOG_REDACTED:
		/* Each mask is at most a few bytes longer than what it hides. */
		size = t.len + t.len / 2 + 64;
		out = malloc(size);
		if (out)
			redact((const char *)t.ptr, t.len, out, size);
		return out;
	default:
		out = malloc(t.len + 1);
		if (out) {
			memcpy(out, t.ptr, t.len);
			out[t.len] = '\0';
		}
		return out;
	}
}

/* The prompt_log row of a closing reservation, when its route logs. */
static void log_prompt(struct engine *e, struct ledger_resv *r, double now, struct spop_str output)
{
	struct batch_prompt *pr;

	if (r->log_mode == POLICY_LOG_OFF || backlog_full(e))
		return;
	pr = batch_add_prompt(e->batch);
	if (!pr) {
		e->stats.audit_dropped++;
		return;
	}
	pr->logged_ms = (int64_t)(now * 1000.0);
	pr->prompt = r->prompt;
	r->prompt = NULL;
	pr->prompt_bytes = pr->prompt ? (int64_t)r->prompt_bytes : -1;
	/* HAProxy hashed the answer already for "hash" routes. */
	if (r->log_mode == POLICY_LOG_HASH && output.len == 64)
		pr->output = logged_text(POLICY_LOG_FULL, output);
	else
		pr->output = logged_text((enum policy_logging)r->log_mode, output);
	pr->output_bytes = pr->output ? (int64_t)output.len : -1;
	batch_copy(pr->uid, sizeof(pr->uid), r->uid, r->uid_len);
	batch_copy(pr->user, sizeof(pr->user), r->u->user, r->u->len);
	batch_copy(pr->route, sizeof(pr->route), r->route, strlen(r->route));
	batch_copy(pr->mode, sizeof(pr->mode), policy_logging_str((enum policy_logging)r->log_mode),
		   strlen(policy_logging_str((enum policy_logging)r->log_mode)));
}

static void decide(struct engine *e, double now, const struct spop_msg *msg, struct ack *out)
{
	const struct spop_data *args[A_COUNT];
	const struct policy *p = e->policy;
	struct request rq;
	char user[LEDGER_USER_MAX + 1];
	const struct policy_tier *tier_hint, *tier;
	const struct policy_price *price;
	struct policy_limits lim;
	struct ledger_usage *u;
	struct ledger_resv *r;
	enum engine_reason why = ENGINE_OK;
	int64_t est_in, est_out, est_cost, reset_s;
	double in_price = 0, out_price = 0;
	const struct policy_provider *chosen;
	const char *backend = e->cfg->default_backend;
	bool probe = false;

	index_args(msg, args);
	rq.uid = arg_str(args[A_UNIQUE_ID]);
	rq.user = arg_str(args[A_USER]);
	rq.auth = arg_str(args[A_AUTH]);
	rq.path = arg_str(args[A_PATH]);
	rq.model = arg_str(args[A_MODEL]);
	rq.content_length = arg_int(args[A_CONTENT_LENGTH], 0);
	/* OpenAI's newer field wins over the deprecated one, as at OpenAI. */
	rq.max_tokens = arg_int(args[A_MAX_COMPLETION_TOKENS], 0);
	if (rq.max_tokens <= 0)
		rq.max_tokens = arg_int(args[A_MAX_TOKENS], 0);
	rq.n = arg_int(args[A_N], 1);
	rq.stream = arg_bool(args[A_STREAM]);
	rq.body_head = arg_str(args[A_BODY_HEAD]);
	rq.route = policy_route_for(p, (const char *)rq.path.ptr, rq.path.len, (const char *)rq.model.ptr,
				    rq.model.len);

	if (!identify(e, now, &rq, user, sizeof(user), &tier_hint, &why)) {
		refuse(e, now, &rq, "", NULL, ENGINE_DENY, why, NULL, 0, out);
		return;
	}
	tier = policy_limits_of(p, user, strlen(user), tier_hint, &lim);
	u = ledger_user(e->ledger, user, strlen(user), true);
	if (!u) {
		/* Out of memory: fail open, the same as HAProxy without us. */
		LOG_ERROR("no memory for user counters: allowing without accounting");
		ack_set_cstr(out, "action", "allow");
		ack_set_cstr(out, "backend", e->cfg->default_backend);
		ack_set_cstr(out, "reason", "ok");
		return;
	}

	/* The estimate: about 4 bytes of JSON body per prompt token (an
	 * overestimate, which is the safe side), plus the completion the
	 * client allows itself. Bounded work whatever the prompt size. */
	if (rq.content_length > ENGINE_MAX_BODY)
		rq.content_length = ENGINE_MAX_BODY;
	est_in = rq.content_length > 0 ? (rq.content_length + 3) / 4 : 0;
	est_out = rq.max_tokens > 0 ? rq.max_tokens : p->default_max_tokens;
	if (est_out > ENGINE_MAX_TOKENS_CAP)
		est_out = ENGINE_MAX_TOKENS_CAP;
	/* n choices: each may use the whole completion allowance. */
	if (rq.n > 1)
		est_out *= rq.n > ENGINE_MAX_CHOICES ? ENGINE_MAX_CHOICES : rq.n;
	price = policy_price(p, (const char *)rq.model.ptr, rq.model.len);
	if (price) {
		in_price = price->in_nano_per_token;
		out_price = price->out_nano_per_token;
	}
	est_cost = llround((double)est_in * in_price + (double)est_out * out_price);

	/* A NOTIFY replayed for a request still open was decided already:
	 * answer the same without charging twice. */
	if (rq.uid.len) {
		const struct ledger_resv *open = ledger_find(e->ledger, (const char *)rq.uid.ptr, rq.uid.len);

		if (open) {
			ack_set_cstr(out, "action", "allow");
			ack_set_cstr(out, "backend", open->provider);
			ack_set_cstr(out, "reason", "ok");
			put_limits(out, &lim, u, reset_in(e, now));
			return;
		}
	}

	if (p->global_ceiling_nano >= 0 && ledger_today_cost(e->ledger) >= p->global_ceiling_nano) {
		refuse(e, now, &rq, user, u, p->global_ceiling_fallback ? ENGINE_FALLBACK : ENGINE_DENY,
		       ENGINE_GLOBAL_CEILING, &lim, est_in + est_out, out);
		return;
	}
	why = over_budget(&lim, u, est_in + est_out, est_cost);
	if (why != ENGINE_OK) {
		refuse(e, now, &rq, user, u, tier->over_budget_fallback ? ENGINE_FALLBACK : ENGINE_DENY, why, &lim,
		       est_in + est_out, out);
		return;
	}

	/* Which provider: the first of the route's chain that is enabled, has
	 * a server up in HAProxy's eyes, and whose breaker lets it through. */
	if (rq.route) {
		const struct policy_route *rt = rq.route;

		chosen = NULL;
		for (int i = 0; i < rt->nchain && !chosen; i++) {
			const struct policy_provider *pr = rt->chain[i];
			struct breaker *b;
			int up;

			if (!pr->enabled || !(b = breaker_of(e, pr->name, now)))
				continue;
			up = nbsrv_of(msg, pr->name);
			if (up >= 0)
				breaker_servers(b, pr, up, now);
			if (up == 0)
				continue;
			if (breaker_allow(b, pr, now, &probe))
				chosen = pr;
		}
		if (!chosen) {
			enum engine_action a = rt->fallback == POLICY_FALLBACK_NONE ? ENGINE_DENY : ENGINE_FALLBACK;
			double soonest = 0;

			/* When to come back: the first breaker to turn half-open. */
			for (int i = 0; i < rt->nchain; i++) {
				struct breaker *b = breaker_of(e, rt->chain[i]->name, now);

				if (b && b->state == BREAKER_OPEN && (soonest == 0 || b->open_until < soonest))
					soonest = b->open_until;
			}
			e->unhealthy_retry = soonest > now ? (int64_t)ceil(soonest - now) : 1;
			refuse(e, now, &rq, user, u, a, ENGINE_PROVIDER_UNHEALTHY, NULL, est_in + est_out, out);
			return;
		}
		backend = chosen->name;
	}

	/* Allowed: charge the estimate now, correct it when the answer comes. */
	e->stats.decisions[ENGINE_ALLOW][ENGINE_OK]++;
	ledger_charge(e->ledger, u, est_in, est_out, est_cost, 1, 0, 0);
	ack_set_cstr(out, "action", "allow");
	ack_set_cstr(out, "backend", backend);
	ack_set_cstr(out, "reason", "ok");
	reset_s = reset_in(e, now);
	put_limits(out, &lim, u, reset_s);
	if (rq.route) {
		ack_set_cstr(out, "route", rq.route->name);
		ack_set_int(out, "timeout_ms", rq.route->timeout_ms);
		/* What HAProxy puts of the answer in the log line: the text for
		 * "full", its SHA-256 for "hash"; nothing for "redacted"
		 * (HAProxy cannot redact, and its own log keeps the line). */
		if (rq.route->logging == POLICY_LOG_FULL || rq.route->logging == POLICY_LOG_HASH)
			ack_set_cstr(out, "log_output", policy_logging_str(rq.route->logging));
		/* Last and largest: what HAProxy renders if the provider fails. */
		if (rq.route->fallback == POLICY_FALLBACK_STATIC || rq.route->fallback == POLICY_FALLBACK_COMPUTED)
			put_fallback_text(e, &rq, out);
	}

	r = ledger_reserve(e->ledger, u, (const char *)rq.uid.ptr, rq.uid.len, now);
	if (!r) {
		/* No unique-id: nothing can settle it, so the estimate is final
		 * and the provider's outcome stays unknown. */
		struct batch_audit *a = audit_row(e, now, "allow", "ok", "estimated");

		if (probe)
			breaker_probe_done(breaker_of(e, backend, now));
		e->stats.settled_estimate++;
		if (a) {
			batch_copy(a->uid, sizeof(a->uid), (const char *)rq.uid.ptr, rq.uid.len);
			batch_copy(a->user, sizeof(a->user), user, strlen(user));
			batch_copy(a->route, sizeof(a->route), (const char *)rq.path.ptr, rq.path.len);
			batch_copy(a->model, sizeof(a->model), (const char *)rq.model.ptr, rq.model.len);
			batch_copy(a->provider, sizeof(a->provider), backend, strlen(backend));
			a->tokens_estimated = est_in + est_out;
			a->cost_nano = est_cost;
		}
		return;
	}
	r->est_in = est_in;
	r->est_out = est_out;
	r->est_cost = est_cost;
	r->in_price = in_price;
	r->out_price = out_price;
	r->probe = probe;
	batch_copy(r->model, sizeof(r->model), (const char *)rq.model.ptr, rq.model.len);
	/* The audit's route: the route's name, or the path when none matched. */
	if (rq.route)
		batch_copy(r->route, sizeof(r->route), rq.route->name, strlen(rq.route->name));
	else
		batch_copy(r->route, sizeof(r->route), (const char *)rq.path.ptr, rq.path.len);
	if (rq.route && rq.route->logging != POLICY_LOG_OFF) {
		r->log_mode = (uint8_t)rq.route->logging;
		r->prompt = logged_text(rq.route->logging, rq.body_head);
		r->prompt_bytes = (uint32_t)rq.body_head.len;
	}
	batch_copy(r->provider, sizeof(r->provider), backend, strlen(backend));
}

/* Tells the breaker of the provider that served r how it went. */
static void feed_breaker(struct engine *e, const struct ledger_resv *r, const char *backend, double now,
			 int64_t status, int64_t retry_after, bool provider_fault)
{
	const struct policy_provider *pr = policy_provider(e->policy, backend[0] ? backend : r->provider);
	struct breaker *b;

	if (!pr)
		pr = policy_provider(e->policy, r->provider);
	if (!pr || !(b = breaker_of(e, pr->name, now)))
		return;
	if (status == 429)
		breaker_rate_limited(b, pr, now, (double)retry_after, r->probe);
	else if (provider_fault || status >= 500)
		breaker_result(b, pr, now, true, r->probe);
	else if (status >= 200)
		breaker_result(b, pr, now, false, r->probe);
	else if (r->probe)
		breaker_probe_done(b);
	breaker_latency(b, now - r->created);
}

/*
 * Closes a reservation with what is known of its end (see struct
 * engine_end): feeds the provider's breaker, replaces the estimate with
 * the real usage when the provider's JSON answer reported it, writes the
 * audit and prompt rows, frees r.
 */
static void finish(struct engine *e, struct ledger_resv *r, double now, const struct engine_end *end)
{
	int64_t in = end->prompt_tokens, out = end->completion_tokens, cost;
	int status = end->provider_status;
	bool client_gone = end->tsc && (end->tsc[0] == 'C' || end->tsc[0] == 'c');
	/* How far the session got (the second letter): a provider was only
	 * involved from the connection on. An error HAProxy made up before
	 * that (LR: fail-closed, a decision the client abandoned) is no
	 * provider's doing. */
	bool reached_server = end->tsc && end->tsc[0] && end->tsc[1] && strchr("CHDL", end->tsc[1]);
	/* A server-side timeout, refusal or reset (s, S) is the provider's,
	 * even after its status line came (SD: reset while sending the body,
	 * the client got a truncated answer). */
	bool server_abort = end->tsc && (end->tsc[0] == 's' || end->tsc[0] == 'S');
	/* So is an answer HAProxy rejected as invalid (PH): HAProxy answered
	 * its own 502, which a route with a fallback has turned into a 200 by
	 * the time the line is logged. */
	bool invalid_answer = end->tsc && end->tsc[0] == 'P' && end->tsc[1] == 'H';
	bool server_fault = server_abort || invalid_answer ||
			    (!client_gone && end->tsc && end->tsc[0] != 'L' && reached_server &&
			     end->provider_status < 0 && end->status >= 500);

	/* Usage comes from a response body: bound it like any peer input.
	 * No real answer reports more than this; a wild value must not wrap
	 * the counters or make the database refuse the row. */
	if (in > ENGINE_MAX_USAGE)
		in = ENGINE_MAX_USAGE;
	if (out > ENGINE_MAX_USAGE)
		out = ENGINE_MAX_USAGE;
	if (server_abort || (status < 0 && server_fault)) {
		/* No (whole) answer: timeout, refused or reset on the provider's
		 * side, or an answer HAProxy could not use. */
		feed_breaker(e, r, end->backend, now, -1, 0, true);
	} else if (status >= 0) {
		/* The provider answered: its status is the verdict, even if the
		 * client left while it was being sent. */
		feed_breaker(e, r, end->backend, now, status, end->retry_after, false);
	} else {
		/* The client went away first, or nothing is known: no verdict. */
		struct breaker *b = r->probe ? breaker_of(e, r->provider, now) : NULL;

		if (b)
			breaker_probe_done(b);
	}
	if (client_gone)
		e->stats.client_aborts++;
	if (status >= 400 && in < 0 && out < 0) {
		/* A failed call with no usage: providers do not bill it. */
		in = out = 0;
	} else if (end->streamed == 1 || status < 200 || status >= 300 || in < 0 || out < 0) {
		/* Streamed, no answer, or a body HAProxy could not read: the
		 * estimate stands (the provider may have worked for it). */
		e->stats.settled_estimate++;
		audit_resv(e, r, now, "estimated", r->est_in, r->est_out, r->est_cost,
			   status >= 0 ? status : end->status);
		log_prompt(e, r, now, end->output);
		ledger_resv_free(e->ledger, r);
		return;
	}
	cost = llround((double)in * r->in_price + (double)out * r->out_price);
	ledger_charge(e->ledger, r->u, in - r->est_in, out - r->est_out, cost - r->est_cost, 0, 0, 0);
	e->stats.settled++;
	e->stats.tokens_charged += (uint64_t)(in + out);
	e->stats.cost_nano_charged += (uint64_t)cost;
	audit_resv(e, r, now, "settled", in, out, cost, status);
	log_prompt(e, r, now, end->output);
	ledger_resv_free(e->ledger, r);
}

/* The llm-response SPOE message: the provider answered. */
static void settle(struct engine *e, double now, const struct spop_msg *msg)
{
	const struct spop_data *args[A_COUNT];
	struct spop_str uid, be;
	struct ledger_resv *r;
	struct engine_end end = {0};
	char backend[64];

	index_args(msg, args);
	uid = arg_str(args[A_UNIQUE_ID]);
	r = ledger_take(e->ledger, (const char *)uid.ptr, uid.len);
	if (!r) {
		/* Settled already, expired, or never ours: changing anything
		 * now would count twice. */
		e->stats.late_responses++;
		return;
	}
	be = arg_str(args[A_BACKEND]);
	batch_copy(backend, sizeof(backend), (const char *)be.ptr, be.len);
	end.backend = backend;
	end.status = end.provider_status = (int)arg_int(args[A_STATUS], -1);
	end.prompt_tokens = arg_int(args[A_PROMPT_TOKENS], -1);
	end.completion_tokens = arg_int(args[A_COMPLETION_TOKENS], -1);
	end.streamed = arg_bool(args[A_STREAMED]);
	end.retry_after = arg_int(args[A_RETRY_AFTER], 0);
	end.output = arg_str(args[A_OUTPUT_HEAD]);
	finish(e, r, now, &end);
}

void engine_on_message(struct engine *e, double now, const struct spop_msg *msg, struct ack *out)
{
	e->health_now = now;
	if (now >= (double)e->today.end)
		engine_tick(e, now);
	if (spop_str_eq(msg->name, "llm-request"))
		decide(e, now, msg, out);
	else if (spop_str_eq(msg->name, "llm-response"))
		settle(e, now, msg);
	else
		e->stats.unknown_messages++;
}

void engine_on_log(struct engine *e, double now, const struct engine_end *end)
{
	e->health_now = now;
	struct ledger_resv *r = ledger_take(e->ledger, end->uid, end->uid_len);

	if (!r)
		return; /* settled already, or never ours (denied, fallback, fail-open) */
	e->stats.settled_by_log++;
	finish(e, r, now, end);
}

static void expire(struct engine *e, struct ledger_resv *r, double now)
{
	if (r->probe) {
		struct breaker *b = breaker_of(e, r->provider, now);

		if (b)
			breaker_probe_done(b);
	}
	e->stats.expired++;
	audit_resv(e, r, now, "expired", r->est_in, r->est_out, r->est_cost, -1);
	log_prompt(e, r, now, (struct spop_str){NULL, 0});
	ledger_resv_free(e->ledger, r);
}

static void mark_dirty(void *val, void *arg)
{
	(void)arg;
	((struct breaker *)val)->dirty = true;
}

static void ensure_breaker(void *val, void *arg)
{
	struct engine *e = arg;

	breaker_of(e, ((const struct policy_provider *)val)->name, e->health_now);
}

void engine_tick(struct engine *e, double now)
{
	struct ledger_resv *r;

	e->health_now = now;
	/* Every provider has a row in provider_health, refreshed every few
	 * seconds so that its window and timestamps stay current. */
	strmap_each(&e->policy->providers, ensure_breaker, e);
	if (now - e->health_at >= ENGINE_HEALTH_REFRESH_S) {
		e->health_at = now;
		strmap_each(&e->breakers, mark_dirty, NULL);
	}

	if (now >= (double)e->today.end || now < (double)e->today.start)
		roll_day(e, now);
	while ((r = ledger_take_expired(e->ledger, now - (double)e->policy->reservation_ttl_s)))
		expire(e, r, now);
	ledger_evict(e->ledger);
}

void engine_expire_all(struct engine *e, double now)
{
	struct ledger_resv *r;

	while ((r = ledger_take_expired(e->ledger, INFINITY)))
		expire(e, r, now);
}

static bool add_usage(const struct ledger_usage *u, void *arg)
{
	struct engine *e = arg;
	const char *day = ledger_day_str(e->ledger, u->day);
	struct batch_usage *b;

	if (!day)
		return true; /* a day no longer held: nothing to write it under */
	b = batch_add_usage(e->batch, day, u->user, u->len);
	if (!b)
		return false;
	b->tokens_in = u->tokens_in;
	b->tokens_out = u->tokens_out;
	b->cost_nano = u->cost_nano;
	b->requests = u->requests;
	b->denials = u->denials;
	b->fallbacks = u->fallbacks;
	return true;
}

static void add_health(void *val, void *arg)
{
	struct breaker *b = val;
	struct engine *e = arg;
	const struct policy_provider *pr = policy_provider(e->policy, b->name);
	struct batch_health *h;
	uint32_t req = 0, fail = 0;

	if (!b->dirty)
		return;
	h = batch_add_health(e->batch);
	if (!h)
		return;
	b->dirty = false;
	if (pr)
		breaker_window(b, pr, e->health_now, &req, &fail);
	batch_copy(h->provider, sizeof(h->provider), b->name, strlen(b->name));
	if (pr && !pr->enabled)
		batch_copy(h->state, sizeof(h->state), "disabled", 8);
	else
		batch_copy(h->state, sizeof(h->state), breaker_state_str(b->state), strlen(breaker_state_str(b->state)));
	if (b->reason && b->state != BREAKER_CLOSED)
		batch_copy(h->reason, sizeof(h->reason), b->reason, strlen(b->reason));
	h->since_ms = (int64_t)(b->since * 1000.0);
	h->open_until_ms = b->state == BREAKER_OPEN ? (int64_t)(b->open_until * 1000.0) : -1;
	h->window_requests = req;
	h->window_failures = fail;
	h->consecutive = b->consecutive;
	h->probes = b->probes_in_flight;
	h->servers_up = b->servers_up;
	h->opened_total = (int64_t)b->opened_total;
	h->requests_total = (int64_t)b->requests_total;
	h->failures_total = (int64_t)b->failures_total;
}

double engine_fold_interval(const struct engine *e)
{
	double set = (double)e->policy->daily_usage_interval_ms / 1000.0, paced = e->fold_cpu / ENGINE_FOLD_CPU_SHARE;

	if (paced > ENGINE_FOLD_INTERVAL_MAX_S)
		paced = ENGINE_FOLD_INTERVAL_MAX_S;
	return paced > set ? paced : set;
}

void engine_set_fold_cpu(struct engine *e, double seconds)
{
	e->fold_cpu = seconds > 0 ? seconds : 0;
}

struct batch *engine_take_batch(struct engine *e, double now, bool fold_now)
{
	const struct policy *p = e->policy;
	struct batch *b, *fresh;
	/* A clock stepped back (now before the last fold) must not hold
	 * daily_usage still until it catches up: then fold at once. */
	bool fold = fold_now || e->fold_due || now < e->folded_at ||
		    now - e->folded_at >= engine_fold_interval(e) - (double)p->flush_interval_ms / 2000.0;

	strmap_each(&e->breakers, add_health, e);
	if (ledger_dirty_count(e->ledger, fold) == 0 && e->batch->naudit == 0 && e->batch->nhealth == 0 &&
	    e->batch->nprompts == 0 && !e->day_changed)
		return NULL;
	fresh = e->spare ? e->spare : batch_new();
	if (!fresh)
		return NULL; /* try again next time; nothing is lost */
	e->spare = NULL;
	e->day_changed = false;
	if (fold) {
		e->fold_due = false;
		e->folded_at = now;
	}
	ledger_flush_dirty(e->ledger, fold, add_usage, e);
	b = e->batch;
	b->fold = fold;
	memcpy(b->current_day, e->today.str, sizeof(b->current_day));
	e->batch = fresh;
	return b;
}

size_t engine_rewrite_usage(struct engine *e)
{
	e->fold_due = true;
	return ledger_mark_all_dirty(e->ledger);
}

void engine_set_store_pending(struct engine *e, size_t rows)
{
	e->store_pending = rows;
}

void engine_recycle(struct engine *e, struct batch *b)
{
	if (!b)
		return;
	if (e->spare) {
		batch_free(b);
		return;
	}
	batch_reset(b);
	e->spare = b;
}
