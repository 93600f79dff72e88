#!/usr/bin/env bash
# bench/soak.sh: a bounded soak of the agent (issue 7, item 6; what it does and
# how to read it: bench/README.md, "Soak"). Not part of make check / CI.
#
#   make soak                    SOAK_SECONDS=600 under load, about 11 minutes in all
#   SOAK_SECONDS=60 make soak    a short run while developing
#
# A fresh agent (defaults, audit log on, 100,000 users of today loaded at
# start) is driven over SPOP at half the top rate measured just before (on
# another fresh agent), with --settle, while an operator's chores run beside
# it: short bursts on new connections whose requests are settled by HAProxy
# log lines on the log socket, /metrics and /healthz scrapes, an UPDATE of a
# tier limit, a SIGHUP a minute. Every SOAK_SAMPLE_S it samples VmRSS, the
# open file descriptors and a few metrics. Verdict: RSS flat (the median
# sample of every minute after the warm-up within SOAK_RSS_TOL_PCT of the
# first minute's), no audit row dropped, no fd growth, no SPOP error, the
# agent still answers and stops cleanly. Exit status 0 only then.
#
# Why each minute's median: RSS also holds the rows waiting for the writer,
# which come and go with each transaction (at 100,000 requests/s, 20,000
# rows are about 12 MB, given back to the system when written), so single
# samples swing both ways: down to 49 MB and up to 80 MB within a minute
# whose median was 74.5 MB (a run of 2026-11-29). Two single samples, or a
# minute's lowest one, judge those swings; the median of 30 judges the
# typical RSS, which a leak raises. The queue itself is bounded by
# audit_backlog_max, and a writer that fell behind shows as dropped audit
# rows, which fail the run.
#
# Writes bench/results/soak-latest.md and soak-latest.csv. Everything listens
# on 127.0.0.1; every process started here is stopped by its PID, also on
# failure and Ctrl-C.
#
# Knobs: SOAK_SECONDS (600), SOAK_WARMUP_S (120, or a fifth of shorter runs),
# SOAK_SAMPLE_S (2), SOAK_USERS (100000), SOAK_CONNS (4), SOAK_DEPTH (16),
# SOAK_PROBE_S (10), SOAK_WRITER_CHECK_S (60), SOAK_RATE (NOTIFY/s; set: no probe), SOAK_RSS_TOL_PCT
# (5), SOAK_OUT (results directory), SOAK_KEEP=1 (keep the scratch
# directory), BUILD (build directory, default build).
set -u
export LC_ALL=C

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BUILD=${BUILD:-build}
SECS=${SOAK_SECONDS:-600}
STEP=${SOAK_SAMPLE_S:-2}
USERS=${SOAK_USERS:-100000}
CONNS=${SOAK_CONNS:-4}
DEPTH=${SOAK_DEPTH:-16}
PROBE_S=${SOAK_PROBE_S:-10}
CHECK_S=${SOAK_WRITER_CHECK_S:-60}
RSS_TOL=${SOAK_RSS_TOL_PCT:-5}
OUTDIR=${SOAK_OUT:-$ROOT/bench/results}
WARM=${SOAK_WARMUP_S:-$((SECS >= 600 ? 120 : SECS / 5))}
WARM=$(((WARM + STEP - 1) / STEP * STEP)) # a sample falls on its end
CHURN_CONNS=4
CHURN_RATE=400 # NOTIFY/s of each 1 s burst: extra work, not part of the rate
PY=${SOAK_PYTHON:-/usr/bin/python3}

say() { printf '%s\n' "soak: $*" >&2; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
die() {
	say "error: $*"
	exit 1
}

for t in sqlite3 curl awk "$PY"; do
	command -v "$t" >/dev/null 2>&1 || die "$t not found (Debian packages: sqlite3 curl mawk python3)"
done
[ -x "$BUILD/tokengate" ] && [ -x "$BUILD/spopload" ] || die "$BUILD/tokengate or $BUILD/spopload missing (run make)"
[ "$WARM" -lt "$SECS" ] || die "warm-up ($WARM s) must end before the run does ($SECS s)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-soak.XXXXXX") || die "mktemp failed"
# Snapshots: a rebuild in the tree during the run changes nothing.
mkdir -p "$TMP/bin" && cp "$BUILD/tokengate" "$BUILD/spopload" "$TMP/bin/" || die "cannot copy the binaries"
TG=$TMP/bin/tokengate
LOAD=$TMP/bin/spopload
# The commit of what is measured: now, not when the run ends.
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (uncommitted changes)"

# ---- processes -----------------------------------------------------------

