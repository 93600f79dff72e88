#!/bin/sh
# The file system under the database turns read-only while HAProxy keeps
# sending requests (issue 7, item 3), then is mounted again.
#
# The agent's database lives on an ext4 image on a loop device, mounted with
# errors=remount-ro in the agent's own mount namespace (nothing outside the
# test sees it). Writing 1 to /sys/fs/ext4/loopN/trigger_fs_error makes the
# kernel record a file system error and force the file system read-only
# (emergency_ro) under the agent's open files: every write then fails with
# EROFS, and no `mount -o remount,rw` clears it. What clears it is what an
# operator does: unmount (lazily: the agent's files keep the broken file
# system alive until they are closed) and mount the device again, which
# gives a fresh file system only once the last file on the old one is
# closed. So the agent has to let go of its files by itself.
#
# Checked: every request is still decided from memory (200 allow/ok, under
# the 500 ms SPOE timeout), before and after the agent closed the database;
# the log names the read-only condition; tokengate_db_up 0 and /healthz 503
# with the reason; the agent closes every file of the database (none open or
# mapped on the device), and while nothing is mounted it creates no new
# database where the old one was; mounted again, /healthz is 200 within 3 s,
# daily_usage equals the provider's usage to the token (for the user of the
# read-only period and for one from before it, whose last commits the kernel
# may have dropped with the file system: the agent writes its counters from
# memory again after a reopen), every audit row of the read-only period is
# there, nothing is left pending, and a limit changed with SQL afterwards
# applies (reads work on the new connection).
#
# It needs root (unshare -m, nsenter, losetup, mount, mkfs.ext4 and ext4's
# trigger_fs_error). Without them it fails, it does not skip: CI must not
# pass without having turned a file system read-only.
# Run from anywhere: sh tests/e2e/test_db_readonly.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

AGENT=${TG_AGENT_BIN:-$TG_ROOT/build/tokengate}
N=10            # requests in each half of the read-only period
HEAL_S=3        # bound for /healthz 200 after the mount: 1 s reopen backoff, a flush, margin
IMG=$TG_TMP/db.ext4
MNT=$TG_TMP/agent
LOOP=""

# The agent (and with it the mount namespace, its mounts and the file
# system) goes first, then the loop device; lib.sh's trap does the rest.
ro_cleanup() {
	tg_stop_all
	if [ -n "$LOOP" ]; then
		losetup -d "$LOOP" 2>/dev/null
		# Still attached (the file system not yet released): the kernel
		# detaches it by itself when it is (losetup -d sets autoclear).
		losetup -j "$IMG" 2>/dev/null | grep -q . && echo "# $LOOP still attached, autoclear set"
	fi
	tg__on_exit "$1"
}
trap 'ro_cleanup $?' EXIT
trap 'echo "Bail out! interrupted"; ro_cleanup 130; trap - EXIT; exit 130' INT
trap 'echo "Bail out! terminated"; ro_cleanup 143; trap - EXIT; exit 143' TERM

metric() { tg_scrape "$TG_TMP/m.prom" && tg_metric "$TG_TMP/m.prom" "$1"; }
metric_above() { [ "$(metric "$1")" -gt "$2" ]; }
log_has() { grep -qE "$1" "$TG_TMP/agent.log"; }
usage_matches() { tg_usage_matches_mock "$1"; }
audit_rows() { tg_sql "SELECT count(*) FROM audit_log WHERE user_id = $(tg_sql_quote "$1")"; }
audit_rows_are() { [ "$(audit_rows "$1")" = "$2" ]; }
# The options of what is mounted at $MNT in the agent's mount namespace.
mnt_opts() { awk -v d="$MNT" '$2 == d { o = $3 " " $4 } END { print o }' "/proc/$NSPID/mounts"; }
# mnt_ro: "yes" when that file system is read-only: mounted ro, or forced
# read-only after an error (emergency_ro since Linux 6.15, ro before).
mnt_ro() {
	case ,$(mnt_opts | cut -d' ' -f2), in
	*,ro,* | *,emergency_ro,*) echo yes ;;
	*) echo no ;;
	esac
}
# holds_files_on PID DEV: PID has a file open, or mapped (SQLite maps the WAL
# index), on the device whose st_dev is DEV.
holds_files_on() {
	"$TG_PYTHON" -c 'import os, sys
pid, dev = sys.argv[1], int(sys.argv[2])
mm = "%02x:%02x" % (os.major(dev), os.minor(dev))
for fd in os.listdir("/proc/%s/fd" % pid):
    try:
        if os.stat("/proc/%s/fd/%s" % (pid, fd)).st_dev == dev:
            sys.exit(0)
    except OSError:
        pass
for line in open("/proc/%s/maps" % pid):
    f = line.split()
    if len(f) >= 6 and f[3] == mm and f[4] != "0":
        sys.exit(0)
sys.exit(1)' "$1" "$2"
}
closed_all() { ! holds_files_on "$NSPID" "$DEV"; }

