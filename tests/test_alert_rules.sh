#!/bin/sh
# The shipped Prometheus rules (ops/prometheus/), checked with Debian's
# promtool:
#   - promtool check rules / check config accept them;
#   - promtool test rules runs tokengate-rules.test.yml: every alert fires on
#     synthetic series, with its exact labels and annotations, and stays
#     quiet below its threshold;
#   - every alert has a "for:", a severity (critical or warning), a summary,
#     a description and a runbook_url pointing at an existing section of
#     ops/RUNBOOK.md, and is shown firing by at least one unit test;
#   - the unit tests bite: rules broken on purpose (no "for:", a threshold
#     changed, a label filter dropped) make promtool test rules fail.
# Prints "ok - ..." / "not ok - ..." lines, then "N passed, N failed".
#
#   sh tests/test_alert_rules.sh        (TG_PROMTOOL_BIN: another promtool)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$ROOT/ops/prometheus
RULES=$DIR/tokengate-rules.yml
UNIT=$DIR/tokengate-rules.test.yml
CONF=$DIR/prometheus.yml
RUNBOOK=$ROOT/ops/RUNBOOK.md
PROMTOOL=${TG_PROMTOOL_BIN:-$(command -v promtool 2>/dev/null || true)}

passed=0
failed=0
ok() {
	passed=$((passed + 1))
	echo "ok - $1"
}
not_ok() {
	failed=$((failed + 1))
	echo "not ok - $1"
	shift
	for l in "$@"; do
		printf '%s\n' "$l" | sed 's/^/#   /'
	done
}
finish() {
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
	exit $?
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-rules.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "$PROMTOOL" ] || [ ! -x "$PROMTOOL" ]; then
	not_ok "promtool is installed" "apt-get install prometheus (Debian 12's package ships promtool)"
	finish
fi
ok "promtool: $("$PROMTOOL" --version 2>&1 | head -n 1)"

for f in "$RULES" "$UNIT" "$CONF" "$RUNBOOK"; do
	if [ -s "$f" ]; then ok "${f#"$ROOT"/} exists"; else not_ok "${f#"$ROOT"/} exists"; fi
done

# ---- promtool --------------------------------------------------------------
# run NAME COMMAND...: the command (bounded to 60s) succeeds.
run() {
	name=$1
	shift
	if out=$(timeout 60 "$@" 2>&1); then
		ok "$name"
	else
		not_ok "$name" "$out"
	fi
}
run "promtool check rules ops/prometheus/tokengate-rules.yml" "$PROMTOOL" check rules "$RULES"
run "promtool check config ops/prometheus/prometheus.yml (loads the rules file)" "$PROMTOOL" check config "$CONF"
# promtool resolves rule_files relative to the test file's directory.
# shellcheck disable=SC2016  # expanded by the inner sh
run "promtool test rules ops/prometheus/tokengate-rules.test.yml" sh -c 'cd "$1" && "$2" test rules "$(basename "$3")"' sh "$DIR" "$PROMTOOL" "$UNIT"