PIDS=""
cleanup() {
	stop_all TERM 5
	if [ "${SOAK_KEEP:-0}" = 1 ] || [ "${KEEP_TMP:-0}" = 1 ]; then say "scratch kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM HUP

# start_agent DIR DB: a tokengate with its defaults (audit log on), the admin
# listener and the log socket on loopback / in DIR. Sets TG_PID, TG_PORT,
# ADMIN_PORT, LOG_SOCK.
start_agent() {
	local dir=$1 db=$2
	mkdir -p "$dir"
	LOG_SOCK=$dir/log.sock
	"$TG" --listen 127.0.0.1:0 --port-file "$dir/port" --admin-listen 127.0.0.1:0 \
		--admin-port-file "$dir/admin.port" --log-socket "$LOG_SOCK" --pid-file "$dir/pid" \
		--db "$db" 2>>"$dir/tokengate.log" &
	TG_PID=$!
	PIDS="$PIDS $TG_PID"
	TG_PORT=$(wait_port_file "$dir/port" "$TG_PID") &&
		ADMIN_PORT=$(wait_port_file "$dir/admin.port" "$TG_PID") ||
		die "tokengate did not start: $(tail -n 5 "$dir/tokengate.log")"
}

# ---- measurements --------------------------------------------------------

nfds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
now_ms() { date +%s%3N; }
scrape() { # FILE: the agent's /metrics, fails unless 200
	[ "$(curl -s --max-time 5 -o "$1" -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null)" = 200 ]
}
metric() { # FILE NAME: sum of the samples of NAME (all labels)
	awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF; f = 1 } END { if (f) printf "%.0f\n", s }' "$2"
}
m() { metric "$2" "$1"; } # m FILE NAME

# rows_per_s BEFORE AFTER MS: audit rows written per second between two scrapes.
rows_per_s() {
	awk -v a="$(m "$1" tokengate_audit_rows_written_total)" -v b="$(m "$2" tokengate_audit_rows_written_total)" \
		-v ms="$3" 'BEGIN { printf "%.0f", (b - a) * 1000 / ms }'
}
# wait_writer FILE: until the writer has caught up (300 s at most); FILE
# holds the last scrape.
wait_writer() {
	local i=0
	while [ $i -lt 600 ]; do
		scrape "$1" && [ "$(m "$1" tokengate_db_pending_rows)" = 0 ] && return 0
		sleep 0.5
		i=$((i + 1))
	done
	return 1
}

# ---- the database: the agent's own schema, 100,000 users of today -----------

say "scratch $TMP; $SECS s under load${SOAK_RATE:+ at $SOAK_RATE NOTIFY/s}, warm-up $WARM s, samples every $STEP s"
start_agent "$TMP/base" "$TMP/base.db"
stop "$TG_PID" TERM 30
# Limits lifted (as bench/run does) so that the decisions stay the same
# mix for the whole run: budgets running out half way would change what is
# measured. The operator's UPDATE below toggles a limit nobody reaches.
lift_limits "$TMP/base.db" && preload_users "$TMP/base.db" "$USERS" || die "cannot prepare $TMP/base.db"
copy_db() { cp "$TMP/base.db" "$1" && cp -p "$TMP/base.db.secret" "$1.secret"; }

# ---- the top rate, on a fresh agent of its own --------------------------------

CMDS=$TMP/commands.txt
{
	echo "build/tokengate --listen 127.0.0.1:0 --port-file F --admin-listen 127.0.0.1:0 --admin-port-file F --log-socket S --pid-file F --db DB"
	echo "sqlite3 DB \"UPDATE tiers SET daily_tokens = NULL, daily_requests = NULL, daily_cost_usd = NULL; INSERT INTO daily_usage(day, user_id) ... $USERS rows user-0..user-$((USERS - 1)), today\""
} >"$CMDS"
if [ -n "${SOAK_RATE:-}" ]; then
	TOP="-"
	RATE=$SOAK_RATE
