#!/bin/sh
# End-to-end basics: a real HAProxy (haproxy-conf/haproxy.cfg, nbthread 2)
# asks the tokengate agent about every POST /v1/..., in front of the mock
# provider. Run from anywhere: sh tests/e2e/test_basic.sh
# Environment: see the top of tests/e2e/lib.sh (TG_AGENT_BIN, TG_AGENT_PORT,
# TG_KEEP_TMP, ...).

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent || tg_bail "agent did not start"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"

echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, mock 127.0.0.1:$TG_MOCK_PORT, tmp $TG_TMP"

# ---- HAProxy's health check of the agent (option spop-check) ---------------
tg_assert_eq UP "$(tg_server_field spoe_tokengate tg1 status)" \
	"haproxy's spop-check marks the agent server tg1 UP"
tg_assert_match 'L[67]OK*' "$(tg_server_field spoe_tokengate tg1 check_status)" \
	"the last check of tg1 completed the SPOP handshake"

# ---- A normal chat completion ----------------------------------------------
tg_chat -H 'x-user: e2e-alice' -H 'authorization: Bearer sk-e2e-alice'
tg_assert_eq 200 "$TG_STATUS" "chat completion: 200"
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" \
	"chat completion: x-llm-decision allow/ok (the agent's variables drove the routing)"
tg_assert_eq primary "$(tg_header x-mock-provider)" \
	"chat completion: answered by the primary provider"
tg_assert_eq "" "$(tg_header x-llm-gate)" "chat completion: no gate error"
if grep -q '"chat.completion"' "$TG_BODY"; then
	tg_ok "chat completion: the provider's JSON body reaches the client"
else
	tg_fail "chat completion: the provider's JSON body reaches the client" \
		"body: $(head -c 200 "$TG_BODY")"
fi

# ---- A 200 KB prompt: larger than a buffer and a SPOP frame ----------------
# Only fields extracted by json_query go to the agent, so a big body is never
# an agent error; the agent still decides (on the fields that fitted in the
# buffer, and on content_length).
big=$TG_TMP/prompt-200k.json
{
	printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
	head -c 204800 /dev/zero | tr '\0' 'a'
	printf '"}],"max_tokens":16}'
} >"$big"
TG_CHAT_BODY=$big tg_chat -H 'x-user: e2e-bob' -H 'authorization: Bearer sk-e2e-bob'
tg_assert_eq 200 "$TG_STATUS" "200 KB prompt: 200"
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" \
	"200 KB prompt: the agent decided (x-llm-decision allow/ok)"
tg_assert_eq "" "$(tg_header x-llm-gate)" "200 KB prompt: no agent error"

# ---- 500 concurrent requests -----------------------------------------------
conc=$TG_TMP/concurrent
mkdir -p "$conc"
small=$TG_TMP/small.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}' >"$small"
seq 1 500 | timeout 120 xargs -P 500 -I{} curl -s -o /dev/null --max-time 60 \
	-D "$conc/{}.headers" -H 'content-type: application/json' \
	-H 'x-user: e2e-load-{}' -H 'authorization: Bearer sk-e2e-load-{}' \
	--data-binary "@$small" "$TG_URL/v1/chat/completions"
n200=0
ndecided=0
for f in "$conc"/*.headers; do
	[ -f "$f" ] || continue
	[ "$(head -n 1 "$f" | cut -d' ' -f2)" = 200 ] && n200=$((n200 + 1))
	[ -n "$(tg_header x-llm-decision "$f")" ] && ndecided=$((ndecided + 1))
done
tg_assert_eq 500 "$n200" "500 concurrent requests: all answered 200"
tg_assert_eq 500 "$ndecided" "500 concurrent requests: all carry x-llm-decision"

# ---- Garbage on a raw SPOP connection --------------------------------------
# After a valid HELLO, a frame of unknown type (0xff): the agent must answer
# AGENT-DISCONNECT with status 4 (invalid frame) and close that connection
# only; HAProxy's own connections keep working.
spopraw=${TG_SPOPRAW_BIN:-$TG_ROOT/build/spopraw}
if [ -x "$spopraw" ]; then
	out=$(timeout 10 "$spopraw" -p "$TG_AGENT_PORT" --hello send-hex 00000008ff00000001000000 2>&1)
	if printf '%s\n' "$out" | grep -qi 'AGENT-DISCONNECT' &&
		printf '%s\n' "$out" | grep -Eqi 'status(-code)?[^0-9a-z]{0,4}4([^0-9]|$)'; then
		tg_ok "garbage after HELLO: AGENT-DISCONNECT status 4"
	else
		tg_fail "garbage after HELLO: AGENT-DISCONNECT status 4" "spopraw said: $out"
	fi
else
	tg_fail "garbage after HELLO: AGENT-DISCONNECT status 4" "$spopraw is missing (make)"
fi
if [ -n "${TG_AGENT_PID:-}" ]; then
	if tg_alive "$TG_AGENT_PID"; then
		tg_ok "agent still running after the garbage"
	else
		tg_fail "agent still running after the garbage"
	fi
fi
tg_chat -H 'x-user: e2e-carol' -H 'authorization: Bearer sk-e2e-carol'
tg_assert_eq 200 "$TG_STATUS" "after the garbage: a request through haproxy still gets 200"
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" \
	"after the garbage: the agent still decides (allow/ok)"

# ---- Fail-open: the agent goes away ----------------------------------------
# haproxy.cfg defaults to TG_FAIL_MODE=open: without an answer within the SPOE
# processing timeout (500ms), the request goes to the primary provider marked
# "x-llm-gate: error-open".
if [ -n "$TG_AGENT_EXTERNAL" ]; then
	tg_skip "fail-open: the agent is external (TG_AGENT_PORT), not stopping it"
elif [ "${TG_FAIL_MODE:-open}" != open ]; then
	tg_skip "fail-open: TG_FAIL_MODE=$TG_FAIL_MODE"
else
	tg_stop_agent
	tg_chat -H 'x-user: e2e-dave' -H 'authorization: Bearer sk-e2e-dave'
	tg_assert_eq 200 "$TG_STATUS" "agent stopped: the request still gets through (200)"
	tg_assert_eq error-open "$(tg_header x-llm-gate)" "agent stopped: x-llm-gate error-open"
	tg_assert_eq primary "$(tg_header x-mock-provider)" \
		"agent stopped: answered by the default (primary) provider"
	tg_assert_eq "" "$(tg_header x-llm-decision)" "agent stopped: no x-llm-decision"
	tg_assert_lt "$TG_TIME" 2.0 \
		"agent stopped: answered within the processing timeout (0.5s) plus 1.5s (took ${TG_TIME}s)"
fi

tg_done
