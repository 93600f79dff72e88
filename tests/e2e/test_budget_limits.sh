#!/bin/sh
# End-to-end budgets, limits: real HAProxy (haproxy-conf/) in front of the
# mock provider, the tokengate agent deciding.
#   - a user with a 1,000-token day (user_limits) is allowed until it is
#     spent, then gets a 429 with Retry-After, x-ratelimit-* and an OpenAI
#     rate-limit error body;
#   - `sqlite3 -cmd '.timeout 5000' DB "UPDATE user_limits ..."` raising the
#     limit lets requests pass again within one second (no restart, no
#     signal);
#   - daily_usage equals the mock provider's usage to the token;
#   - a free-tier user over budget gets the fallback answer (200, JSON);
#   - a streamed answer keeps its estimate.
# Run from anywhere: sh tests/e2e/test_budget_limits.sh (see lib.sh for the
# environment).

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

T_START=$(tg_now_ms)
tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent_isolated || tg_bail "agent did not start"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"
echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, db $TG_DB"

# budget_allowed LIMIT USED ESTIMATE ACTUAL: how many requests a budget of
# LIMIT tokens allows, starting from USED, when each is reserved at ESTIMATE
# and settled at ACTUAL (allowed while used + estimate <= limit).
budget_allowed() {
	awk -v lim="$1" -v used="$2" -v est="$3" -v act="$4" 'BEGIN {
		n = 0
		while (used + est <= lim && n < 1000) { n++; used += act }
		print n
	}'
}

# est_in FILE: the agent's prompt estimate, ceil(Content-Length / 4).
est_in() {
	echo $((($(wc -c <"$1") + 3) / 4))
}

# ---- A 1,000-token day -------------------------------------------------------
# Each request: max_tokens 200 and the mock forced to 200 completion tokens.
# The mock counts "Say hello." as 3 + ceil(10/4) + 4 = 10 prompt tokens, so a
# request costs 210 once settled and is reserved at ceil(len/4) + 200.
U=lim-alice
LIMIT=1000
body=$TG_TMP/alice.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":200}' >"$body"
EST=$(($(est_in "$body") + 200))
ACT=210
N_EXPECT=$(budget_allowed $LIMIT 0 $EST $ACT)
echo "# $U: limit $LIMIT, estimate $EST, actual $ACT per request: $N_EXPECT allowed, then 429"

r=$(tg_agent_log_count 'rules reloaded')
tg_sql "INSERT INTO user_limits (user_id, daily_tokens, note) VALUES ('$U', $LIMIT, 'e2e test_budget_limits')"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"

n_ok=0
n_429=0
used=0
hdr_bad=""
i=0
while [ $i -lt 20 ]; do
	i=$((i + 1))
	TG_CHAT_BODY=$body tg_chat -H "x-user: $U" -H 'x-mock-completion-tokens: 200'
	[ "$TG_STATUS" = 200 ] || break
	n_ok=$((n_ok + 1))
	# Allowed answers carry our budget: limit, and what remains once this
	# request's estimate is reserved.
	got="$(tg_header x-llm-decision) $(tg_header x-ratelimit-limit-tokens) $(tg_header x-ratelimit-remaining-tokens)"
	want="allow/ok $LIMIT $((LIMIT - used - EST))"
	[ "$got" = "$want" ] || hdr_bad="$hdr_bad [request $i: got '$got', want '$want']"
	case $(tg_header x-ratelimit-reset-tokens) in
	[0-9]*s) ;;
	*) hdr_bad="$hdr_bad [request $i: x-ratelimit-reset-tokens '$(tg_header x-ratelimit-reset-tokens)']" ;;
	esac
	used=$((used + ACT))
done
tg_assert_eq "$N_EXPECT" "$n_ok" "$U (1000-token day): exactly $N_EXPECT requests allowed before the budget is spent"
if [ -z "$hdr_bad" ]; then
	tg_ok "$U: allowed answers carry x-llm-decision allow/ok and x-ratelimit-{limit,remaining,reset}-tokens (remaining = limit - used - estimate)"
