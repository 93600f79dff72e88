#!/bin/sh
# TLS on the SPOP listener (issue 7, item 4), end to end with Debian's
# HAProxy: its server line `ssl verify required ca-file CA verifyhost NAME
# crt CLIENT.pem` (haproxy.cfg: TG_AGENT_TLS=yes, TG_AGENT_CA,
# TG_AGENT_TLS_NAME, TG_AGENT_CRT) against tokengate --tls-cert --tls-key
# --tls-client-ca.
#   1. Settings: a world-readable key, a key that does not match, a
#      certificate without its key: refused with the key named; --check
#      loads the files.
#   2. HAProxy's health checks and requests over TLS: the agent decides
#      (allow, then a 429 once a budget is spent), nothing fails open.
#   3. Pipelined load over TLS (spopload through a socat TLS client): frames
#      split across TLS records and many frames in one record all answered.
#   4. Peers that must not get in: plain SPOP on the TLS port, no client
#      certificate, a certificate from another CA, a handshake that never
#      finishes (closed at hello_timeout_ms): each closed and counted in
#      tokengate_spop_tls_handshakes_total{result="failed"}, and HAProxy's
#      traffic is served after each. 2,000 of them in a row: a few dozen log
#      lines and "suppressed" summaries, the metric counts all 2,000.
#   5. HAProxy presenting a certificate from another CA, or expecting
#      another agent name: the agent server is DOWN, fail-closed answers.
#   6. SIGHUP picks up a rotated certificate for new connections; a key
#      that no longer loads keeps the running one.
# Run from anywhere: sh tests/e2e/test_tls.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

AGENT=${TG_AGENT_BIN:-$TG_ROOT/build/tokengate}
RAW=${TG_SPOPRAW_BIN:-$TG_ROOT/build/spopraw}
LOAD=${TG_SPOPLOAD_BIN:-$TG_ROOT/build/spopload}
[ -x "$RAW" ] || tg_bail "$RAW missing (make)"
[ -x "$LOAD" ] || tg_bail "$LOAD missing (make)"
command -v openssl >/dev/null 2>&1 || tg_bail "openssl missing (apt-get install openssl)"
command -v socat >/dev/null 2>&1 || tg_bail "socat missing (apt-get install socat)"

# ---- certificates: a CA, the agent's, HAProxy's, and a stranger's ----------
P=$TG_TMP/pki
mkdir -p "$P"
newkey() { # NAME
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/$1.key" 2>>"$P/openssl.log"
	chmod 600 "$P/$1.key"
}
ca() { # NAME
	newkey "$1"
	openssl req -x509 -new -key "$P/$1.key" -days 2 -subj "/CN=$1" -out "$P/$1.pem" 2>>"$P/openssl.log"
}
signed() { # NAME CA EXTFILE-TEXT
	newkey "$1"
	openssl req -new -key "$P/$1.key" -subj "/CN=$1" -out "$P/$1.csr" 2>>"$P/openssl.log"
	printf '%s\n' "$3" >"$P/$1.ext"
	openssl x509 -req -in "$P/$1.csr" -CA "$P/$2.pem" -CAkey "$P/$2.key" -CAcreateserial \
		-days 2 -extfile "$P/$1.ext" -out "$P/$1.pem" 2>>"$P/openssl.log"
	cat "$P/$1.pem" "$P/$1.key" >"$P/$1.bundle.pem"
	chmod 600 "$P/$1.bundle.pem"
}
ca ca
ca rogue-ca
signed agent ca "subjectAltName=DNS:tokengate-agent,IP:127.0.0.1"
signed agent2 ca "subjectAltName=DNS:tokengate-agent,IP:127.0.0.1"
signed haproxy ca "extendedKeyUsage=clientAuth"
signed rogue rogue-ca "extendedKeyUsage=clientAuth"
[ -s "$P/agent.pem" ] && [ -s "$P/haproxy.bundle.pem" ] && [ -s "$P/rogue.pem" ] ||
	tg_bail "could not create test certificates (see $P/openssl.log)"
