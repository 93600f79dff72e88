#!/bin/sh
# Runs every test suite and ends with one line: "N passed, N failed".
#
#   TG_BUILD=build            the build whose binaries are tested
#   TG_ASAN_BUILD=build-asan  optional: run the unit and end-to-end suites
#                             again with these ASan+UBSan binaries
#   TG_FUZZ_SECONDS=60        optional: libFuzzer runs of the frame decoder, the
#                             body scanner, the log-line parser, the config
#                             file reader and the usage journal decoder, that
#                             long each (needs $TG_ASAN_BUILD/fuzz_frame,
#                             fuzz_body, fuzz_logline, fuzz_config,
#                             fuzz_journal), 0 = skip
#   TG_VALGRIND=1             optional: a few end-to-end suites again with the
#                             agent under valgrind (tests/valgrind.sh, about 40 s)
#   TG_ONLY=pattern           run only suites whose name contains pattern
#
# Each suite prints its own checks; its output goes to $TG_LOG_DIR and is
# shown when it fails. A suite that exits non-zero without reporting a
# failure counts as one failure, so a crash is never a pass.
set -u
cd "$(dirname "$0")/.." || exit 2
B=${TG_BUILD:-build}
A=${TG_ASAN_BUILD:-}
FUZZ=${TG_FUZZ_SECONDS:-0}
LOGS=${TG_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/tg-tests.XXXXXX")}
# ASan + UBSan builds: the first UBSan report ends the process (the builds
# make every check fatal already; this also covers a binary built without
# -fno-sanitize-recover), with a stack trace to act on. The end-to-end tests
# add their own settings (tests/e2e/lib.sh).
UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=1:print_stacktrace=1
export UBSAN_OPTIONS
passed=0
failed=0

# Reads a suite's log and prints "passed failed" as the suite reported them.
count() {
	awk '
	/^\[  PASSED  \] [0-9]+ test/ { p += $4 }
	/^\[  FAILED  \] [0-9]+ test/ { f += $4 }
	/^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed/ {
		line = $0; sub(/^[A-Za-z]+: /, "", line); split(line, w, /[ ,]+/); p += w[1]; f += w[3]
	}
	END { printf "%d %d\n", p, f }' "$1"
}

run() {
	name=$1
	shift
	case $name in *"${TG_ONLY:-}"*) ;; *) return 0 ;; esac
	log="$LOGS/$(echo "$name" | tr '/ ' '__').log"
	start=$(date +%s)
	"$@" >"$log" 2>&1
	rc=$?
	set -- $(count "$log")
	p=$1 f=$2
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1
		echo "(exit status $rc)" >>"$log"
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	took=$(($(date +%s) - start))
	if [ "$f" -eq 0 ] && [ "$p" -gt 0 ]; then
		echo "ok - $name: $p passed (${took}s)"
	elif [ "$f" -eq 0 ]; then
		# Nothing ran: a suite that checks nothing is a defect.
		failed=$((failed + 1))
		echo "not ok - $name: no check ran (${took}s)"
		sed 's/^/    /' "$log" | tail -n 20
	else
		echo "not ok - $name: $p passed, $f failed (${took}s)"
		grep -E '^not ok|FAILED|ERROR|error|Assert|runtime error|Sanitizer' "$log" | head -n 40 | sed 's/^/    /'
		echo "    (full log: $log)"
	fi
}

unit() {
	bdir=$1
	tag=$2
	run "unit/codec$tag" "$bdir/test_spop"
	run "unit/daytime$tag" "$bdir/test_daytime"
	run "unit/engine$tag" "$bdir/test_engine"
	run "unit/breaker$tag" "$bdir/test_breaker"
	run "unit/batch$tag" "$bdir/test_batch"
	run "unit/journal$tag" "$bdir/test_journal"
	run "unit/logsock$tag" "$bdir/test_logsock"
	run "unit/strmap$tag" "$bdir/test_strmap"
	run "unit/usermap$tag" "$bdir/test_usermap"
	run "unit/ledger$tag" "$bdir/test_ledger"
	run "unit/fallback$tag" "$bdir/test_fallback"
	run "unit/redact$tag" "$bdir/test_redact"
	run "unit/store$tag" "$bdir/test_store"
	run "unit/politevfs$tag" "$bdir/test_politevfs"
	run "unit/config$tag" "$bdir/test_config"
	run "unit/tokenfile$tag" "$bdir/test_tokenfile"
	run "unit/ratelog$tag" "$bdir/test_ratelog"
	run "unit/wire-selftest$tag" "$bdir/wire_selftest"
	run "unit/fuzz-corpus-replay$tag" "$bdir/fuzz_replay" tests/fuzz/corpus
	run "unit/fuzz-body-corpus-replay$tag" "$bdir/fuzz_body_replay" tests/fuzz/corpus-body
	run "unit/fuzz-logline-corpus-replay$tag" "$bdir/fuzz_logline_replay" tests/fuzz/corpus-logline
	run "unit/fuzz-config-corpus-replay$tag" "$bdir/fuzz_config_replay" tests/fuzz/corpus-config
	run "unit/fuzz-journal-corpus-replay$tag" "$bdir/fuzz_journal_replay" tests/fuzz/corpus-journal
}

# The test clients come from the same build as the agent: in the ASan pass
# their own sanitizer reports fail the test too (tests/e2e/lib.sh).
e2e() {
	bdir=$1
	tag=$2
	for t in tests/e2e/test_*.sh; do
		run "e2e/$(basename "$t" .sh)$tag" env TG_AGENT_BIN="$bdir/tokengate" TG_SPOPRAW_BIN="$bdir/spopraw" \
			TG_SPOPLOAD_BIN="$bdir/spopload" sh "$t"
	done
}

unit "$B" ""
run "schema" sh tests/test_schema.sh
run "alert-rules" sh tests/test_alert_rules.sh
run "mock-provider" sh tests/mock_provider_selftest.sh
e2e "$B" ""
if [ -n "$A" ]; then
	unit "$A" " (asan)"
	e2e "$A" " (asan)"
fi
if [ "${TG_VALGRIND:-0}" = 1 ]; then
	run "valgrind/e2e (budget_limits, operations, basic)" env TG_BUILD="$B" sh tests/valgrind.sh
fi
if [ "$FUZZ" -gt 0 ] && [ -n "$A" ]; then
	# fuzzrun TARGET MAX_LEN CORPUS: TARGET for FUZZ seconds from the
	# committed CORPUS, what it finds kept in $A/fuzz-CORPUS.
	fuzzrun() {
		mkdir -p "$A/fuzz-$3" &&
			"$A/$1" -max_total_time="$FUZZ" -max_len="$2" -print_final_stats=1 -artifact_prefix="$A/" \
				"$A/fuzz-$3" "tests/fuzz/$3" &&
			echo "1 passed, 0 failed"
	}
	run "fuzz/frame-decoder (${FUZZ}s)" fuzzrun fuzz_frame 70000 corpus
	run "fuzz/body-scanner (${FUZZ}s)" fuzzrun fuzz_body 8192 corpus-body
	run "fuzz/log-line-parser-and-config-setter (${FUZZ}s)" fuzzrun fuzz_logline 8192 corpus-logline
	run "fuzz/config-file-reader (${FUZZ}s)" fuzzrun fuzz_config 4096 corpus-config
	run "fuzz/journal-decoder (${FUZZ}s)" fuzzrun fuzz_journal 4096 corpus-journal
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
