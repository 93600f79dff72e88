#!/bin/sh
# End-to-end metrics: real HAProxy (haproxy-conf/) + the tokengate agent + the
# mock provider. A known set of requests goes through the gateway, then the
# agent's admin listener is read:
#   - /metrics counts exactly what the test did: decisions by action and
#     reason, settlements by outcome, tokens and cost settled (equal to the
#     mock provider's usage), NOTIFY frames, users, open reservations, rows
#     written (equal to the database's), the global ceiling once set;
#   - promtool check metrics accepts the exposition (no error, no lint
#     problem);
#   - /healthz answers 200 "ok", /state is JSON that knows the users;
#   - HAProxy's own Prometheus exporter (frontend "metrics", TG_METRICS_ADDR)
#     answers and agrees: the agent's backend is up, and the gateway's
#     response codes match the requests.
# Run from anywhere: sh tests/e2e/test_metrics.sh (see lib.sh for the
# environment).

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

T_START=$(tg_now_ms)
tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent || tg_bail "agent did not start"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"
echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, admin 127.0.0.1:$TG_ADMIN_PORT, haproxy metrics $TG_METRICS_ADDR, db $TG_DB"

M0=$TG_TMP/metrics-0.txt
M1=$TG_TMP/metrics-1.txt
M2=$TG_TMP/metrics-2.txt

# ---- Before any request ------------------------------------------------------
tg_scrape "$M0" || tg_bail "GET /metrics on the admin listener: status $TG_ADMIN_STATUS"
tg_ok "GET /metrics answers 200 before any request"
tg_assert_match 'text/plain; version=0.0.4*' "$TG_ADMIN_CTYPE" \
	"/metrics Content-Type is the Prometheus text format 0.0.4 ($TG_ADMIN_CTYPE)"
tg_assert_eq 0 "$(tg_metric "$M0" tokengate_decisions_total)" "before any request: no decision counted"
tg_assert_eq 0 "$(tg_metric "$M0" tokengate_spop_notify_total)" "before any request: no NOTIFY counted"
tg_assert_eq "" "$(tg_metric "$M0" tokengate_global_ceiling_usd)" \
	"no global ceiling set: tokengate_global_ceiling_usd is absent"
tg_assert_eq 1 "$(tg_metric "$M0" tokengate_build_info version="$("${TG_AGENT_BIN:-$TG_ROOT/build/tokengate}" --version | awk '{ print $NF }')")" \
	"tokengate_build_info carries the version of tokengate --version"

# ---- The requests ------------------------------------------------------------
# Rules first, each change waited for (one statement = one reload).
reload() { # SQL
	r=$(tg_agent_log_count 'rules reloaded')
	tg_sql "$1" # a refused write fails the test
	tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s after: $1)"
}
KEY=sk-tg-metrics-$(date +%s)-test
reload "INSERT INTO user_limits (user_id, daily_tokens) VALUES ('m-bob', 1)"
reload "INSERT INTO user_limits (user_id, daily_requests) VALUES ('m-erin', 1)"
reload "INSERT INTO users (user_id, tier) VALUES ('m-dave', 'free')"
reload "INSERT INTO user_limits (user_id, daily_tokens) VALUES ('m-dave', 1)"
reload "INSERT INTO api_keys (key_hmac, key_prefix, user_id, label) VALUES ('$(tg_key_hmac "$KEY")', 'sk-tg-me', 'm-kate', 'e2e test_metrics')"

# expect STATUS DECISION MESSAGE: the last request's status and x-llm-decision.
expect() {
	tg_assert_eq "$1 $2" "$TG_STATUS $(tg_header x-llm-decision)" "$3"
}
for i in 1 2 3; do
	tg_chat -H 'x-user: m-alice'
	expect 200 allow/ok "m-alice: request $i allowed (200 allow/ok)"
