#!/bin/sh
# End-to-end budgets, durability of the counters written behind to SQLite.
#   (a) Clean shutdown: with a 60 s flush interval (so only the shutdown path
#       can write), traffic, then SIGTERM right after the last answer: exit
#       status 0 and daily_usage equal to the provider's usage, to the token.
#       Then the same with flushes every 100 ms going to usage_journal
#       (daily_usage written once a minute): the SIGTERM writes daily_usage
#       and leaves the journal empty.
#   (b) kill -9: lock-step traffic for ~2 s (daily_usage written once a
#       minute, so every flush after the first goes to usage_journal), kill
#       -9 in the middle of it: the restart replays the journal, and then
#       every request answered more than flush_interval_ms + 100 ms before
#       the kill is in daily_usage (the measured loss is printed); the
#       counters continue from the database.
#   (c) Another process holds the write lock for 5 s: every decision still
#       comes within 400 ms, and once the lock goes no counter is lost.
# Run from anywhere: sh tests/e2e/test_budget_durability.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

# Lock-step traffic from one user goes far beyond HAProxy's own per-user
# request rate limit (haproxy-conf/haproxy.cfg); the agent must decide here.
TG_USER_RATE_LIMIT=${TG_USER_RATE_LIMIT:-1000000}
export TG_USER_RATE_LIMIT

T_START=$(tg_now_ms)
tg_start_mock primary ok || tg_bail "mock provider 'primary' did not start"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent_isolated || tg_bail "agent did not start"
tg_start_haproxy || tg_bail "haproxy did not start (or the agent's health check never passed)"
echo "# frontend $TG_URL, agent 127.0.0.1:$TG_AGENT_PORT, db $TG_DB"

# ---- (a) Clean shutdown ------------------------------------------------------
r=$(tg_agent_log_count 'rules reloaded')
tg_sql "UPDATE settings SET value = '60000' WHERE name = 'flush_interval_ms'"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"
# The flush timer already armed runs once more at the old interval (100 ms).
sleep 0.3
# Control: with the 60 s interval, usage does not reach the database by
# itself (so what is there after the SIGTERM was written by the shutdown).
tg_chat -H 'x-user: dur-ctl'
tg_assert_eq 200 "$TG_STATUS" "clean shutdown: control request answered"
sleep 0.5
tg_assert_eq "" "$(tg_usage dur-ctl requests)" \
	"clean shutdown: with flush_interval_ms = 60000 nothing is written 0.5 s after a request"

n_req=1
for u in dur-a dur-b dur-c dur-d dur-e; do
	tg_burst 20 10 "$TG_TMP/clean-$u.out" -H "x-user: $u"
	n_req=$((n_req + 20))
done
tg_chat -H 'x-user: dur-a'
n_req=$((n_req + 1))
# SIGTERM at once, no wait.
kill -TERM "$TG_AGENT_PID"
t0=$(tg_now_ms)
tg_wait_exit "$TG_AGENT_PID" 10
echo "# agent exited after $(($(tg_now_ms) - t0)) ms with status $TG_EXIT_STATUS"
tg_assert_eq 0 "$TG_EXIT_STATUS" "clean shutdown: SIGTERM right after the last answer, the agent exits with status 0"
tg_stop_pid "$TG_AGENT_PID"
TG_AGENT_PID=""
bad=""
for u in dur-ctl dur-a dur-b dur-c dur-d dur-e; do
	tg_usage_matches_mock "$u" || bad="$bad [$u: daily_usage $TG_USAGE_GOT, mock $TG_USAGE_WANT]"
done
if [ -z "$bad" ]; then
	tg_ok "clean shutdown: daily_usage of the 6 users equals the mock's usage, to the token ($n_req requests)"
else
	tg_fail "clean shutdown: daily_usage equals the mock's usage, to the token" "$bad"
fi
tg_assert_eq "$n_req" "$(tg_sql "SELECT count(*) FROM audit_log WHERE user_id LIKE 'dur-%' AND outcome = 'settled'")" \
	"clean shutdown: all $n_req audit_log rows written, settled"

# The same with the journal holding what changed since the last write of
# daily_usage: the shutdown must write daily_usage itself, not leave it to
# the replay at the next start.
tg_sql "UPDATE settings SET value = '100' WHERE name = 'flush_interval_ms';
	UPDATE settings SET value = '60000' WHERE name = 'daily_usage_interval_ms';"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent_isolated || tg_bail "agent did not restart"
tg_restart_haproxy || tg_bail "haproxy did not restart"
# The agent's first batch (its providers' health, at start) wrote
# daily_usage: every change for the next minute goes to the journal.
for u in jdur-a jdur-b jdur-c; do
	tg_burst 10 5 "$TG_TMP/jclean-$u.out" -H "x-user: $u"