else
	copy_db "$TMP/probe.db" || die "cannot copy the database"
	start_agent "$TMP/probe" "$TMP/probe.db"
	say "probe: top rate, $CONNS x $DEPTH, --settle, ${PROBE_S} s"
	scrape "$TMP/m.p0.txt" || die "/metrics did not answer"
	p0=$(now_ms)
	"$LOAD" -p "$TG_PORT" -c "$CONNS" -P "$DEPTH" -u "$USERS" -d "$PROBE_S" -w 1 --settle --json \
		>"$TMP/probe.json" 2>"$TMP/probe.err"
	echo "build/spopload -p PORT -c $CONNS -P $DEPTH -u $USERS -d $PROBE_S -w 1 --settle --json   (probe, fresh agent)" >>"$CMDS"
	SPOP_TOP=$(jnum notify_per_s "$TMP/probe.json")
	[ -n "$SPOP_TOP" ] && [ "$(jnum errors "$TMP/probe.json")" = 0 ] ||
		die "probe failed: $(head -c 300 "$TMP/probe.err")"
	p1=$(now_ms)
	scrape "$TMP/m.p1.txt" || die "/metrics did not answer"
	# The loop answers faster than the writer thread stores audit rows, and
	# nothing slows the loop down when the writer lags: what is not yet
	# written waits in memory (bench/README.md, "Soak"). So the writer's top
	# rate counts too. A first estimate: the audit rows it stored while the
	# probe ran (one row, two NOTIFYs per request). It moves a lot from run
	# to run (30,000-100,000 rows/s here: giant transactions, and whatever
	# CPU the saturating load leaves it), so it is checked under a paced
	# load like the soak's: CHECK_S (60 s) at that rate, long enough for the
	# writer's slow transactions (checkpoints, a busy disk) to count; 10 s
	# gave a rate the writer could not keep half of for 10 minutes. What
	# the writer stores then is the writer's top rate: all of it when it
	# keeps up (the estimate stands), its capacity under that load when it
	# does not.
	WRITER_EST=$(rows_per_s "$TMP/m.p0.txt" "$TMP/m.p1.txt" $((p1 - p0)))
	[ "$WRITER_EST" -gt 0 ] || die "the writer stored no audit row during the probe"
	PROBE_PENDING=$(m "$TMP/m.p1.txt" tokengate_db_pending_rows)
	PROBE_RSS=$(rss_kb "$TG_PID")
	wait_writer "$TMP/m.p2.txt"
	p2=$(now_ms)
	say "probe: SPOP $SPOP_TOP NOTIFY/s; writer about $WRITER_EST audit rows/s ($PROBE_PENDING rows pending at the end, RSS $((PROBE_RSS / 1024)) MB, caught up $(((p2 - p1) / 1000)) s later); checking it at $((WRITER_EST * 2)) NOTIFY/s for $CHECK_S s"
	"$LOAD" -p "$TG_PORT" -c "$CONNS" -P "$DEPTH" -u "$USERS" -r $((WRITER_EST * 2)) -d "$CHECK_S" -w 0 --settle --json \
		>"$TMP/probe2.json" 2>"$TMP/probe2.err"
	p3=$(now_ms)
	scrape "$TMP/m.p3.txt" || die "/metrics did not answer"
	echo "build/spopload -p PORT -c $CONNS -P $DEPTH -u $USERS -r $((WRITER_EST * 2)) -d $CHECK_S -w 0 --settle --json   (probe of the writer, same agent once it caught up)" >>"$CMDS"
	WRITER_ROWS=$(rows_per_s "$TMP/m.p2.txt" "$TMP/m.p3.txt" $((p3 - p2)))
	PROBE2_PENDING=$(m "$TMP/m.p3.txt" tokengate_db_pending_rows)
	stop "$TG_PID" TERM 60
	WRITER_TOP=$((WRITER_ROWS * 2))
	TOP=$(awk -v a="$SPOP_TOP" -v b="$WRITER_TOP" 'BEGIN { printf "%.0f", a < b ? a : b }')
	RATE=$(awk -v t="$TOP" 'BEGIN { printf "%.0f", t / 2 }')
	say "probe: writer $WRITER_ROWS audit rows/s = $WRITER_TOP NOTIFY/s under the paced load ($PROBE2_PENDING rows pending at its end)"
fi
say "top rate $TOP NOTIFY/s; soak at $RATE NOTIFY/s"

# ---- the operator's chores, in the background ------------------------------
#
# Each loop runs its commands as children and waits for them, so that its
# TERM trap can stop the one running by its PID before the loop exits.

CHILD=""
run_child() { # CMD...: run CMD as a child of this loop, wait, its status
	"$@" &
	CHILD=$!
	wait "$CHILD"
	local rc=$?
	LAST_CHILD=$CHILD
	CHILD=""
	return $rc
}
loop_trap() {
	trap '[ -n "$CHILD" ] && kill -s TERM "$CHILD" 2>/dev/null; wait; exit 0' TERM
}