done
tg_chat -H "authorization: Bearer $KEY"
expect 200 allow/ok "m-kate by API key: allowed"
tg_chat -H 'x-user: m-alice' -H 'x-mock-mode: error500'
# The client gets the provider's 500, or, when the route has a fallback text
# (issue 4), the fallback in its place (200, x-llm-fallback: provider_error).
# Either way the agent allowed it and settles it at 0 tokens.
case "$TG_STATUS $(tg_header x-llm-decision) $(tg_header x-llm-fallback)" in
"500 allow/ok " | "200 allow/ok provider_error")
	tg_ok "m-alice: allowed, the provider answers 500 (client got $TG_STATUS)" ;;
*) tg_fail "m-alice: allowed, the provider answers 500" "got: $TG_STATUS $(tg_header x-llm-decision) x-llm-fallback '$(tg_header x-llm-fallback)'" ;;
esac
E500_STATUS=$TG_STATUS
sbody=$TG_TMP/stream.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16,"stream":true}' >"$sbody"
TG_CHAT_BODY=$sbody tg_chat -H 'x-user: m-carol'
expect 200 allow/ok "m-carol: streamed request allowed"
tg_assert_match 'text/event-stream*' "$(tg_header content-type)" "m-carol: the answer is a stream"
tg_chat -H 'x-user: m-bob'
expect 429 deny/budget_tokens "m-bob (1-token day): denied, 429 deny/budget_tokens"
tg_chat -H 'x-user: m-bob'
expect 429 deny/budget_tokens "m-bob: denied again"
tg_chat -H 'x-user: m-erin'
expect 200 allow/ok "m-erin (1-request day): first request allowed"
tg_chat -H 'x-user: m-erin'
expect 429 deny/budget_requests "m-erin: second request denied, 429 deny/budget_requests"
tg_chat -H 'authorization: Bearer sk-not-a-key'
expect 401 deny/unknown_key "unknown API key: 401 deny/unknown_key"
tg_chat -H 'x-user: m-dave'
expect 200 fallback/budget_tokens "m-dave (free tier, 1-token day): the fallback answer, 200 fallback/budget_tokens"

# What the test did, as the agent must count it.
N_ALLOW=7 # alice 3 + kate + alice's 500 + carol's stream + erin
N_DECISIONS=12
N_RESPONSES=$N_ALLOW # every allowed request got a provider answer
N_SETTLED=6          # the allowed ones with a readable usage (the 500: 0 tokens)
N_ESTIMATED=1        # the stream
N_USERS=6            # alice kate carol bob erin dave (the unknown key is nobody)

# Every reservation settled, every row written (one audit row per decision;
# an allowed request's row is made when it settles, then waits up to one
# flush interval in the loop, where tokengate_db_pending_rows does not see
# it yet), and daily_usage up to date (the journal is empty once a write of
# daily_usage followed the last flush: at most daily_usage_interval_ms):
# then read everything.
settled() {
	tg_scrape "$M1" &&
		[ "$(tg_metric "$M1" tokengate_reservations_open)" = 0 ] &&
		[ "$(tg_metric "$M1" tokengate_db_pending_rows)" = 0 ] &&
		[ "$(tg_metric "$M1" tokengate_audit_rows_written_total)" = $N_DECISIONS ] &&
		[ "$(tg_sql 'SELECT count(*) FROM audit_log')" = $N_DECISIONS ] &&
		[ "$(tg_sql 'SELECT count(*) FROM usage_journal')" = 0 ]
}
if tg_poll 5 settled; then
	tg_ok "reservations all settled and rows all written (${TG_POLL_MS} ms after the last request)"
else
	tg_fail "reservations all settled and rows all written within 5 s" \
		"open=$(tg_metric "$M1" tokengate_reservations_open) pending=$(tg_metric "$M1" tokengate_db_pending_rows)" \
		"audit rows written=$(tg_metric "$M1" tokengate_audit_rows_written_total) in db=$(tg_sql 'SELECT count(*) FROM audit_log')"
