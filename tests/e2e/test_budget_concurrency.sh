#!/bin/sh
# End-to-end budgets, concurrency: no double spend.
#   (a) SPOP level (build/spopload --tally, no HAProxy): user-0's budget fits
#       exactly 10 estimates; 1,000 NOTIFYs in flight at once get exactly 10
#       "allow" and 990 "deny". Twice: one thread, then four threads after the
#       limit is raised by 10 more estimates.
#   (b) Through HAProxy: the mock provider slowed down (the allowed requests
#       stay open reservations during the burst), 1,000 requests from one user
#       at high parallelism, a budget fitting exactly 10 estimates: exactly 10
#       answered 200, 990 answered 429.
# Run from anywhere: sh tests/e2e/test_budget_concurrency.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

# HAProxy's own per-user request rate limit (haproxy-conf/haproxy.cfg) would
# answer most of a 1,000-request burst itself; here the agent must decide.
TG_USER_RATE_LIMIT=${TG_USER_RATE_LIMIT:-1000000}
export TG_USER_RATE_LIMIT

T_START=$(tg_now_ms)
SPOPLOAD=${TG_SPOPLOAD_BIN:-$TG_ROOT/build/spopload}
[ -x "$SPOPLOAD" ] || tg_bail "$SPOPLOAD is missing (make)"
tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent_isolated || tg_bail "agent did not start"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"
echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, db $TG_DB"

# ---- (a) SPOP level ----------------------------------------------------------
# spopload sends user "user-0", content_length 400, max_tokens 64: an estimate
# of 100 + 64 = 164 tokens. 1640 tokens = exactly 10 estimates.
r=$(tg_agent_log_count 'rules reloaded')
tg_sql "INSERT INTO user_limits (user_id, daily_tokens, daily_requests) VALUES ('user-0', 1640, 1000000)"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"

# spop_round NAME SPOPLOAD-ARGS...: 1000 NOTIFYs, tally of the actions.
spop_round() {
	sr_name=$1
	shift
	sr_out=$TG_TMP/spopload-$sr_name.out
	t0=$(tg_now_ms)
	timeout 60 "$SPOPLOAD" -p "$TG_AGENT_PORT" -n 1000 -w 0 -u 1 --tally "$@" >"$sr_out" 2>&1
	sr_rc=$?
	echo "# spopload $* -n 1000: rc $sr_rc in $(($(tg_now_ms) - t0)) ms"
	sed 's/^/#   /' "$sr_out"
	tg_assert_eq 0 "$sr_rc" "SPOP $sr_name: spopload completed without errors"
	tg_assert_eq "1000 completed, 1000 sent" \
		"$(sed -n 's/^requests *\([0-9]* completed, [0-9]* sent\).*/\1/p' "$sr_out")" \
		"SPOP $sr_name: exactly 1000 NOTIFYs sent and ACKed"
	tg_assert_eq "allow=10 deny=990" \
		"$(awk '$1 == "tally" { sub(/^action=/, "", $2); printf "%s%s=%s", sep, $2, $3; sep = " " }' "$sr_out")" \
		"SPOP $sr_name: exactly 10 allow and 990 deny (nothing else)"
}

spop_round "1 thread, -c 10 -P 100" -c 10 -P 100
# daily_usage: the 10 reservations at their estimate (no llm-response comes),
# 990 denials.
if tg_poll_eq 4 "1000 640 10 990" tg_usage user-0 "tokens_in || ' ' || tokens_out || ' ' || requests || ' ' || denials"; then
	tg_ok "SPOP: daily_usage of user-0 = 10 reservations of 100 + 64 tokens, 990 denials (${TG_POLL_MS} ms)"
else
	tg_fail "SPOP: daily_usage of user-0 = 10 reservations, 990 denials" \
		"tokens_in tokens_out requests denials: $TG_POLL_GOT" "expected: 1000 640 10 990"
fi

# Room for exactly 10 more estimates; now over 4 threads and 50 connections.
r=$(tg_agent_log_count 'rules reloaded')
tg_sql "UPDATE user_limits SET daily_tokens = 3280 WHERE user_id = 'user-0'"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"
spop_round "4 threads, -c 50 -P 20" -c 50 -P 20 -t 4

