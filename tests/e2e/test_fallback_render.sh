#!/bin/sh
# End-to-end fallback rendering (issue 4, item 4): real HAProxy
# (haproxy-conf/), the real agent, the mock provider in each failure mode.
# The agent sends the route's fallback text with every allowed request;
# HAProxy renders it in place of whatever the provider failed to give:
#   - the provider's 500/503 (x-llm-fallback: provider_error) and 429
#     (provider_rate_limited), after the agent was told the real status;
#   - no answer within the route's timeout, "hang" or "slow" (HAProxy's own
#     504: provider_timeout), a reset connection (502) and a provider that is
#     gone (503 / refused: provider_unavailable, or the agent's own
#     fallback/provider_unhealthy once HAProxy's health check saw it);
# each as HTTP 200 with a valid chat.completion, or chat.completion.chunk
# events ending with [DONE] when the client asked for a stream, within the
# route's timeout (1 s here) plus a small margin. A normal answer passes
# through untouched, and a route without a fallback gets the provider's error
# unchanged, or an OpenAI-shaped JSON error instead of HAProxy's HTML page.
# HAProxy's log line for each request reaches the agent's log socket
# (TG_AGENT_LOG; bound here by the test in the agent's place) with the keys
# the agent reads.
# Run from anywhere: sh tests/e2e/test_fallback_render.sh (see lib.sh for the
# environment).

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

# The route's timeout for this test, and what "within the timeout plus a
# small margin" means (seconds).
TIMEOUT_MS=1000
MARGIN=0.5
LIMIT=$(awk -v t="$TIMEOUT_MS" -v m="$MARGIN" 'BEGIN { print t / 1000 + m }')

tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent || tg_bail "agent did not start"
# The agent reads the log lines on its socket (it settles from them); the
# same lines go to HAProxy's own log, where this test reads them.
LOGS=$TG_TMP/haproxy.log

# The chat route answers within TIMEOUT_MS or falls back (computed: the
# route's text and the first paragraph of the last user message). The
# breakers must not open during the test: every failure here is on purpose,
# and an open primary would turn the provider's errors into the agent's own
# fallback/provider_unhealthy. A 429 still opens the primary for its
# Retry-After (1 s here), and HAProxy's health check seeing the provider
# down opens it for open_s (1 s here): those come last.
reloads=$(tg_agent_log_count 'rules reloaded')
tg_sql "UPDATE routes SET timeout_ms = $TIMEOUT_MS, fallback = 'computed' WHERE name = 'chat';
	UPDATE providers SET consecutive_failures = 1000000, min_requests = 1000000, open_s = 1" ||
	tg_bail "cannot set the chat route's timeout (routes table missing?)"
tg_wait_reload "$reloads" 5 || tg_bail "the agent did not reload its rules after the routes update"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"
echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, mock 127.0.0.1:$TG_MOCK_PORT, log socket $TG_AGENT_LOG, tmp $TG_TMP"

