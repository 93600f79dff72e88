#!/bin/sh
# Settings and secrets the agent must refuse at start, each with a message
# that names the file, the line or the key (issue 7, item 5; "bad input gets
# a clear error"): an HMAC secret that group or others may read, one too
# short, an unknown key, a bad value, a missing config file, a directory or
# a NUL byte as config; an admin_token_file that group or others may read,
# empty, or set with admin_token (and a good one guarding /metrics); and
# --check passes on a good configuration. No HAProxy needed.
# Run from anywhere: sh tests/e2e/test_settings.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

AGENT=${TG_AGENT_BIN:-$TG_ROOT/build/tokengate}
D=$TG_TMP/settings
mkdir -p "$D"

# refused STATUS PATTERN MESSAGE ARGS...: the agent exits with STATUS and
# prints a line matching the shell PATTERN
refused() {
	want=$1
	pat=$2
	msg=$3
	shift 3
	out=$(timeout 10 "$AGENT" --listen 127.0.0.1:0 --admin-listen '' --log-socket '' "$@" 2>&1)
	rc=$?
	tg_assert_eq "$want" "$rc" "$msg: exit status $want"
	tg_assert_match "*$pat*" "$out" "$msg: the message names it"
}

printf '%s\n' 0123456789abcdef0123456789abcdef >"$D/open.secret"
chmod 644 "$D/open.secret"
refused 1 "secret_file $D/open.secret: readable or writable by group or others (mode 644)" \
	"an HMAC secret readable by others" --db "$D/a.db" --secret-file "$D/open.secret"
chmod 640 "$D/open.secret"
refused 1 "(mode 640)" "an HMAC secret readable by the group" --db "$D/a.db" --secret-file "$D/open.secret"
printf 'short\n' >"$D/short.secret"
chmod 600 "$D/short.secret"
refused 1 "secret_file $D/short.secret: shorter than 16 bytes" "a secret of 5 bytes" \
	--db "$D/a.db" --secret-file "$D/short.secret"
refused 1 "secret_file $D/none.secret: No such file" "a secret file named but missing" \
	--db "$D/a.db" --secret-file "$D/none.secret"

printf 'listen = 127.0.0.1:0\nmax_connections = 10\nno_such_key = 1\n' >"$D/unknown.conf"
refused 2 "$D/unknown.conf:3: no_such_key: unknown configuration key" "an unknown key in the file" \
	--config "$D/unknown.conf"
printf 'max_connections = lots\n' >"$D/badint.conf"
refused 2 "$D/badint.conf:1: max_connections: \"lots\" is not an integer" "a value that is not a number" \
	--config "$D/badint.conf"
printf 'idle_timeout_ms = -5\n' >"$D/range.conf"
refused 2 "idle_timeout_ms: -5 is outside \\[0, 86400000\\]" "a value out of range" --config "$D/range.conf"
refused 2 "$D/missing.conf: No such file" "a config file that does not exist" --config "$D/missing.conf"
refused 2 "$D: Is a directory" "a directory given as the config file (it once loaded as an empty file)" --config "$D"
printf 'listen = 127.0.0.1:0\nlog_level = info\000 = x\n' >"$D/nul.conf"
refused 2 "$D/nul.conf:2: NUL byte in line" "a line with a NUL byte (once called too long)" --config "$D/nul.conf"
refused 2 "audit_log: \"maybe\" is not a boolean" "a bad boolean on the command line" --audit-log maybe

# The shipped template lists every key --help knows (keys get added).
missing=$("$AGENT" --help | sed -n 's/^  --\([a-z-]*\) .*/\1/p' | tr - _ | grep -vxE 'config|check|help' |
	while read -r k; do grep -q "^#$k = " "$TG_ROOT/ops/tokengate.conf" || echo "$k"; done | tr '\n' ' ')
tg_assert_eq "" "$missing" "ops/tokengate.conf lists every key of --help"
out=$("$AGENT" --check --db "$D/good.db" 2>&1)
tg_assert_eq 0 "$?" "--check on a fresh database: exit 0"
tg_assert_match "*configuration and database $D/good.db OK*" "$out" "--check says what it checked"
tg_assert_eq 600 "$(stat -c %a "$D/good.db.secret")" "the secret it created is mode 0600"

# ---- listeners: loopback admin, admin token, unix socket mode ------------------
refused 1 "admin_listen: 0.0.0.0:0 is not a loopback address (set admin_allow_public = true)" \
	"an admin listener on a public address" --db "$D/a2.db" --admin-listen 0.0.0.0:0
