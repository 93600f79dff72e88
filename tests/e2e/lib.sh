# tests/e2e/lib.sh: shared code of the end-to-end tests (POSIX sh, sourced).
# shellcheck shell=sh
# shellcheck disable=SC2034  # variables set here are read by the tests
#
# A test is a script in tests/e2e/ that does
#
#     . "$(dirname "$0")/lib.sh"
#     tg_start_mock primary ok || tg_bail "mock provider did not start"
#     tg_start_agent           || tg_bail "agent did not start"
#     tg_start_haproxy         || tg_bail "haproxy did not start"
#     tg_chat -H 'x-user: alice'
#     tg_assert_eq 200 "$TG_STATUS" "chat completion answered"
#     tg_done
#
# and prints one "ok - ..." / "not ok - ..." line per assertion, then
# "N passed, N failed"; its exit status is non-zero when anything failed.
#
# Every process is started in the background with its PID recorded, and
# stopped by that PID (TERM, then KILL after a bound) when the test exits,
# fails or is interrupted. Every wait is bounded. Only loopback addresses.
#
# Environment:
#   TG_AGENT_BIN    agent to start (default: build/tokengate). It is run as
#                   $TG_AGENT_BIN --listen 127.0.0.1:0 --port-file F
#                   --pid-file P --db DIR/tokengate.db [tg_start_agent args]
#   TG_AGENT_PORT   when set, no agent is started: the tests use the agent
#                   already listening on 127.0.0.1:$TG_AGENT_PORT (e.g. one
#                   running under gdb). The SPOE processing timeout then
#                   defaults to 60s so that breakpoints do not turn into
#                   fail-open answers, and tests that must stop the agent
#                   are skipped.
#   TG_KEEP_TMP     1: keep the test's temporary directory (logs, pid and
#                   port files, bodies) even when everything passed. It is
#                   always kept, and its path printed, when something failed.
#   TG_MOCK_BIN     mock provider script (default: tests/mock_provider.py),
#                   run with /usr/bin/python3 (or $TG_PYTHON)
#   TG_HAPROXY_BIN  haproxy binary (default: haproxy from PATH)
#   TG_SPOPRAW_BIN  raw SPOP client (default: build/spopraw)
#   TG_WAIT_S       bound, in seconds, of each startup wait (default: 10)
#   TG_STOP_S       bound, in seconds, between TERM and KILL when a process
#                   is stopped (default: 5; tests/valgrind.sh raises it, as
#                   the leak report is written only by a clean exit)
#   TG_FAIL_MODE, TG_SPOE_PROCESSING_TIMEOUT, TG_BUFSIZE
#                   passed through to haproxy.cfg (see its global section)
#   TMPDIR          where the temporary directory is created (default /tmp)
#   ASAN_OPTIONS, UBSAN_OPTIONS
#                   kept, with the settings of "Sanitizer reports" below
#                   appended (they win on a conflict: the check needs them)
#
# Variables set for the tests:
#   TG_ROOT              repository root
#   TG_TMP               this test's temporary directory
#   TG_MOCK_PORT_<name>  port of the mock provider started as <name>
#   TG_AGENT_PORT        agent port; TG_AGENT_PID its PID (started here only)
#   TG_ADMIN_PORT        the agent's admin HTTP port (/metrics, /healthz)
#   TG_FRONTEND_PORT, TG_URL   HAProxy's frontend
#   TG_HAPROXY_SOCK      HAProxy's admin socket; TG_HAPROXY_PID its PID
#   TG_STATUS, TG_TIME, TG_HDRS, TG_BODY   result of the last tg_request
#   TG_SAN_DIR           where sanitizer reports are written (see below)
#
# Sanitizer reports: with ASan + UBSan binaries (make asan, the second pass of
# make check) every instrumented process a test runs (the agent, its one-shot
# commands, spopraw, spopload) writes any AddressSanitizer, LeakSanitizer or
# UndefinedBehaviorSanitizer report to its own file,
# $TG_SAN_DIR/report.<program>.<pid>, rather than to its stderr: a stderr
# captured by $(...) or sent to /dev/null would hide it, and a passing test
# deletes its logs. Whenever a process started here ends (tg_stop_pid,
# tg_wait_exit), when tg_done has stopped everything, and at exit, each new
# report becomes a failure of the test that names the program and shows the
# report's first lines. LeakSanitizer runs when a process exits by itself (the
# agent on TERM); a process killed with KILL leaves no report, by design.

# ---- Setup ------------------------------------------------------------------

# The sourcing script lives in tests/e2e/.
TG_ROOT=${TG_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
TG_PYTHON=${TG_PYTHON:-/usr/bin/python3}
TG_HAPROXY_BIN=${TG_HAPROXY_BIN:-haproxy}
TG_MOCK_BIN=${TG_MOCK_BIN:-$TG_ROOT/tests/mock_provider.py}
TG_WAIT_S=${TG_WAIT_S:-10}
TG_STOP_S=${TG_STOP_S:-5}
TG_AGENT_EXTERNAL=${TG_AGENT_PORT:+1}

TG_PASSED=0
TG_FAILED=0
TG__PIDS=""           # "pid:name pid:name ...", in start order
TG__CLEANED=""

TG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-e2e.$(basename "$0" .sh).XXXXXX") || {
	echo "Bail out! cannot create a temporary directory" >&2
	exit 1
}
TG_HDRS=$TG_TMP/last.headers
TG_BODY=$TG_TMP/last.body

# See "Sanitizer reports" above. The options are ignored by binaries built
# without sanitizers. halt_on_error: the ASan build makes every UBSan check
# fatal already (-fno-sanitize-recover=all); this covers one built otherwise.
TG_SAN_DIR=$TG_TMP/sanitizer
mkdir -p "$TG_SAN_DIR"
# Writable by an agent that dropped to another user (test_privdrop), which
# could not write its report otherwise ("Can't open file") and would go
# unheard; sticky, so no one removes another's report.
chmod 1777 "$TG_SAN_DIR"
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:log_path=$TG_SAN_DIR/report:log_exe_name=1"
UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=1:print_stacktrace=1:log_path=$TG_SAN_DIR/report:log_exe_name=1"
export ASAN_OPTIONS UBSAN_OPTIONS

tg__on_exit() { # EXIT-STATUS
	[ -n "$TG__CLEANED" ] && return 0
	TG__CLEANED=1
	tg__f0=$TG_FAILED
	tg_stop_all
	tg__san_check all
	if [ "${TG_KEEP_TMP:-0}" = 1 ] || [ "$TG_FAILED" -gt 0 ] || [ "$1" -ne 0 ]; then
		echo "# kept $TG_TMP"
	else
		rm -rf "$TG_TMP"
	fi
	# Reports found only now (the test ended without tg_done, or after it):
	# counted in a summary line of their own, and the exit status says so.
	if [ "$TG_FAILED" -gt "$tg__f0" ]; then
		echo "0 passed, $((TG_FAILED - tg__f0)) failed"
		exit 1
	fi
}
trap 'tg__on_exit $?' EXIT
trap 'echo "Bail out! interrupted"; tg__on_exit 130; trap - EXIT; exit 130' INT
trap 'echo "Bail out! terminated"; tg__on_exit 143; trap - EXIT; exit 143' TERM