else
	tg_fail "$U: allowed answers carry the right x-ratelimit-* headers" "$hdr_bad"
fi

# The refusal.
s_before=$(tg_secs_to_utc_midnight)
tg_assert_eq 429 "$TG_STATUS" "$U: request $((n_ok + 1)) over the budget is refused with 429"
[ "$TG_STATUS" = 429 ] && n_429=$((n_429 + 1))
tg_assert_eq deny/budget_tokens "$(tg_header x-llm-decision)" "$U: 429 says deny/budget_tokens"
ra=$(tg_header retry-after)
case $ra in
"" | *[!0-9]*) tg_fail "429: Retry-After is an integer" "Retry-After: '$ra'" ;;
*)
	tg_ok "429: Retry-After is an integer ($ra)"
	if [ "$ra" -gt 0 ] && [ "$ra" -le 86400 ]; then
		tg_ok "429: 0 < Retry-After <= 86400"
	else
		tg_fail "429: 0 < Retry-After <= 86400" "Retry-After: $ra"
	fi
	# Seconds to the next midnight UTC (the default time zone), measured
	# around the request; a few seconds of slack.
	d=$(awk -v a="$ra" -v b="$s_before" 'BEGIN { d = a - b; if (d < 0) d = -d; if (d > 43200) d = 86400 - d; print d }')
	if [ "$d" -le 3 ]; then
		tg_ok "429: Retry-After is the seconds to the next UTC midnight ($ra vs $s_before, off by $d)"
	else
		tg_fail "429: Retry-After is the seconds to the next UTC midnight" "Retry-After $ra, seconds to midnight $s_before"
	fi
	tg_assert_eq "${ra}s" "$(tg_header x-ratelimit-reset-tokens)" "429: x-ratelimit-reset-tokens is Retry-After in seconds"
	;;
esac
tg_assert_eq "$LIMIT" "$(tg_header x-ratelimit-limit-tokens)" "429: x-ratelimit-limit-tokens $LIMIT"
tg_assert_eq "$((LIMIT - used))" "$(tg_header x-ratelimit-remaining-tokens)" \
	"429: x-ratelimit-remaining-tokens is what is left after the settled usage ($LIMIT - $used)"
tg_assert_match 'application/json*' "$(tg_header content-type)" "429: content-type application/json"
if tg_json "$TG_BODY" 'j["error"]["code"] == "rate_limit_exceeded" and isinstance(j["error"]["message"], str) and isinstance(j["error"]["type"], str) and "param" in j["error"]'; then
	tg_ok "429: body is OpenAI's error shape with code rate_limit_exceeded"
else
	tg_fail "429: body is OpenAI's error shape with code rate_limit_exceeded" "body: $(head -c 300 "$TG_BODY")"
fi

# Still refused, and never forwarded.
TG_CHAT_BODY=$body tg_chat -H "x-user: $U" -H 'x-mock-completion-tokens: 200'
tg_assert_eq 429 "$TG_STATUS" "$U: the next request is refused too"
[ "$TG_STATUS" = 429 ] && n_429=$((n_429 + 1))
tg_assert_eq "$n_ok" "$(tg_mock_user "$U" | cut -d'|' -f1)" "$U: the provider saw only the $n_ok allowed requests"

# ---- The operator raises the limit with sqlite3 ------------------------------
try_alice() {
	TG_CHAT_BODY=$body tg_chat -H "x-user: $U" -H 'x-mock-completion-tokens: 200'
	[ "$TG_STATUS" = 429 ] && n_429=$((n_429 + 1))
	[ "$TG_STATUS" = 200 ]
}
# The operator's command as the README gives it: the shell waits for the
# agent's writer, which holds the write lock for each batch (a plain sqlite3
# has no busy timeout and fails at once when it meets that lock).
sqlite3 -cmd '.timeout 5000' "$TG_DB" "UPDATE user_limits SET daily_tokens = 100000 WHERE user_id = '$U'" ||
	tg_fail "sqlite3 UPDATE user_limits (its error is above)"
