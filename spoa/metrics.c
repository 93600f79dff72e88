/* metrics: Prometheus exposition and health (see metrics.h). */
#include "metrics.h"

#include <stdio.h>
#include <string.h>

#include "breaker.h"
#include "buf.h"
#include "ledger.h"
#include "policy.h"
#include "spop.h"

static void head(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(struct buf *b, const char *name, const char *type, const char *help, double v)
{
	head(b, name, type, help);
	buf_printf(b, "%s %.17g\n", name, v);
}

static void render_spop(struct buf *b, const struct conn_stats *st, unsigned nconns)
{
	one(b, "tokengate_spop_connections", "gauge", "SPOP connections open now.", nconns);
	one(b, "tokengate_spop_connections_accepted_total", "counter", "SPOP connections accepted.",
	    (double)st->accepted);
	one(b, "tokengate_spop_connections_rejected_total", "counter",
	    "SPOP connections closed at once because max_connections was reached.", (double)st->rejected_limit);
	head(b, "tokengate_spop_frames_total", "counter", "SPOP frames received (in) and sent (out).");
	buf_printf(b, "tokengate_spop_frames_total{direction=\"in\"} %llu\n", (unsigned long long)st->frames_in);
	buf_printf(b, "tokengate_spop_frames_total{direction=\"out\"} %llu\n", (unsigned long long)st->frames_out);
	one(b, "tokengate_spop_notify_total", "counter", "NOTIFY frames answered with an ACK.", (double)st->notify);
	one(b, "tokengate_spop_healthchecks_total", "counter", "HAProxy health-check HELLOs answered.",
	    (double)st->healthcheck);
	head(b, "tokengate_spop_disconnects_total", "counter",
	     "AGENT-DISCONNECT frames sent, by SPOP status code (0 = normal; others are protocol errors).");
	for (unsigned i = 0; i < 100; i++)
		if (st->disconnect_sent[i] || i == 0 || i == SPOP_ERR_INVALID)
			buf_printf(b, "tokengate_spop_disconnects_total{status=\"%u\"} %llu\n", i,
				   (unsigned long long)st->disconnect_sent[i]);
	{
		uint64_t errors = 0;

		for (unsigned i = 1; i < 100; i++)
			errors += st->disconnect_sent[i];
		one(b, "tokengate_spop_errors_total", "counter",
		    "Connections we ended with a non-zero DISCONNECT status (protocol errors, timeouts).",
		    (double)errors);
	}
	one(b, "tokengate_spop_backpressure_pauses_total", "counter",
	    "Times a peer's unread ACKs made us stop reading from it.", (double)st->paused_backpressure);
	head(b, "tokengate_spop_tls_handshakes_total", "counter",
	     "TLS handshakes on the SPOP listener, by result (failed: bad or missing client certificate, "
	     "plain TCP on a TLS listener, not finished within hello_timeout_ms).");
	buf_printf(b, "tokengate_spop_tls_handshakes_total{result=\"ok\"} %llu\n", (unsigned long long)st->tls_handshakes);
	buf_printf(b, "tokengate_spop_tls_handshakes_total{result=\"failed\"} %llu\n",
		   (unsigned long long)st->tls_handshake_failures);
	head(b, "tokengate_log_lines_suppressed_total", "counter",
	     "Log lines about refused SPOP peers held back by the per-kind rate limit (the refusals "
	     "themselves are all counted above).");
	for (unsigned k = 0; k < CONN_REFUSAL_COUNT; k++)
		buf_printf(b, "tokengate_log_lines_suppressed_total{kind=\"%s\"} %llu\n", conn_refusal_str(k),
			   (unsigned long long)st->refusal_lines_suppressed[k]);
}

static void render_engine(struct buf *b, struct engine *e)
{
	const struct engine_stats *st = engine_stats(e);
	struct ledger *l = engine_ledger(e);
	const struct policy *p = engine_policy(e);

	head(b, "tokengate_decisions_total", "counter", "Decisions on llm-request, by action and reason.");
	/* Every pair from the start: a series that appears only with its first
	 * increment hides that increment from rate(). */
	for (int a = 0; a < ENGINE_ACTION_COUNT; a++)
		for (int r = 0; r < ENGINE_REASON_COUNT; r++)
			if (a != ENGINE_ALLOW || r == ENGINE_OK)
				buf_printf(b, "tokengate_decisions_total{action=\"%s\",reason=\"%s\"} %llu\n",
					   engine_action_str((enum engine_action)a),
					   engine_reason_str((enum engine_reason)r),
					   (unsigned long long)st->decisions[a][r]);
	head(b, "tokengate_settlements_total", "counter",
	     "Reservations closed, by outcome: settled (real usage), estimated (streamed or unreadable), "
	     "expired (no answer before the TTL), late (answer for nothing open: ignored).");
	buf_printf(b, "tokengate_settlements_total{outcome=\"settled\"} %llu\n", (unsigned long long)st->settled);
	buf_printf(b, "tokengate_settlements_total{outcome=\"estimated\"} %llu\n",
		   (unsigned long long)st->settled_estimate);
	buf_printf(b, "tokengate_settlements_total{outcome=\"expired\"} %llu\n", (unsigned long long)st->expired);
	buf_printf(b, "tokengate_settlements_total{outcome=\"late\"} %llu\n", (unsigned long long)st->late_responses);
	one(b, "tokengate_tokens_settled_total", "counter", "Tokens (prompt + completion) charged from real usage.",
	    (double)st->tokens_charged);
	one(b, "tokengate_cost_settled_usd_total", "counter", "Cost in USD charged from real usage.",
	    (double)st->cost_nano_charged / 1e9);
	one(b, "tokengate_reservations_open", "gauge", "Allowed requests waiting for the provider's answer.",
	    (double)ledger_open_count(l));
	one(b, "tokengate_users_active", "gauge", "Users with counters in memory (today and unsettled days).",
	    (double)ledger_user_count(l));
	one(b, "tokengate_cost_today_usd", "gauge",
	    "Organisation-wide cost today, open reservations at their estimate.",
	    (double)ledger_today_cost(l) / 1e9);
	if (p->global_ceiling_nano >= 0)
		one(b, "tokengate_global_ceiling_usd", "gauge", "The organisation-wide daily cost ceiling.",
		    (double)p->global_ceiling_nano / 1e9);
	one(b, "tokengate_unknown_messages_total", "counter", "SPOE messages with a name we do not know.",
	    (double)st->unknown_messages);
	one(b, "tokengate_audit_rows_dropped_total", "counter",
	    "Audit and prompt rows dropped because audit_backlog_max rows already waited for the database (or memory ran out).",
	    (double)st->audit_dropped);
	one(b, "tokengate_requests_ended_by_log_total", "counter",
	    "Reservations closed by HAProxy's log line because no response event came (timeouts, refusals, clients gone).",
	    (double)st->settled_by_log);
	one(b, "tokengate_client_aborts_total", "counter",
	    "Of those, requests whose client went away (not counted against the provider).", (double)st->client_aborts);
	one(b, "tokengate_db_daily_usage_interval_seconds", "gauge",
	    "How often daily_usage is written now: settings.daily_usage_interval_ms, or longer when the last write of "
	    "daily_usage cost the writer more than a tenth of that in CPU time (at most 60 s).",
	    engine_fold_interval(e));
}

struct provider_pass {
	struct buf *b;
	int what;
};

static void provider_line(const struct breaker *br, void *arg)
{
	struct provider_pass *pp = arg;
	struct buf *b = pp->b;
	uint64_t cum = 0;

	switch (pp->what) {
	case 0:
		buf_printf(b, "tokengate_provider_breaker_state{provider=\"%s\"} %d\n", br->name, (int)br->state);
		break;
	case 1:
		buf_printf(b, "tokengate_provider_requests_total{provider=\"%s\",outcome=\"success\"} %llu\n", br->name,
			   (unsigned long long)(br->requests_total - br->failures_total));
		buf_printf(b, "tokengate_provider_requests_total{provider=\"%s\",outcome=\"failure\"} %llu\n", br->name,
			   (unsigned long long)br->failures_total);
		break;
	case 2:
		buf_printf(b, "tokengate_provider_breaker_opened_total{provider=\"%s\"} %llu\n", br->name,
			   (unsigned long long)br->opened_total);
		break;
	case 3:
		buf_printf(b, "tokengate_provider_servers_up{provider=\"%s\"} %d\n", br->name, br->servers_up);
		break;
	case 4:
		for (int i = 0; i < BREAKER_LAT_BUCKETS; i++) {
			cum += br->lat_hist[i];
			if (i < BREAKER_LAT_BUCKETS - 1)
				buf_printf(b, "tokengate_provider_latency_seconds_bucket{provider=\"%s\",le=\"%g\"} %llu\n",
					   br->name, breaker_lat_bounds[i], (unsigned long long)cum);
			else
				buf_printf(b, "tokengate_provider_latency_seconds_bucket{provider=\"%s\",le=\"+Inf\"} %llu\n",
					   br->name, (unsigned long long)cum);
		}
		buf_printf(b, "tokengate_provider_latency_seconds_sum{provider=\"%s\"} %.6f\n", br->name, br->lat_sum);
		buf_printf(b, "tokengate_provider_latency_seconds_count{provider=\"%s\"} %llu\n", br->name,
			   (unsigned long long)cum);
		break;
	}
}

static void render_providers(struct buf *b, struct engine *e)
{
	static const char *const heads[][3] = {
		{"tokengate_provider_breaker_state", "gauge",
		 "Circuit breaker of each provider: 0 closed, 1 half-open, 2 open."},
		{"tokengate_provider_requests_total", "counter",
		 "Provider outcomes seen by the breaker: failure = 5xx, 429, timeout or refused connection."},
		{"tokengate_provider_breaker_opened_total", "counter", "Times each provider's breaker opened."},
		{"tokengate_provider_servers_up", "gauge",
		 "HAProxy's usable servers in the provider's backend at the last request (-1 unknown)."},
		{"tokengate_provider_latency_seconds", "histogram",
		 "From the decision to the provider's answer (or the end of the request)."},
	};

	for (int w = 0; w < 5; w++) {
		struct provider_pass pp = {b, w};

		head(b, heads[w][0], heads[w][1], heads[w][2]);
		engine_each_breaker(e, provider_line, &pp);
	}
}

static void render_store(struct buf *b, struct store *s)
{
	struct store_stats st;
	uint64_t cum = 0;

	store_get_stats(s, &st);
	one(b, "tokengate_db_up", "gauge", "1 when the last database write or load worked.", st.db_ok);
	one(b, "tokengate_db_flushes_total", "counter", "Write-behind transactions committed.", (double)st.flushes);
	one(b, "tokengate_db_flush_errors_total", "counter",
	    "Write-behind transactions refused (locked, read-only, full); their rows are retried.",
	    (double)st.flush_errors);
	head(b, "tokengate_db_flush_duration_seconds", "histogram", "Writer time of one write-behind transaction.");
	for (int i = 0; i < STORE_FLUSH_BUCKETS; i++) {
		cum += st.flush_hist[i];
		if (i < STORE_FLUSH_BUCKETS - 1)
			buf_printf(b, "tokengate_db_flush_duration_seconds_bucket{le=\"%g\"} %llu\n",
				   store_flush_bucket_ms[i] / 1000.0, (unsigned long long)cum);
		else
			buf_printf(b, "tokengate_db_flush_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
				   (unsigned long long)cum);
	}
	buf_printf(b, "tokengate_db_flush_duration_seconds_sum %.9g\n", st.flush_ms_total / 1000.0);
	buf_printf(b, "tokengate_db_flush_duration_seconds_count %llu\n", (unsigned long long)cum);
	one(b, "tokengate_db_reopens_total", "counter",
	    "Times the database was closed after lasting read-only or I/O errors and opened again.",
	    (double)st.reopens);
	one(b, "tokengate_db_reopen_failures_total", "counter",
	    "Attempts to open the database again that failed (still read-only, missing, not this agent's).",
	    (double)st.reopen_failures);
	one(b, "tokengate_db_rows_refused_total", "counter",
	    "Rows the database refused on a constraint and that were skipped (see the log).", (double)st.rows_refused);
	one(b, "tokengate_db_pending_rows", "gauge", "Rows waiting to be written (the write-behind queue).",
	    (double)st.pending_rows);
	one(b, "tokengate_db_usage_rows_written_total", "counter",
	    "daily_usage rows written (once per write of daily_usage, every tokengate_db_daily_usage_interval_seconds, per "
	    "user-day that changed).",
	    (double)st.usage_rows);
	one(b, "tokengate_db_usage_write_cpu_seconds_total", "counter",
	    "Writer CPU time spent writing daily_usage (its rows, the journal cleared, the commit; not the audit rows "
	    "written with them): what paces those writes.",
	    st.fold_cpu_s_total);
	one(b, "tokengate_db_usage_journal_rows_written_total", "counter",
	    "User-day rows written to usage_journal by the flushes between two writes of daily_usage.",
	    (double)st.journal_rows);
	one(b, "tokengate_db_usage_journal_rows_replayed_total", "counter",
	    "User-day rows found in usage_journal when the database was opened (left by a crash, or in the file at a "
	    "reopen), replayed into daily_usage.",
	    (double)st.journal_replayed);
	one(b, "tokengate_audit_rows_written_total", "counter", "audit_log rows written.", (double)st.audit_rows);
	one(b, "tokengate_audit_rows_purged_total", "counter", "audit_log rows deleted by retention.",
	    (double)st.audit_purged);
	one(b, "tokengate_prompt_rows_purged_total", "counter", "prompt_log rows deleted by their route's retention.",
	    (double)st.prompts_purged);
	one(b, "tokengate_rules_reloads_total", "counter", "Rule sets reloaded after operators changed the database.",
	    (double)st.policy_loads);
	one(b, "tokengate_rules_reload_errors_total", "counter", "Database changes that could not be loaded.",
	    (double)st.policy_errors);
}

char *metrics_render(const struct metrics_sources *m, size_t *len)
{
	struct buf b = {0};

	head(&b, "tokengate_build_info", "gauge", "Version of the running agent.");
	buf_printf(&b, "tokengate_build_info{version=\"%s\"} 1\n", m->version);
	one(&b, "tokengate_start_time_seconds", "gauge", "Unix time the agent started.", m->started);
	render_spop(&b, &m->env->stats, m->env->nconns);
	render_engine(&b, m->engine);
	render_providers(&b, m->engine);
	render_store(&b, m->store);
	return buf_take(&b, len);
}

int metrics_healthy(const struct metrics_sources *m, char *why, size_t size)
{
	struct store_stats st;

	store_get_stats(m->store, &st);
	if (!st.db_ok) {
		snprintf(why, size, "database not usable: %s", st.last_error);
		return 0;
	}
	snprintf(why, size, "ok");
	return 1;
}