fi

# ---- Decisions ---------------------------------------------------------------
got=$(grep '^tokengate_decisions_total{' "$M1" | awk '$NF != 0' | sort | tr '\n' ' ')
want='tokengate_decisions_total{action="allow",reason="ok"} 7 tokengate_decisions_total{action="deny",reason="budget_requests"} 1 tokengate_decisions_total{action="deny",reason="budget_tokens"} 2 tokengate_decisions_total{action="deny",reason="unknown_key"} 1 tokengate_decisions_total{action="fallback",reason="budget_tokens"} 1 '
tg_assert_eq "$want" "$got" "tokengate_decisions_total: exactly the decisions made (non-zero series)"
tg_assert_eq $N_DECISIONS "$(tg_metric "$M1" tokengate_decisions_total)" "tokengate_decisions_total sums to $N_DECISIONS"
tg_assert_eq 4 "$(tg_metric "$M1" tokengate_decisions_total action=deny)" "4 deny decisions, all reasons (bob 2, erin 1, the unknown key)"

# ---- Settlements, tokens, cost -------------------------------------------------
tg_assert_eq "$N_SETTLED $N_ESTIMATED 0 0" \
	"$(tg_metric "$M1" tokengate_settlements_total outcome=settled) $(tg_metric "$M1" tokengate_settlements_total outcome=estimated) $(tg_metric "$M1" tokengate_settlements_total outcome=expired) $(tg_metric "$M1" tokengate_settlements_total outcome=late)" \
	"tokengate_settlements_total: $N_SETTLED settled, $N_ESTIMATED estimated (the stream), 0 expired, 0 late"

# The mock's usage of every answer it gave, minus the stream (charged its
# estimate, not its usage); the 500 used nothing.
mock_tot=$(tg_mock_stats | "$TG_PYTHON" -c 'import json, sys
j = json.load(sys.stdin)
u = j.get("users", {})
p = sum(v.get("prompt_tokens", 0) for k, v in u.items() if k != "m-carol")
c = sum(v.get("completion_tokens", 0) for k, v in u.items() if k != "m-carol")
print(p, c)')
m_in=${mock_tot% *}
m_out=${mock_tot#* }
echo "# mock usage without the stream: prompt $m_in, completion $m_out"
tg_assert_eq "$((m_in + m_out))" "$(tg_metric "$M1" tokengate_tokens_settled_total)" \
	"tokengate_tokens_settled_total equals the mock provider's prompt + completion tokens ($((m_in + m_out)))"
cost_ok=$(awk -v got="$(tg_metric "$M1" tokengate_cost_settled_usd_total)" -v i="$m_in" -v o="$m_out" \
	'BEGIN { w = (i * 0.15 + o * 0.60) / 1e6; d = got - w; if (d < 0) d = -d; print (d < 1e-9 ? "yes" : "no: got " got ", want " w) }')
tg_assert_eq yes "$cost_ok" "tokengate_cost_settled_usd_total = those tokens at gpt-4o-mini's price (0.15 / 0.60 USD per million)"
cost_ok=$(awk -v got="$(tg_metric "$M1" tokengate_cost_today_usd)" -v db="$(tg_sql "SELECT total(cost_usd) FROM daily_usage WHERE day = (SELECT value FROM agent_state WHERE name = 'current_day')")" \
	'BEGIN { d = got - db; if (d < 0) d = -d; print (d < 1e-9 ? "yes" : "no: metric " got ", daily_usage " db) }')
tg_assert_eq yes "$cost_ok" "tokengate_cost_today_usd equals today's total cost_usd in daily_usage"
tg_assert_eq 0 "$(tg_metric "$M1" tokengate_reservations_open)" "tokengate_reservations_open is 0 once every answer came back"
tg_assert_eq $N_USERS "$(tg_metric "$M1" tokengate_users_active)" "tokengate_users_active: the $N_USERS users identified"

# ---- SPOP ------------------------------------------------------------------------
notify=$(tg_metric "$M1" tokengate_spop_notify_total)
# Answers reach the agent through HAProxy's log line, not a NOTIFY.
tg_assert_eq $N_DECISIONS "$notify" \
	"tokengate_spop_notify_total: one llm-request NOTIFY per decision ($N_DECISIONS)"
hc=$(tg_metric "$M1" tokengate_spop_healthchecks_total)
case $hc in
"" | 0) tg_fail "tokengate_spop_healthchecks_total counts HAProxy's spop-check HELLOs" "got '$hc'" ;;
*) tg_ok "tokengate_spop_healthchecks_total counts HAProxy's spop-check HELLOs ($hc)" ;;
esac
fin=$(tg_metric "$M1" tokengate_spop_frames_total direction=in)
fout=$(tg_metric "$M1" tokengate_spop_frames_total direction=out)
if [ "${fin:-0}" -ge $((notify + hc)) ] && [ "${fout:-0}" -ge $((notify + hc)) ]; then
	tg_ok "tokengate_spop_frames_total in/out ($fin/$fout) cover the NOTIFYs/ACKs and health-check HELLOs ($notify + $hc)"
