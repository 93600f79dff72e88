#!/bin/sh
# SPOP conformance of the agent, with a raw client whose encoder is not the
# agent's (build/spopraw, bench/spopwire.c) and hex frames written from the
# spec: the handshake, every DISCONNECT status we send, partial reads, and
# that after every bad peer a new connection is still served.
. "$(dirname "$0")/lib.sh"

RAW=${TG_SPOPRAW_BIN:-$TG_ROOT/build/spopraw}
[ -x "$RAW" ] || tg_bail "$RAW missing (make)"
tg_start_agent || tg_bail "agent did not start"
P=$TG_AGENT_PORT

raw() { "$RAW" -p "$P" -T 2000 "$@" 2>&1; }

# Hand-encoded frames (length prefix included).
HELLO_NOVSN=00000029010000000100000e6d61782d6672616d652d73697a6503fcf0060c6361706162696c69746965730800
HELLO_NOFS=0000002e0100000001000012737570706f727465642d76657273696f6e730803322e300c6361706162696c69746965730800
HELLO_NOCAP=000000320100000001000012737570706f727465642d76657273696f6e730803322e300e6d61782d6672616d652d73697a6503fcf006
HELLO_SID1=000000410100000001010012737570706f727465642d76657273696f6e730803322e300e6d61782d6672616d652d73697a6503fcf0060c6361706162696c69746965730800
HELLO_NOFIN=000000410100000000000012737570706f727465642d76657273696f6e730803322e300e6d61782d6672616d652d73697a6503fcf0060c6361706162696c69746965730800
# NOTIFY sid 5 fid 1: llm-request(unique_id="p-1", user="alice"), 51 bytes
NOTIFY=0000002f030000000105010b6c6c6d2d726571756573740209756e697175655f69640803702d3104757365720805616c696365
NOTIFY_NOFIN=0000002f030000000005010b6c6c6d2d726571756573740209756e697175655f69640803702d3104757365720805616c696365
NOTIFY_OVERRUN=00000023030000000107010b6c6c6d2d726571756573740309756e697175655f69640803702d31
NOTIFY_BADTYPE=00000017030000000107010b6c6c6d2d726571756573740101780c
SID_11_BYTES=000000110300000001f08080808080808080800001
FRAGMENT=0000000700000000010501
UNKNOWN_TYPE=00000008ff00000001000000

still_served() { # CONTEXT
	out=$(raw hello)
	tg_assert_match "AGENT-HELLO version=2.0 *" "$out" "$1: a new connection is still served"
}

# expect_status CONTEXT STATUS ARGS...: the agent answers AGENT-DISCONNECT
# with STATUS and closes.
expect_status() {
	ctx=$1 st=$2
	shift 2
	out=$(raw "$@")
	tg_assert_match "*AGENT-DISCONNECT status=$st *" "$out" "$ctx: AGENT-DISCONNECT status $st"
	case $out in
	*open) tg_fail "$ctx: connection left open" ;;
	*) tg_ok "$ctx: connection closed" ;;
	esac
	still_served "$ctx"
}

# ---- handshake ----
out=$(raw hello)
tg_assert_eq "AGENT-HELLO version=2.0 max-frame-size=16380 capabilities=pipelining" "$out" "HELLO answered"
out=$(raw --frame-size 1000 hello)
tg_assert_eq "AGENT-HELLO version=2.0 max-frame-size=1000 capabilities=pipelining" "$out" \
	"max-frame-size is the smaller of HAProxy's and ours"
out=$(raw --frame-size 65532 --caps "pipelining,async" hello)
tg_assert_match "*max-frame-size=16380 capabilities=pipelining" "$out" "no async, no fragmentation announced"
out=$(raw healthcheck)
tg_assert_match "AGENT-HELLO version=2.0 *" "$out" "health check answered"
tg_assert_match "*closed" "$out" "health check: closed after the HELLO"

expect_status "unsupported version" 8 --versions 1.0 hello
expect_status "max-frame-size below 256" 9 --frame-size 100 hello
expect_status "HELLO without supported-versions" 5 send-hex "$HELLO_NOVSN"
expect_status "HELLO without max-frame-size" 6 send-hex "$HELLO_NOFS"
expect_status "HELLO without capabilities" 7 send-hex "$HELLO_NOCAP"
expect_status "HELLO with a non-zero stream-id" 4 send-hex "$HELLO_SID1"
expect_status "HELLO without FIN" 10 send-hex "$HELLO_NOFIN"
expect_status "NOTIFY before HELLO" 4 send-hex "$NOTIFY"