# ---- Assertions -------------------------------------------------------------

tg_ok() {
	TG_PASSED=$((TG_PASSED + 1))
	echo "ok - $1"
}

# tg_fail MESSAGE [DETAIL...]: DETAIL lines are printed as "# " comments.
tg_fail() {
	TG_FAILED=$((TG_FAILED + 1))
	echo "not ok - $1"
	shift
	for tg__l in "$@"; do
		echo "#   $tg__l"
	done
}

tg_skip() {
	echo "ok - # SKIP $1"
}

tg_assert_eq() { # EXPECTED ACTUAL MESSAGE
	if [ "$1" = "$2" ]; then
		tg_ok "$3"
	else
		tg_fail "$3" "expected: '$1'" "got:      '$2'"
	fi
}

tg_assert_match() { # SHELL-PATTERN ACTUAL MESSAGE
	# shellcheck disable=SC2254
	case $2 in
	$1) tg_ok "$3" ;;
	*) tg_fail "$3" "expected to match: '$1'" "got: '$2'" ;;
	esac
}

tg_assert_lt() { # ACTUAL LIMIT MESSAGE (decimal numbers, e.g. seconds)
	if awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; then
		tg_ok "$3"
	else
		tg_fail "$3" "expected below $2, got $1"
	fi
}

# tg_done: stops everything started here (so that the agent's exit, and its
# leak check, are part of the test: see "Sanitizer reports"), then the summary
# line; returns non-zero if anything failed (or if no assertion ran at all).
tg_done() {
	tg_stop_all
	tg__san_check all
	echo "$TG_PASSED passed, $TG_FAILED failed"
	[ "$TG_FAILED" -eq 0 ] && [ "$TG_PASSED" -gt 0 ]
}