# A prompt whose computed fallback is known: the first paragraph of the last
# user message, with characters JSON must escape and one outside ASCII.
Q1='Where is my "parcel" \ café?'
Q2='Order 42, shipped on Monday.'
PROMPT_JSON=$("$TG_PYTHON" -c 'import json, sys
print(json.dumps([{"role": "system", "content": "You track parcels."},
                  {"role": "user", "content": "An older question."},
                  {"role": "assistant", "content": "An older answer."},
                  {"role": "user", "content": sys.argv[1] + "\n\n" + sys.argv[2]}]))' "$Q1" "$Q2")
BODY_JSON=$TG_TMP/chat.json
BODY_SSE=$TG_TMP/chat-stream.json
printf '{"model":"gpt-4o-mini","messages":%s,"max_tokens":16}' "$PROMPT_JSON" >"$BODY_JSON"
printf '{"model":"gpt-4o-mini","stream":true,"messages":%s,"max_tokens":16}' "$PROMPT_JSON" >"$BODY_SSE"
# What the content must contain, as tg_completion_text / tg_sse_text print
# it (JSON-escaped, without the quotes).
Q1_SHOWN=$("$TG_PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1], ensure_ascii=False)[1:-1])' "$Q1")

# request_id: the unique-id of the last answer: from the id of a rendered
# fallback (chatcmpl-tg-<unique-id>), else from the provider's X-Request-Id.
request_id() {
	"$TG_PYTHON" -c 'import json, re, sys
raw = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
m = re.search(r"\"id\":\"chatcmpl-tg-([^\"]+)\"", raw)
print(m.group(1) if m else "")' "$TG_BODY"
}

# check_fallback LABEL REASON SSE(0|1) MAX_SECONDS: the last answer is an
# HTTP 200 fallback marked REASON, in the shape asked for, carrying the
# computed text, received within MAX_SECONDS.
check_fallback() {
	tg_assert_eq 200 "$TG_STATUS" "$1: HTTP 200"
	tg_assert_eq "$2" "$(tg_header x-llm-fallback)" "$1: x-llm-fallback $2"
	tg_assert_eq "" "$(tg_header x-mock-provider)" "$1: none of the provider's answer reaches the client"
	if [ "$3" = 1 ]; then
		tg_assert_match 'text/event-stream*' "$(tg_header content-type)" "$1: Content-Type text/event-stream"
		if text=$(tg_sse_text "$TG_BODY"); then
			tg_ok "$1: chat.completion.chunk events ending with data: [DONE]"
		else
			tg_fail "$1: chat.completion.chunk events ending with data: [DONE]" "$text" "body: $(head -c 300 "$TG_BODY")"
		fi
	else
		tg_assert_match 'application/json*' "$(tg_header content-type)" "$1: Content-Type application/json"
		if text=$(tg_completion_text "$TG_BODY"); then
			tg_ok "$1: a valid chat.completion object"
		else
			tg_fail "$1: a valid chat.completion object" "$text" "body: $(head -c 300 "$TG_BODY")"
		fi
	fi
	case $text in
	*"$Q1_SHOWN"*"$Q2"* | *"$Q2"*) tg_fail "$1: the content is the computed fallback" "content: $text" ;;
	*"$Q1_SHOWN"*) tg_ok "$1: the content is the computed fallback (first paragraph of the last user message)" ;;
	*) tg_fail "$1: the content is the computed fallback" "content: $text" "wanted to see: $Q1_SHOWN" ;;
	esac
	tg_assert_lt "$TG_TIME" "$4" "$1: answered within ${4}s (${TG_TIME}s)"
}

# check_log LABEL ST TSC PST FB: HAProxy's log line of the last request, as
# the agent's log socket received it.
check_log() {
	tg__id=$(request_id)
	if [ -z "$tg__id" ]; then
		tg_fail "$1: log line" "no unique-id in the answer"
		return
	fi
	line=$(tg_log_line "$LOGS" "$tg__id" 2)
	if [ -z "$line" ]; then
		tg_fail "$1: log line" "no line with id=$tg__id in $LOGS"
		return
	fi
	got="be=$(tg_log_field "$line" be) st=$(tg_log_field "$line" st) tsc=$(tg_log_field "$line" tsc) pst=$(tg_log_field "$line" pst) fb=$(tg_log_field "$line" fb) route=$(tg_log_field "$line" route)"
	tg_assert_eq "be=provider_primary st=$2 tsc=$3 pst=$4 fb=$5 route=chat" "$got" \
		"$1: log line on the agent's socket (id=, be=, st=, tsc=, ...)"
}

# ---- A normal answer passes through untouched --------------------------------
TG_CHAT_BODY=$BODY_JSON tg_chat -H 'x-user: fb-ok'
tg_assert_eq 200 "$TG_STATUS" "ok: HTTP 200"
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" "ok: allow/ok"
tg_assert_eq primary "$(tg_header x-mock-provider)" "ok: answered by the provider"
tg_assert_eq "" "$(tg_header x-llm-fallback)" "ok: no x-llm-fallback"
if text=$(tg_completion_text "$TG_BODY") && tg_json "$TG_BODY" 'j["id"].startswith("chatcmpl-") and not j["id"].startswith("chatcmpl-tg-") and j["usage"]["completion_tokens"] > 0'; then
	tg_ok "ok: the provider's completion, untouched (its id, its usage)"