# HAProxy's log line for a request that ended normally, as haproxy-conf's
# log-format writes it. For the ids of one burst: b<pid>-<conn>-<seq>.
send_log_lines() { # PID CONNS PER-CONN
	"$PY" -c 'import socket, sys
path, pid, conns, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.settimeout(5)
n = 0
for c in range(conns):
    for q in range(per):
        s.sendto(("tokengate id=b%s-%d-%d client=127.0.0.1:1 method=POST path=\"/v1/chat/completions\" "
                  "be=provider_primary srv=primary1 st=200 tsc=---- tr=3 ta=4 bytes_in=242 bytes_out=1145 "
                  "action=allow reason=ok err=- gate=- route=chat pst=200 fb=- pt=90 ct=40 sm=0 ra=- "
                  "out=- outh=-" % (pid, c, q)).encode(), path)
        n += 1
print(n)' "$LOG_SOCK" "$@"
}

# Reconnections: a 1 s burst on new connections every 3 s, without
# --settle; its requests are settled by log lines instead (ids of requests
# never sent are unknown to the agent, which ignores them).
churn_loop() {
	local i=0 out sent pid
	loop_trap
	while :; do
		i=$((i + 1))
		out=$TMP/churn.$i.json
		run_child "$LOAD" -p "$TG_PORT" -c "$CHURN_CONNS" -P 4 -u "$USERS" -r "$CHURN_RATE" -d 1 -w 0 --tally --json \
			>"$out" 2>"$out.err"
		echo "$? $out" >>"$TMP/churn.list"
		pid=$LAST_CHILD # spopload's unique-ids carry its PID
		sent=$(jnum sent "$out")
		[ -n "$sent" ] && run_child send_log_lines "$pid" "$CHURN_CONNS" $((sent / CHURN_CONNS + 16)) \
			>>"$TMP/logsent.list" 2>>"$TMP/logsent.err"
		run_child sleep 2
	done
}

# Scrapes every 5 s, an UPDATE of a tier limit every 30 s, a SIGHUP every 60 s.
ops_loop() {
	local i=0 code
	loop_trap
	while :; do
		i=$((i + 1))
		code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/metrics")
		echo "metrics $code" >>"$TMP/ops.list"
		code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/healthz")
		echo "healthz $code" >>"$TMP/ops.list"
		if [ $((i % 6)) = 0 ]; then
			run_child sqlite3 -batch -cmd '.timeout 5000' "$TMP/soak.db" \
				"UPDATE tiers SET daily_tokens = CASE WHEN daily_tokens IS NULL THEN 1000000000 ELSE NULL END WHERE name = 'default';"
			echo "update $?" >>"$TMP/ops.list"
		fi
		if [ $((i % 12)) = 0 ]; then
			kill -s HUP "$TG_PID"
			echo "hup $?" >>"$TMP/ops.list"
		fi
		run_child sleep 5
	done
}

# ---- the soak ----------------------------------------------------------------

copy_db "$TMP/soak.db" || die "cannot copy the database"
start_agent "$TMP/soak" "$TMP/soak.db"
AGENT=$TG_PID
sleep 1
FD_IDLE0=$(nfds "$AGENT")
RSS_IDLE0=$(rss_kb "$AGENT")
scrape "$TMP/m.start.txt" || die "/metrics did not answer"
say "agent pid $AGENT idle: $FD_IDLE0 fds, RSS $RSS_IDLE0 kB"

CSV=$TMP/soak.csv
echo "t_s,rss_kb,fds,spop_connections,other_fds,notify_per_s,reservations_open,users_active,db_pending_rows,audit_rows_written,audit_rows_dropped,spop_errors,ended_by_log" >"$CSV"
T0=$(now_ms)
"$LOAD" -p "$TG_PORT" -c "$CONNS" -P "$DEPTH" -u "$USERS" -r "$RATE" -d "$SECS" -w 0 --settle --json \
	>"$TMP/main.json" 2>"$TMP/main.err" &
LOAD_PID=$!
PIDS="$PIDS $LOAD_PID"
echo "build/spopload -p PORT -c $CONNS -P $DEPTH -u $USERS -r $RATE -d $SECS -w 0 --settle --json   (the soak)" >>"$CMDS"
churn_loop &
CHURN_PID=$!
PIDS="$PIDS $CHURN_PID"
echo "every 3 s: build/spopload -p PORT -c $CHURN_CONNS -P 4 -u $USERS -r $CHURN_RATE -d 1 -w 0 --tally --json, then one log line per request id to the log socket (settles them)" >>"$CMDS"
ops_loop &
OPS_PID=$!
PIDS="$PIDS $OPS_PID"
{
	echo "every 5 s: curl /metrics and /healthz on the admin port"
	echo "every 30 s: sqlite3 DB \"UPDATE tiers SET daily_tokens = CASE WHEN daily_tokens IS NULL THEN 1000000000 ELSE NULL END WHERE name = 'default'\""
	echo "every 60 s: kill -HUP AGENT"
} >>"$CMDS"

