#!/bin/sh
# Started as root with `user`, the agent switches to that user after binding,
# and the unix sockets HAProxy writes to stay reachable (issue 7, item 5).
#
# Two throwaway system users, removed on exit: AU runs the agent (primary
# group AU), HU plays HAProxy (primary group HU, also a member of group AU).
#   1. `--user AU`: the agent's real, effective, saved and file-system uids
#      and gids are AU's, its only group AU's, no capability left; the log
#      socket and the unix SPOP socket are AU:AU mode 0660; a process of HU
#      with its supplementary groups (so in group AU) gets an AGENT-HELLO and
#      sends a datagram into the log socket, `nobody` is refused both; the
#      database and its secret are AU's, mode 0600, and HU cannot read them;
#      the agent, now AU, removes its sockets when it stops.
#   2. `--user AU --socket-group HU` behind a real HAProxy started as root
#      with `user HU` / `group HU` (which drops supplementary groups, hence
#      socket_group): sockets AU:HU 0660; HAProxy's health check over the
#      unix SPOP socket passes, a request is decided by the agent (allow/ok)
#      and HAProxy's log line of it reaches the agent and settles it
#      (tokengate_requests_ended_by_log_total).
#   3. Refusals: `--check --user` / `--socket-group` naming nobody that
#      exists; `--user` or `--socket-group` of none stops the agent before it
#      creates a socket; a log_socket or unix listen path that is a regular file is
#      refused and the file kept; not root and not in socket_group: refused.
# Needs root (useradd, setpriv): without it the test fails, it does not skip.
# Run from anywhere: sh tests/e2e/test_privdrop.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

AGENT=${TG_AGENT_BIN:-$TG_ROOT/build/tokengate}
[ "$(id -u)" = 0 ] || tg_bail "needs root (creates users, starts the agent as root): run as root"
for tool in useradd userdel groupdel setpriv "$TG_HAPROXY_BIN"; do
	command -v "$tool" >/dev/null 2>&1 || tg_bail "needs $tool"
done

AU=tgpriv-a$$
HU=tgpriv-h$$
users_gone() {
	tg_stop_all
	# A kept directory belongs to root again, not to a uid about to be freed.
	chown -R 0:0 "$TG_TMP" 2>/dev/null
	for u in "$HU" "$AU"; do
		getent passwd "$u" >/dev/null && userdel "$u"
	done
	for g in "$HU" "$AU"; do
		getent group "$g" >/dev/null && groupdel "$g"
	done
}
# Replaces lib.sh's traps: the users go after the processes lib.sh stops.
on_exit() {
	users_gone
	tg__on_exit "$1"
}
trap 'on_exit $?' EXIT
trap 'echo "Bail out! interrupted"; on_exit 130; trap - EXIT; exit 130' INT
trap 'echo "Bail out! terminated"; on_exit 143; trap - EXIT; exit 143' TERM

useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$AU" ||
	tg_bail "useradd $AU failed"
useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
	--groups "$AU" "$HU" || tg_bail "useradd $HU failed"
AUID=$(id -u "$AU")
AGID=$(id -g "$AU")

# The agent, once AU, writes its port and pid files in TG_TMP and its
# database in TG_TMP/agent. RUN holds the sockets; it is AU's so that the
# agent can remove them at exit. Both may be crossed by anyone (0711, not
# listed), so that only the sockets' own modes keep `nobody` out.
chown "$AU:$AU" "$TG_TMP"
chmod 0711 "$TG_TMP"
mkdir -p "$TG_TMP/agent" "$TG_TMP/run"
chown "$AU:$AU" "$TG_TMP/agent" "$TG_TMP/run"
chmod 0700 "$TG_TMP/agent"
chmod 0711 "$TG_TMP/run"
SPOP=$TG_TMP/run/spop.sock
TG_AGENT_LOG=$TG_TMP/run/log.sock

# as USER GROUP ARGS...: run ARGS as USER, GROUP and USER's supplementary
# groups, without any capability.
as() {
	u=$1
	g=$2
	shift 2
	setpriv --reuid="$u" --regid="$g" --init-groups --inh-caps=-all --bounding-set=-all -- "$@"
}
# hello USER GROUP: a HAPROXY-HELLO over the unix SPOP socket; prints
# agent-hello, or the error.
hello() {
	as "$1" "$2" "$TG_PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("error: %s" % e.strerror); sys.exit(0)
# HAPROXY-HELLO: supported-versions "2.0", max-frame-size 16380, capabilities ""
items = b"\x12supported-versions\x08\x032.0" + b"\x0emax-frame-size\x03\xfc\xf0\x03" + b"\x0ccapabilities\x08\x00"
frame = b"\x01\x00\x00\x00\x01\x00\x00" + items
s.sendall(len(frame).to_bytes(4, "big") + frame)
hdr = s.recv(4)
body = s.recv(int.from_bytes(hdr, "big"))
print("agent-hello" if body[:1] == b"\x65" else "other %r" % body[:1])' "$SPOP" 2>&1
}
# send_line USER GROUP LINE: one datagram into the log socket; prints
# "sent N" or the error.
send_line() {
	as "$1" "$2" "$TG_PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    print("sent %d" % s.sendto(sys.argv[2].encode(), sys.argv[1]))
except OSError as e:
    print("error: %s" % e.strerror)' "$TG_AGENT_LOG" "$3" 2>&1
}
# status FIELD: that line of the agent's /proc/PID/status, blanks squeezed.
status() {
	awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ +/, ""); sub(/ +$/, ""); print }' "/proc/$TG_AGENT_PID/status"
}
owner() { stat -c '%U:%G %a %F' "$1" 2>&1; }