TLS_ARGS="--tls-cert $P/agent.pem --tls-key $P/agent.key --tls-client-ca $P/ca.pem"

# log_has PATTERN: the agent's log has a line matching PATTERN (grep -E)
log_has() { grep -qE "$1" "$TG_TMP/agent.log"; }
# check MESSAGE COMMAND...: one assertion that COMMAND succeeds
check() {
	tg__m=$1
	shift
	if "$@"; then tg_ok "$tg__m"; else tg_fail "$tg__m"; fi
}

# ---- 1. settings ------------------------------------------------------------
refused() { # EXPECTED-PATTERN MESSAGE ARGS...: the agent must refuse to start
	tg__pat=$1
	tg__msg=$2
	shift 2
	out=$(timeout 10 "$AGENT" --listen 127.0.0.1:0 --admin-listen '' --log-socket '' \
		--db "$TG_TMP/refused.db" "$@" 2>&1)
	rc=$?
	tg_assert_eq 1 "$rc" "$tg__msg: exit status 1"
	tg_assert_match "*$tg__pat*" "$out" "$tg__msg: the error names it"
}
cp "$P/agent.key" "$P/open.key"
chmod 644 "$P/open.key"
refused "tls_key $P/open.key: readable or writable by others" "a world-readable key" \
	--tls-cert "$P/agent.pem" --tls-key "$P/open.key"
refused "tls_key $P/rogue.key: error:*key values mismatch" "a key of another certificate" \
	--tls-cert "$P/agent.pem" --tls-key "$P/rogue.key"
refused "tls_cert $P/nonexistent.pem" "a missing certificate file" \
	--tls-cert "$P/nonexistent.pem" --tls-key "$P/agent.key"
out=$("$AGENT" --check --db "$TG_TMP/check.db" --tls-cert "$P/agent.pem" 2>&1)
tg_assert_eq 2 "$?" "tls_cert without tls_key: --check fails"
tg_assert_match "*tls_cert: must be set together with tls_key*" "$out" "tls_cert without tls_key: named"
out=$("$AGENT" --check --db "$TG_TMP/check.db" $TLS_ARGS 2>&1)
tg_assert_eq 0 "$?" "--check with good TLS files passes"
out=$("$AGENT" --check --db "$TG_TMP/check.db" --tls-cert "$P/agent.pem" --tls-key "$P/open.key" 2>&1)
tg_assert_eq 2 "$?" "--check loads the TLS files (a world-readable key fails it)"

out=$(TG_AGENT_TLS=Yes "$TG_HAPROXY_BIN" -c -f "$TG_ROOT/haproxy-conf/haproxy.cfg" 2>&1)
tg_assert_eq 1 "$?" "haproxy.cfg: TG_AGENT_TLS=Yes (neither yes nor no) refuses to start"
tg_assert_match "*TG_AGENT_TLS must be 'yes' or 'no'*" "$out" "  saying so"

# ---- 2. HAProxy over TLS ------------------------------------------------------
tg_start_mock primary ok || tg_bail "mock provider did not start"
# shellcheck disable=SC2086  # TLS_ARGS are words
tg_start_agent $TLS_ARGS --hello-timeout-ms 1500 || tg_bail "agent with TLS did not start"
TG_AGENT_TLS=yes TG_AGENT_CA=$P/ca.pem TG_AGENT_CRT=$P/haproxy.bundle.pem TG_AGENT_TLS_NAME=tokengate-agent
TG_FAIL_MODE=closed
export TG_AGENT_TLS TG_AGENT_CA TG_AGENT_CRT TG_AGENT_TLS_NAME TG_FAIL_MODE
tg_start_haproxy || tg_bail "haproxy did not start, or its health check over TLS never passed"
tg_ok "HAProxy's SPOP health check over TLS marks the agent UP"
tg_assert_match "*listening on 127.0.0.1:0 (port $TG_AGENT_PORT, TLS, client certificates required)*" \
	"$(cat "$TG_TMP/agent.log")" "the agent says it listens with TLS and requires client certificates"

