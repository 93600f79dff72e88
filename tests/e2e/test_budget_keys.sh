#!/bin/sh
# End-to-end budgets, identity by API key (Authorization: Bearer ...):
#   - keys are created the way an operator does it: an api_keys row holding
#     HMAC-SHA256(secret, key), the secret being "<db>.secret";
#   - a valid key is allowed and charged to its user (and its tier);
#   - unknown, expired, revoked (with SQL, effective within a second) keys and
#     requests without any identity get 401 in OpenAI's error shape;
#   - settings.unknown_key_action = 'free': an unknown key is served as user
#     'anonymous' in tier free;
#   - no key ever appears in the database (db and -wal files) or in the
#     agent's log (run at --log-level debug).
# Run from anywhere: sh tests/e2e/test_budget_keys.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

T_START=$(tg_now_ms)
tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
tg_start_agent_isolated --log-level debug || tg_bail "agent did not start"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"
echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, db $TG_DB"

# ---- The secret --------------------------------------------------------------
SECRET=$TG_DB.secret
tg_assert_eq "600" "$(stat -c %a "$SECRET" 2>/dev/null)" "secret: $SECRET created with mode 0600"
if [ "$(wc -c <"$SECRET" | tr -d ' ')" = 65 ] && head -n 1 "$SECRET" | grep -Eqx '[0-9a-f]{64}'; then
	tg_ok "secret: 64 hex characters and a newline"
else
	tg_fail "secret: 64 hex characters and a newline" "$(wc -c <"$SECRET") bytes"
fi

# ---- Keys, as an operator creates them ---------------------------------------
newkey() { echo "sk-tg-e2e-$(openssl rand -hex 20)"; }
K_VALID=$(newkey)    # user key-alice, her tier (default)
K_FREE=$(newkey)     # user key-dave, key tier 'free'
K_FUTURE=$(newkey)   # user key-carol, expires in 2099
K_EXPIRED=$(newkey)  # user key-old, expired in 2020
K_UNKNOWN=$(newkey)  # never inserted
addkey() { # KEY USER TIER-SQL EXPIRES-SQL
	tg_sql "INSERT INTO api_keys (key_hmac, key_prefix, user_id, tier, label, expires_at)
		VALUES ('$(tg_key_hmac "$1")', '$(printf '%.8s' "$1")', '$2', $3, 'e2e', $4)"
}
addkey "$K_VALID" key-alice NULL NULL
addkey "$K_FREE" key-dave "'free'" NULL
addkey "$K_FUTURE" key-carol NULL "'2099-01-01T00:00:00Z'"
addkey "$K_EXPIRED" key-old NULL "'2020-01-01T00:00:00Z'"
tg_assert_eq 4 "$(tg_sql "SELECT count(*) FROM api_keys WHERE length(key_hmac) = 64")" "api_keys: 4 rows with a 64-hex HMAC"

# The agent picks the new keys up without restart.
bearer() { # KEY: one chat request with that key, no x-user
	tg_chat -H "authorization: Bearer $1"
}
valid_ok() {
	bearer "$K_VALID"
	[ "$TG_STATUS" = 200 ]
}
if tg_poll 3 valid_ok; then
	tg_ok "valid key: allowed once inserted (picked up after ${TG_POLL_MS} ms, no restart)"
else
	tg_fail "valid key: allowed once inserted" "status $TG_STATUS, x-llm-decision '$(tg_header x-llm-decision)'"
fi
tg_assert_eq "allow/ok 100000" "$(tg_header x-llm-decision) $(tg_header x-ratelimit-limit-tokens)" \
	"valid key: allow/ok, with the default tier's 100000-token limit"
bearer "$K_VALID"
bearer "$K_VALID"
tg_assert_eq 200 "$TG_STATUS" "valid key: more requests allowed"
if tg_poll 4 tg_usage_matches_mock key-alice 0 0 "$K_VALID"; then
	tg_ok "valid key: charged to its user key-alice, to the token ($TG_USAGE_GOT)"
else
	tg_fail "valid key: charged to its user key-alice, to the token" \
		"daily_usage key-alice: $TG_USAGE_GOT" "mock (this key):       $TG_USAGE_WANT"