# ---- 1. --user: who the agent is, and who reaches its sockets -------------------
tg_start_agent --user "$AU" --listen "$SPOP" || tg_bail "agent with --user $AU did not start"
tg_assert_eq "$AUID $AUID $AUID $AUID" "$(status Uid)" "Uid (real, effective, saved, fs) is $AU's"
tg_assert_eq "$AGID $AGID $AGID $AGID" "$(status Gid)" "Gid is $AU's primary group"
tg_assert_eq "$AGID" "$(status Groups)" "supplementary groups: $AU's only (root's are gone)"
tg_assert_eq 0000000000000000 "$(status CapEff)" "CapEff: no capability"
tg_assert_eq 0000000000000000 "$(status CapPrm)" "CapPrm: none to take back either"
tg_assert_eq "$AU:$AU 660 socket" "$(owner "$TG_AGENT_LOG")" "log socket: $AU:$AU, log_socket_mode 0660"
tg_assert_eq "$AU:$AU 660 socket" "$(owner "$SPOP")" "unix SPOP socket: $AU:$AU, unix_socket_mode 0660"
tg_assert_eq "$AU:$AU 600 regular file" "$(owner "$TG_DB")" "database: $AU's, mode 0600 (not its group's)"
tg_assert_eq "$AU:$AU 600 regular file" "$(owner "$TG_DB.secret")" "HMAC secret: $AU's, mode 0600"
tg_assert_eq agent-hello "$(hello "$HU" "$HU")" "$HU, a member of group $AU: HAPROXY-HELLO -> AGENT-HELLO"
tg_assert_match "sent *" "$(send_line "$HU" "$HU" 'id=none-1 st=200 tsc=----')" \
	"$HU, a member of group $AU: a log line goes into the log socket"
tg_assert_eq "error: Permission denied" "$(hello nobody nogroup)" "nobody: connecting to the SPOP socket refused"
tg_assert_eq "error: Permission denied" "$(send_line nobody nogroup 'id=none-2 st=200 tsc=----')" \
	"nobody: sending into the log socket refused"
out=$(as "$HU" "$HU" cat "$TG_DB" 2>&1 >/dev/null)
tg_assert_match "*Permission denied*" "$out" "$HU (in group $AU) cannot read the database"
tg_assert_eq 0 "$(tg_agent_log_count "Sanitizer|runtime error|Can't open file")" "no sanitizer report so far"
tg_stop_agent
tg_assert_eq "" "$(ls -A "$TG_TMP/run")" "the agent, now $AU, removed both sockets when it stopped"
tg_assert_eq 0 "$(tg_agent_log_count "Sanitizer|runtime error|Can't open file")" "no sanitizer report at exit (run as $AU)"

# ---- 2. socket_group, behind HAProxy running as HU ---------------------------------
# HAProxy's `user`/`group` in a second global section; the agent over its
# unix socket. The wrapper execs, so TG_HAPROXY_PID is HAProxy's own.
printf 'global\n    user %s\n    group %s\n' "$HU" "$HU" >"$TG_TMP/haproxy-user.cfg"
cat >"$TG_TMP/haproxy-as-user.sh" <<EOF
#!/bin/sh
TG_AGENT_ADDR=unix@$SPOP exec $TG_HAPROXY_BIN -f "$TG_TMP/haproxy-user.cfg" "\$@"
EOF
chmod +x "$TG_TMP/haproxy-as-user.sh"
tg_start_mock primary ok || tg_bail "mock provider did not start"
tg_start_agent --user "$AU" --socket-group "$HU" --listen "$SPOP" ||
	tg_bail "agent with --socket-group $HU did not start"
tg_assert_eq "$AU:$HU 660 socket" "$(owner "$TG_AGENT_LOG")" "socket_group $HU: log socket $AU:$HU 0660"
tg_assert_eq "$AU:$HU 660 socket" "$(owner "$SPOP")" "socket_group $HU: unix SPOP socket $AU:$HU 0660"
tg_assert_eq "$AGID $AGID $AGID $AGID" "$(status Gid)" "socket_group does not change the agent's own group"
TG_HAPROXY_BIN=$TG_TMP/haproxy-as-user.sh tg_start_haproxy ||
	tg_bail "haproxy as $HU did not start, or its health check over $SPOP failed"
