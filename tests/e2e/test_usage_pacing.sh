#!/bin/sh
# The writes of daily_usage are paced by their own cost (README
# "Durability"): with daily_usage_interval_ms and flush_interval_ms at
# their 10 ms floor and 20,000 users changing all the time, each write of
# daily_usage costs the writer milliseconds of CPU, so the agent spaces
# them out to ten times that, whatever the setting says:
#   - while the load runs, tokengate_db_daily_usage_interval_seconds rises
#     well above the 0.01 s set, and stays within the 60 s cap;
#   - once the load stops, daily_usage catches up: the sum of its requests
#     equals the requests the agent allowed, and usage_journal is empty.
# SPOP level (build/spopload), no HAProxy. Run from anywhere:
#   sh tests/e2e/test_usage_pacing.sh

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
tg_require_local_agent

SPOPLOAD=${TG_SPOPLOAD_BIN:-$TG_ROOT/build/spopload}
[ -x "$SPOPLOAD" ] || tg_bail "$SPOPLOAD is missing (make)"
# shellcheck disable=SC2119  # no extra agent arguments
tg_start_agent_isolated || tg_bail "agent did not start"
echo "# agent 127.0.0.1:$TG_AGENT_PORT, db $TG_DB"

r=$(tg_agent_log_count 'rules reloaded')
tg_sql "UPDATE tiers SET daily_tokens = NULL, daily_requests = NULL, daily_cost_usd = NULL;
	UPDATE settings SET value = '10' WHERE name IN ('flush_interval_ms', 'daily_usage_interval_ms');"
tg_wait_reload "$r" || echo "# (no 'rules reloaded' log line within 2s; carrying on)"
tg_scrape "$TG_TMP/m0" || tg_bail "no /metrics"
tg_assert_eq 0.01 "$(tg_metric "$TG_TMP/m0" tokengate_db_daily_usage_interval_seconds)" \
	"before the load: daily_usage written every 0.01 s, as set"

USERS=20000
N=300000
out=$TG_TMP/spopload.out
timeout 120 "$SPOPLOAD" -p "$TG_AGENT_PORT" -c 4 -P 16 -u "$USERS" -n "$N" -w 0 --settle >"$out" 2>&1 &
load=$!
# The largest interval seen while the load runs (the last writes after it
# stops hold few users and bring the interval back down).
max=0
samples=0
while kill -0 "$load" 2>/dev/null; do
	if tg_scrape "$TG_TMP/m1"; then
		v=$(tg_metric "$TG_TMP/m1" tokengate_db_daily_usage_interval_seconds)
		max=$(awk -v a="$max" -v b="${v:-0}" 'BEGIN { print (b > a) ? b : a }')
		samples=$((samples + 1))
	fi
	sleep 0.1
done
wait "$load"
rc=$?
sed 's/^/#   /' "$out"
tg_assert_eq 0 "$rc" "spopload: $N NOTIFYs over $USERS users completed without errors"
echo "# largest interval seen under load: $max s ($samples scrapes)"
tg_assert_eq yes "$(awk -v m="$max" 'BEGIN { print (m >= 0.05 && m <= 60) ? "yes" : "no" }')" \
	"under load: tokengate_db_daily_usage_interval_seconds rose from 0.01 to $max s (at least 0.05, at most 60)"

# Every allowed request is in daily_usage once the writes catch up.
tg_scrape "$TG_TMP/m2" || tg_bail "no /metrics"
allowed=$(tg_metric "$TG_TMP/m2" tokengate_decisions_total action=allow)
tg_assert_eq yes "$(awk -v a="${allowed:-0}" 'BEGIN { print (a > 0) ? "yes" : "no" }')" "requests were allowed ($allowed)"
if tg_poll_eq 10 "$allowed|0" tg_sql "SELECT (SELECT sum(requests) FROM daily_usage), (SELECT count(*) FROM usage_journal)"; then
	tg_ok "after the load: daily_usage holds all $allowed allowed requests, usage_journal is empty (${TG_POLL_MS} ms)"
else
	tg_fail "after the load: daily_usage holds every allowed request, usage_journal is empty" \
		"sum(requests)|journal rows: $TG_POLL_GOT" "expected: $allowed|0"
fi
tg_scrape "$TG_TMP/m3" || tg_bail "no /metrics"
tg_assert_eq yes "$(awk -v c="$(tg_metric "$TG_TMP/m3" tokengate_db_usage_write_cpu_seconds_total)" 'BEGIN { print (c > 0) ? "yes" : "no" }')" \
	"tokengate_db_usage_write_cpu_seconds_total counts the writer CPU of those writes"

tg_done
