#!/bin/sh
# End-to-end with the official OpenAI Node SDK (npm "openai", version 6,
# pinned in tests/sdk/package.json) as the client: real HAProxy
# (haproxy-conf/), the real agent, the mock provider. tests/sdk/sdk.test.mjs
# (node's built-in test runner) checks that through HAProxy the SDK
#   - gets normal completions, JSON and streamed;
#   - parses every fallback HAProxy renders (the provider's 500/503/429, no
#     answer within the route's timeout, a reset connection) as a normal
#     completion, JSON and streamed, with x-llm-fallback visible;
#   - gets openai.RateLimitError for an over-budget user, with a positive
#     integer Retry-After.
# Each node test becomes one ok / not ok line here.
#
# Needs node (20 or later) and, the first time, the npm registry: when
# tests/sdk/node_modules is missing it runs "npm ci" there. Without node the
# test fails (it is not skipped): CI machines have node 20.
# Run from anywhere: sh tests/e2e/test_openai_sdk.sh (see lib.sh for the
# environment; TG_NODE_BIN, TG_NPM_BIN choose node and npm).

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

SDK_DIR=$TG_ROOT/tests/sdk
TIMEOUT_MS=1000

NODE=$(tg_node_bin) || tg_bail "node is missing (install Node.js 20 or later, e.g. apt-get install nodejs npm)"
node_major=$("$NODE" -p 'process.versions.node.split(".")[0]' 2>/dev/null)
case $node_major in
"" | *[!0-9]*) tg_bail "cannot run $NODE" ;;
esac
[ "$node_major" -ge 20 ] || tg_bail "node $node_major is too old: the SDK test needs node 20 or later"
tg_ok "node $("$NODE" --version) ($NODE)"

if [ ! -d "$SDK_DIR/node_modules/openai" ]; then
	NPM=${TG_NPM_BIN:-$(command -v npm 2>/dev/null)}
	[ -n "$NPM" ] || tg_bail "npm is missing and $SDK_DIR/node_modules is not installed"
	echo "# npm ci in $SDK_DIR"
	if ! (cd "$SDK_DIR" && timeout 300 "$NPM" ci --no-audit --no-fund) >"$TG_TMP/npm-ci.log" 2>&1; then
		tg_bail "npm ci --no-audit --no-fund in tests/sdk failed (see $TG_TMP/npm-ci.log)"
	fi
fi
sdk_version=$("$NODE" -p 'require(process.argv[1]).version' "$SDK_DIR/node_modules/openai/package.json" 2>/dev/null)
tg_assert_match '6.*' "$sdk_version" "the openai SDK installed in tests/sdk is version 6 ($sdk_version)"

tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent || tg_bail "agent did not start"

# A short route timeout, so that the timeout fallback comes quickly; breakers
# that do not open on the failures forced on purpose (a 429 still opens the
# primary for its Retry-After, 1 s); and a user whose day is spent.
reloads=$(tg_agent_log_count 'rules reloaded')
tg_sql "UPDATE routes SET timeout_ms = $TIMEOUT_MS, fallback = 'computed' WHERE name = 'chat';
	UPDATE providers SET consecutive_failures = 1000000, min_requests = 1000000, open_s = 1;
	INSERT INTO user_limits (user_id, daily_tokens, note) VALUES ('sdk-broke', 1, 'e2e test_openai_sdk')" ||
	tg_bail "cannot prepare the database (routes, providers, user_limits)"
tg_wait_reload "$reloads" 5 || tg_bail "the agent did not reload its rules"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"
echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, mock 127.0.0.1:$TG_MOCK_PORT, tmp $TG_TMP"

TAP=$TG_TMP/sdk.tap
(cd "$SDK_DIR" && TG_SDK_BASE_URL=$TG_URL/v1 TG_SDK_USER=sdk-user TG_SDK_BROKE_USER=sdk-broke \
	TG_SDK_TIMEOUT_MS=$TIMEOUT_MS timeout 300 "$NODE" --test --test-reporter=tap sdk.test.mjs) \
	>"$TAP" 2>"$TG_TMP/sdk.stderr"
node_status=$?

# Node's TAP: "ok N - name" / "not ok N - name" per test (indented when
# nested), then a YAML block with the error of a failed one.
results=$TG_TMP/sdk.results
awk '
	function flush() { if (name != "") print status "\t" name "\t" detail; name = ""; detail = "" }
	/^[ ]*(not )?ok [0-9]+ - / {
		flush()
		line = $0
		sub(/^[ ]+/, "", line)
		status = (line ~ /^not ok/) ? "fail" : "pass"
		sub(/^(not )?ok [0-9]+ - /, "", line)
		sub(/ # (SKIP|TODO).*$/, "", line)
		name = line
		next
	}
	name != "" && /^[ ]+(error|message|expected|actual|code):/ {
		d = $0
		sub(/^[ ]+/, "", d)
		detail = detail (detail == "" ? "" : " | ") substr(d, 1, 300)
	}
	END { flush() }' "$TAP" >"$results"

npass=0
nfail=0
while IFS="$(printf '\t')" read -r status name detail; do
	case $name in
	*sdk.test.mjs) continue ;; # the file itself, in some node versions
	esac
	if [ "$status" = pass ]; then
		tg_ok "sdk: $name"
		npass=$((npass + 1))
	else
		tg_fail "sdk: $name" "$detail"
		nfail=$((nfail + 1))
	fi
done <"$results"

if [ "$npass" -eq 0 ] && [ "$nfail" -eq 0 ]; then
	tg_fail "the SDK test ran" "no test result from node --test (exit $node_status)" \
		"$(tail -n 5 "$TG_TMP/sdk.stderr" "$TAP" 2>/dev/null | tr '\n' ' ')"
elif [ "$node_status" -ne 0 ] && [ "$nfail" -eq 0 ]; then
	tg_fail "node --test exit status" "exit $node_status with no failed test: see $TAP"
else
	tg_ok "node --test: $npass passed, $nfail failed (exit $node_status)"
fi

tg_done