tg_chat -H 'x-user: tls-alice'
tg_assert_eq 200 "$TG_STATUS" "a chat completion through HAProxy, agent over TLS: 200"
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" "the agent decided it over TLS (allow/ok)"
tg_assert_eq "" "$(tg_header x-llm-gate)" "not a fail-open or fail-closed answer"

tg_sql "INSERT INTO user_limits (user_id, daily_tokens, note) VALUES ('tls-bob', 1, 'e2e test_tls')"
bob_denied() { tg_chat -H 'x-user: tls-bob'; [ "$TG_STATUS" = 429 ]; }
tg_poll 3 bob_denied
tg_assert_eq 429 "$TG_STATUS" "a user whose budget is spent gets the agent's 429 over TLS"
tg_assert_eq "deny/budget_tokens" "$(tg_header x-llm-decision)" "  with the agent's reason"

# A 6 KB body head in the NOTIFY: one frame over several TLS records.
BIG=$TG_TMP/big.json
"$TG_PYTHON" -c 'import json,sys; print(json.dumps({"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"x" * 20000}]}))' >"$BIG"
TG_CHAT_BODY=$BIG tg_chat -H 'x-user: tls-carol'
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" "a 20 KB prompt: decided over TLS"

# ---- 3. pipelined load through a TLS client --------------------------------
SOCAT_PORT=$(tg_free_port)
socat "TCP-LISTEN:$SOCAT_PORT,bind=127.0.0.1,reuseaddr,fork" \
	"OPENSSL:127.0.0.1:$TG_AGENT_PORT,cafile=$P/ca.pem,cert=$P/haproxy.pem,key=$P/haproxy.key,commonname=tokengate-agent" \
	2>>"$TG_TMP/socat.log" &