SOCK=$D/spop.sock
tg_start_agent --listen "$SOCK" --unix-socket-mode 0600 --admin-token tok-e2e-0123456789 ||
	tg_bail "agent with a unix socket listener did not start"
tg_poll 5 test -S "$SOCK" || tg_fail "no unix socket at $SOCK"
tg_assert_eq "srw-------" "$(stat -c %A "$SOCK")" "unix socket listener created with unix_socket_mode 0600"
hello=$("$TG_PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
# HAPROXY-HELLO: supported-versions "2.0", max-frame-size 16380, capabilities ""
items = b"\x12supported-versions\x08\x032.0" + b"\x0emax-frame-size\x03\xfc\xf0\x03" + b"\x0ccapabilities\x08\x00"
frame = b"\x01\x00\x00\x00\x01\x00\x00" + items
s.sendall(len(frame).to_bytes(4, "big") + frame)
hdr = s.recv(4)
body = s.recv(int.from_bytes(hdr, "big"))
print("agent-hello" if body[:1] == b"\x65" else "other %r" % body[:1])' "$SOCK" 2>&1)
tg_assert_eq agent-hello "$hello" "a HAPROXY-HELLO over the unix socket gets an AGENT-HELLO"
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "http://127.0.0.1:$TG_ADMIN_PORT/metrics"; }
tg_assert_eq 401 "$(code)" "admin_token set: /metrics without a token is 401"
tg_assert_eq 401 "$(code -H 'authorization: Bearer wrong')" "  with a wrong token 401"
tg_assert_eq 200 "$(code -H 'authorization: Bearer tok-e2e-0123456789')" "  with the token 200"
tg_stop_agent
tg_assert_eq "" "$(test -e "$SOCK" && echo left)" "the unix socket is removed when the agent stops"

# ---- admin_token_file: the token off the command line ---------------------------
TOK=tok-file-0123456789abcdef
printf '%s\n' "$TOK" >"$D/open.token"
chmod 644 "$D/open.token"
refused 1 "admin_token_file $D/open.token: readable or writable by group or others (mode 644)" \
	"an admin token file readable by others" --db "$D/a3.db" --admin-token-file "$D/open.token"
chmod 640 "$D/open.token"
refused 1 "admin_token_file $D/open.token: readable or writable by group or others (mode 640)" \
	"an admin token file readable by the group" --db "$D/a3.db" --admin-token-file "$D/open.token"
: >"$D/empty.token"
chmod 600 "$D/empty.token"
refused 1 "admin_token_file $D/empty.token: empty" "an empty admin token file" \
	--db "$D/a3.db" --admin-token-file "$D/empty.token"
printf '\n%s\n' "$TOK" >"$D/blank-first.token"
chmod 600 "$D/blank-first.token"
refused 1 "admin_token_file $D/blank-first.token: empty" "an admin token file whose first line is blank" \
	--db "$D/a3.db" --admin-token-file "$D/blank-first.token"
# The token, trailing blanks after it, a second line that is not part of it.
printf '%s \t\r\nsecond line\n' "$TOK" >"$D/good.token"
chmod 600 "$D/good.token"
refused 2 "admin_token_file: set together with admin_token" "admin_token and admin_token_file both set" \
	--db "$D/a3.db" --admin-token-file "$D/good.token" --admin-token "$TOK"
refused 2 "admin_token_file $D/none.token: No such file" "--check: a missing admin token file" \
	--check --db "$D/a3.db" --admin-token-file "$D/none.token"
refused 2 "admin_token_file $D/open.token: readable or writable by group or others" \
	"--check: an admin token file readable by the group" --check --db "$D/a3.db" --admin-token-file "$D/open.token"
out=$("$AGENT" --check --db "$D/a3.db" --admin-token-file "$D/good.token" 2>&1)
tg_assert_eq 0 "$?" "--check with a good admin token file: exit 0"
tg_start_agent --admin-token-file "$D/good.token" || tg_bail "agent with admin_token_file did not start"
tg_assert_eq 401 "$(code)" "admin_token_file: /metrics without a token is 401"
tg_assert_eq 401 "$(code -H 'authorization: Bearer wrong')" "  with a wrong token 401"
tg_assert_eq 401 "$(code -H "authorization: Bearer $TOK second line")" "  with the second line appended 401"
tg_assert_eq 200 "$(code -H "authorization: Bearer $TOK")" "  with the file's first line, blanks stripped, 200"
tg_assert_eq "" "$(ps -o args= -p "$TG_AGENT_PID" | grep -F "$TOK")" "the token is not on the agent's command line"
tg_stop_agent
tg_assert_eq 0 "$(grep -cF "$TOK" "$TG_TMP/agent.log")" "the token is not in the agent's log"

tg_done