else
	tg_fail "tokengate_spop_frames_total in/out cover the NOTIFYs/ACKs and health-check HELLOs" "in=$fin out=$fout notify=$notify healthchecks=$hc"
fi
tg_assert_eq 0 "$(tg_metric "$M1" tokengate_spop_errors_total)" "tokengate_spop_errors_total is 0"
tg_assert_eq "" "$(grep '^tokengate_spop_disconnects_total{' "$M1" | grep -v 'status="0"' | awk '$NF != 0')" \
	"no AGENT-DISCONNECT with an error status"
case $(tg_metric "$M1" tokengate_spop_connections) in
"" | 0) tg_fail "tokengate_spop_connections: HAProxy's connections are open" "got '$(tg_metric "$M1" tokengate_spop_connections)'" ;;
*) tg_ok "tokengate_spop_connections: $(tg_metric "$M1" tokengate_spop_connections) open (HAProxy keeps them)" ;;
esac

# ---- Database ----------------------------------------------------------------------
tg_assert_eq "1 0 0" "$(tg_metric "$M1" tokengate_db_up) $(tg_metric "$M1" tokengate_db_flush_errors_total) $(tg_metric "$M1" tokengate_db_pending_rows)" \
	"tokengate_db_up 1, no flush error, nothing pending"
tg_assert_eq "$N_DECISIONS $N_DECISIONS" "$(tg_sql 'SELECT count(*) FROM audit_log') $(tg_metric "$M1" tokengate_audit_rows_written_total)" \
	"audit_log has one row per decision, and tokengate_audit_rows_written_total says so"
tg_assert_eq "$(tg_metric "$M1" tokengate_db_flushes_total)" "$(tg_metric "$M1" tokengate_db_flush_duration_seconds_count)" \
	"the flush-duration histogram counts every committed flush"