for tool in unshare nsenter losetup mkfs.ext4 mount umount; do
	command -v "$tool" >/dev/null 2>&1 || tg_bail "read-only file system: $tool is missing (util-linux, e2fsprogs)"
done
unshare -m true 2>/dev/null || tg_bail "read-only file system: unshare -m is not permitted here (needs root)"
tg_start_mock primary ok || tg_bail "mock provider did not start"

if ! truncate -s 32M "$IMG" || ! mkfs.ext4 -q -F "$IMG" >"$TG_TMP/mkfs.log" 2>&1; then
	tg_bail "read-only file system: mkfs.ext4 failed: $(cat "$TG_TMP/mkfs.log")"
fi
LOOP=$(losetup -f --show "$IMG" 2>"$TG_TMP/losetup.log") ||
	tg_bail "read-only file system: no loop device (needs root): $(cat "$TG_TMP/losetup.log")"
TRIGGER=/sys/fs/ext4/$(basename "$LOOP")/trigger_fs_error
mkdir -p "$MNT"

# The agent in its own mount namespace, the image mounted on its database
# directory. unshare and sh exec: the PID tg_start_agent records is the
# agent's.
WRAP=$TG_TMP/agent-on-ext4.sh
cat >"$WRAP" <<EOF
#!/bin/sh
exec unshare -m sh -c 'mount -o errors=remount-ro "$LOOP" "\$0" && exec "\$@"' "$MNT" "$AGENT" "\$@"
EOF
chmod +x "$WRAP"
TG_AGENT_BIN=$WRAP tg_start_agent || tg_bail "agent on an ext4 image did not start"
tg_start_haproxy || tg_bail "haproxy did not start"
NSPID=$TG_AGENT_PID
# The test's sqlite3 runs in the agent's mount namespace (SQLite resolves
# /proc/PID/root to "/", so that path would open another file).
sqlite3() { nsenter -t "$NSPID" -m sqlite3 "$@"; }
tg_assert_match "ext4 *errors=remount-ro*" "$(mnt_opts)" "the agent's database is on its own ext4, errors=remount-ro"
[ -w "$TRIGGER" ] || tg_bail "read-only file system: $TRIGGER missing (ext4 in this kernel has no trigger_fs_error)"
DEV=$(nsenter -t "$NSPID" -m stat -c %d "$TG_DB")
# A database in service has been written back by the kernel long ago; this
# one was just created. Sync it once so that the fault below finds the
# schema on disk (what was not written back is lost with the file system).
nsenter -t "$NSPID" -m sync -f "$TG_DB" || tg_fail "sync of the new database"

# ---- before: a user whose last commits are in the page cache only ---------------
tg_traffic rodb-warm 5
tg_assert_eq 5 "$TG_ALLOWED" "warm-up: 5 requests allowed"
tg_poll 3 usage_matches rodb-warm || tg_fail "warm-up usage never reached the database"

# ---- the file system turns read-only ---------------------------------------------
e0=$(metric tokengate_db_flush_errors_total)
echo 1 >"$TRIGGER" || tg_bail "could not write $TRIGGER"
tg_assert_eq yes "$(mnt_ro)" "the kernel forced the file system read-only ($(mnt_opts))"
tg_traffic rodb-ro "$N"
tg_assert_eq "$N" "$TG_ALLOWED" "read-only: all $N requests decided from memory (200 allow/ok)"
tg_assert_lt "$TG_SLOWEST" 0.5 "read-only: the slowest took ${TG_SLOWEST}s (under the 500 ms SPOE timeout)"
if tg_poll 5 metric_above tokengate_db_flush_errors_total "$e0"; then
	tg_ok "read-only: tokengate_db_flush_errors_total rises ($e0 -> $(metric tokengate_db_flush_errors_total))"
else
	tg_fail "read-only: tokengate_db_flush_errors_total stayed at $e0"
fi
tg_assert_eq 0 "$(metric tokengate_db_up)" "read-only: tokengate_db_up is 0"
tg_poll 3 tg_healthz_is 503
tg_assert_match "503 *database not usable*ead-only*" "$(tg_healthz)" "read-only: /healthz answers 503 and says read-only"
tg_assert_eq 0 "$(log_has 'db: write refused, [0-9]+ rows kept for retry: .*Read-only file system' && echo 0)" \
	"read-only: the log says the write was refused (Read-only file system) and the rows are kept"
# Refused 3 times in a row, the agent closes the database and tries to open
# it again, which fails while the file system is read-only.
if tg_poll 5 log_has 'closing the database to open it again'; then
	tg_ok "read-only: the agent closes the database to open it again (${TG_POLL_MS} ms)"