if tg_poll 3 try_alice; then
	n_ok=$((n_ok + 1))
	echo "# limit raise took effect after ${TG_POLL_MS} ms"
	tg_assert_lt "$TG_POLL_MS" 1000 "sqlite3 UPDATE user_limits: requests pass again within one second (${TG_POLL_MS} ms)"
	tg_assert_eq "allow/ok 100000" "$(tg_header x-llm-decision) $(tg_header x-ratelimit-limit-tokens)" \
		"after the UPDATE: allow/ok with x-ratelimit-limit-tokens 100000"
else
	tg_fail "sqlite3 UPDATE user_limits: requests pass again within one second" \
		"still $TG_STATUS after ${TG_POLL_MS} ms"
fi
TG_CHAT_BODY=$body tg_chat -H "x-user: $U" -H 'x-mock-completion-tokens: 200'
[ "$TG_STATUS" = 200 ] && n_ok=$((n_ok + 1))
tg_assert_eq 200 "$TG_STATUS" "after the UPDATE: the next request passes too"

# ---- daily_usage == the provider's usage, to the token -----------------------
# daily_usage is written every second (daily_usage_interval_ms; a handful
# of users never stretches it), a flush interval after the change at most,
# unless the writer is behind: the polls of daily_usage allow 4 s.
if tg_poll 4 tg_usage_matches_mock "$U"; then
	tg_ok "$U: daily_usage equals the mock's usage to the token once written ($TG_USAGE_GOT, ${TG_POLL_MS} ms)"
else
	tg_fail "$U: daily_usage equals the mock's usage to the token" "daily_usage: $TG_USAGE_GOT" "mock:        $TG_USAGE_WANT"
fi
tg_poll_eq 4 "$n_ok $n_429" tg_usage "$U" "requests || ' ' || denials"
tg_assert_eq "$n_ok $n_429" "$TG_POLL_GOT" "$U: daily_usage.requests / denials = $n_ok allowed / $n_429 refused"
tg_assert_eq 1 "$(tg_usage "$U" "abs(cost_usd - (tokens_in * 0.15 + tokens_out * 0.60) / 1e6) < 1e-9")" \
	"$U: daily_usage.cost_usd = tokens at gpt-4o-mini's price (0.15 / 0.60 USD per million)"
if tg_poll_eq 2 "$((n_ok + n_429)) $n_ok $n_429" tg_sql "SELECT count(*) || ' ' || sum(outcome = 'settled') || ' ' || sum(outcome = 'refused') FROM audit_log WHERE user_id = '$U'"; then
	tg_ok "$U: audit_log has one row per decision ($n_ok settled, $n_429 refused)"
else
	tg_fail "$U: audit_log has one row per decision" \
		"rows/settled/refused: $TG_POLL_GOT" "expected: $((n_ok + n_429)) $n_ok $n_429"
fi

# ---- Free tier over budget: the fallback answer ------------------------------
# Tier 'free': 10,000 tokens/day, over_budget_action 'fallback'. Requests of
# max_tokens 1000 with the mock forced to 1000 completion tokens: 1010 tokens
# each once settled (an answer of ~6 KB: it fits in HAProxy's buffer, so its
# usage is read; a larger one would keep its estimate).
F=lim-free
fbody=$TG_TMP/free.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":1000}' >"$fbody"
FEST=$(($(est_in "$fbody") + 1000))
F_EXPECT=$(budget_allowed 10000 0 $FEST 1010)
r=$(tg_agent_log_count 'rules reloaded')
tg_sql "INSERT INTO users (user_id, tier) VALUES ('$F', 'free')"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"
f_ok=0
i=0
while [ $i -lt 20 ]; do
	i=$((i + 1))
	TG_CHAT_BODY=$fbody tg_chat -H "x-user: $F" -H 'x-mock-completion-tokens: 1000'
	[ "$(tg_header x-llm-decision)" = allow/ok ] || break
	f_ok=$((f_ok + 1))