done
journal_has_rows() { [ "$(tg_sql 'SELECT count(*) FROM usage_journal')" -ge 1 ]; }
if tg_poll 4 journal_has_rows; then
	tg_ok "clean shutdown with the journal: the load went to usage_journal ($(tg_sql 'SELECT count(*) FROM usage_journal') rows)"
else
	tg_fail "clean shutdown with the journal: the load went to usage_journal" "usage_journal rows: $(tg_sql 'SELECT count(*) FROM usage_journal')"
fi
tg_assert_eq "" "$(tg_sql "SELECT group_concat(user_id) FROM daily_usage WHERE user_id LIKE 'jdur-%'")" \
	"clean shutdown with the journal: before the SIGTERM, daily_usage has none of the 3 users"
kill -TERM "$TG_AGENT_PID"
tg_wait_exit "$TG_AGENT_PID" 10
tg_assert_eq 0 "$TG_EXIT_STATUS" "clean shutdown with the journal: the agent exits with status 0"
tg_stop_pid "$TG_AGENT_PID"
TG_AGENT_PID=""
tg_assert_eq 0 "$(tg_sql 'SELECT count(*) FROM usage_journal')" "clean shutdown with the journal: usage_journal is empty after the SIGTERM"
bad=""
for u in jdur-a jdur-b jdur-c; do
	tg_usage_matches_mock "$u" || bad="$bad [$u: daily_usage $TG_USAGE_GOT, mock $TG_USAGE_WANT]"
done
if [ -z "$bad" ]; then
	tg_ok "clean shutdown with the journal: daily_usage of the 3 users equals the mock's usage, to the token"
else
	tg_fail "clean shutdown with the journal: daily_usage equals the mock's usage, to the token" "$bad"
fi

# ---- (b) kill -9 -------------------------------------------------------------
tg_sql "UPDATE settings SET value = '100' WHERE name = 'flush_interval_ms'"
# daily_usage written once a minute: everything after the first flush goes
# through usage_journal, so what survives the kill is the journal's replay.
tg_sql "UPDATE settings SET value = '60000' WHERE name = 'daily_usage_interval_ms'"
FLUSH_MS=$(tg_sql "SELECT value FROM settings WHERE name = 'flush_interval_ms'")
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent_isolated || tg_bail "agent did not restart"
tg_restart_haproxy || tg_bail "haproxy did not restart"

U=dur-crash
LIMIT=10000000
tg_sql "INSERT INTO user_limits (user_id, daily_tokens, daily_requests) VALUES ('$U', $LIMIT, 10000000)"
body=$TG_TMP/crash.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}' >"$body"
EST=$((($(wc -c <"$body") + 3) / 4 + 16))

# A lock-step client: one request at a time through HAProxy, a line
# "<completion time ms> <status> <x-llm-decision>" per answer, until the
# stop file exists (bounded at 15 s).
cat >"$TG_TMP/lockstep.py" <<'EOF'
import http.client, os, sys, time
port, user, body_path, out, stop = sys.argv[1:6]
body = open(body_path, "rb").read()
deadline = time.time() + 15
conn = None
with open(out, "w", buffering=1) as f:
    while time.time() < deadline and not os.path.exists(stop):
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
            conn.request("POST", "/v1/chat/completions", body,
                          {"content-type": "application/json", "x-user": user})
            r = conn.getresponse()
            r.read()
            f.write("%d %d %s\n" % (time.time() * 1000, r.status,
                                    r.getheader("x-llm-decision") or "-"))
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
            f.write("%d 000 -\n" % (time.time() * 1000))
            time.sleep(0.01)
EOF
rm -f "$TG_TMP/lockstep.stop"
"$TG_PYTHON" "$TG_TMP/lockstep.py" "$TG_FRONTEND_PORT" "$U" "$body" "$TG_TMP/lockstep.out" "$TG_TMP/lockstep.stop" &
LS_PID=$!
tg__track "$LS_PID" lockstep
sleep 2
KILL_MS=$(tg_now_ms)
kill -KILL "$TG_AGENT_PID"
tg_stop_pid "$TG_AGENT_PID"
TG_AGENT_PID=""
sleep 0.2
: >"$TG_TMP/lockstep.stop"
tg_wait_exit "$LS_PID" 10 || tg_stop_pid "$LS_PID"

