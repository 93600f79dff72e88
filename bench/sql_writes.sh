#!/usr/bin/env bash
# bench/sql_writes.sh: how often an operator's write meets the agent's write
# lock and is refused, while spopload drives the agent (README, "Operating it
# with SQL"). For each load, N one-row writes 50 ms apart with each of:
#   plain     sqlite3 DB "INSERT ..."                   (busy timeout 0)
#   timeout   sqlite3 -cmd '.timeout 5000' DB "INSERT ..."
#   command   tokengate limit set --user U --tokens T --db DB
# and prints "load  way  refused/N". Not in CI (about 3 minutes).
#
#   bench/sql_writes.sh [N]        N writes per way and load (300)
#   RATES="1000 0" bench/sql_writes.sh   NOTIFY/s of each load (0: flat out)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-300}
RATES=${RATES:-1000 0}
TG=$ROOT/build/tokengate
LOAD=$ROOT/build/spopload
PIDS=""
say() { echo "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
TMP=$(mktemp -d /tmp/tg-sqlwrites.XXXXXX)
trap 'stop_all TERM 10; rm -rf "$TMP"' EXIT
[ -x "$TG" ] && [ -x "$LOAD" ] || { say "build first: make"; exit 1; }

notifies() { curl -s "http://127.0.0.1:$aport/metrics" | awk '$1 == "tokengate_spop_notify_total" { print $2 }'; }

# write WAY I: one write of the given way; its status.
write() {
	case $1 in
	plain) sqlite3 "$DB" "INSERT OR REPLACE INTO user_limits (user_id, daily_tokens) VALUES ('op', $2)" ;;
	timeout) sqlite3 -cmd '.timeout 5000' "$DB" \
		"INSERT OR REPLACE INTO user_limits (user_id, daily_tokens) VALUES ('op', $2)" ;;
	command) "$TG" limit set --user op --tokens "$2" --db "$DB" >/dev/null ;;
	esac
}

printf '%-22s %-8s %s\n' load way refused
for rate in $RATES; do
	for way in plain timeout command; do
		DB=$TMP/tg.db
		rm -f "$DB" "$DB-wal" "$DB-shm" "$TMP/port" "$TMP/aport"
		"$TG" --listen 127.0.0.1:0 --port-file "$TMP/port" --db "$DB" --log-level warn \
			--admin-listen 127.0.0.1:0 --admin-port-file "$TMP/aport" >"$TMP/agent.log" 2>&1 &
		AGENT=$!
		PIDS="$PIDS $AGENT"
		port=$(wait_port_file "$TMP/port" "$AGENT") || { say "agent did not start"; exit 1; }
		aport=$(wait_port_file "$TMP/aport" "$AGENT") || { say "agent did not start"; exit 1; }
		"$LOAD" -p "$port" -c 4 -P 4 -u 1000 -r "$rate" -d 600 -w 0 --settle >"$TMP/load.out" 2>&1 &
		LOADER=$!
		PIDS="$PIDS $LOADER"
		sleep 1
		n0=$(notifies) t0=$(date +%s.%N)
		refused=0
		for i in $(seq 1 "$N"); do
			write "$way" "$i" 2>>"$TMP/refusals" || refused=$((refused + 1))
			sleep 0.05
		done
		got=$(awk -v n0="$n0" -v n1="$(notifies)" -v t0="$t0" -v t1="$(date +%s.%N)" \
			'BEGIN { printf "%.0f NOTIFY/s", (n1 - n0) / (t1 - t0) }')
		stop "$LOADER" TERM
		stop "$AGENT" TERM 30
		printf '%-22s %-8s %d/%d\n' "$got" "$way" "$refused" "$N"
	done
done
sort "$TMP/refusals" | uniq -c | sort -rn | head -n 3 | sed 's/^/# /'
