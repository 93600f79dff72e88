#!/usr/bin/env bash
# bench/writer.sh: the SQLite writer thread (issue 6, item 5), in one run:
#   1. build/writerbench: a flush of N dirty users (100, 1,000, 10,000) by
#      the store's writer thread to daily_usage against a plain SQLite batch
#      of the same rows, and to usage_journal, usage only and with audit rows;
#   2. sustained: tokengate with the audit log on, driven as fast as the
#      loop goes (spopload --settle, 4 x 16, 100,000 users) for
#      WRITER_SECONDS (60); every 5 s its /metrics give decisions/s and the
#      writer's queue (tokengate_db_pending_rows). The queue must not grow:
#      its largest value in the last third is compared with the first third.
# Writes bench/results/writer-latest.md and writer-latest.json, prints the
# tables. Knobs: WRITER_SECONDS (60), WRITER_USERS (100000). Everything on
# 127.0.0.1, every process stopped by its PID (also on Ctrl-C).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
SECS=${WRITER_SECONDS:-60}
USERS=${WRITER_USERS:-100000}
OUT=${BENCH_OUT:-$ROOT/bench/results}
TMP=$(mktemp -d /tmp/tokengate-writer.XXXXXX)
say() { echo "writer.sh: $*" >&2; }
die() { say "$*"; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
PIDS=""
cleanup() {
	stop_all KILL 2
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for b in tokengate spopload writerbench; do
	[ -x "build/$b" ] || die "build/$b missing (make)"
	cp "build/$b" "$TMP/$b" # a rebuild during the run changes nothing
done
command -v sqlite3 >/dev/null || die "sqlite3 missing (apt-get install sqlite3)"
command -v curl >/dev/null || die "curl missing (apt-get install curl)"

echo "== writerbench: store flush vs plain SQLite batch, $USERS users"
"$TMP/writerbench" -u "$USERS" -r 7 -d "$TMP" --json >"$TMP/wb-usage.json" || die "writerbench failed"
rm -f "$TMP"/store.db* "$TMP"/plain.db*
"$TMP/writerbench" -u "$USERS" -r 7 -a -d "$TMP" --json >"$TMP/wb-audit.json" || die "writerbench -a failed"

echo "== sustained: audit log on, $USERS users, ${SECS} s at the loop's top rate"
DB=$TMP/sustained.db
"$TMP/tokengate" --check --db "$DB" >/dev/null 2>&1 || die "cannot create $DB"
lift_limits "$DB" && preload_users "$DB" "$USERS" || die "cannot prepare $DB"
"$TMP/tokengate" --listen 127.0.0.1:0 --port-file "$TMP/port" --admin-listen 127.0.0.1:0 \
	--admin-port-file "$TMP/aport" --log-socket '' --log-level warn --db "$DB" >"$TMP/agent.log" 2>&1 &
AGENT=$!
PIDS="$PIDS $AGENT"
PORT=$(wait_port_file "$TMP/port" "$AGENT") && APORT=$(wait_port_file "$TMP/aport" "$AGENT") ||
	die "agent did not start: $(cat "$TMP/agent.log")"
metric() { # NAME: its value in /metrics now
	curl -s --max-time 2 "http://127.0.0.1:$APORT/metrics" | awk -v n="$1" '$1 == n { print $2; exit }'
}
"$TMP/spopload" -p "$PORT" -c 4 -P 16 -u "$USERS" --settle -w 0 -d "$SECS" --json >"$TMP/load.json" 2>"$TMP/load.err" &
LOAD=$!
PIDS="$PIDS $LOAD"
printf 't_s\tnotify_per_s\tpending_rows\tflushes\n' >"$TMP/samples.tsv"
n0=$(metric tokengate_spop_notify_total)
f0=$(metric tokengate_db_flush_duration_seconds_count)
t=0
while [ "$t" -lt "$SECS" ] && kill -0 "$LOAD" 2>/dev/null; do
	sleep 5
	t=$((t + 5))
	n1=$(metric tokengate_spop_notify_total)
	printf '%s\t%s\t%s\t%s\n' "$t" "$(((${n1%.*} - ${n0%.*}) / 5))" "$(metric tokengate_db_pending_rows)" \
		"$(metric tokengate_db_flush_duration_seconds_count)" >>"$TMP/samples.tsv"
	n0=$n1
done
wait "$LOAD"
load_rc=$?
forget "$LOAD"
# Once the load stops, how long the writer takes to empty its queue.
t_end=$(date +%s%N)
for _ in $(seq 300); do
	p=$(metric tokengate_db_pending_rows)
	[ "${p%.*}" = 0 ] && break
	sleep 0.1
done
drain_ms=$((($(date +%s%N) - t_end) / 1000000))
f1=$(metric tokengate_db_flush_duration_seconds_count)
flush_sum=$(metric tokengate_db_flush_duration_seconds_sum)
audit_written=$(metric tokengate_audit_rows_written_total)
audit_dropped=$(metric tokengate_audit_rows_dropped_total)
stop "$AGENT" KILL

mkdir -p "$OUT"
awk -v secs="$SECS" -v users="$USERS" -v load_rc="$load_rc" -v drain_ms="$drain_ms" -v f0="$f0" -v f1="$f1" \
	-v fsum="$flush_sum" -v aw="${audit_written:--1}" -v ad="${audit_dropped:--1}" -v md="$OUT/writer-latest.md" -v js="$OUT/writer-latest.json" \
	-v wbu="$(cat "$TMP/wb-usage.json")" -v wba="$(cat "$TMP/wb-audit.json")" \
	-v host="$(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- . ':!bench/results' 2>/dev/null || echo ' (uncommitted changes)')" '
function wbtable(j, title,    n, parts, i, f, v) {
	print "### " title "\n" > md
	print "| rows per flush | store (writer thread) ms | plain SQLite ms | plain/store | store rows/s | plain rows/s | journal ms |" > md
	print "|---:|---:|---:|---:|---:|---:|---:|" > md
	n = split(j, parts, "\\{\"rows\":")
	for (i = 2; i <= n; i++) {
		f = parts[i]; gsub(/[}\]]/, "", f)
		split(f, v, /,"[a-z_]+":/)
		printf "| %d | %.2f | %.2f | %.2f | %.0f | %.0f | %.2f |\n", v[1], v[2], v[3], v[4], v[5], v[6], v[7] > md
		if (v[1] == 10000 && title ~ /usage/) { ms10k = v[2] }
		if (v[4] + 0 < minratio || minratio == "") minratio = v[4] + 0
	}
	print "" > md
}
NR > 1 { t[++k] = $1; nps[k] = $2; pend[k] = $3 }
END {
	third = int(k / 3); if (third < 1) third = 1
	for (i = 1; i <= k; i++) {
		sum += nps[i]
		if (i <= third && pend[i] > first) first = pend[i]
		if (i > k - third && pend[i] > last) last = pend[i]
	}
	avg = k ? sum / k : 0
	grows = (last > 2 * first + 1000)
	print "# The SQLite writer (issue 6, item 5)\n" > md
	print "Generated by `bench/writer.sh` (" host ").\n" > md
	wbtable(wbu, "A flush of N dirty users: usage rows only (" users " users in the table)")
	wbtable(wba, "The same with N audit rows in each flush")
	print "store: the rows in a `struct batch` handed to a started store as a write of daily_usage (a fold); the time is the" > md
	print "writer thread'"'"'s own for the transaction. journal: the same rows as a flush between two folds, one usage_journal row." > md
	print "plain: one prepared upsert per row in one `BEGIN IMMEDIATE ... COMMIT` on the main thread, same" > md
	print "PRAGMAs. Medians of 7 rounds (order alternating); plain/store >= 0.8 is issue 6'"'"'s target, and 10,000 dirty" > md
	printf "users in at most 100 ms: %.1f ms here (%s).\n\n", ms10k, (ms10k <= 100 ? "met" : "**missed**") > md
	print "### Sustained, audit log on: does the queue grow?\n" > md
	printf "tokengate (audit log on), `spopload -c 4 -P 16 -u %d --settle -d %d`; /metrics every 5 s.\n\n", users, secs > md
	print "| t, s | NOTIFY/s | tokengate_db_pending_rows |" > md
	print "|---:|---:|---:|" > md
	for (i = 1; i <= k; i++) printf "| %d | %d | %d |\n", t[i], nps[i], pend[i] > md
	printf "\n- mean %.0f NOTIFY/s (half of them decisions, half settlements); spopload exit status %d\n", avg, load_rc > md
	# The queue is bounded by audit_backlog_max whatever the writer does:
	# it keeps up only if nothing was dropped there.
	verdict = grows ? "**it grows**" : (ad < 0 ? "**unknown**: the dropped-rows counter could not be read" : (ad > 0 ? "**bounded only by dropping audit rows** (the writer does not keep up)" : "it does not grow, and nothing was dropped (the writer keeps up)"))
	printf "- largest queue in the first third %d rows, in the last third %d rows: %s\n", first, last, verdict > md
	printf "- queue empty %d ms after the load stopped\n", drain_ms > md
	printf "- audit rows written %d, dropped at audit_backlog_max %d (%.1f %%): what the writer cannot store at this rate is dropped and counted, so the queue stays bounded; usage counters are never dropped\n", aw, ad, ((aw + ad) ? 100 * ad / (aw + ad) : 0) > md
	if (f1 > f0) printf "- %d flushes, %.1f ms of writer time each on average\n", f1 - f0, fsum * 1000 / f1 > md
	printf "{\"users\":%d,\"seconds\":%d,\"writerbench_usage\":%s,\"writerbench_audit\":%s,", users, secs, wbu, wba > js
	printf "\"sustained\":{\"mean_notify_per_s\":%.0f,\"pending_first_third_max\":%d,\"pending_last_third_max\":%d,\"grows\":%s,\"keeps_up\":%s,\"drain_ms\":%d,\"audit_rows_written\":%d,\"audit_rows_dropped\":%d,\"samples\":[", avg, first, last, (grows ? "true" : "false"), (!grows && ad == 0 && aw >= 0 ? "true" : "false"), drain_ms, aw, ad > js
	for (i = 1; i <= k; i++) printf "%s{\"t\":%d,\"notify_per_s\":%d,\"pending_rows\":%d}", (i > 1 ? "," : ""), t[i], nps[i], pend[i] > js
	print "]}}" > js
}' "$TMP/samples.tsv"
cat "$OUT/writer-latest.md"