hist=$(awk '/^tokengate_db_flush_duration_seconds_bucket/ { if ($NF + 0 < prev) bad = 1; prev = $NF + 0; last = $0 }
	END { print (bad ? "not monotonic" : last) }' "$M1")
tg_assert_eq "tokengate_db_flush_duration_seconds_bucket{le=\"+Inf\"} $(tg_metric "$M1" tokengate_db_flush_duration_seconds_count)" "$hist" \
	"flush-duration buckets are cumulative and end with +Inf = count"
# A handful of users costs the writer far less than a tenth of the 1 s
# interval: daily_usage is written at the interval set, and its CPU counted.
tg_assert_eq "1 yes" "$(tg_metric "$M1" tokengate_db_daily_usage_interval_seconds) $(awk '/^tokengate_db_usage_write_cpu_seconds_total / { print ($2 > 0 && $2 < 1) ? "yes" : "no: " $2 }' "$M1")" \
	"tokengate_db_daily_usage_interval_seconds is the setting's 1 s, some writer CPU counted for daily_usage"
tg_assert_eq "$(tg_agent_log_count 'rules reloaded')" "$(tg_metric "$M1" tokengate_rules_reloads_total)" \
	"tokengate_rules_reloads_total equals the agent's 'rules reloaded' log lines"
tg_assert_eq 0 "$(tg_metric "$M1" tokengate_rules_reload_errors_total)" "tokengate_rules_reload_errors_total is 0"

# ---- promtool check metrics ----------------------------------------------------------
# promtool reads the exposition on stdin, prints lint problems (on stdout or
# stderr) and exits non-zero on a parse error or a lint problem. Ours must
# be clean: no output at all and status 0.
PT=$(tg_promtool)
if [ -z "$PT" ]; then
	tg_fail "promtool check metrics accepts the agent's exposition" "promtool not installed (apt-get install prometheus)"
else
	out=$("$PT" check metrics <"$M1" 2>&1)
	rc=$?
	if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
		tg_ok "promtool check metrics: the agent's exposition parses, no lint problem"
	else
		tg_fail "promtool check metrics: the agent's exposition parses, no lint problem" "exit status $rc" "$out"
	fi
	# Proof that the check can fail: a broken copy is refused.
	sed 's/^tokengate_spop_notify_total .*/tokengate_spop_notify_total not-a-number/' "$M1" >"$TG_TMP/metrics-broken.txt"
	if "$PT" check metrics <"$TG_TMP/metrics-broken.txt" >/dev/null 2>&1; then
		tg_fail "promtool check metrics refuses a corrupted exposition (the check can fail)"
	else
		tg_ok "promtool check metrics refuses a corrupted exposition (the check can fail)"
	fi
fi

# ---- Counters move by exactly one request ---------------------------------------------
tg_chat -H 'x-user: m-alice'
expect 200 allow/ok "m-alice: one more request"
one_more() {
	tg_scrape "$M2" && [ "$(tg_metric "$M2" tokengate_settlements_total outcome=settled)" = $((N_SETTLED + 1)) ]
}
tg_poll 3 one_more
tg_assert_eq "1 1 1" \
	"$(($(tg_metric "$M2" tokengate_decisions_total action=allow reason=ok) - $(tg_metric "$M1" tokengate_decisions_total action=allow reason=ok))) $(($(tg_metric "$M2" tokengate_settlements_total outcome=settled) - $(tg_metric "$M1" tokengate_settlements_total outcome=settled))) $(($(tg_metric "$M2" tokengate_spop_notify_total) - $(tg_metric "$M1" tokengate_spop_notify_total)))" \
	"one more request: +1 allow/ok, +1 settled, +1 NOTIFY"

# ---- The global ceiling appears once set --------------------------------------------------
reload "UPDATE settings SET value = '10' WHERE name = 'global_daily_cost_ceiling_usd'"
tg_scrape "$M2"
tg_assert_eq 10 "$(tg_metric "$M2" tokengate_global_ceiling_usd)" \
	"after UPDATE settings global_daily_cost_ceiling_usd = 10: tokengate_global_ceiling_usd 10"

# ---- /healthz, /state, unknown paths -------------------------------------------------------
tg_admin_get /healthz
tg_assert_eq "200 ok" "$TG_ADMIN_STATUS $(tr -d '\r\n' <"$TG_ADMIN_BODY")" "/healthz: 200 ok"
tg_admin_get /state "$TG_TMP/state.json"
tg_assert_eq 200 "$TG_ADMIN_STATUS" "/state: 200"
tg_assert_match 'application/json*' "$TG_ADMIN_CTYPE" "/state: Content-Type application/json"
if tg_json "$TG_TMP/state.json" 'j["today"]["users_active"] == '$N_USERS' and j["today"]["reservations_open"] == 0 and j["settings"]["global_daily_cost_ceiling_usd"] == 10'; then
	tg_ok "/state is JSON: $N_USERS users active, no reservation open, the ceiling of 10 USD"
else
	tg_fail "/state is JSON with today's users, reservations and settings" "$(head -c 400 "$TG_TMP/state.json")"
fi
if tg_json "$TG_TMP/state.json" 'any(u["user_id"] == "m-alice" and u["requests"] == 5 and u["tokens_in"] > 0 for u in j["hottest_users"])'; then
	tg_ok "/state hottest_users lists m-alice with her 5 requests"
else
	tg_fail "/state hottest_users lists m-alice with her 5 requests" "$(head -c 600 "$TG_TMP/state.json")"
fi
tg_admin_get /nope
tg_assert_eq 404 "$TG_ADMIN_STATUS" "admin listener: unknown path is 404"

# ---- HAProxy's own exporter ------------------------------------------------------------------
H=$TG_TMP/haproxy-metrics.txt
if tg_haproxy_scrape "$H"; then
	tg_ok "HAProxy's metrics frontend ($TG_METRICS_ADDR) answers GET /metrics with 200"
else
	tg_bail "HAProxy's metrics frontend ($TG_METRICS_URL) does not answer"
fi
tg_assert_eq 1 "$(tg_metric "$H" haproxy_backend_active_servers proxy=spoe_tokengate)" \
	"haproxy_backend_active_servers{proxy=\"spoe_tokengate\"} 1: HAProxy sees the agent up"
tg_assert_eq 1 "$(tg_metric "$H" haproxy_server_status proxy=spoe_tokengate server=tg1 state=UP)" \
	"haproxy_server_status{proxy=\"spoe_tokengate\",server=\"tg1\",state=\"UP\"} 1"
tg_assert_eq 0 "$(tg_metric "$H" haproxy_backend_connection_errors_total proxy=spoe_tokengate)" \
	"no connection error towards the agent"
# The gateway's answers by code class: 2xx = alice 3 + kate + the stream +
# erin's first + the fallback + the last alice (+ the provider's 500 when a
# fallback replaced it); 4xx = bob's two 429s,
# erin's 429, the 401, and the 404 of tg_start_haproxy's readiness probe
# (GET /); 5xx = the provider's 500.
if [ "$E500_STATUS" = 500 ]; then n2=8 n5=1; else n2=9 n5=0; fi
tg_assert_eq "$n2 5 $n5" \
	"$(tg_metric "$H" haproxy_frontend_http_responses_total proxy=llm_gateway code=2xx) $(tg_metric "$H" haproxy_frontend_http_responses_total proxy=llm_gateway code=4xx) $(tg_metric "$H" haproxy_frontend_http_responses_total proxy=llm_gateway code=5xx)" \
	"HAProxy's llm_gateway responses: $n2 2xx, 5 4xx (3 x 429, 401, the readiness 404), $n5 5xx (the provider's 500, unless replaced by a fallback)"
if [ -n "$PT" ]; then
	out=$("$PT" check metrics <"$H" 2>&1)
	if echo "$out" | grep -qiv -e 'should have "_total" suffix' -e '^$'; then
		tg_fail "promtool check metrics parses HAProxy's exposition (lint notes about names aside)" "$out"
	else
		tg_ok "promtool check metrics parses HAProxy's exposition (lint notes about names aside)"
	fi
fi
curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://$TG_METRICS_ADDR/" >"$TG_TMP/h404" 2>/dev/null
tg_assert_eq 404 "$(cat "$TG_TMP/h404")" "HAProxy's metrics frontend: other paths are 404"

echo "# took $((($(tg_now_ms) - T_START) / 1000)) s"
tg_done