fi

bearer "$K_FREE"
tg_assert_eq "200 allow/ok 10000" "$TG_STATUS $(tg_header x-llm-decision) $(tg_header x-ratelimit-limit-tokens)" \
	"key with tier 'free': allowed under the free tier's 10000-token limit"
if tg_poll 4 tg_usage_matches_mock key-dave 0 0 "$K_FREE"; then
	tg_ok "key with tier 'free': charged to its user key-dave ($TG_USAGE_GOT)"
else
	tg_fail "key with tier 'free': charged to its user key-dave" "daily_usage: $TG_USAGE_GOT" "mock:        $TG_USAGE_WANT"
fi

bearer "$K_FUTURE"
tg_assert_eq "200 allow/ok" "$TG_STATUS $(tg_header x-llm-decision)" "key expiring in 2099: allowed"

# ---- Refused keys: 401 -------------------------------------------------------
# check_401 WHAT: the last answer is the 401 of an unknown key.
check_401() {
	tg_assert_eq "401 deny/unknown_key" "$TG_STATUS $(tg_header x-llm-decision)" "$1: 401, deny/unknown_key"
	if tg_json "$TG_BODY" 'j["error"]["code"] == "invalid_api_key" and j["error"]["type"] == "invalid_request_error" and isinstance(j["error"]["message"], str) and "param" in j["error"]'; then
		tg_ok "$1: body is OpenAI's error shape, code invalid_api_key"
	else
		tg_fail "$1: body is OpenAI's error shape, code invalid_api_key" "body: $(head -c 300 "$TG_BODY")"
	fi
}
bearer "$K_UNKNOWN"
check_401 "unknown key"
bearer "$K_EXPIRED"
check_401 "expired key (expires_at 2020-01-01)"
tg_chat
check_401 "no x-user and no Authorization"

# Revocation with plain SQL, effective within a second.
tg_sql "UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE key_hmac = '$(tg_key_hmac "$K_VALID")'"
valid_refused() {
	bearer "$K_VALID"
	[ "$TG_STATUS" = 401 ]
}
if tg_poll 3 valid_refused; then
	echo "# revocation took effect after ${TG_POLL_MS} ms"
	tg_assert_lt "$TG_POLL_MS" 1000 "revoked key: refused within one second of the UPDATE (${TG_POLL_MS} ms)"
	check_401 "revoked key"
else
	tg_fail "revoked key: refused within one second of the UPDATE" "still $TG_STATUS after ${TG_POLL_MS} ms"
fi
bearer "$K_VALID"
tg_assert_eq 401 "$TG_STATUS" "revoked key: stays refused"
tg_assert_eq "0|0|0 0|0|0" "$(tg_mock_user "$K_UNKNOWN") $(tg_mock_user "$K_EXPIRED")" \
	"refused keys: the provider never saw a request with them"

# ---- unknown_key_action = 'free': served as 'anonymous' ----------------------
tg_sql "UPDATE settings SET value = 'free' WHERE name = 'unknown_key_action'"
unknown_ok() {
	bearer "$K_UNKNOWN"
	[ "$TG_STATUS" = 200 ]
}
if tg_poll 3 unknown_ok; then
	tg_ok "unknown_key_action = 'free': an unknown key is allowed (after ${TG_POLL_MS} ms)"
else
	tg_fail "unknown_key_action = 'free': an unknown key is allowed" "status $TG_STATUS, '$(tg_header x-llm-decision)'"
fi
tg_assert_eq "allow/ok 10000" "$(tg_header x-llm-decision) $(tg_header x-ratelimit-limit-tokens)" \
	"unknown_key_action = 'free': allow/ok under the free tier's 10000-token limit"
bearer "$K_UNKNOWN"
tg_assert_eq 200 "$TG_STATUS" "unknown_key_action = 'free': again"
if tg_poll 4 tg_usage_matches_mock anonymous 0 0 "$K_UNKNOWN"; then
	tg_ok "unknown_key_action = 'free': charged to user 'anonymous' in daily_usage ($TG_USAGE_GOT)"