# ---- (b) Through HAProxy -----------------------------------------------------
# The mock answers after 5 s, so the 10 allowed requests are open
# reservations (at their estimate) while the others are decided. The count
# must not depend on the machine's speed, though (1000 curl processes on a
# loaded machine or an ASan agent can take longer than the delay): the body
# has no max_tokens, so each request is reserved at ceil(len/4) + 1024
# (settings.default_max_tokens) and the mock is told to answer with 1100
# completion tokens: once settled, a request costs more than its estimate,
# so a settlement during the burst never makes room for an 11th.
U=conc-bob
body=$TG_TMP/conc.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}' >"$body"
EST=$((($(wc -c <"$body") + 3) / 4 + 1024))
ACT=$((10 + 1100))
r=$(tg_agent_log_count 'rules reloaded')
tg_sql "INSERT INTO user_limits (user_id, daily_tokens, daily_requests) VALUES ('$U', $((10 * EST)), 1000000)"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"
tg_mock_mode '{"mode":"slow","delay_ms":5000}' || tg_fail "mock: slow mode set"

PAR=${TG_BURST_PARALLEL:-500}
echo "# $U: budget $((10 * EST)) tokens = 10 estimates of $EST (settled: $ACT each); 1000 requests, $PAR at a time"
t0=$(tg_now_ms)
TG_CHAT_BODY=$body tg_burst 1000 "$PAR" "$TG_TMP/burst.out" -H "x-user: $U" -H 'x-mock-completion-tokens: 1100'
t_burst=$(($(tg_now_ms) - t0))
n200=$(tg_count_status 200 "$TG_TMP/burst.out")
n429=$(tg_count_status 429 "$TG_TMP/burst.out")
echo "# burst: $(wc -l <"$TG_TMP/burst.out") answers in $t_burst ms: $n200 x 200, $n429 x 429, others: $(awk '$1 != 200 && $1 != 429' "$TG_TMP/burst.out" | sort | uniq -c | head -5 | tr '\n' ';')"
tg_assert_eq 1000 "$(wc -l <"$TG_TMP/burst.out" | tr -d ' ')" "HAProxy burst: 1000 answers"
tg_assert_eq 10 "$n200" "HAProxy burst: exactly 10 answered 200"
tg_assert_eq 990 "$n429" "HAProxy burst: exactly 990 answered 429"
tg_assert_eq 10 "$(awk '$1 == 200 && $3 == "allow/ok"' "$TG_TMP/burst.out" | wc -l | tr -d ' ')" \
	"HAProxy burst: the 200s are allow/ok (decided by the agent, not fail-open)"
tg_assert_eq 990 "$(awk '$1 == 429 && $3 == "deny/budget_tokens"' "$TG_TMP/burst.out" | wc -l | tr -d ' ')" \
	"HAProxy burst: the 429s are the agent's deny/budget_tokens"
# The lines are written in completion order: the 429s before the first 200
# were refused while the 10 allowed requests were still open reservations.
racing=$(awk '$1 == 200 { exit } $1 == 429 { n++ } END { print n + 0 }' "$TG_TMP/burst.out")
echo "# $racing of the 990 refusals came back before the provider's first answer (all of them on an idle machine)"
if [ "$racing" -gt 0 ]; then
	tg_ok "HAProxy burst: refusals were decided while the 10 reservations were open ($racing of 990 before any settlement)"
else
	tg_fail "HAProxy burst: refusals were decided while the 10 reservations were open" "no 429 before the first 200"
fi
tg_mock_mode '{"mode":"ok","delay_ms":0}' || tg_fail "mock: back to ok mode"
if tg_poll 3 tg_usage_matches_mock "$U"; then
	tg_ok "$U: daily_usage equals the mock's usage of the 10 allowed requests ($TG_USAGE_GOT)"
else
	tg_fail "$U: daily_usage equals the mock's usage of the 10 allowed requests" \
		"daily_usage: $TG_USAGE_GOT" "mock:        $TG_USAGE_WANT"
fi
tg_poll_eq 4 990 tg_usage "$U" denials
tg_assert_eq 990 "$TG_POLL_GOT" "$U: daily_usage.denials = 990"

echo "# took $((($(tg_now_ms) - T_START) / 1000)) s"
tg_done