# tg_bail MESSAGE: give up on this test (a prerequisite failed); logs of what
# was started are shown, processes are stopped by the EXIT trap.
tg_bail() {
	tg_fail "$1"
	for tg__f in "$TG_TMP"/*.log; do
		[ -f "$tg__f" ] || continue
		echo "# ---- last lines of $tg__f"
		tail -n 20 "$tg__f" | sed 's/^/#   /'
	done
	tg_done
	exit 1
}

# ---- Processes --------------------------------------------------------------

tg__track() { # PID NAME
	TG__PIDS="$TG__PIDS $1:$2"
}

tg__untrack() { # PID
	tg__keep=""
	for tg__e in $TG__PIDS; do
		[ "${tg__e%%:*}" = "$1" ] || tg__keep="$tg__keep $tg__e"
	done
	TG__PIDS=$tg__keep
}

# tg_alive PID: the process exists and is not a zombie.
tg_alive() {
	kill -0 "$1" 2>/dev/null || return 1
	case $(ps -o stat= -p "$1" 2>/dev/null) in
	Z* | "") return 1 ;;
	esac
	return 0
}

# tg_stop_pid PID: TERM, up to TG_STOP_S (5s) to exit, then KILL; reaps it
# if it is ours.
tg_stop_pid() {
	tg__pid=$1
	if tg_alive "$tg__pid"; then
		kill -TERM "$tg__pid" 2>/dev/null
		tg__i=0
		while tg_alive "$tg__pid" && [ "$tg__i" -lt $((TG_STOP_S * 10)) ]; do
			sleep 0.1
			tg__i=$((tg__i + 1))
		done
		if tg_alive "$tg__pid"; then
			echo "# pid $tg__pid ignored TERM for ${TG_STOP_S}s, sending KILL" >&2
			kill -KILL "$tg__pid" 2>/dev/null
			tg__i=0
			while tg_alive "$tg__pid" && [ "$tg__i" -lt 20 ]; do
				sleep 0.1
				tg__i=$((tg__i + 1))
			done
		fi
	fi
	# Reap it if it is our child (never blocks: it is gone by now, or
	# unkillable and then left alone).
	tg_alive "$tg__pid" || wait "$tg__pid" 2>/dev/null
	tg__untrack "$tg__pid"
	tg__san_check
	return 0
}

# tg__san_check [all]: each sanitizer report in $TG_SAN_DIR not seen yet
# becomes a failure naming this test, the program and its PID, with the
# report's first lines (and renamed seen.*, so that it counts once). The
# report of a process still running may be half written and is left for
# later, unless "all" (the test is ending).
tg__san_check() {
	for tg__sf in "$TG_SAN_DIR"/report.*; do
		[ -f "$tg__sf" ] || continue
		tg__spid=${tg__sf##*.}
		if [ "${1:-}" != all ] && tg_alive "$tg__spid"; then
			continue
		fi
		tg__sprog=${tg__sf#"$TG_SAN_DIR"/report.}
		tg__sprog=${tg__sprog%.*}
		tg__sseen=$TG_SAN_DIR/seen.$tg__sprog.$tg__spid
		mv "$tg__sf" "$tg__sseen"
		tg_fail "$(basename "$0" .sh): sanitizer report from $tg__sprog (pid $tg__spid): $(grep -m1 -oE '(ERROR: [A-Za-z]+Sanitizer|runtime error):.*' "$tg__sseen")"
		grep -v '^[[:space:]]*$' "$tg__sseen" >"$tg__sseen.short"
		head -n 20 "$tg__sseen.short" | sed 's/^/#   /'
		if [ "$(wc -l <"$tg__sseen.short")" -gt 20 ]; then
			echo "#   ..."
			grep '^SUMMARY: ' "$tg__sseen.short" | sed 's/^/#   /'
		fi
		rm -f "$tg__sseen.short"
		echo "#   (the whole report: $tg__sseen)"
	done
}

# tg_stop_all: stop everything started here, last started first.
tg_stop_all() {
	tg__rev=""
	for tg__e in $TG__PIDS; do
		tg__rev="$tg__e $tg__rev"
	done
	for tg__e in $tg__rev; do
		tg_stop_pid "${tg__e%%:*}"
	done
	TG__PIDS=""
}

# tg_free_port: print a TCP port that is free on 127.0.0.1 right now (the
# kernel picks it), never the same twice in one test. The ports handed out
# are kept in a file: callers use $(tg_free_port), a subshell, where a
# variable would be forgotten (test_metrics once got the same port for its
# frontend and HAProxy's metrics frontend, and requests went to either).
tg_free_port() {
	tg__n=0
	while [ "$tg__n" -lt 20 ]; do
		tg__p=$("$TG_PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])') || return 1
		if grep -qx "$tg__p" "$TG_TMP/ports-handed-out" 2>/dev/null; then
			tg__n=$((tg__n + 1))
			continue
		fi
		echo "$tg__p" >>"$TG_TMP/ports-handed-out"
		echo "$tg__p"
		return 0
	done
	return 1
}

# tg__wait_port_file FILE PID: wait (bounded) for FILE to hold a port number
# while PID is alive; prints the port.
tg__wait_port_file() {
	tg__i=0
	while [ "$tg__i" -lt $((TG_WAIT_S * 10)) ]; do
		if [ -s "$1" ]; then
			tg__p=$(tr -d ' \n\r\t' <"$1")
			case $tg__p in
			"" | *[!0-9]*) ;;
			*)
				echo "$tg__p"
				return 0
				;;
			esac
		fi
		if [ -n "$2" ] && ! tg_alive "$2"; then
			echo "# process $2 exited before writing $1" >&2
			return 1
		fi
		sleep 0.1
		tg__i=$((tg__i + 1))
	done
	echo "# no port in $1 after ${TG_WAIT_S}s" >&2
	return 1
}

# tg_start_mock NAME [MODE]: start tests/mock_provider.py as provider NAME
# (it answers with "x-mock-provider: NAME"); sets TG_MOCK_PORT_<NAME> and
# TG_MOCK_PORT. NAME: letters, digits, underscore.
tg_start_mock() {
	case $1 in
	"" | *[!A-Za-z0-9_]*)
		echo "# tg_start_mock: bad name '$1'" >&2
		return 1
		;;
	esac
	tg__name=$1
	tg__pf=$TG_TMP/mock-$tg__name.port
	rm -f "$tg__pf"
	if [ -n "${2:-}" ]; then
		"$TG_PYTHON" "$TG_MOCK_BIN" --port 0 --port-file "$tg__pf" \
			--pid-file "$TG_TMP/mock-$tg__name.pid" --name "$tg__name" \
			--mode "$2" --quiet >"$TG_TMP/mock-$tg__name.log" 2>&1 &
	else
		"$TG_PYTHON" "$TG_MOCK_BIN" --port 0 --port-file "$tg__pf" \
			--pid-file "$TG_TMP/mock-$tg__name.pid" --name "$tg__name" \
			--quiet >"$TG_TMP/mock-$tg__name.log" 2>&1 &
	fi
	tg__mpid=$!
	tg__track "$tg__mpid" "mock-$tg__name"
	TG_MOCK_PORT=$(tg__wait_port_file "$tg__pf" "$tg__mpid") || return 1
	eval "TG_MOCK_PORT_$tg__name=\$TG_MOCK_PORT"
	eval "TG_MOCK_PID_$tg__name=\$tg__mpid"
	return 0
}

# tg_start_agent [ARGS...]: start the agent on an ephemeral loopback port with
# its database in TG_TMP; sets TG_AGENT_PORT and TG_AGENT_PID. With
# TG_AGENT_PORT set from outside, only checks that something listens there.
tg_start_agent() {
	if [ -n "$TG_AGENT_EXTERNAL" ]; then
		TG_AGENT_PID=""
		tg__port_open "$TG_AGENT_PORT" && return 0
		echo "# nothing listens on external agent port $TG_AGENT_PORT" >&2
		return 1
	fi
	tg__bin=${TG_AGENT_BIN:-$TG_ROOT/build/tokengate}
	if [ ! -x "$tg__bin" ]; then
		echo "# agent binary $tg__bin missing (make, or set TG_AGENT_BIN)" >&2
		return 1
	fi
	mkdir -p "$TG_TMP/agent"
	tg__pf=$TG_TMP/agent.port
	rm -f "$tg__pf"
	rm -f "$TG_TMP/admin.port"
	# The admin listener on any free port too: its default (9121) is fixed,
	# and agents of tests running side by side would fight over it.
	"$tg__bin" --listen 127.0.0.1:0 --port-file "$tg__pf" \
		--admin-listen 127.0.0.1:0 --admin-port-file "$TG_TMP/admin.port" \
		--log-socket "$TG_AGENT_LOG" \
		--pid-file "$TG_TMP/agent.pid" --db "$TG_TMP/agent/tokengate.db" \
		"$@" >>"$TG_TMP/agent.log" 2>&1 &
	TG_AGENT_PID=$!
	tg__track "$TG_AGENT_PID" agent
	TG_AGENT_PORT=$(tg__wait_port_file "$tg__pf" "$TG_AGENT_PID") || return 1
	TG_ADMIN_PORT=$(tg__wait_port_file "$TG_TMP/admin.port" "$TG_AGENT_PID") || return 1
	return 0
}

# tg_stop_agent: stop the agent started by tg_start_agent (not an external one).
tg_stop_agent() {
	[ -n "${TG_AGENT_PID:-}" ] || return 1
	tg_stop_pid "$TG_AGENT_PID"
	TG_AGENT_PID=""
}

tg__port_open() { # PORT
	"$TG_PYTHON" -c 'import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

# tg_haproxy_cmd COMMAND: send one command to HAProxy's admin socket, print
# the answer.
tg_haproxy_cmd() {
	"$TG_PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode("utf-8", "replace"))' "$TG_HAPROXY_SOCK" "$1"
}

# tg_server_field BACKEND SERVER FIELD: one column of "show stat" (e.g.
# status, check_status, scur) for one server.
tg_server_field() {
	tg_haproxy_cmd "show stat" 2>/dev/null | awk -F, -v px="$1" -v sv="$2" -v f="$3" '
		NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
		$1 == px && $2 == sv { print $col[f]; exit }'
}

# tg_wait_server_up BACKEND SERVER: bounded wait until HAProxy has completed a
# successful health check of that server.
tg_wait_server_up() {
	tg__i=0
	while [ "$tg__i" -lt $((TG_WAIT_S * 10)) ]; do
		tg__st=$(tg_server_field "$1" "$2" status)
		tg__ck=$(tg_server_field "$1" "$2" check_status)
		case "$tg__st/$tg__ck" in
		UP/L[4567]OK*) return 0 ;;
		esac
		if [ -n "${TG_HAPROXY_PID:-}" ] && ! tg_alive "$TG_HAPROXY_PID"; then
			echo "# haproxy exited" >&2
			return 1
		fi
		sleep 0.1
		tg__i=$((tg__i + 1))
	done
	echo "# $1/$2 not UP after ${TG_WAIT_S}s (status=$tg__st check=$tg__ck)" >&2
	return 1
}

# tg_start_haproxy: run haproxy-conf/haproxy.cfg (nbthread 2) in the
# foreground mode (-db) in the background, pointed at the agent and the mocks
# started so far (a provider without a mock gets a port nobody listens on).
# Waits until the frontend answers and the agent server passed its check.
# HAProxy's stdout/stderr go to $TG_TMP/haproxy.log, and so do its log lines
# unless the test set TG_LOG_TARGET (e.g. a unix datagram socket it reads).
tg_start_haproxy() {
	TG_FRONTEND_PORT=$(tg_free_port) || return 1
	TG_URL=http://127.0.0.1:$TG_FRONTEND_PORT
	TG_FRONTEND_ADDR=127.0.0.1:$TG_FRONTEND_PORT
	TG_AGENT_ADDR=127.0.0.1:$TG_AGENT_PORT
	TG_PRIMARY_ADDR=127.0.0.1:${TG_MOCK_PORT_primary:-$(tg_free_port)}
	TG_SECONDARY_ADDR=127.0.0.1:${TG_MOCK_PORT_secondary:-$(tg_free_port)}
	TG_RUN_DIR=$TG_TMP
	TG_HAPROXY_SOCK=$TG_RUN_DIR/tokengate-haproxy.sock
	TG_LOG_TARGET=${TG_LOG_TARGET:-stdout}
	TG_LOG_FORMAT=${TG_LOG_FORMAT:-raw}
	if [ -n "$TG_AGENT_EXTERNAL" ]; then
		TG_SPOE_PROCESSING_TIMEOUT=${TG_SPOE_PROCESSING_TIMEOUT:-60s}
		export TG_SPOE_PROCESSING_TIMEOUT
	fi
	# The tests play the authentication layer: they set X-User themselves.
	TG_TRUST_X_USER=${TG_TRUST_X_USER:-yes}
	export TG_FRONTEND_ADDR TG_AGENT_ADDR TG_PRIMARY_ADDR TG_SECONDARY_ADDR \
		TG_RUN_DIR TG_LOG_TARGET TG_LOG_FORMAT TG_TRUST_X_USER
	"$TG_HAPROXY_BIN" -f "$TG_ROOT/haproxy-conf/haproxy.cfg" -db \
		>"$TG_TMP/haproxy.log" 2>&1 &
	TG_HAPROXY_PID=$!
	tg__track "$TG_HAPROXY_PID" haproxy
	tg__i=0
	while ! curl -s -o /dev/null --max-time 1 "$TG_URL/"; do
		if ! tg_alive "$TG_HAPROXY_PID"; then
			echo "# haproxy exited" >&2
			return 1
		fi
		tg__i=$((tg__i + 1))
		if [ "$tg__i" -ge $((TG_WAIT_S * 10)) ]; then
			echo "# haproxy frontend not answering after ${TG_WAIT_S}s" >&2
			return 1
		fi
		sleep 0.1
	done
	tg_wait_server_up spoe_tokengate tg1
}

# ---- HTTP -------------------------------------------------------------------

# tg_request METHOD PATH [CURL-ARGS...]: one request through the frontend.
# Sets TG_STATUS (000 when no answer), TG_TIME (seconds); headers in
# $TG_HDRS, body in $TG_BODY.
tg_request() {
	tg__m=$1
	tg__path=$2
	shift 2
	tg__out=$(curl -sS -X "$tg__m" -o "$TG_BODY" -D "$TG_HDRS" \
		-w '%{http_code} %{time_total}' --max-time "${TG_CURL_TIMEOUT:-15}" \
		"$@" "$TG_URL$tg__path" 2>>"$TG_TMP/curl.log")
	TG_STATUS=${tg__out%% *}
	TG_TIME=${tg__out#* }
	[ -n "$TG_STATUS" ] || TG_STATUS=000
}

# tg_chat [CURL-ARGS...]: POST /v1/chat/completions. The body is
# $TG_CHAT_BODY (a file) when set, else a small chat request.
tg_chat() {
	if [ -n "${TG_CHAT_BODY:-}" ]; then
		tg_request POST /v1/chat/completions -H 'content-type: application/json' \
			--data-binary "@$TG_CHAT_BODY" "$@"
	else
		tg_request POST /v1/chat/completions -H 'content-type: application/json' \
			--data-binary '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}' \
			"$@"
	fi
}

# tg_header NAME [FILE]: value of the last header NAME (any case) in FILE
# (default: the last response's headers), without the trailing CR.
tg_header() {
	awk -v n="$1" '
		BEGIN { n = tolower(n) }
		{ sub(/\r$/, "") }
		/^HTTP\// { v = ""; found = 0 }
		{ i = index($0, ":"); if (i > 0 && tolower(substr($0, 1, i - 1)) == n) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); found = 1 } }
		END { if (found) print v }' "${2:-$TG_HDRS}"
}

# ---- Budgets: database, mock accounting, bursts (tests/e2e/test_budget_*) ---
#
# TG_DB is the database of the agent started by tg_start_agent (its HMAC
# secret is "$TG_DB.secret"). The helpers below only add to what is above.

TG_DB=$TG_TMP/agent/tokengate.db

# tg_require_local_agent: these tests read and write the agent's database,
# and some stop it: with an external agent (TG_AGENT_PORT) the whole test is
# skipped (exit 0).
tg_require_local_agent() {
	[ -z "$TG_AGENT_EXTERNAL" ] && return 0
	tg_skip "$(basename "$0"): needs an agent started here (TG_AGENT_PORT is set)"
	echo "0 passed, 0 failed"
	exit 0
}

# tg_sql SQL: run SQL on $TG_DB with the sqlite3 shell (waiting up to 5s for
# a lock), print the result ("|"-separated columns); sqlite3's status. SQL
# that fails is a failure of the test, which relies on it from then on,
# unless it is a read (its first word, past comment lines, is SELECT, WITH,
# PRAGMA or EXPLAIN): that only returns non-zero, and a poll tries again.
tg_sql() {
	sqlite3 -batch -cmd '.timeout 5000' "$TG_DB" "$1"
	tg__sql_rc=$?
	if [ "$tg__sql_rc" -ne 0 ]; then
		case $(printf '%s\n' "$1" | sed -n '/^[[:space:]]*--/d; /[^[:space:]]/{s/^[[:space:]]*//p;q;}' |
			tr '[:lower:]' '[:upper:]') in
		SELECT* | WITH* | PRAGMA* | EXPLAIN*) ;;
		*) tg_fail "sqlite3 accepts (exit $tg__sql_rc): $(printf '%s' "$1" | head -c 300)" ;;
		esac
	fi
	return "$tg__sql_rc"
}