# ---- frames after the handshake ----
out=$(raw --hello send-hex "$NOTIFY")
tg_assert_match "*ACK sid=5 fid=1 set-var txn action str:*" "$out" "NOTIFY answered with ACK, same sid and fid"
out=$(raw notify --sid 0 -u bob)
tg_assert_match "*set-var txn action str:*" "$out" "stream-id 0 (HAProxy 2.6) is answered"
expect_status "garbage frame type" 4 --hello send-hex "$UNKNOWN_TYPE"
expect_status "NOTIFY without FIN" 10 --hello send-hex "$NOTIFY_NOFIN"
expect_status "fragment (type UNSET)" 10 --hello send-hex "$FRAGMENT"
expect_status "argument count overrunning the frame" 4 --hello send-hex "$NOTIFY_OVERRUN"
expect_status "unknown data type" 4 --hello send-hex "$NOTIFY_BADTYPE"
expect_status "11-byte varint" 4 --hello send-hex "$SID_11_BYTES"
expect_status "4 GB length prefix" 3 --hello send-hex ffffffff
expect_status "frame one byte over max-frame-size" 3 --hello send-hex 00003ffd
for len in 0 1 2 3 4 5 6; do
	out=$(raw --hello send-hex "0000000$len")
	tg_assert_match "*AGENT-DISCONNECT status=4 *" "$out" "frame of length $len refused with status 4"
done
still_served "after the short frames"

out=$(raw disconnect)
tg_assert_match "*AGENT-DISCONNECT status=0 *" "$out" "HAPROXY-DISCONNECT answered with AGENT-DISCONNECT 0"
tg_assert_match "*closed" "$out" "and closed"

# ---- partial reads: the same NOTIFY in pieces of every size ----
bad=0
k=1
while [ $k -le 51 ]; do
	# -T 300: the ACK comes at once; the rest is waiting for a close.
	out=$("$RAW" -p "$P" -T 300 --hello send-hex --chunk $k "$NOTIFY" 2>&1)
	case $out in *"ACK sid=5 fid=1 "*) ;; *) bad=$((bad + 1)); echo "# chunk $k: $out" ;; esac
	k=$((k + 1))
done
tg_assert_eq 0 "$bad" "a NOTIFY split in pieces of 1..51 bytes is answered each time"
out=$(raw --hello send-hex --chunk 1 --delay 20 "$NOTIFY")
tg_assert_match "*ACK sid=5 fid=1 *" "$out" "one byte every 20 ms is reassembled"

# ---- pipelining: 3 NOTIFYs in one write, 3 ACKs ----
out=$(raw --hello send-hex "$NOTIFY$NOTIFY$NOTIFY" | grep -c "^ACK sid=5 fid=1")
tg_assert_eq 3 "$out" "three pipelined NOTIFYs, three ACKs"
LOAD=${TG_SPOPLOAD_BIN:-$TG_ROOT/build/spopload}
if [ -x "$LOAD" ]; then
	if "$LOAD" -p "$P" -c 8 -P 16 -n 20000 -w 0 -u 1000 >"$TG_TMP/load.out" 2>&1; then
		tg_ok "20,000 NOTIFYs over 8 connections x 16 in flight, every ACK matched"
	else
		tg_fail "spopload reported errors: $(tail -n 3 "$TG_TMP/load.out")"
	fi
fi

tg_alive "$TG_AGENT_PID" && tg_ok "agent alive after every bad peer" || tg_fail "agent died"

# ---- connection limit and idle timeout (a second agent) ----
tg_stop_agent
tg_start_agent --max-connections 2 --idle-timeout-ms 600 || tg_bail "second agent did not start"
P=$TG_AGENT_PORT
raw -T 4000 --hello send-hex "$NOTIFY" >"$TG_TMP/idle1.out" &
h1=$!
raw -T 4000 --hello send-hex "$NOTIFY" >"$TG_TMP/idle2.out" &
h2=$!
sleep 0.3
out=$(raw hello)
case $out in
AGENT-HELLO*) tg_fail "a third connection was served beyond max_connections 2" ;;
*) tg_ok "beyond max_connections the connection is closed at once" ;;
esac
wait $h1 $h2
tg_assert_match "*ACK sid=5*AGENT-DISCONNECT status=2 message=\"idle timeout\"*closed" "$(cat "$TG_TMP/idle1.out")" \
	"an idle connection gets AGENT-DISCONNECT status 2 after idle_timeout_ms"
still_served "after the idle timeouts freed the slots"
tg_done