else
	tg_fail "ok: the provider's completion, untouched" "body: $(head -c 300 "$TG_BODY")"
fi
ok_id=$(tg_header x-request-id)
line=$(tg_log_line "$LOGS" "$ok_id" 2)
tg_assert_eq "be=provider_primary st=200 tsc=---- pst=200 fb=- route=chat" \
	"be=$(tg_log_field "$line" be) st=$(tg_log_field "$line" st) tsc=$(tg_log_field "$line" tsc) pst=$(tg_log_field "$line" pst) fb=$(tg_log_field "$line" fb) route=$(tg_log_field "$line" route)" \
	"ok: log line on the agent's socket"

TG_CHAT_BODY=$BODY_SSE tg_chat -H 'x-user: fb-ok'
tg_assert_eq 200 "$TG_STATUS" "ok, stream: HTTP 200"
tg_assert_eq primary "$(tg_header x-mock-provider)" "ok, stream: answered by the provider"
tg_assert_eq "" "$(tg_header x-llm-fallback)" "ok, stream: no x-llm-fallback"
if text=$(tg_sse_text "$TG_BODY") && [ -n "$text" ] && ! grep -q 'chatcmpl-tg-' "$TG_BODY"; then
	tg_ok "ok, stream: the provider's chunks, untouched"
else
	tg_fail "ok, stream: the provider's chunks, untouched" "$text" "body: $(head -c 300 "$TG_BODY")"
fi

# ---- Each failure of the provider, JSON and stream ---------------------------
# mode|curl header|reason|st in the log|tsc|pst (tsc LH: HAProxy answered
# itself, in place of the provider's response headers)
for c in \
	"error500|x-mock-mode: error500|provider_error|200|LH--|500" \
	"error503|x-mock-mode: error503|provider_error|200|LH--|503" \
	"hang|x-mock-mode: hang|provider_timeout|200|sH--|-" \
	"slow 3s|x-mock-mode: slow|provider_timeout|200|sH--|-" \
	"reset|x-mock-mode: reset|provider_unavailable|200|SH--|-"; do
	IFS='|' read -r label hdr reason st tsc pst <<EOF
$c
EOF
	for sse in 0 1; do
		# A streamed answer that keeps coming is not cut: see below.
		[ "$label/$sse" = "slow 3s/1" ] && continue
		if [ "$sse" = 1 ]; then
			body=$BODY_SSE
			l="$label, stream"
		else
			body=$BODY_JSON
			l=$label
		fi
		TG_CHAT_BODY=$body tg_chat -H 'x-user: fb-user' -H "$hdr" -H 'x-mock-delay-ms: 3000'
		check_fallback "$l" "$reason" "$sse" "$LIMIT"
		case $reason in
		provider_timeout)
			# The route's timeout fired, not HAProxy's default (300 s) or
			# the client's.
			tg_assert_lt "$(awk -v t="$TIMEOUT_MS" 'BEGIN { print t / 1000 - 0.05 }')" "$TG_TIME" \
				"$l: not before the route's timeout (${TIMEOUT_MS} ms)"
			;;
		esac
		[ "$sse" = 0 ] && check_log "$l" "$st" "$tsc" "$pst" "$reason"
	done
done

# Keep-alive: when the provider resets the connection of a request that is
# not the first of its client connection, HAProxy 2.6 answers nothing: it
# closes the client connection so that the client retries (its keep-alive
# contract; no log line either). curl retries on a new connection, which
# gets the fallback.
out=$(curl -s -o /dev/null -H 'content-type: application/json' -H 'x-user: fb-ka' \
	--data-binary "@$BODY_JSON" "$TG_URL/v1/chat/completions" \
	--next -s -o "$TG_BODY" -D "$TG_HDRS" --max-time 10 -w '%{http_code} %{num_connects}' \
	-H 'content-type: application/json' -H 'x-user: fb-ka' -H 'x-mock-mode: reset' \
	--data-binary "@$BODY_JSON" "$TG_URL/v1/chat/completions" 2>>"$TG_TMP/curl.log")