# tg_sql_quote TEXT: TEXT as an SQL string literal.
tg_sql_quote() {
	printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"
}

# tg_now_ms: wall clock, milliseconds since the epoch.
tg_now_ms() {
	date +%s%3N
}

# tg_poll SECONDS COMMAND [ARGS...]: run COMMAND every 50ms until it succeeds,
# for at most SECONDS. Sets TG_POLL_MS to the milliseconds it took; returns 1
# when it never succeeded.
tg_poll() {
	tg__lim=$(($(tg_now_ms) + $(awk -v s="$1" 'BEGIN { printf "%d", s * 1000 }')))
	tg__t0=$(tg_now_ms)
	shift
	while :; do
		if "$@"; then
			TG_POLL_MS=$(($(tg_now_ms) - tg__t0))
			return 0
		fi
		if [ "$(tg_now_ms)" -ge "$tg__lim" ]; then
			TG_POLL_MS=$(($(tg_now_ms) - tg__t0))
			return 1
		fi
		sleep 0.05
	done
}

# tg_poll_eq SECONDS EXPECTED COMMAND [ARGS...]: run COMMAND every 50ms until
# its output is EXPECTED, for at most SECONDS. Sets TG_POLL_GOT (the last
# output) and TG_POLL_MS; returns 1 when it never matched.
tg_poll_eq() {
	tg__s=$1
	tg__want=$2
	shift 2
	tg_poll "$tg__s" tg__output_is "$tg__want" "$@"
}
tg__output_is() {
	tg__w=$1
	shift
	TG_POLL_GOT=$("$@")
	[ "$TG_POLL_GOT" = "$tg__w" ]
}

