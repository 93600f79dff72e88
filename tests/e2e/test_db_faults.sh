#!/bin/sh
# The disk under the database fills up while HAProxy keeps sending requests
# (issue 7, item 3). The agent's database lives on a 2 MB tmpfs (in a
# private mount namespace, so nothing outside the test sees it); a file fills
# the rest, so every write fails with SQLITE_FULL; then the file is deleted.
# Every request is still decided from memory (200 allow/ok, within
# the SPOE processing timeout), the condition is reported in the log, in
# /metrics (tokengate_db_up 0, tokengate_db_flush_errors_total) and by
# /healthz (503 with the reason); once it clears, /healthz is 200 again and
# daily_usage equals the provider's usage to the token: nothing was lost.
# It needs `unshare -m` and `nsenter` (util-linux; root). Without them it
# says so and runs no check, which tests/run.sh reports as a failure: CI
# must not pass without having filled a disk. (A database moved away or chmod-ed while the agent
# runs is no fault: SQLite keeps writing through its open files.)
# Run from anywhere: sh tests/e2e/test_db_faults.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

AGENT=${TG_AGENT_BIN:-$TG_ROOT/build/tokengate}
N=20

metric() { tg_scrape "$TG_TMP/m.prom" && tg_metric "$TG_TMP/m.prom" "$1"; }
errors_above() { [ "$(metric tokengate_db_flush_errors_total)" -gt "$1" ]; }
log_has() { grep -qE "$1" "$TG_TMP/agent.log"; }
usage_matches() { tg_usage_matches_mock "$1"; }

# fault_then_clear LABEL USER REASON-ERE CLEAR-COMMAND...: the checks, with
# the fault already in place.
fault_then_clear() {
	label=$1
	user=$2
	pat=$3
	shift 3
	e0=$(metric tokengate_db_flush_errors_total)
	tg_traffic "$user" "$N"
	tg_assert_eq "$N" "$TG_ALLOWED" "$label: all $N requests decided from memory (200 allow/ok)"
	tg_assert_lt "$TG_SLOWEST" 0.5 "$label: the slowest took ${TG_SLOWEST}s (under the 500 ms SPOE timeout)"
	if tg_poll 5 errors_above "$e0"; then
		tg_ok "$label: tokengate_db_flush_errors_total rises ($e0 -> $(metric tokengate_db_flush_errors_total))"
	else
		tg_fail "$label: tokengate_db_flush_errors_total stayed at $e0"
	fi
	tg_assert_eq 0 "$(metric tokengate_db_up)" "$label: tokengate_db_up is 0"
	tg_poll 3 tg_healthz_is 503
	tg_assert_eq 0 "$(tg_healthz | grep -qE "^503 .*($pat)" && echo 0)" "$label: /healthz answers 503 with the reason"
	tg_assert_eq 0 "$(log_has "db: write refused, [0-9]+ rows kept for retry: .*($pat)" && echo 0)" \
		"$label: the log says the write was refused and the rows are kept"
	tg_assert_lt 0 "$(metric tokengate_db_pending_rows)" "$label: tokengate_db_pending_rows counts the rows waiting"
	"$@" || tg_fail "$label: could not clear the fault"
	if tg_poll 5 tg_healthz_is 200; then
		tg_ok "$label cleared: /healthz 200 again within ${TG_POLL_MS} ms"
	else
		tg_fail "$label cleared: /healthz still $(tg_healthz)"
	fi
	tg_assert_eq 1 "$(metric tokengate_db_up)" "$label cleared: tokengate_db_up is 1"
	tg_poll 5 usage_matches "$user"
	tg_assert_eq "$TG_USAGE_WANT" "$TG_USAGE_GOT" \
		"$label cleared: daily_usage of $user equals the provider's usage, to the token"
	tg_assert_eq 0 "$(metric tokengate_db_pending_rows)" "$label cleared: nothing left pending"
}

tg_start_mock primary ok || tg_bail "mock provider did not start"

# ---- the disk full --------------------------------------------------------------
if ! unshare -m true 2>/dev/null || ! command -v nsenter >/dev/null 2>&1; then
	tg_skip "disk full: unshare -m is not permitted here (needs root), or no nsenter"
	echo "0 passed, 0 failed"
	exit 0
fi
WRAP=$TG_TMP/agent-on-tmpfs.sh
# The agent in its own mount namespace, its database directory a 2 MB tmpfs.
# unshare and sh exec: the PID tg_start_agent records is the agent's.
cat >"$WRAP" <<EOF
#!/bin/sh
exec unshare -m sh -c 'mount -t tmpfs -o size=2m tokengate-test "\$0" && exec "\$@"' "$TG_TMP/agent" "$AGENT" "\$@"
EOF
chmod +x "$WRAP"
rm -rf "$TG_TMP/agent"
TG_AGENT_BIN=$WRAP tg_start_agent || tg_bail "agent on a tmpfs did not start"
tg_start_haproxy || tg_bail "haproxy did not start"
# The test's sqlite3 runs in the agent's mount namespace (SQLite resolves
# /proc/PID/root to "/", so that path would open another file).
NSPID=$TG_AGENT_PID
sqlite3() { nsenter -t "$NSPID" -m sqlite3 "$@"; }
tg_assert_eq tmpfs "$(nsenter -t "$NSPID" -m stat -f -c %T "$TG_TMP/agent")" "the agent's database is on its own 2 MB tmpfs"
tg_traffic db-full-warm 2
tg_poll 3 usage_matches db-full-warm || tg_fail "warm-up usage never reached the database"
FILLER=$TG_TMP/agent/filler
nsenter -t "$NSPID" -m dd if=/dev/zero of="$FILLER" bs=4k 2>/dev/null # until ENOSPC
tg_assert_eq 0 "$(nsenter -t "$NSPID" -m stat -f -c %a "$TG_TMP/agent")" "a file fills the tmpfs: 0 blocks free"
fault_then_clear "disk full" db-full "full" nsenter -t "$NSPID" -m rm -f "$FILLER"

tg_done