tg_assert_eq "200 1 provider_unavailable" "$out $(tg_header x-llm-fallback)" \
	"reset on a reused client connection: closed without an answer, the client's retry (new connection) gets the fallback"

# The agent saw the provider's real status for the 5xx it was told about.
if tg_poll_eq 3 4 tg_sql "SELECT count(*) FROM audit_log WHERE user_id = 'fb-user' AND status IN (500, 503)"; then
	tg_ok "the agent recorded the provider's 500/503 statuses (4 audit rows), not the 200 the client got"
else
	tg_fail "the agent recorded the provider's 500/503 statuses (4 audit rows)" "audit rows with status 500/503: $TG_POLL_GOT"
fi

# The route's timeout is HAProxy's server timeout: the wait for the response
# headers, then for each read of the body. A stream whose events keep coming
# (3 s in all, ~150 ms apart) is not cut; once its headers went to the client
# it could not be replaced anyway.
TG_CHAT_BODY=$BODY_SSE tg_chat -H 'x-user: fb-slow' -H 'x-mock-mode: slow' -H 'x-mock-delay-ms: 3000'
tg_assert_eq 200 "$TG_STATUS" "slow 3s, stream: HTTP 200"
tg_assert_eq primary "$(tg_header x-mock-provider)" "slow 3s, stream: the provider's stream, slower than the route's timeout in all, passes through"
tg_assert_eq "" "$(tg_header x-llm-fallback)" "slow 3s, stream: no x-llm-fallback"
if text=$(tg_sse_text "$TG_BODY") && [ -n "$text" ] && ! grep -q 'chatcmpl-tg-' "$TG_BODY"; then
	tg_ok "slow 3s, stream: whole, up to data: [DONE] (${TG_TIME}s)"
else
	tg_fail "slow 3s, stream: whole, up to data: [DONE]" "$text" "body: $(head -c 300 "$TG_BODY")"
fi

# ---- A route without a fallback: errors pass, as OpenAI-shaped JSON ----------
reloads=$(tg_agent_log_count 'rules reloaded')
tg_sql "UPDATE routes SET fallback = 'none' WHERE name = 'chat'"
tg_wait_reload "$reloads" 5 || tg_fail "the agent reloaded its rules after fallback = 'none'"
TG_CHAT_BODY=$BODY_JSON tg_chat -H 'x-user: fb-none' -H 'x-mock-mode: error500'
tg_assert_eq 500 "$TG_STATUS" "no fallback, error500: the provider's 500 reaches the client"
tg_assert_eq primary "$(tg_header x-mock-provider)" "no fallback, error500: the provider's own answer"
tg_assert_eq "" "$(tg_header x-llm-fallback)" "no fallback, error500: no x-llm-fallback"
TG_CHAT_BODY=$BODY_SSE tg_chat -H 'x-user: fb-none' -H 'x-mock-mode: hang'
tg_assert_eq 504 "$TG_STATUS" "no fallback, hang: 504"
tg_assert_eq "" "$(tg_header x-llm-fallback)" "no fallback, hang: no x-llm-fallback"
if tg_json "$TG_BODY" 'j["error"]["code"] == "provider_timeout" and j["error"]["type"] == "server_error"'; then
	tg_ok "no fallback, hang: an OpenAI-shaped JSON error, not HAProxy's HTML page"
else
	tg_fail "no fallback, hang: an OpenAI-shaped JSON error" "body: $(head -c 300 "$TG_BODY")"
fi
tg_assert_lt "$TG_TIME" "$LIMIT" "no fallback, hang: within the route's timeout plus ${MARGIN}s (${TG_TIME}s)"
TG_CHAT_BODY=$BODY_JSON tg_chat -H 'x-user: fb-none' -H 'x-mock-mode: reset'
tg_assert_eq 502 "$TG_STATUS" "no fallback, reset: 502"
if tg_json "$TG_BODY" 'j["error"]["code"] == "provider_unavailable"'; then
	tg_ok "no fallback, reset: an OpenAI-shaped JSON error"