# tg_usage USER COLUMNS: COLUMNS (SQL, e.g. "tokens_in, tokens_out") of
# USER's daily_usage row for the agent's current day ("|"-separated; empty
# when there is no row).
tg_usage() {
	tg_sql "SELECT $2 FROM daily_usage WHERE user_id = $(tg_sql_quote "$1")
		AND day = COALESCE((SELECT value FROM agent_state WHERE name = 'current_day'), date('now'))"
}

# tg_mock_stats [NAME]: the JSON of GET /__mock/stats of mock NAME (default
# primary).
tg_mock_stats() {
	curl -s --max-time 5 "http://127.0.0.1:$(tg__mock_port "${1:-primary}")/__mock/stats"
}

tg__mock_port() { # NAME: TG_MOCK_PORT_<NAME>
	eval "echo \"\${TG_MOCK_PORT_$1:-}\""
}

# tg_mock_user USER [NAME]: "requests|prompt_tokens|completion_tokens" the
# mock provider NAME (default primary) answered with 200 for USER (its x-user
# header, else its bearer token), "0|0|0" when none.
tg_mock_user() {
	tg_mock_stats "${2:-primary}" | "$TG_PYTHON" -c 'import json, sys
u = json.load(sys.stdin).get("users", {}).get(sys.argv[1], {})
print("%d|%d|%d" % (u.get("requests", 0), u.get("prompt_tokens", 0), u.get("completion_tokens", 0)))' "$1"
}

# tg_mock_mode JSON [NAME]: POST /__mock/mode, e.g. '{"mode":"slow","delay_ms":3000}'.
tg_mock_mode() {
	curl -s --max-time 5 -o /dev/null -w '%{http_code}' -X POST \
		-H 'content-type: application/json' --data-binary "$1" \
		"http://127.0.0.1:$(tg__mock_port "${2:-primary}")/__mock/mode" | grep -qx 200
}

# tg_usage_matches_mock USER [EXTRA_IN EXTRA_OUT [MOCK_USER]]: USER's
# daily_usage tokens_in / tokens_out equal the mock's prompt / completion
# totals for MOCK_USER (default USER; the mock knows a user by x-user, else by
# bearer token), plus EXTRA_IN / EXTRA_OUT (e.g. estimates kept for streamed
# answers), and requests equal the mock's request count. Sets TG_USAGE_GOT /
# TG_USAGE_WANT.
tg_usage_matches_mock() {
	tg__m=$(tg_mock_user "${4:-$1}")
	tg__mr=${tg__m%%|*}
	tg__m=${tg__m#*|}
	TG_USAGE_WANT="tokens_in=$((${tg__m%%|*} + ${2:-0})) tokens_out=$((${tg__m#*|} + ${3:-0})) requests=$tg__mr"
	TG_USAGE_GOT=$(tg_usage "$1" "'tokens_in=' || tokens_in || ' tokens_out=' || tokens_out || ' requests=' || requests")
	[ "$TG_USAGE_GOT" = "$TG_USAGE_WANT" ]
}

# tg_key_hmac KEY [SECRET-FILE]: the api_keys.key_hmac of KEY: lowercase hex
# HMAC-SHA256 of KEY under the secret (the file's text without its newline;
# default "$TG_DB.secret").
tg_key_hmac() {
	printf '%s' "$1" | openssl dgst -sha256 -hmac "$(cat "${2:-$TG_DB.secret}")" |
		awk '{ print $NF }'
}

# tg_json FILE EXPR: FILE parses as JSON (with /usr/bin/python3) and the
# Python expression EXPR, over the parsed value j, is true.
tg_json() {
	"$TG_PYTHON" -c 'import json, sys
j = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2" 2>/dev/null
}

# tg_secs_to_utc_midnight: seconds from now to the next midnight UTC.
tg_secs_to_utc_midnight() {
	"$TG_PYTHON" -c 'import time; print(86400 - int(time.time()) % 86400)'
}

# tg_burst N PARALLEL OUT [CURL-ARGS...]: N POST /v1/chat/completions through
# the frontend, PARALLEL at a time (xargs -P), bounded by 120s. OUT gets one
# line "<status> <time_total> <x-llm-decision>" per request (status 000: no
# answer). The body is $TG_CHAT_BODY (a file) or tg_chat's small default.
tg_burst() {
	tg__n=$1
	tg__par=$2
	tg__out=$3
	shift 3
	tg__body=${TG_CHAT_BODY:-$TG_TMP/burst-default.json}
	[ -n "${TG_CHAT_BODY:-}" ] ||
		printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}' >"$tg__body"
	# -I with a token that no argument contains: the requests are identical.
	seq 1 "$tg__n" | timeout 120 xargs -P "$tg__par" -I__TG_SEQ__ curl -s -o /dev/null \
		--max-time 60 -w '%{http_code} %{time_total} %header{x-llm-decision}\n' \
		-H 'content-type: application/json' --data-binary "@$tg__body" "$@" \
		"$TG_URL/v1/chat/completions" >"$tg__out" 2>>"$TG_TMP/curl.log"
}

# tg_count_status STATUS FILE: lines of a tg_burst OUT file with STATUS.
tg_count_status() {
	awk -v s="$1" '$1 == s { n++ } END { print n + 0 }' "$2"
}