n_allowed=$(awk '$3 == "allow/ok"' "$TG_TMP/lockstep.out" | wc -l | tr -d ' ')
bound=$((KILL_MS - FLUSH_MS - 100))
n_old=$(awk -v b="$bound" '$3 == "allow/ok" && $1 <= b' "$TG_TMP/lockstep.out" | wc -l | tr -d ' ')
last_ok=$(awk '$3 == "allow/ok" { t = $1 } END { printf "%.0f\n", t }' "$TG_TMP/lockstep.out")
# What the crash left: daily_usage as of the last write of it (at most
# daily_usage_interval_ms old), and every flush since in usage_journal,
# which the next start replays into daily_usage before anything else.
R0=$(tg_usage "$U" requests)
R0=${R0:-0}
J=$(tg_sql "SELECT count(*) FROM usage_journal")
if [ "$J" -ge 10 ]; then
	tg_ok "kill -9: the flushes since the last write of daily_usage are in usage_journal ($J rows; daily_usage.requests $R0)"
else
	tg_fail "kill -9: the flushes since the last write of daily_usage are in usage_journal" "$J rows"
fi
# Back to the default for the restarted agent: what follows reads daily_usage.
tg_sql "UPDATE settings SET value = '1000' WHERE name = 'daily_usage_interval_ms'"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent_isolated || tg_bail "agent did not restart after kill -9"
tg_poll_eq 5 0 tg_sql "SELECT count(*) FROM usage_journal"
tg_assert_eq 0 "$TG_POLL_GOT" "after the restart: usage_journal replayed and emptied ($J rows after the crash, in $TG_POLL_MS ms)"
R=$(tg_usage "$U" requests)
R=${R:-0}
echo "# kill -9 at $KILL_MS: $n_allowed requests allowed before it (the last one answered at $((last_ok - KILL_MS)) ms relative to the kill), $n_old of them more than ${FLUSH_MS} + 100 ms before; daily_usage.requests after the crash: $R0, after the restart's replay of the journal: $R"
if [ "$R" -ge "$R0" ]; then
	tg_ok "kill -9: the replay of the journal only adds to daily_usage ($R0 -> $R)"
else
	tg_fail "kill -9: the replay of the journal only adds to daily_usage" "$R0 -> $R"
fi
lost=$((n_allowed - R))
lost_ms=$(awk -v r="$R" '$3 == "allow/ok" { n++; if (n == r + 1) { print $1 } }' "$TG_TMP/lockstep.out")
if [ "$lost" -gt 0 ]; then
	echo "# measured loss: $lost requests, the ones answered in the last $((KILL_MS - lost_ms)) ms before the kill"
else
	echo "# measured loss: 0 requests"
fi
if [ "$n_allowed" -ge 100 ]; then
	tg_ok "kill -9: ~2 s of lock-step traffic ($n_allowed requests allowed)"
else
	tg_fail "kill -9: ~2 s of lock-step traffic" "only $n_allowed requests allowed"
fi
if [ "$R" -ge "$n_old" ]; then
	tg_ok "kill -9: every request answered more than $((FLUSH_MS + 100)) ms before the kill is in daily_usage ($R >= $n_old; lost $lost of $n_allowed)"
else
	tg_fail "kill -9: every request answered more than $((FLUSH_MS + 100)) ms before the kill is in daily_usage" \
		"daily_usage.requests $R, answered before the bound: $n_old"
fi
if [ "$R" -le "$n_allowed" ]; then
	tg_ok "kill -9: daily_usage counts no request that was not made ($R <= $n_allowed)"
else
	tg_fail "kill -9: daily_usage counts no request that was not made" "$R > $n_allowed"
fi

# Restarted above: the counters continue from the database.
used=$(tg_usage "$U" "tokens_in + tokens_out")
tg_restart_haproxy || tg_bail "haproxy did not restart"
TG_CHAT_BODY=$body tg_chat -H "x-user: $U"
tg_assert_eq "200 allow/ok" "$TG_STATUS $(tg_header x-llm-decision)" "after the restart: a request is allowed"
tg_assert_eq "$((LIMIT - used - EST))" "$(tg_header x-ratelimit-remaining-tokens)" \
	"after the restart: x-ratelimit-remaining-tokens = limit - pre-crash usage in the db ($used) - estimate ($EST)"
tg_poll_eq 3 "$((R + 1))" tg_usage "$U" requests
tg_assert_eq "$((R + 1))" "$TG_POLL_GOT" "after the restart: daily_usage.requests continues from $R"

# ---- (c) Another process holds the write lock for 5 s ------------------------
L=dur-lock
# The sqlite3 shell runs these in order: the lock is taken at BEGIN
# IMMEDIATE (the UPDATE makes it a real write), "LOCKED" shows it is held,
# and COMMIT only comes after the 5 s sleep. The shell's timeout lets its
# BEGIN IMMEDIATE wait for the agent's own short hold of the lock.
printf '%s\n' "BEGIN IMMEDIATE;" \
	"UPDATE settings SET description = description WHERE name = 'time_zone';" \
	".print LOCKED" ".shell sleep 5" "COMMIT;" ".print RELEASED" |
	sqlite3 -cmd '.timeout 5000' "$TG_DB" >"$TG_TMP/locker.out" 2>&1 &