else
	tg_fail "no fallback, reset: an OpenAI-shaped JSON error" "body: $(head -c 300 "$TG_BODY")"
fi
reloads=$(tg_agent_log_count 'rules reloaded')
tg_sql "UPDATE routes SET fallback = 'computed' WHERE name = 'chat'"
tg_wait_reload "$reloads" 5 || tg_fail "the agent reloaded its rules after fallback = 'computed'"

# ---- The provider is gone ----------------------------------------------------
# Refused connections (HAProxy's 503 after one retry), then, once HAProxy's
# health check marked the server down, the agent's own fallback
# (nbsrv = 0: provider_unhealthy) or HAProxy's 503 (no server): every answer
# is the fallback.
# shellcheck disable=SC2154  # set by tg_start_mock (eval)
tg_stop_pid "$TG_MOCK_PID_primary"
n=0
bad=""
slowest=0
while [ "$n" -lt 8 ]; do
	n=$((n + 1))
	sse=$((n % 2))
	if [ "$sse" = 1 ]; then body=$BODY_SSE; else body=$BODY_JSON; fi
	TG_CHAT_BODY=$body tg_chat -H 'x-user: fb-gone'
	r=$(tg_header x-llm-fallback)
	if [ "$sse" = 1 ]; then text=$(tg_sse_text "$TG_BODY"); else text=$(tg_completion_text "$TG_BODY"); fi
	okshape=$?
	[ "$n" = 1 ] && first="$r $TG_TIME"
	case "$TG_STATUS/$r/$okshape" in
	200/provider_unavailable/0 | 200/provider_unhealthy/0) ;;
	*) bad="$bad [request $n: status $TG_STATUS, x-llm-fallback '$r', shape: $text]" ;;
	esac
	slowest=$(awk -v a="$slowest" -v b="$TG_TIME" 'BEGIN { print (b > a) ? b : a }')
	sleep 0.5
done
if [ -z "$bad" ]; then
	tg_ok "provider gone: 8 requests, each a 200 fallback (provider_unavailable or provider_unhealthy) in the shape asked for"
else
	tg_fail "provider gone: every request gets the fallback" "$bad"
fi
# The first request, before HAProxy's health check noticed: the agent sends
# it to the provider, the connection is refused twice (retries 1, 1 s
# turn-around), HAProxy answers 503, rendered as the fallback.
tg_assert_match "provider_unavailable 1.0*" "$first" \
	"provider gone, first request: connection refused, one retry: provider_unavailable after ~1 s ($first)"
tg_assert_lt "$slowest" 2.0 "provider gone: the slowest fallback within 2 s (${slowest}s)"

# ---- The provider's 429 -----------------------------------------------------
# The provider comes back on the same address; once HAProxy's health check
# and the agent's breaker let requests through again, it answers 429 with
# Retry-After: 1, which opens the breaker for 1 s after each.
tg_restart_mock primary || tg_bail "the mock provider did not start again"
tg_wait_server_up provider_primary primary1 || tg_bail "the provider did not come back up in HAProxy"
back() {
	sleep 0.25
	tg_chat -H 'x-user: fb-back'
	[ "$(tg_header x-mock-provider)" = primary ]
}
tg_poll 10 back || tg_bail "the agent did not send requests to the provider again within 10 s"
TG_CHAT_BODY=$BODY_JSON tg_chat -H 'x-user: fb-user' -H 'x-mock-mode: ratelimit429' -H 'x-mock-retry-after: 1'
check_fallback "ratelimit429" provider_rate_limited 0 "$LIMIT"
tg_assert_eq "" "$(tg_header retry-after)" "ratelimit429: the provider's Retry-After does not reach the client"
check_log "ratelimit429" 200 LH-- 429 provider_rate_limited
sleep 1.5
TG_CHAT_BODY=$BODY_SSE tg_chat -H 'x-user: fb-user' -H 'x-mock-mode: ratelimit429' -H 'x-mock-retry-after: 1'
check_fallback "ratelimit429, stream" provider_rate_limited 1 "$LIMIT"
tg_done