# tg_wait_exit PID SECONDS: wait (bounded) for PID, a child of this shell, to
# exit, and reap it: TG_EXIT_STATUS is its exit status. Returns 1 (status
# "running") if it is still running after SECONDS. Call it directly, not in
# $(...): a subshell cannot reap this shell's children.
tg_wait_exit() {
	tg__i=0
	TG_EXIT_STATUS=running
	while tg_alive "$1"; do
		tg__i=$((tg__i + 1))
		[ "$tg__i" -le $(($2 * 20)) ] || return 1
		sleep 0.05
	done
	wait "$1" 2>/dev/null
	TG_EXIT_STATUS=$?
	tg__untrack "$1"
	tg__san_check
	return 0
}

# tg_restart_haproxy: stop HAProxy and start it again (e.g. pointed at a new
# agent port after tg_start_agent).
tg_restart_haproxy() {
	[ -n "${TG_HAPROXY_PID:-}" ] && tg_stop_pid "$TG_HAPROXY_PID"
	tg_start_haproxy
}

# tg_agent_log_count PATTERN: lines of the agent's log matching PATTERN
# (grep -E), e.g. to wait for "rules reloaded from the database".
tg_agent_log_count() {
	grep -cE "$1" "$TG_TMP/agent.log" 2>/dev/null || true
}

# tg_wait_reload BEFORE [SECONDS]: wait (bounded, default 2s) until the agent
# logged "rules reloaded" more than BEFORE times (tg_agent_log_count taken
# before the change). Sets TG_POLL_MS.
tg_wait_reload() {
	tg_poll "${2:-2}" tg__reloaded_since "$1"
}
tg__reloaded_since() {
	[ "$(tg_agent_log_count 'rules reloaded')" -gt "$1" ]
}

# tg_start_agent_isolated [ARGS...]: the same as tg_start_agent, which now
# always puts the admin listener on a free port.
tg_start_agent_isolated() {
	tg_start_agent "$@"
}

# ---- Metrics: the agent's /metrics, HAProxy's, Prometheus --------------------
# (tests/e2e/test_metrics.sh, tests/e2e/test_prometheus.sh). The helpers
# below only add to what is above.
#
# haproxy.cfg's frontend "metrics" (HAProxy's own Prometheus exporter) binds
# TG_METRICS_ADDR, 127.0.0.1:8405 by default: a fixed port that tests running
# side by side would fight over, and HAProxy would refuse to start. Every test
# that sources this file therefore gets a free loopback port, exported here so
# that tg_start_haproxy's HAProxy inherits it. Set TG_METRICS_ADDR yourself to
# choose (an empty value turns the frontend off).
#   TG_METRICS_ADDR   HAProxy's metrics frontend (host:port)
#   TG_METRICS_URL    http://$TG_METRICS_ADDR/metrics
if [ -z "${TG_METRICS_ADDR+set}" ]; then
	TG_METRICS_ADDR=127.0.0.1:$(tg_free_port) || TG_METRICS_ADDR=127.0.0.1:8405
fi
TG_METRICS_URL=http://$TG_METRICS_ADDR/metrics
export TG_METRICS_ADDR