tg_ok "haproxy running as $HU: its health check over the unix SPOP socket passed"
HUID=$(id -u "$HU")
tg_assert_eq "$HUID" "$(awk '$1 == "Uid:" { print $3 }' "/proc/$TG_HAPROXY_PID/status")" "haproxy runs as $HU"
echo "# haproxy's groups: '$(awk '$1 == "Groups:" { $1 = ""; print }' "/proc/$TG_HAPROXY_PID/status")'" \
	"(2.6 drops its supplementary groups: why socket_group exists)"
tg_chat -H 'x-user: priv-alice'
tg_assert_eq 200 "$TG_STATUS" "a chat completion through haproxy: 200"
tg_assert_eq allow/ok "$(tg_header x-llm-decision)" "  decided by the agent over the unix socket (allow/ok)"
ended() { tg_scrape "$TG_TMP/m.prom" && [ "$(tg_metric "$TG_TMP/m.prom" tokengate_requests_ended_by_log_total)" = 1 ]; }
if tg_poll 5 ended; then
	tg_ok "haproxy's log line, sent as $HU, settled the request (requests_ended_by_log_total 1, ${TG_POLL_MS} ms)"
else
	tg_fail "haproxy's log line did not reach the agent" \
		"requests_ended_by_log_total: '$(tg_metric "$TG_TMP/m.prom" tokengate_requests_ended_by_log_total)'"
fi
tg_stop_pid "$TG_HAPROXY_PID"
tg_stop_agent
tg_assert_eq 0 "$(tg_agent_log_count "Sanitizer|runtime error|Can't open file")" "no sanitizer report at exit (socket_group run)"

# ---- 3. refusals ----------------------------------------------------------------
# refused STATUS PATTERN MESSAGE ARGS...: the agent exits with STATUS and
# prints a line matching the shell PATTERN.
refused() {
	want=$1
	pat=$2
	msg=$3
	shift 3
	out=$(timeout 10 "$AGENT" --listen 127.0.0.1:0 --admin-listen '' --db "$TG_DB" "$@" 2>&1)
	rc=$?
	tg_assert_eq "$want" "$rc" "$msg: exit status $want"
	tg_assert_match "*$pat*" "$out" "$msg: the message names it"
}
refused 2 'user: no such user \"tgpriv-nosuchuser\"' "--check --user of no such user" \
	--check --user tgpriv-nosuchuser --log-socket ''
refused 2 'socket_group: no such group \"tgpriv-nosuchgroup\"' "--check --socket-group of no such group" \
	--check --socket-group tgpriv-nosuchgroup --log-socket ''
out=$("$AGENT" --check --user "$AU" --socket-group "$HU" --db "$TG_TMP/check.db" 2>&1)
tg_assert_eq 0 "$?" "--check with an existing user and group: exit 0"
tg_assert_match "*configuration and database $TG_TMP/check.db OK*" "$out" "  and says so"
refused 1 'user: no such user *tgpriv-nosuchuser' "starting with --user of no such user" \
	--user tgpriv-nosuchuser --log-socket "$TG_TMP/run/never.sock"
tg_assert_eq "" "$(ls -A "$TG_TMP/run")" "  it stopped before creating a socket"
refused 1 'socket_group: no such group *tgpriv-nosuchgroup' "starting with --socket-group of no such group" \
	--user "$AU" --socket-group tgpriv-nosuchgroup --log-socket "$TG_TMP/run/never.sock"
tg_assert_eq "" "$(ls -A "$TG_TMP/run")" "  it stopped before creating a socket"

printf 'precious\n' >"$TG_TMP/run/file"
refused 1 "log_socket $TG_TMP/run/file: exists and is a regular file, not a socket" \
	"a log_socket path that is a regular file" --log-socket "$TG_TMP/run/file"
tg_assert_eq precious "$(cat "$TG_TMP/run/file" 2>&1)" "  the file is still there, unchanged"
refused 1 "listen $TG_TMP/run/file: exists and is a regular file, not a socket" \
	"a unix listen path that is a regular file" --listen "$TG_TMP/run/file" --log-socket ''
tg_assert_eq precious "$(cat "$TG_TMP/run/file" 2>&1)" "  the file is still there, unchanged"

# Not root: socket_group must be one of the agent's groups (nobody is not in HU).
out=$(as nobody nogroup timeout 10 "$AGENT" --listen 127.0.0.1:0 --admin-listen '' --log-socket '' \
	--db "$TG_TMP/run/x.db" --socket-group "$HU" 2>&1)
tg_assert_eq 1 "$?" "not root, --socket-group of a group it is not in: exit 1"
tg_assert_match "*socket_group: running as uid $(id -u nobody), which is not in group $HU*" "$out" \
	"  the message says why"

tg_done