prev_n=$(m "$TMP/m.start.txt" tokengate_spop_notify_total) prev_ms=$T0
t=0
failed_early=""
while [ $t -lt "$SECS" ]; do
	t=$((t + STEP))
	wait_ms=$((T0 + t * 1000 - $(now_ms)))
	[ $wait_ms -gt 0 ] && sleep "$(awk -v w=$wait_ms 'BEGIN { printf "%.3f", w / 1000 }')"
	if ! alive "$AGENT"; then
		failed_early="the agent exited at about ${t} s"
		break
	fi
	rss=$(rss_kb "$AGENT")
	fds=$(nfds "$AGENT")
	ms=$(now_ms)
	if ! scrape "$TMP/m.txt"; then
		failed_early="/metrics did not answer at ${t} s"
		break
	fi
	n=$(m "$TMP/m.txt" tokengate_spop_notify_total)
	conns=$(m "$TMP/m.txt" tokengate_spop_connections)
	rate=$(awk -v a="$prev_n" -v b="$n" -v dt=$((ms - prev_ms)) 'BEGIN { printf "%.0f", (dt > 0) ? (b - a) * 1000 / dt : 0 }')
	prev_n=$n prev_ms=$ms
	line="$t,$rss,$fds,$conns,$((fds - conns)),$rate,$(m "$TMP/m.txt" tokengate_reservations_open),$(m "$TMP/m.txt" tokengate_users_active),$(m "$TMP/m.txt" tokengate_db_pending_rows),$(m "$TMP/m.txt" tokengate_audit_rows_written_total),$(m "$TMP/m.txt" tokengate_audit_rows_dropped_total),$(m "$TMP/m.txt" tokengate_spop_errors_total),$(m "$TMP/m.txt" tokengate_requests_ended_by_log_total)"
	echo "$line" >>"$CSV"
	[ $((t % 10)) = 0 ] && say "$(echo "$line" | awk -F, '{ printf "t=%4ds  RSS %7.1f MB  fds %3d (%d SPOP)  %7d NOTIFY/s  open %d  pending rows %d", $1, $2 / 1024, $3, $4, $6, $7, $9 }')"
done

# ---- the end: stop the load and the chores, let the agent go idle ---------------

LOAD_RC=""
if [ -z "$failed_early" ]; then
	i=0
	while alive "$LOAD_PID" && [ $i -lt 600 ]; do # spopload stops at -d itself
		sleep 0.05
		i=$((i + 1))
	done
fi
stop "$LOAD_PID" TERM 5
LOAD_RC=$STOP_RC
stop "$CHURN_PID" TERM 10
stop "$OPS_PID" TERM 10
T_RUN=$((($(now_ms) - T0) / 1000))

idle_ok=0 i=0
while alive "$AGENT" && [ $i -lt 120 ]; do # 60 s for the writer to catch up
	if scrape "$TMP/m.end.txt" && [ "$(m "$TMP/m.end.txt" tokengate_spop_connections)" = 0 ] &&
		[ "$(m "$TMP/m.end.txt" tokengate_db_pending_rows)" = 0 ]; then
		idle_ok=1
		break
	fi
	sleep 0.5
	i=$((i + 1))