# tg_admin_get PATH [FILE]: GET PATH on the agent's admin listener
# (127.0.0.1:$TG_ADMIN_PORT), the body saved in FILE (default
# $TG_TMP/admin.body). Sets TG_ADMIN_STATUS (000 when no answer),
# TG_ADMIN_CTYPE (Content-Type) and TG_ADMIN_BODY (the file). Call it
# directly, not in $(...), or the variables are lost with the subshell.
tg_admin_get() {
	TG_ADMIN_BODY=${2:-$TG_TMP/admin.body}
	rm -f "$TG_ADMIN_BODY"
	tg__out=$(curl -sS --max-time 5 -o "$TG_ADMIN_BODY" -w '%{http_code} %{content_type}' \
		"http://127.0.0.1:$TG_ADMIN_PORT$1" 2>>"$TG_TMP/curl.log")
	TG_ADMIN_STATUS=${tg__out%% *}
	TG_ADMIN_CTYPE=${tg__out#* }
	[ -n "$TG_ADMIN_STATUS" ] || TG_ADMIN_STATUS=000
	[ "$TG_ADMIN_STATUS" != 000 ]
}

# tg_healthz: the agent's /healthz as "STATUS BODY"; tg_healthz_is STATUS:
# whether it answers STATUS (for tg_poll).
tg_healthz() { tg_admin_get /healthz && echo "$TG_ADMIN_STATUS $(cat "$TG_ADMIN_BODY")"; }
tg_healthz_is() { tg_admin_get /healthz && [ "$TG_ADMIN_STATUS" = "$1" ]; }

# tg_traffic USER N: N chat completions of USER through HAProxy, one after
# the other; sets TG_ALLOWED (those the agent allowed) and TG_SLOWEST (the
# slowest, in seconds).
tg_traffic() {
	TG_ALLOWED=0
	TG_SLOWEST=0
	tg__n=0
	while [ "$tg__n" -lt "$2" ]; do
		tg_chat -H "x-user: $1"
		[ "$TG_STATUS" = 200 ] && [ "$(tg_header x-llm-decision)" = allow/ok ] && TG_ALLOWED=$((TG_ALLOWED + 1))
		TG_SLOWEST=$(awk -v a="$TG_SLOWEST" -v b="$TG_TIME" 'BEGIN { print (b > a) ? b : a }')
		tg__n=$((tg__n + 1))
	done
}

# tg_scrape FILE: save the agent's /metrics in FILE; fails unless it answered
# 200.
tg_scrape() {
	tg_admin_get /metrics "$1" || return 1
	[ "$TG_ADMIN_STATUS" = 200 ]
}

# tg_metric FILE NAME [LABEL=VALUE...]: the sum of the samples of metric NAME
# in the exposition FILE whose labels include every LABEL="VALUE" given (the
# others are summed over, as PromQL's sum() would; label order does not
# matter). Prints nothing when no sample matches, so that "absent" and "0"
# stay apart. Values are printed with %.17g (integers as integers).
tg_metric() {
	tg__f=$1
	tg__name=$2
	shift 2
	awk -v name="$tg__name" -v want="$*" '
		BEGIN { nw = split(want, w, " ") }
		/^#/ || NF < 2 { next }
		{
			series = $1
			# A label value may hold spaces: the value is the last field.
			if (index($0, "}") > 0) {
				series = substr($0, 1, index($0, "}"))
			}
			n = series
			sub(/\{.*/, "", n)
			if (n != name) next
			labels = ""
			if (index(series, "{") > 0) {
				labels = substr(series, index(series, "{") + 1)
				sub(/\}$/, "", labels)
			}
			ok = 1
			for (i = 1; i <= nw; i++) {
				eq = index(w[i], "=")
				pat = substr(w[i], 1, eq - 1) "=\"" substr(w[i], eq + 1) "\""
				if (index("," labels ",", "," pat ",") == 0) { ok = 0; break }
			}
			if (!ok) next
			sum += $NF
			found = 1
		}
		END { if (found) printf "%.17g\n", sum }' "$tg__f"
}

# tg_haproxy_scrape FILE: save HAProxy's own /metrics (the "metrics"
# frontend) in FILE; fails unless it answered 200.
tg_haproxy_scrape() {
	[ "$(curl -s --max-time 5 -o "$1" -w '%{http_code}' "$TG_METRICS_URL" 2>>"$TG_TMP/curl.log")" = 200 ]
}

# tg_promtool: Debian's promtool (or $TG_PROMTOOL_BIN); tg_prometheus_bin:
# the Prometheus server (or $TG_PROMETHEUS_BIN). Both print nothing and fail
# when missing.
tg_promtool() {
	tg__b=${TG_PROMTOOL_BIN:-$(command -v promtool 2>/dev/null)}
	[ -n "$tg__b" ] && [ -x "$tg__b" ] && echo "$tg__b"
}
tg_prometheus_bin() {
	tg__b=${TG_PROMETHEUS_BIN:-$(command -v prometheus 2>/dev/null)}
	[ -n "$tg__b" ] && [ -x "$tg__b" ] && echo "$tg__b"
}

# tg_start_prometheus CONFIG: start the Prometheus server with CONFIG on a
# free loopback port, its storage in $TG_TMP/prometheus; waits (bounded)
# until it is ready. Sets TG_PROM_PORT, TG_PROM_URL and TG_PROM_PID; the log
# goes to $TG_TMP/prometheus.log. Stopped by PID with everything else.
tg_start_prometheus() {
	tg__pb=$(tg_prometheus_bin) || {
		echo "# prometheus not installed (apt-get install prometheus)" >&2
		return 1
	}
	TG_PROM_PORT=$(tg_free_port) || return 1
	TG_PROM_URL=http://127.0.0.1:$TG_PROM_PORT
	mkdir -p "$TG_TMP/prometheus"
	"$tg__pb" --config.file="$1" --storage.tsdb.path="$TG_TMP/prometheus" \
		--web.listen-address="127.0.0.1:$TG_PROM_PORT" --log.level=warn \
		>"$TG_TMP/prometheus.log" 2>&1 &
	TG_PROM_PID=$!
	tg__track "$TG_PROM_PID" prometheus
	tg__i=0
	while [ "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "$TG_PROM_URL/-/ready" 2>/dev/null)" != 200 ]; do
		if ! tg_alive "$TG_PROM_PID"; then
			echo "# prometheus exited" >&2
			return 1
		fi
		tg__i=$((tg__i + 1))
		if [ "$tg__i" -ge $((TG_WAIT_S * 10)) ]; then
			echo "# prometheus not ready after ${TG_WAIT_S}s" >&2
			return 1
		fi
		sleep 0.1
	done
}

# tg_prom_alert_state ALERTNAME: the state Prometheus reports for ALERTNAME
# in /api/v1/alerts ("firing", "pending"; "inactive" when not listed, "error"
# when the API did not answer). Several instances: the "hottest" one.
tg_prom_alert_state() {
	curl -s --max-time 3 "$TG_PROM_URL/api/v1/alerts" 2>/dev/null | "$TG_PYTHON" -c 'import json, sys
try:
    j = json.load(sys.stdin)
except ValueError:
    print("error"); sys.exit(0)
states = [a.get("state") for a in j.get("data", {}).get("alerts", []) if a.get("labels", {}).get("alertname") == sys.argv[1]]
print("firing" if "firing" in states else "pending" if "pending" in states else "inactive")' "$1"
}

# tg_prom_query EXPR: the value of the first sample of an instant PromQL
# query (empty when the result is empty or the API did not answer).
tg_prom_query() {
	curl -s --max-time 3 -G --data-urlencode "query=$1" "$TG_PROM_URL/api/v1/query" 2>/dev/null |
		"$TG_PYTHON" -c 'import json, sys
try:
    r = json.load(sys.stdin)["data"]["result"]
except (ValueError, KeyError):
    sys.exit(0)
if r:
    print(r[0]["value"][1])'
}

# tg_hold_db_write_lock SECONDS [DB]: start a process that takes the write
# lock of DB (default $TG_DB) with BEGIN IMMEDIATE and holds it for at most
# SECONDS (readers go on; the agent's writes are refused). Waits (bounded)
# until the lock is held. Sets TG_LOCK_PID: tg_stop_pid "$TG_LOCK_PID"
# releases it early; it is stopped with everything else otherwise.
tg_hold_db_write_lock() {
	rm -f "$TG_TMP/lock.ready"
	"$TG_PYTHON" -c 'import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
con.execute("BEGIN IMMEDIATE")
open(sys.argv[3], "w").write("held\n")
time.sleep(float(sys.argv[2]))' "${2:-$TG_DB}" "$1" "$TG_TMP/lock.ready" >>"$TG_TMP/lock.log" 2>&1 &
	TG_LOCK_PID=$!
	tg__track "$TG_LOCK_PID" db-lock
	tg__i=0
	while [ ! -s "$TG_TMP/lock.ready" ]; do
		if ! tg_alive "$TG_LOCK_PID"; then
			echo "# the lock holder exited: $(cat "$TG_TMP/lock.log")" >&2
			return 1
		fi
		tg__i=$((tg__i + 1))
		[ "$tg__i" -lt $((TG_WAIT_S * 10)) ] || return 1
		sleep 0.1
	done
}

# ---- Fallbacks, the agent's log socket, the OpenAI SDK -----------------------
# (tests/e2e/test_fallback_render.sh, tests/e2e/test_openai_sdk.sh). The
# helpers below only add to what is above.
#
# haproxy.cfg also sends the frontend's log lines to TG_AGENT_LOG, a unix
# datagram socket (/tmp/tokengate-log.sock by default, one path for the whole
# machine). Every test that sources this file gets its own path in TG_TMP
# instead, exported for tg_start_haproxy's HAProxy; set TG_AGENT_LOG yourself
# to choose (empty: not sent). tg_start_agent makes the agent listen there
# (it settles reservations from these lines); a test may call tg_log_listen
# instead to read the lines itself.
if [ -z "${TG_AGENT_LOG+set}" ]; then
	TG_AGENT_LOG=$TG_TMP/agent-log.sock
fi
export TG_AGENT_LOG

# tg_log_listen OUT [SOCKET]: bind the unix datagram SOCKET (default
# $TG_AGENT_LOG) in place of the agent, and append every datagram HAProxy
# sends there to the file OUT, one line each. Waits (bounded) until the socket
# exists. Sets TG_LOG_LISTEN_PID; stopped with everything else.
tg_log_listen() {
	tg__lo=$1
	tg__ls=${2:-$TG_AGENT_LOG}
	rm -f "$tg__ls"
	: >"$tg__lo"
	"$TG_PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "ab", buffering=0) as out:
    while True:
        d = s.recv(65536)
        out.write(d.rstrip(b"\n") + b"\n")' "$tg__ls" "$tg__lo" >>"$TG_TMP/log-listen.log" 2>&1 &
	TG_LOG_LISTEN_PID=$!
	tg__track "$TG_LOG_LISTEN_PID" log-listen
	tg__i=0
	while [ ! -S "$tg__ls" ]; do
		if ! tg_alive "$TG_LOG_LISTEN_PID"; then
			echo "# log listener exited" >&2
			return 1
		fi
		tg__i=$((tg__i + 1))
		if [ "$tg__i" -ge $((TG_WAIT_S * 10)) ]; then
			echo "# log socket $tg__ls not bound after ${TG_WAIT_S}s" >&2
			return 1
		fi
		sleep 0.1
	done
}

# tg_log_line FILE ID [SECONDS]: the log line (from tg_log_listen's FILE)
# whose id= is ID, waiting for it up to SECONDS (default 2): HAProxy logs a
# request when it ends, which may be just after the client got the answer.
# Prints nothing and fails when there is none.
tg_log_line() {
	tg__lf=$1
	tg__lid=$2
	tg_poll "${3:-2}" tg__log_has "$tg__lf" "$tg__lid" || return 1
	grep -F " id=$tg__lid " "$tg__lf" | tail -n 1
}
tg__log_has() {
	grep -qF " id=$2 " "$1" 2>/dev/null
}

# tg_log_field LINE KEY: the value of KEY= in a key=value log line (up to the
# next space; a quoted value is printed with its quotes).
tg_log_field() {
	printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

# tg_completion_text FILE: FILE is one OpenAI "chat.completion" object (id,
# created, model, choices[0] with an assistant message and a finish_reason;
# trailing whitespace allowed, as JSON allows it): prints the message content
# (on one line, newlines as \n) and succeeds; prints the reason and fails
# otherwise.
tg_completion_text() {
	"$TG_PYTHON" -c 'import json, sys
try:
    j = json.loads(open(sys.argv[1], "rb").read().decode("utf-8"))
except (ValueError, UnicodeDecodeError) as e:
    print("not JSON: %s" % e); sys.exit(1)
def bad(why):
    print(why); sys.exit(1)
if not isinstance(j, dict) or j.get("object") != "chat.completion":
    bad("object is not chat.completion")
if not isinstance(j.get("id"), str) or not isinstance(j.get("created"), int) or not isinstance(j.get("model"), str):
    bad("id, created or model missing")
ch = j.get("choices")
if not isinstance(ch, list) or not ch or not isinstance(ch[0], dict):
    bad("no choices")
m = ch[0].get("message")
if not isinstance(m, dict) or m.get("role") != "assistant" or not isinstance(m.get("content"), str):
    bad("choices[0].message is not an assistant message")
if ch[0].get("finish_reason") not in ("stop", "length"):
    bad("choices[0].finish_reason is %r" % ch[0].get("finish_reason"))
print(json.dumps(m["content"], ensure_ascii=False)[1:-1])' "$1"
}

# tg_sse_text FILE: FILE is a text/event-stream of "chat.completion.chunk"
# events ("data: {...}" then a blank line each) ending with "data: [DONE]",
# at least one chunk with a finish_reason: prints the concatenated
# choices[0].delta.content (newlines as \n) and succeeds; prints the reason
# and fails otherwise.
tg_sse_text() {
	"$TG_PYTHON" -c 'import json, sys
try:
    raw = open(sys.argv[1], "rb").read().decode("utf-8")
except UnicodeDecodeError as e:
    print("not UTF-8: %s" % e); sys.exit(1)
def bad(why):
    print(why); sys.exit(1)
events = [e for e in raw.replace("\r\n", "\n").split("\n\n") if e.strip()]
if not events:
    bad("no event")
datas = []
for e in events:
    lines = [l for l in e.split("\n") if l and not l.startswith(":")]
    if len(lines) != 1 or not lines[0].startswith("data: "):
        bad("not a single data line: %r" % e[:120])
    datas.append(lines[0][6:])
if datas[-1] != "[DONE]":
    bad("last event is not [DONE]: %r" % datas[-1][:120])
text, finished = "", False
for d in datas[:-1]:
    try:
        c = json.loads(d)
    except ValueError:
        bad("event is not JSON: %r" % d[:120])
    if c.get("object") != "chat.completion.chunk" or not isinstance(c.get("id"), str):
        bad("event is not a chat.completion.chunk: %r" % d[:120])
    for ch in c.get("choices") or []:
        delta = ch.get("delta") or {}
        if isinstance(delta.get("content"), str):
            text += delta["content"]
        if ch.get("finish_reason"):
            finished = True
if not finished:
    bad("no chunk has a finish_reason")
print(json.dumps(text, ensure_ascii=False)[1:-1])' "$1"
}

# tg_node_bin: node (or $TG_NODE_BIN); prints nothing and fails when missing.
tg_node_bin() {
	tg__b=${TG_NODE_BIN:-$(command -v node 2>/dev/null)}
	[ -n "$tg__b" ] && [ -x "$tg__b" ] && echo "$tg__b"
}

# tg_restart_mock NAME [MODE]: start mock provider NAME again on the port it
# had (after tg_stop_pid "$TG_MOCK_PID_<NAME>"), so that HAProxy's server
# line points at it again; waits (bounded) until it answers. Updates
# TG_MOCK_PID_<NAME>.
tg_restart_mock() {
	tg__name=$1
	tg__port=$(tg__mock_port "$tg__name")
	[ -n "$tg__port" ] || {
		echo "# tg_restart_mock: no mock '$tg__name' was started" >&2
		return 1
	}
	"$TG_PYTHON" "$TG_MOCK_BIN" --port "$tg__port" --name "$tg__name" \
		--mode "${2:-ok}" --quiet >>"$TG_TMP/mock-$tg__name.log" 2>&1 &
	tg__mpid=$!
	tg__track "$tg__mpid" "mock-$tg__name"
	eval "TG_MOCK_PID_$tg__name=\$tg__mpid"
	tg__i=0
	while [ "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://127.0.0.1:$tg__port/healthz" 2>/dev/null)" != 200 ]; do
		if ! tg_alive "$tg__mpid"; then
			echo "# mock $tg__name did not start again on port $tg__port" >&2
			return 1
		fi
		tg__i=$((tg__i + 1))
		if [ "$tg__i" -ge $((TG_WAIT_S * 10)) ]; then
			echo "# mock $tg__name not answering after ${TG_WAIT_S}s" >&2
			return 1
		fi
		sleep 0.1
	done
}