SOCAT_PID=$!
tg__track "$SOCAT_PID" socat
tg_poll 5 tg__port_open "$SOCAT_PORT" || tg_fail "socat TLS client did not start"
"$LOAD" -p "$SOCAT_PORT" -c 4 -P 32 -n 20000 -w 0 -u 1000 --settle --json >"$TG_TMP/load.json" 2>"$TG_TMP/load.err"
tg_assert_eq 0 "$?" "20,000 pipelined NOTIFYs (4 connections x 32 in flight) through TLS: spopload succeeds"
errs=$("$TG_PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("errors", -1))' "$TG_TMP/load.json" 2>/dev/null)
tg_assert_eq 0 "$errs" "  no errors or timeouts"
answered=$("$TG_PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(d["tally"].values()))' "$TG_TMP/load.json" 2>/dev/null)
tg_assert_lt 19999 "${answered:-0}" "  every NOTIFY got its ACK (${answered:-none} ACKs)"
allows=$("$TG_PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["tally"].get("allow", 0))' "$TG_TMP/load.json" 2>/dev/null)
tg_assert_lt 9999 "${allows:-0}" "  the requests among them were decided: allow ${allows:-none} (the rest settle them)"
tg_stop_pid "$SOCAT_PID"

# ---- 4. peers that must not get in ----------------------------------------------
failed_before() { tg_scrape "$TG_TMP/m.prom" && tg_metric "$TG_TMP/m.prom" tokengate_spop_tls_handshakes_total result=failed; }
F0=$(failed_before)
"$RAW" -p "$TG_AGENT_PORT" -T 3000 hello >"$TG_TMP/plain.out" 2>&1
tg_assert_match "*closed*" "$(cat "$TG_TMP/plain.out")" "plain SPOP on the TLS port: closed without an AGENT-HELLO"
tg_assert_eq "" "$(grep -i 'AGENT-HELLO\|version' "$TG_TMP/plain.out")" "  and nothing in clear came back"

echo | timeout 10 openssl s_client -connect "127.0.0.1:$TG_AGENT_PORT" -CAfile "$P/ca.pem" \
	>"$TG_TMP/nocert.out" 2>&1
check "a TLS client without a certificate: refused (the log says who and why)" tg_poll 3 log_has "from 127\\.0\\.0\\.1:[0-9]+: TLS handshake failed: .*peer did not return a certificate"

echo | timeout 10 openssl s_client -connect "127.0.0.1:$TG_AGENT_PORT" -CAfile "$P/ca.pem" \
	-cert "$P/rogue.pem" -key "$P/rogue.key" >"$TG_TMP/rogue.out" 2>&1
check "a client certificate from another CA: refused (the log names the reason)" tg_poll 3 log_has "client certificate: unable to get local issuer certificate"

# A connection that never starts its handshake is closed at hello_timeout_ms.
t=$("$TG_PYTHON" -c 'import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
t = time.monotonic()
try:
    while s.recv(4096):
        pass
except OSError:
    pass
print("%.2f" % (time.monotonic() - t))' "$TG_AGENT_PORT")
tg_assert_lt "$t" 3 "a silent peer on the TLS port: closed at hello_timeout_ms (1.5 s; took ${t}s)"
tg_assert_lt 1.2 "$t" "  not before"

tg_scrape "$TG_TMP/m.prom"
F1=$(tg_metric "$TG_TMP/m.prom" tokengate_spop_tls_handshakes_total result=failed)
tg_assert_eq $((F0 + 4)) "$F1" "the four refused peers are counted in tokengate_spop_tls_handshakes_total{result=\"failed\"}"
OK1=$(tg_metric "$TG_TMP/m.prom" tokengate_spop_tls_handshakes_total result=ok)
tg_assert_lt 5 "${OK1:-0}" "successful handshakes are counted too (${OK1:-none})"
tg_chat -H 'x-user: tls-alice'
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" "HAProxy's traffic was served all along"

# ---- 4b. a flood of refused peers: the log is rate-limited, the metrics exact ----
# 2,000 connections that speak HTTP to the TLS port, one after the other,
# each waiting for the agent to close it (so that each was handled).
# CONN_REFUSAL_LOG_PER_S is 10: a few dozen lines, then "suppressed" lines.
tg_scrape "$TG_TMP/m.prom"
F0=$(tg_metric "$TG_TMP/m.prom" tokengate_spop_tls_handshakes_total result=failed)
S0=$(tg_metric "$TG_TMP/m.prom" tokengate_log_lines_suppressed_total kind=tls)
L0=$(wc -l <"$TG_TMP/agent.log")
flood=$("$TG_PYTHON" -c 'import socket, sys
closed = 0
for i in range(2000):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    try:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(4096):
            pass
        closed += 1
    except OSError:
        closed += 1  # a reset is a close too
    finally:
        s.close()
print(closed)' "$TG_AGENT_PORT" 2>&1)
tg_assert_eq 2000 "$flood" "2,000 peers speaking HTTP to the TLS port: each closed by the agent"
# flood_lines: "WRITTEN HELD": refusal lines written since the flood began,
# and the messages their summaries say were held back.
flood_lines() {
	tail -n "+$((L0 + 1))" "$TG_TMP/agent.log" | awk '
		/TLS handshake failed/ { w++ }
		/TLS refusals: suppressed [0-9]+ similar messages in the last/ {
			sub(/.*suppressed /, ""); h += $1
		}
		END { printf "%d %d\n", w, h }'
}
all_told() { set -- $(flood_lines); [ $(($1 + $2)) -ge 2000 ]; }
tg_poll 5 all_told
set -- $(flood_lines)
written=$1 held=$2
tg_assert_lt "$written" 200 "  the log has far fewer refusal lines than refusals ($written)"
tg_assert_lt 0 "$held" "  and \"suppressed K similar messages\" lines ($held held back)"
tg_assert_eq 2000 $((written + held)) "  lines written + held back = 2,000, once each"
tg_assert_match "*from 127.0.0.1:*TLS handshake failed*" "$(tail -n "+$((L0 + 1))" "$TG_TMP/agent.log" | grep -m1 'TLS handshake failed')" \
	"  a written line names the peer's address"
tg_scrape "$TG_TMP/m.prom"
tg_assert_eq $((F0 + 2000)) "$(tg_metric "$TG_TMP/m.prom" tokengate_spop_tls_handshakes_total result=failed)" \
	"  tokengate_spop_tls_handshakes_total{result=\"failed\"} counts all 2,000"
tg_assert_eq $((S0 + held)) "$(tg_metric "$TG_TMP/m.prom" tokengate_log_lines_suppressed_total kind=tls)" \
	"  tokengate_log_lines_suppressed_total{kind=\"tls\"} counts the lines held back"
tg_chat -H 'x-user: tls-alice'
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" "  HAProxy's traffic is served right after the flood"

# ---- 5. HAProxy with the wrong credentials ------------------------------------
wait_down() { [ "$(tg_server_field spoe_tokengate tg1 status)" = DOWN ]; }
start_haproxy_no_wait() {
	[ -n "${TG_HAPROXY_PID:-}" ] && tg_stop_pid "$TG_HAPROXY_PID"
	tg_start_haproxy >/dev/null 2>&1 # its wait for UP fails, as it should
}
TG_AGENT_CRT=$P/rogue.bundle.pem start_haproxy_no_wait
check "HAProxy presenting a certificate from another CA: the agent server is DOWN" tg_poll 8 wait_down
tg_chat -H 'x-user: tls-alice'
tg_assert_eq 503 "$TG_STATUS" "  requests are answered fail-closed (503)"
tg_assert_eq error-closed "$(tg_header x-llm-gate)" "  marked x-llm-gate: error-closed"

TG_AGENT_TLS_NAME=some-other-agent start_haproxy_no_wait
check "HAProxy expecting another agent name (verifyhost): the agent server is DOWN" tg_poll 8 wait_down

# ---- 6. certificate rotation with SIGHUP ------------------------------------------
serial() { # the serial of the certificate the agent presents now
	echo | timeout 10 openssl s_client -connect "127.0.0.1:$TG_AGENT_PORT" -CAfile "$P/ca.pem" \
		-cert "$P/haproxy.pem" -key "$P/haproxy.key" 2>/dev/null |
		openssl x509 -noout -serial 2>/dev/null
}
S_OLD=$(openssl x509 -noout -serial -in "$P/agent.pem")
S_NEW=$(openssl x509 -noout -serial -in "$P/agent2.pem")
tg_assert_eq "$S_OLD" "$(serial)" "the agent presents its certificate"
cp "$P/agent2.pem" "$P/agent.pem"
cp "$P/agent2.key" "$P/agent.key"
kill -HUP "$TG_AGENT_PID"
tg_poll 3 log_has "TLS certificate .* reloaded"
tg_assert_eq "$S_NEW" "$(serial)" "SIGHUP: new connections get the rotated certificate"
chmod 644 "$P/agent.key"
kill -HUP "$TG_AGENT_PID"
check "SIGHUP with a key that no longer loads: refused, logged" tg_poll 3 log_has "keeping the running TLS certificate"
tg_assert_eq "$S_NEW" "$(serial)" "  and the running certificate is kept"
chmod 600 "$P/agent.key"
unset TG_AGENT_TLS_NAME
TG_AGENT_TLS_NAME=tokengate-agent
tg_restart_haproxy || tg_fail "HAProxy with the right credentials did not see the agent UP again"
tg_chat -H 'x-user: tls-alice'
tg_assert_eq "allow/ok" "$(tg_header x-llm-decision)" "HAProxy with the right credentials, rotated certificate: decided"
tg_assert_eq 1 "$(tg_alive "$TG_AGENT_PID" && echo 1)" "the agent is still running"

tg_done