# ---- Every alert is complete -----------------------------------------------
# One line per alert: NAME for=... severity=... summary=0/1 description=0/1
# runbook=URL, read from the rules file (its own layout: one "- alert:" line
# starts a rule, keys at deeper indentation follow).
awk '
	function flush() {
		if (name != "") printf "%s for=%s severity=%s summary=%d description=%d runbook=%s\n", name, f, sev, sum, desc, rb
		name = ""; f = "-"; sev = "-"; sum = 0; desc = 0; rb = "-"
	}
	BEGIN { flush() }
	/^[ \t]*- (alert|record):/ { flush() }
	/^[ \t]*- alert:/ { name = $3 }
	name != "" && /^[ \t]+for:/ { f = $2 }
	name != "" && /^[ \t]+severity:/ { sev = $2 }
	name != "" && /^[ \t]+summary:/ { sum = 1 }
	name != "" && /^[ \t]+description:/ { desc = 1 }
	name != "" && /^[ \t]+runbook_url:/ { rb = $2; gsub(/"/, "", rb) }
	END { flush() }' "$RULES" >"$TMP/alerts"
n_alerts=$(wc -l <"$TMP/alerts")
if [ "$n_alerts" -ge 13 ]; then
	ok "the rules file defines $n_alerts alerts"
else
	not_ok "the rules file defines at least 13 alerts" "found $n_alerts"
fi
while read -r name f sev sum desc rb; do
	bad=""
	case $f in for=[0-9]*[smhd]) ;; *) bad="$bad no for:;" ;; esac
	case $sev in severity=critical | severity=warning) ;; *) bad="$bad $sev (want critical or warning);" ;; esac
	[ "$sum" = summary=1 ] || bad="$bad no summary;"
	[ "$desc" = description=1 ] || bad="$bad no description;"
	lname=$(echo "$name" | tr '[:upper:]' '[:lower:]')
	[ "$rb" = "runbook=ops/RUNBOOK.md#$lname" ] || bad="$bad $rb (want ops/RUNBOOK.md#$lname);"
	# GitHub's anchor of "## TokengateFoo" is "#tokengatefoo".
	grep -q "^##* $name\$" "$RUNBOOK" 2>/dev/null || bad="$bad no '## $name' section in ops/RUNBOOK.md;"
	# A unit test shows it firing: "alertname: NAME" followed by a non-empty
	# exp_alerts list.
	awk -v n="$name" '
		$1 == "alertname:" { cur = $2; next }
		cur == n && $1 == "exp_alerts:" { if ($2 != "[]") found = 1; cur = "" }
		END { exit !found }' "$UNIT" || bad="$bad no unit test shows it firing;"
	if [ -z "$bad" ]; then
		ok "$name: ${f#for=} hold, ${sev#severity=}, summary, description, runbook section, a firing unit test"
	else
		not_ok "$name is complete" "$bad"
	fi
done <"$TMP/alerts"

# ---- The unit tests bite ---------------------------------------------------
# mutant NAME SED-SCRIPT: the rules with SED-SCRIPT applied still pass
# "promtool check rules" but fail "promtool test rules".
mutant() {
	rm -rf "$TMP/m"
	mkdir "$TMP/m"
	sed "$2" "$RULES" >"$TMP/m/tokengate-rules.yml"
	cp "$UNIT" "$TMP/m/tokengate-rules.test.yml"
	if cmp -s "$RULES" "$TMP/m/tokengate-rules.yml"; then
		not_ok "mutant '$1': the sed script changed the rules" "$2"
		return
	fi
	if ! "$PROMTOOL" check rules "$TMP/m/tokengate-rules.yml" >/dev/null 2>&1; then
		not_ok "mutant '$1' is still valid rules" "$("$PROMTOOL" check rules "$TMP/m/tokengate-rules.yml" 2>&1)"
		return
	fi
	if (cd "$TMP/m" && timeout 60 "$PROMTOOL" test rules tokengate-rules.test.yml >/dev/null 2>&1); then
		not_ok "the unit tests catch mutant '$1'" "promtool test rules passed on rules changed with: $2"
	else
		ok "the unit tests catch mutant '$1'"
	fi
}
mutant "every for: 0s" 's/^\( *\)for: .*/\1for: 0s/'
mutant "fallback threshold 5% -> 50%" '/tokengate:fallback_outage:ratio_rate5m > 0.05/s/0.05/0.5/'
mutant "budget fallbacks counted as outage fallbacks" 's/, reason!~"budget_.\*"//'
mutant "half-open breaker counted as open" 's/max_over_time(tokengate_provider_breaker_state\[2m\])) == 2/max_over_time(tokengate_provider_breaker_state[2m])) >= 1/'
mutant "hung provider (open, half-open, open) not paged" 's/min_over_time(tokengate_provider_breaker_state\[2m\])) >= 1/min_over_time(tokengate_provider_breaker_state[2m])) == 2/'
mutant "denial spike without its absolute floor" '/tokengate:decisions:rate5m{action="deny"} > 0.1$/s/> 0.1/> 0/'
mutant "denial spike without the no-history branch" '/^ *or$/,/rate5m{action="deny"} \* 0$/d'
mutant "ceiling crossed with > instead of >=" 's/tokengate_cost_today_usd >= tokengate_global_ceiling_usd/tokengate_cost_today_usd > tokengate_global_ceiling_usd/'
mutant "backlog alert without its growth condition" 's/deriv(tokengate_db_pending_rows\[5m\]) > 0/deriv(tokengate_db_pending_rows[5m]) > -1/'
mutant "agent errors from every backend" '/increase(haproxy_.*_total{proxy="spoe_tokengate"}/s/{proxy="spoe_tokengate"}/{proxy=~".+"}/'

finish
