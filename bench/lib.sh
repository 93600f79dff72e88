# bench/lib.sh: helpers shared by the bench scripts (bench/run, e2e.sh,
# soak.sh, writer.sh, scale.sh): processes, /proc, the benchmark database.
# Sourced by bash; the caller defines say() and keeps the PIDs it started
# in PIDS (space-separated), so that its EXIT trap can stop them.

alive() { # PID: running (not gone, not a zombie)
	local st
	st=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)
	[ -n "$st" ] && [ "$st" != Z ]
}

forget() { # PID: drop from PIDS
	local p n=""
	for p in $PIDS; do [ "$p" = "$1" ] || n="$n $p"; done
	PIDS=$n
}

# stop PID [SIGNAL] [SECONDS]: SIGNAL (TERM), up to SECONDS (10) to exit, then
# KILL; reaps it, sets STOP_RC to its exit status and forgets it.
stop() {
	local pid=$1 sig=${2:-TERM} secs=${3:-10} i=0
	STOP_RC=0
	{ # (bash reports a job killed by a signal on stderr: not wanted here)
		kill -s "$sig" "$pid"
		while alive "$pid" && [ $i -lt $((secs * 20)) ]; do
			sleep 0.05
			i=$((i + 1))
		done
		alive "$pid" && say "pid $pid still running $secs s after $sig: KILL" && kill -s KILL "$pid"
		wait "$pid"
		STOP_RC=$?
	} 2>/dev/null
	forget "$pid"
}

# stop_all SIGNAL SECONDS: stop every PID in PIDS, the last started first
# (for the EXIT trap).
stop_all() {
	local p rev=""
	for p in $PIDS; do rev="$p $rev"; done
	for p in $rev; do stop "$p" "$1" "$2"; done
}

wait_port_file() { # FILE PID: the number in FILE once PID wrote it (20 s bound)
	local i=0 v
	while [ $i -lt 400 ]; do
		v=$(cat "$1" 2>/dev/null)
		case $v in '' | *[!0-9]*) ;; *)
			echo "$v"
			return 0
			;;
		esac
		alive "$2" || return 1
		sleep 0.05
		i=$((i + 1))
	done
	return 1
}

cpu_ns() { # PID [TID]: CPU time in ns of the process (all threads) or one thread
	local f s=0 t
	if [ -r "/proc/$1/schedstat" ]; then
		if [ -n "${2:-}" ]; then
			read -r t _ <"/proc/$1/task/$2/schedstat" && echo "$t" && return
		fi
		for f in /proc/"$1"/task/*/schedstat; do
			read -r t _ <"$f" 2>/dev/null && s=$((s + t))
		done
		echo "$s"
	else
		f=/proc/$1/stat
		[ -n "${2:-}" ] && f=/proc/$1/task/$2/stat
		awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1e9 / tck }' "$f"
	fi
}

# wait_idle PID SECONDS: until PID uses under 5 % of a CPU over 0.2 s (the
# writer thread catching up), at most SECONDS.
wait_idle() {
	local i=0 c0 c1
	c0=$(cpu_ns "$1")
	while [ $i -lt $(($2 * 5)) ]; do
		sleep 0.2
		c1=$(cpu_ns "$1")
		[ $((c1 - c0)) -lt 10000000 ] && return 0
		c0=$c1
		i=$((i + 1))
	done
	say "note: pid $1 still busy after $2 s"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# jnum KEY FILE: the number after "KEY": in FILE (spopload --json), first one
jnum() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" "$2" | head -n 1; }

# lift_limits DB: no tier limit, so that every request of a run is allowed
# and the mix of decisions stays the same from start to end.
lift_limits() {
	sqlite3 "$1" "UPDATE tiers SET daily_tokens = NULL, daily_requests = NULL, daily_cost_usd = NULL;"
}

# preload_users DB N: today's daily_usage row for user-0 .. user-N-1 (the
# agent loads them at start, so it holds N users from the first request).
# "Today" is the date in settings.time_zone, UTC unless changed.
preload_users() {
	sqlite3 "$1" "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $2 - 1)
		INSERT INTO daily_usage(day, user_id) SELECT date('now'), 'user-' || i FROM n;"
}

# json_put FILE KEY OBJFILE: FILE's top-level KEY set to the JSON in OBJFILE
# (replaced if there, added last if not). Python's json keeps key order.
json_put() {
	/usr/bin/python3 - "$1" "$2" "$3" <<'PY' || echo "json_put: cannot put $2 into $1" >&2
import json, sys
path, key, obj = sys.argv[1:4]
with open(path) as f:
    doc = json.load(f)
with open(obj) as f:
    doc[key] = json.load(f)
with open(path + ".tmp", "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
import os
os.replace(path + ".tmp", path)
PY
}
