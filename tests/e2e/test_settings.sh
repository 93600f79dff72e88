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
refused 2 "audit_log: \"maybe\" is not a boolean" "a bad boolean on the command line" --audit-log maybe

out=$("$AGENT" --check --db "$D/good.db" 2>&1)
tg_assert_eq 0 "$?" "--check on a fresh database: exit 0"
tg_assert_match "*configuration and database $D/good.db OK*" "$out" "--check says what it checked"
tg_assert_eq 600 "$(stat -c %a "$D/good.db.secret")" "the secret it created is mode 0600"

tg_done