else
	tg_fail "unknown_key_action = 'free': charged to user 'anonymous' in daily_usage" \
		"daily_usage anonymous: $TG_USAGE_GOT" "mock (unknown key):    $TG_USAGE_WANT"
fi
tg_assert_eq "" "$(tg_sql "SELECT user_id FROM daily_usage WHERE user_id LIKE 'sk-%'")" \
	"no daily_usage row is named after a key"

# ---- Keys and the secret never stored, logged or served in clear --------------
# scan_keys WHEN [FILE...]: no key (nor the part of it after the 8-character
# prefix an operator may store in key_prefix) in the db, its -wal, the
# agent's log or the FILEs, and the HMAC secret in none of them.
scan_keys() {
	when=$1
	shift
	found=""
	secret=$(head -n 1 "$SECRET")
	for f in "$TG_DB" "$TG_DB-wal" "$TG_TMP/agent.log" "$@"; do
		[ -f "$f" ] || continue
		for k in "$K_VALID" "$K_FREE" "$K_FUTURE" "$K_EXPIRED" "$K_UNKNOWN"; do
			grep -qaF "$k" "$f" && found="$found [$(printf '%.16s' "$k")... in $(basename "$f")]"
			grep -qaF "${k#????????}" "$f" && found="$found [$(printf '%.16s' "$k")... (after the prefix) in $(basename "$f")]"
		done
		grep -qaF "$secret" "$f" && found="$found [the HMAC secret in $(basename "$f")]"
	done
	if [ -z "$found" ]; then
		tg_ok "$when: no API key nor the HMAC secret appears in the db, its -wal, the agent's debug log${1:+, /metrics or /state}"
	else
		tg_fail "$when: no API key nor the HMAC secret appears in the db, its -wal, the agent's debug log${1:+, /metrics or /state}" "$found"
	fi
}
# What the admin listener serves, after every kind of key was used.
tg_admin_get /metrics "$TG_TMP/served.metrics"
tg_assert_eq 200 "$TG_ADMIN_STATUS" "admin: /metrics answered"
tg_admin_get /state "$TG_TMP/served.state"
tg_assert_eq 200 "$TG_ADMIN_STATUS" "admin: /state answered"
if grep -q '"users"\|users' "$TG_TMP/served.state"; then
	tg_ok "control: /state lists what the agent holds (users)"
else
	tg_fail "control: /state lists what the agent holds (users)" "$(head -c 300 "$TG_TMP/served.state")"
fi
scan_keys "agent running" "$TG_TMP/served.metrics" "$TG_TMP/served.state"
# Let everything reach the files: stop the agent (SIGTERM flushes, and may
# checkpoint the -wal into the db).
tg_stop_agent
scan_keys "agent stopped"
# The same search does find what is stored (the search can fail).
h=$(tg_key_hmac "$K_VALID" "$SECRET")
if cat "$TG_DB" "$TG_DB-wal" 2>/dev/null | grep -qaF "$h"; then
	tg_ok "control: the key's HMAC is found in the database files by the same search"
else
	tg_fail "control: the key's HMAC is found in the database files by the same search"
fi
if [ -s "$TG_TMP/agent.log" ]; then
	tg_ok "control: the agent's log is not empty ($(wc -l <"$TG_TMP/agent.log" | tr -d ' ') lines at debug level)"
else
	tg_fail "control: the agent's log is not empty"
fi

# ---- The shipped default: X-User from clients is not trusted --------------------
tg_sql "UPDATE settings SET value = 'deny' WHERE name = 'unknown_key_action'"
{ [ -n "${TG_AGENT_PID:-}" ] && tg_alive "$TG_AGENT_PID"; } || tg_start_agent || tg_bail "agent did not restart"
TG_TRUST_X_USER=no tg_restart_haproxy || tg_bail "haproxy did not restart"
sleep 0.5
tg_chat -H 'x-user: somebody-else'
tg_assert_eq 401 "$TG_STATUS" "TG_TRUST_X_USER=no (the default): a client's own X-User is removed, no key means 401"

echo "# took $((($(tg_now_ms) - T_START) / 1000)) s"
tg_done
