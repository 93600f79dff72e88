#!/bin/sh
# Settings and secrets the agent must refuse at start, each with a message
# that names the file, the line or the key (issue 7, item 5; "bad input gets
# a clear error"): an HMAC secret that group or others may read, one too
# short, an unknown key, a bad value, a missing config file; and --check
# passes on a good configuration. No HAProxy needed.
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

tg_done