done
FD_IDLE1=$(nfds "$AGENT")
RSS_IDLE1=$(rss_kb "$AGENT")
HEALTH=$(curl -s --max-time 5 -o "$TMP/healthz.end" -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/healthz")
"$LOAD" -p "$TG_PORT" -c 1 -P 1 -u "$USERS" -n 1000 -w 0 --settle --json >"$TMP/final.json" 2>"$TMP/final.err"
FINAL_RC=$?
[ -f "$TMP/m.end.txt" ] || : >"$TMP/m.end.txt"
scrape "$TMP/m.final.txt" || cp "$TMP/m.end.txt" "$TMP/m.final.txt"
stop "$AGENT" TERM 60
AGENT_RC=$STOP_RC

# ---- verdict -------------------------------------------------------------------

churn_runs=$(wc -l <"$TMP/churn.list" 2>/dev/null || echo 0)
churn_bad=$(awk '$1 != 0' "$TMP/churn.list" 2>/dev/null | wc -l)
churn_err=0
churn_conn=0
while read -r _ f; do
	churn_err=$((churn_err + $(jnum errors "$f" || echo 1)))
	churn_conn=$((churn_conn + $(jnum connects "$f" || echo 0)))
done <"$TMP/churn.list"
log_lines=$(awk '{ s += $1 } END { print s + 0 }' "$TMP/logsent.list" 2>/dev/null)
ops_count() { grep -c "^$1" "$TMP/ops.list" 2>/dev/null; }
ops_fail() { awk -v k="$1" -v ok="$2" '$1 == k && $2 != ok' "$TMP/ops.list" 2>/dev/null | wc -l; }
scrapes=$(($(ops_count metrics) + $(ops_count healthz)))
scrape_fail=$(($(ops_fail metrics 200) + $(ops_fail healthz 200)))
updates=$(ops_count update) update_fail=$(ops_fail update 0)
hups=$(ops_count hup) hup_fail=$(ops_fail hup 0)
spop_err=$(m "$TMP/m.final.txt" tokengate_spop_errors_total)
main_err=$(jnum errors "$TMP/main.json")
main_rate=$(jnum notify_per_s "$TMP/main.json")
main_reqs=$(jnum requests "$TMP/main.json")
final_err=$(jnum errors "$TMP/final.json")

# RSS at the end of the warm-up and at the end, max and min after it; fds
# other than SPOP connections (the connections come and go with the load).
read -r rss_w rss_e rss_max rss_min ofd_w ofd_e ofd_max rate_mean < <(awk -F, -v w="$WARM" '
	NR == 1 { next }
	$1 == w { rw = $2; fw = $5 }
	$1 >= w { if (mx == "" || $2 > mx) mx = $2; if (mn == "" || $2 < mn) mn = $2
		  if (fm == "" || $5 > fm) fm = $5; re = $2; fe = $5 }
	$1 > w { rs += $6; rn++ }
	END { printf "%s %s %s %s %s %s %s %.0f\n", rw == "" ? "-" : rw, re == "" ? "-" : re,
		mx == "" ? "-" : mx, mn == "" ? "-" : mn, fw == "" ? "-" : fw, fe == "" ? "-" : fe,
		fm == "" ? "-" : fm, rn ? rs / rn : 0 }' "$CSV")

# Each minute's samples, once: minute 1 starts at the end of the warm-up
# (the warm-up's are 0 and below; the last may be shorter). A line per
# minute: k, first and last t, samples, RSS min, median and max (kB), the
# writer's largest queue, mean NOTIFY/s, most other fds, audit rows dropped
# at its end.
MINUTES=$TMP/minutes.txt
awk -F, -v w="$WARM" '
	NR == 1 { next }
	{ k = ($1 > w) ? int(($1 - w - 1) / 60) + 1 : -int((w - $1) / 60); if (!(k in n)) order[++nk] = k
	  n[k]++; r[k, n[k]] = $2; if (!(k in t0)) t0[k] = $1; t1[k] = $1
	  if ($9 > pend[k]) pend[k] = $9; rate[k] += $6; if ($5 > ofd[k]) ofd[k] = $5; drop[k] = $11 }
	END {
		for (i = 1; i <= nk; i++) {
			k = order[i]; m = n[k]
			for (a = 1; a <= m; a++) v[a] = r[k, a]
			for (a = 2; a <= m; a++) { x = v[a]; b = a - 1; while (b >= 1 && v[b] > x) { v[b + 1] = v[b]; b-- } v[b + 1] = x }
			med = (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
			printf "%d %d %d %d %d %d %d %d %.0f %d %s\n", k, t0[k], t1[k], m, v[1], med, v[m], pend[k],
				rate[k] / m, ofd[k], drop[k]
		}
	}' "$CSV" >"$MINUTES"
# The median RSS of the minutes after the warm-up: the first, the last, and
# the one furthest from the first.
read -r med_first med_last med_far med_n < <(awk '
	$1 < 1 { next }
	{ f[++n] = $6 }
	END {
		if (!n) { print "- - - 0"; exit }
		far = f[1]
		for (i = 1; i <= n; i++) if ((f[i] - f[1]) ^ 2 > (far - f[1]) ^ 2) far = f[i]
		print f[1], f[n], far, n
	}' "$MINUTES")
dropped=$(m "$TMP/m.final.txt" tokengate_audit_rows_dropped_total)

mb() { awk -v k="$1" 'BEGIN { if (k == "-") print "-"; else printf "%.1f", k / 1024 }'; }
FAILS=""
fail() { FAILS="$FAILS
  - $*"; }
[ -z "$failed_early" ] || fail "$failed_early"
if [ "$rss_w" != - ] && [ "$rss_e" != - ]; then
	rss_pct=$(awk -v a="$rss_w" -v b="$rss_e" 'BEGIN { printf "%+.1f", (b - a) * 100 / a }')
	rss_ratio=$(awk -v a="$rss_max" -v b="$rss_min" 'BEGIN { printf "%.3f", a / b }')
else
	rss_pct=- rss_ratio=-
fi
if [ "$med_first" != - ] && [ "$med_n" -ge 2 ]; then
	med_pct=$(awk -v a="$med_first" -v b="$med_last" 'BEGIN { printf "%+.1f", (b - a) * 100 / a }')
	med_far_pct=$(awk -v a="$med_first" -v b="$med_far" 'BEGIN { printf "%+.1f", (b - a) * 100 / a }')
	awk -v p="$med_far_pct" -v t="$RSS_TOL" 'BEGIN { exit !(p <= t && p >= -t) }' ||
		fail "RSS median of a minute $(mb "$med_far") MB is $med_far_pct % from $(mb "$med_first") MB in the first minute after the warm-up (limit +-$RSS_TOL %)"
else
	med_pct=- med_far_pct=-
	fail "fewer than two minutes of samples after the warm-up"
fi
[ "${dropped:-x}" = 0 ] || fail "the writer fell behind: ${dropped:-?} audit rows dropped at audit_backlog_max (tokengate_audit_rows_dropped_total)"
# Two figures can differ by a connection opened or closed between reading
# the fd list and the agent's count (the bursts, a scrape): 1 is allowed.
[ "$ofd_e" != - ] && [ "$ofd_w" != - ] && [ $((ofd_e - ofd_w)) -le 1 ] ||
	fail "fds other than SPOP connections: $ofd_w after the warm-up, $ofd_e at the end"
[ "$idle_ok" = 1 ] || fail "the agent did not go idle (no SPOP connection, writer caught up) within 60 s"
[ "$FD_IDLE1" = "$FD_IDLE0" ] || fail "idle fds: $FD_IDLE0 before the load, $FD_IDLE1 after it"
[ "$LOAD_RC" = 0 ] && [ "$main_err" = 0 ] || fail "the soak's spopload: exit $LOAD_RC, errors ${main_err:-?} ($(head -c 200 "$TMP/main.err"))"
[ "$churn_bad" = 0 ] && [ "$churn_err" = 0 ] || fail "bursts: $churn_bad of $churn_runs failed, $churn_err errors"
[ "$spop_err" = 0 ] || fail "the agent counted ${spop_err:-?} SPOP errors (tokengate_spop_errors_total)"
[ "$scrape_fail" = 0 ] || fail "$scrape_fail of $scrapes /metrics and /healthz scrapes did not answer 200"
[ "$update_fail" = 0 ] || fail "$update_fail of $updates sqlite3 UPDATEs failed"
[ "$hup_fail" = 0 ] || fail "$hup_fail of $hups SIGHUPs could not be sent"
[ "$HEALTH" = 200 ] || fail "/healthz answered $HEALTH after the run"
[ "$FINAL_RC" = 0 ] && [ "$final_err" = 0 ] || fail "after the run, 1000 requests: exit $FINAL_RC, errors ${final_err:-?}"
[ "$AGENT_RC" = 0 ] || fail "the agent's exit status on SIGTERM: $AGENT_RC"
if [ -z "$FAILS" ]; then
	VERDICT="soak: PASS: $SECS s at $RATE NOTIFY/s (top $TOP): RSS median $(mb "$med_first") -> $(mb "$med_last") MB from the first to the last minute after the warm-up ($med_pct %, furthest $med_far_pct %), 0 audit rows dropped, fds flat ($FD_IDLE0 idle before and after), 0 SPOP errors, agent answering, clean exit"
else
	VERDICT="soak: FAIL:$FAILS"
fi

# ---- results -------------------------------------------------------------------

mkdir -p "$OUTDIR"
cp "$CSV" "$OUTDIR/soak-latest.csv"
{
	echo "# tokengate soak: latest run"
	echo
	echo "Generated by \`bench/soak.sh\` (\`make soak\`; see bench/README.md, \"Soak\")."
	echo
	echo "## Machine"
	echo
	echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "- nproc: $(nproc); cpu: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1 | cut -c1-40)"
	echo "- kernel: $(uname -sr); load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- $("$TG" --version); sqlite3 $(sqlite3 --version | cut -d' ' -f1)"
	echo "- commit: $COMMIT"
	echo "- shared machine: other sessions may have been running (see the load)"
	echo
	echo "## Run"
	echo
	echo "- duration under load: $SECS s (${T_RUN} s with the stop), warm-up $WARM s, a sample every $STEP s"
	if [ "$TOP" = - ]; then
		echo "- top rate: not measured (SOAK_RATE given)"
	else
		echo "- top rate (probe on a fresh agent, ${PROBE_S} s, $CONNS x $DEPTH, --settle): $TOP NOTIFY/s, the lower of"
		echo "  - SPOP: $SPOP_TOP NOTIFY/s answered (spopload);"
		echo "  - the writer thread: $WRITER_ROWS audit rows/s = $WRITER_TOP NOTIFY/s (one row, two NOTIFYs per request), stored during $CHECK_S s at $((WRITER_EST * 2)) NOTIFY/s, $PROBE2_PENDING rows pending at the end; that rate is its first estimate, $WRITER_EST rows/s, stored while the SPOP probe ran, at whose end $PROBE_PENDING rows were still waiting in memory (agent RSS $((PROBE_RSS / 1024)) MB), written $(((p2 - p1) / 1000)) s later"
	fi
	echo "- soak rate asked (-r): $RATE NOTIFY/s; spopload measured $main_rate NOTIFY/s ($main_reqs NOTIFYs, errors $main_err); the agent's own count, mean over the samples after the warm-up, bursts included: $rate_mean NOTIFY/s"
	echo "- users: $USERS (today's rows loaded at start), audit log on, other settings the defaults, tier limits lifted"
	echo "- bursts on new connections: $churn_runs (connections opened: $churn_conn, errors: $churn_err); log lines sent: $log_lines, requests settled by them: $(m "$TMP/m.final.txt" tokengate_requests_ended_by_log_total)"
	echo "- scrapes: $scrapes ($scrape_fail not 200); tier UPDATEs: $updates ($update_fail failed); SIGHUPs: $hups; rules reloads seen: $(m "$TMP/m.final.txt" tokengate_rules_reloads_total)"
	echo "- decisions: $(m "$TMP/m.final.txt" tokengate_decisions_total); settlements: $(m "$TMP/m.final.txt" tokengate_settlements_total); audit rows written: $(m "$TMP/m.final.txt" tokengate_audit_rows_written_total), dropped: $(m "$TMP/m.final.txt" tokengate_audit_rows_dropped_total)"
	echo
	echo "## Figures"
	echo
	echo "| figure | value |"
	echo "|---|---|"
	echo "| RSS idle before the load | $(mb "$RSS_IDLE0") MB |"
	echo "| RSS median of the minute (30 samples), first minute after the warm-up -> last minute | $(mb "$med_first") -> $(mb "$med_last") MB ($med_pct %; over $med_n minutes, furthest from the first: $(mb "$med_far") MB, $med_far_pct %; limit +-$RSS_TOL %) |"
	echo "| audit rows dropped (writer behind) | ${dropped:-?} (must be 0) |"
	echo "| RSS at the end of the warm-up ($WARM s) / at the end ($SECS s), single samples | $(mb "$rss_w") / $(mb "$rss_e") MB ($rss_pct %) |"
	echo "| RSS max / min after the warm-up, single samples | $(mb "$rss_max") / $(mb "$rss_min") MB = $rss_ratio (the writer's queue comes and goes) |"
	echo "| RSS idle after the load | $(mb "$RSS_IDLE1") MB |"
	echo "| fds idle before / after the load | $FD_IDLE0 / $FD_IDLE1 |"
	echo "| fds other than SPOP connections, warm-up end / end / max after | $ofd_w / $ofd_e / $ofd_max |"
	echo "| SPOP errors (agent) / spopload errors (soak, bursts, final) | $spop_err / $main_err, $churn_err, $final_err |"
	echo "| after the run | /healthz $HEALTH; 1000 requests exit $FINAL_RC; exit status on SIGTERM $AGENT_RC |"
	echo
	echo "## Verdict"
	echo
	echo '```'
	echo "$VERDICT"
	echo '```'
	echo
	echo "## Minutes"
	echo
	echo "Each minute's samples (one every $STEP s; all of them in soak-latest.csv). Minute 1 starts at the end of"
	echo "the warm-up; the warm-up's minutes are numbered 0 and below. other fds = fds - SPOP connections."
	echo
	echo "| minute | t s | samples | RSS min MB | RSS median MB | RSS max MB | writer pending rows, max | NOTIFY/s, mean | other fds, max | audit dropped at its end |"
	echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
	awk '{ printf "| %d | %d-%d | %d | %.1f | %.1f | %.1f | %d | %d | %d | %s |\n", $1, $2, $3, $4,
		$5 / 1024, $6 / 1024, $7 / 1024, $8, $9, $10, $11 }' "$MINUTES"
	echo
	echo "## Commands"
	echo
	echo '```'
	echo "SOAK_SECONDS=$SECS${SOAK_RATE:+ SOAK_RATE=$SOAK_RATE} make soak"
	cat "$CMDS"
	echo '```'
} >"$OUTDIR/soak-latest.md"
say "wrote $OUTDIR/soak-latest.md and soak-latest.csv"
echo "$VERDICT"
[ -z "$FAILS" ] || {
	KEEP_TMP=1
	exit 1
}
exit 0