else
	tg_fail "read-only: the agent never closed the database"
fi
if tg_poll 5 metric_above tokengate_db_reopen_failures_total 0; then
	tg_ok "read-only: tokengate_db_reopen_failures_total counts the attempts ($(metric tokengate_db_reopen_failures_total))"
else
	tg_fail "read-only: tokengate_db_reopen_failures_total stayed at $(metric tokengate_db_reopen_failures_total)"
fi
tg_assert_eq 1 "$(grep -cE 'cannot open it again.*file system is read-only' "$TG_TMP/agent.log")" \
	"read-only: the failed reopen is logged once, not once per attempt"
tg_traffic rodb-ro "$N"
tg_assert_eq "$N" "$TG_ALLOWED" "read-only, database closed: all $N more requests decided from memory"
tg_assert_lt "$TG_SLOWEST" 0.5 "read-only, database closed: the slowest took ${TG_SLOWEST}s"
tg_assert_lt 0 "$(metric tokengate_db_pending_rows)" "read-only: tokengate_db_pending_rows counts the rows waiting"

# ---- cleared: unmounted, then mounted again ------------------------------------
nsenter -t "$NSPID" -m umount -l "$MNT" || tg_fail "umount -l of the read-only file system"
# The broken file system lives on while a file of it is open; the agent's
# reopen attempts (every 1 s at most) now find nothing at the path.
if tg_poll 5 closed_all; then
	tg_ok "unmounted: the agent has no file open or mapped on the device (${TG_POLL_MS} ms)"
else
	tg_fail "unmounted: the agent still holds files on the device" \
		"$(for f in "/proc/$NSPID/fd/"*; do readlink "$f"; done | grep -F "$MNT")"
fi
if tg_poll 5 log_has 'cannot open it again.*unable to open database file'; then
	tg_ok "unmounted: the agent logs that the database cannot be opened"
else
	tg_fail "unmounted: no log line for the missing database"
fi
tg_assert_eq "" "$(nsenter -t "$NSPID" -m ls -A "$MNT")" "unmounted: no new database created where the old one was"
tg_assert_match "503 *database not usable*unable to open*" "$(tg_healthz)" "unmounted: /healthz 503 says the database cannot be opened"

nsenter -t "$NSPID" -m mount -o errors=remount-ro "$LOOP" "$MNT" || tg_fail "mount of the device again"
tg_assert_eq "ext4 no" "$(mnt_opts | cut -d' ' -f1) $(mnt_ro)" "mounted again: a fresh ext4, read-write ($(mnt_opts))"
if tg_poll "$HEAL_S" tg_healthz_is 200; then
	tg_ok "mounted again: /healthz 200 within ${TG_POLL_MS} ms (bound ${HEAL_S} s)"
else
	tg_fail "mounted again: /healthz still $(tg_healthz) after ${HEAL_S} s"
fi
tg_assert_eq 1 "$(metric tokengate_db_up)" "mounted again: tokengate_db_up is 1"
tg_assert_lt 0 "$(metric tokengate_db_reopens_total)" "mounted again: tokengate_db_reopens_total counts the reopen"
tg_assert_eq 0 "$(log_has 'opened again, writes work' && echo 0)" "mounted again: the log says the database is open again"
tg_poll 5 usage_matches rodb-ro
tg_assert_eq "$TG_USAGE_WANT" "$TG_USAGE_GOT" \
	"mounted again: daily_usage of rodb-ro (read-only period) equals the provider's usage, to the token"
tg_poll 5 usage_matches rodb-warm
tg_assert_eq "$TG_USAGE_WANT" "$TG_USAGE_GOT" \
	"mounted again: daily_usage of rodb-warm (before the fault) equals the provider's usage, to the token"
tg_poll 5 audit_rows_are rodb-ro $((2 * N))
tg_assert_eq $((2 * N)) "$(audit_rows rodb-ro)" "mounted again: all $((2 * N)) audit rows of the read-only period written"
echo "# rodb-warm: $(audit_rows rodb-warm) of 5 audit rows from before the fault survived (the kernel drops what it had not written back)"
tg_poll 3 tg__output_is 0 metric tokengate_db_pending_rows
tg_assert_eq 0 "$(metric tokengate_db_pending_rows)" "mounted again: nothing left pending"

# Reads on the new connection: a limit set with SQL now applies.
r=$(tg_agent_log_count 'rules reloaded')
tg_sql "INSERT INTO user_limits (user_id, daily_tokens, note) VALUES ('rodb-limited', 1, 'e2e test_db_readonly')"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"
tg_chat -H "x-user: rodb-limited"
tg_assert_eq "429 deny/budget_tokens" "$TG_STATUS $(tg_header x-llm-decision)" \
	"mounted again: a limit set with SQL applies (rules read on the new connection)"

tg_done