done
tg_assert_eq "$F_EXPECT" "$f_ok" "$F (tier free): $F_EXPECT requests allowed before the 10,000-token budget is spent"
tg_assert_eq 200 "$TG_STATUS" "$F over budget: 200 (the fallback answer, not a 429)"
tg_assert_eq budget_tokens "$(tg_header x-llm-fallback)" "$F over budget: x-llm-fallback: budget_tokens"
tg_assert_eq fallback/budget_tokens "$(tg_header x-llm-decision)" "$F over budget: x-llm-decision fallback/budget_tokens"
if tg_json "$TG_BODY" 'j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant" and isinstance(j["choices"][0]["message"]["content"], str) and len(j["choices"][0]["message"]["content"]) > 0'; then
	tg_ok "$F over budget: the fallback body is a valid chat.completion with a non-empty answer"
else
	tg_fail "$F over budget: the fallback body is a valid chat.completion" "body: $(head -c 300 "$TG_BODY")"
fi
tg_assert_eq "$f_ok" "$(tg_mock_user "$F" | cut -d'|' -f1)" "$F: the fallback was rendered by HAProxy, the provider saw only the $f_ok allowed requests"
if tg_poll_eq 4 "1 $f_ok" tg_usage "$F" "fallbacks || ' ' || requests"; then
	tg_ok "$F: daily_usage counts 1 fallback and $f_ok requests"
else
	tg_fail "$F: daily_usage counts 1 fallback and $f_ok requests" "fallbacks requests: $TG_POLL_GOT"
fi
if tg_poll 4 tg_usage_matches_mock "$F"; then
	tg_ok "$F: daily_usage equals the mock's usage to the token ($TG_USAGE_GOT)"
else
	tg_fail "$F: daily_usage equals the mock's usage to the token" "daily_usage: $TG_USAGE_GOT" "mock:        $TG_USAGE_WANT"
fi

# ---- A streamed answer keeps its estimate ------------------------------------
S=lim-stream
TG_CHAT_BODY="" tg_chat -H "x-user: $S"
tg_assert_eq 200 "$TG_STATUS" "$S: a non-streamed request first (settled)"
before=$(tg_mock_user "$S")
sbody=$TG_TMP/stream.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":50,"stream":true}' >"$sbody"
TG_CHAT_BODY=$sbody tg_chat -H "x-user: $S"
tg_assert_eq 200 "$TG_STATUS" "$S: the streamed request is answered (200)"
tg_assert_match 'text/event-stream*' "$(tg_header content-type)" "$S: the answer is a stream (text/event-stream)"
after=$(tg_mock_user "$S")
# What the provider really used for the streamed request, and what the agent
# reserved for it.
s_in=$(($(echo "$after" | cut -d'|' -f2) - $(echo "$before" | cut -d'|' -f2)))
s_out=$(($(echo "$after" | cut -d'|' -f3) - $(echo "$before" | cut -d'|' -f3)))
se_in=$(est_in "$sbody")
se_out=50
echo "# streamed request: estimate $se_in + $se_out, provider's usage $s_in + $s_out: daily_usage must exceed the mock by $((se_in - s_in)) + $((se_out - s_out))"
if tg_poll 4 tg_usage_matches_mock "$S" $((se_in - s_in)) $((se_out - s_out)); then
	tg_ok "$S: daily_usage = mock usage + (estimate - actual) of the streamed request ($TG_USAGE_GOT)"
else
	tg_fail "$S: daily_usage = mock usage + (estimate - actual) of the streamed request" \
		"daily_usage:          $TG_USAGE_GOT" "mock + est - actual:  $TG_USAGE_WANT"
fi
tg_assert_eq "settled estimated" "$(tg_sql "SELECT group_concat(outcome, ' ') FROM (SELECT outcome FROM audit_log WHERE user_id = '$S' ORDER BY id)")" \
	"$S: audit_log outcomes: settled, then estimated for the stream"

echo "# took $((($(tg_now_ms) - T_START) / 1000)) s"
tg_done