LOCKER_PID=$!
tg__track "$LOCKER_PID" sqlite3-locker
locked() { grep -q LOCKED "$TG_TMP/locker.out"; }
tg_poll 3 locked || tg_fail "lock: the sqlite3 shell took the write lock" "$(cat "$TG_TMP/locker.out")"
LOCK_MS=$(tg_now_ms)
if sqlite3 "$TG_DB" "BEGIN IMMEDIATE; ROLLBACK;" >/dev/null 2>&1; then
	tg_fail "lock: another writer is refused while the shell holds the lock (it got the lock)"
else
	tg_ok "lock: the sqlite3 shell holds the write lock (another writer gets 'database is locked')"
fi

n_lock=0
slow=""
undecided=""
max_t=0
while [ $(($(tg_now_ms) - LOCK_MS)) -lt 4000 ]; do
	tg_chat -H "x-user: $L"
	n_lock=$((n_lock + 1))
	[ "$(tg_header x-llm-decision)" = allow/ok ] || undecided="$undecided [$n_lock: $TG_STATUS '$(tg_header x-llm-decision)' gate '$(tg_header x-llm-gate)']"
	# A request stuck behind the 5 s lock would take seconds; 0.4 s leaves
	# room for a loaded machine (109 ms was seen with a soak beside it).
	awk -v t="$TG_TIME" 'BEGIN { exit !(t + 0 >= 0.4) }' && slow="$slow [$n_lock: ${TG_TIME}s]"
	max_t=$(awk -v a="$TG_TIME" -v b="$max_t" 'BEGIN { print (a + 0 > b + 0) ? a : b }')
	sleep 0.05
done
during=$(tg_usage "$L" requests)
still_locked=0
grep -q RELEASED "$TG_TMP/locker.out" || still_locked=1
echo "# during the lock: $n_lock requests, slowest ${max_t}s; daily_usage.requests of $L in the db: '${during:-no row}'"
tg_assert_eq 1 "$still_locked" "lock: all requests were sent while the lock was held"
if [ -z "$undecided" ]; then
	tg_ok "lock: all $n_lock requests decided by the agent (x-llm-decision allow/ok, no fail-open)"
else
	tg_fail "lock: all requests decided by the agent" "$undecided"
fi
if [ -z "$slow" ]; then
	tg_ok "lock: every request answered within 400 ms (slowest ${max_t}s; the lock lasts 5 s, processing timeout 500 ms)"
else
	tg_fail "lock: every request answered within 400 ms" "$slow"
fi
if [ "${during:-0}" -lt "$n_lock" ]; then
	tg_ok "lock: the agent's writes were held back by the lock (db had '${during:-no row}' of $n_lock)"
else
	tg_fail "lock: the agent's writes were held back by the lock" "db already had $during of $n_lock"
fi
tg_wait_exit "$LOCKER_PID" 10
tg_assert_eq "0 RELEASED" "$TG_EXIT_STATUS $(grep -o RELEASED "$TG_TMP/locker.out")" \
	"lock: the sqlite3 shell committed and exited after 5 s"
t0=$(tg_now_ms)
if tg_poll 3 tg_usage_matches_mock "$L"; then
	tg_ok "lock: once the lock is gone, daily_usage equals the mock's usage, nothing lost ($TG_USAGE_GOT, after $(($(tg_now_ms) - t0)) ms)"
else
	tg_fail "lock: once the lock is gone, daily_usage equals the mock's usage" \
		"daily_usage: $TG_USAGE_GOT" "mock:        $TG_USAGE_WANT"
fi
tg_poll_eq 3 "$n_lock" tg_sql "SELECT count(*) FROM audit_log WHERE user_id = '$L'"
tg_assert_eq "$n_lock" "$TG_POLL_GOT" "lock: all $n_lock audit_log rows written once the lock is gone"
# The operator is told why: the log line about the refused write carries
# SQLite's reason.
refused=$(grep 'write refused' "$TG_TMP/agent.log" | head -n 2 | tr '\n' ' ')
if [ -n "$refused" ] && [ "$(tg_agent_log_count 'write refused.*(locked|busy)')" -gt 0 ]; then
	tg_ok "lock: the agent logged the refused writes with SQLite's reason (database is locked)"
else
	tg_fail "lock: the agent logged the refused writes with SQLite's reason (database is locked)" \
		"log lines: ${refused:-none}"
fi

echo "# took $((($(tg_now_ms) - T_START) / 1000)) s"
tg_done
