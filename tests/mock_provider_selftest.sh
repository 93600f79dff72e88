#!/bin/sh
# Self-test for tests/mock_provider.py (the mock OpenAI-compatible provider).
# POSIX sh; needs curl and /usr/bin/python3. Prints "ok - ..." / "not ok - ..."
# per check and ends with "N passed, N failed"; exits non-zero on any failure.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-/usr/bin/python3}
MOCK="$HERE/mock_provider.py"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mockselftest.XXXXXX")
PID=""
PASS=0
FAIL=0

cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
        PID=""
    fi
    # background curls started by this script (hang checks)
    for p in $(cat "$TMP"/bgpids 2>/dev/null); do kill "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok()  { PASS=$((PASS + 1)); echo "ok - $1"; }
nok() {
    FAIL=$((FAIL + 1)); echo "not ok - $1"
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" | sed 's/^/#   /'; fi
}

for tool in curl "$PY"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "not ok - required tool $tool not found"
        echo "0 passed, 1 failed"
        exit 1
    fi
done

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# pycheck NAME FILE CODE: run python CODE with d = json of FILE (or d=None when
# FILE is "-"); text = raw file text. Pass when it exits 0.
pycheck() {
    _name=$1; _file=$2; _code=$3
    if _err=$("$PY" -c "import json, math, sys
path = sys.argv[1]
text = open(path, encoding='utf-8').read() if path != '-' else ''
try:
    d = json.loads(text) if path != '-' else None
except ValueError:
    d = None
$_code" "$_file" 2>&1); then
        ok "$_name"
    else
        nok "$_name" "$(printf '%s\n' "$_err" | tail -n 3)"
    fi
}

# req OUT [curl args...]: body -> OUT, headers -> OUT.h, prints HTTP code.
req() {
    _out=$1; shift
    curl -sS -o "$_out" -D "$_out.h" -w '%{http_code}' --max-time 15 "$@" 2>"$_out.err"
}

# hdr FILE NAME: value of the last NAME header in FILE.h
hdr() {
    grep -i "^$2:" "$1.h" | tail -n 1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'
}

# ---------------------------------------------------------------- startup ---
"$PY" "$MOCK" --port 0 --port-file "$TMP/port" --pid-file "$TMP/pid" \
    --name selftest --quiet 2>"$TMP/mock.log" &
PID=$!
i=0
while [ ! -s "$TMP/port" ] && [ $i -lt 200 ]; do   # at most ~10 s
    if ! kill -0 "$PID" 2>/dev/null; then break; fi
    sleep 0.05
    i=$((i + 1))
done
if [ ! -s "$TMP/port" ]; then
    nok "mock starts and writes --port-file" "$(cat "$TMP/mock.log")"
    echo "$PASS passed, $FAIL failed"
    exit 1
fi
PORT=$(cat "$TMP/port")
URL="http://127.0.0.1:$PORT"
ok "mock starts and writes --port-file (port $PORT)"
if [ "$(cat "$TMP/pid" 2>/dev/null)" = "$PID" ]; then
    ok "--pid-file holds the mock's PID"
else
    nok "--pid-file holds the mock's PID" "pid file: $(cat "$TMP/pid" 2>/dev/null), \$!: $PID"
fi

CHAT="$URL/v1/chat/completions"
JSON_H="Content-Type: application/json"

# Independent implementation of the token formula for the checks.
FORMULA='
def nbytes(c):
    if c is None: return 0
    if isinstance(c, str): return len(c.encode("utf-8"))
    return sum(len(p["text"].encode("utf-8")) for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
def expect(reqbody, forced=None):
    p = 3 + sum(math.ceil(nbytes(m.get("content")) / 4) + 4 for m in reqbody["messages"])
    n = forced if forced is not None else 8 + p % 17
    lim = reqbody.get("max_completion_tokens", reqbody.get("max_tokens"))
    c = n if lim is None else min(lim, n)
    return p, c, ("length" if lim is not None and lim < n else "stop")
def sse(text):
    ev = [l[6:] for l in text.split("\n") if l.startswith("data: ")]
    assert ev and ev[-1] == "[DONE]", "stream does not end with data: [DONE]: %r" % ev[-1:]
    return [json.loads(e) for e in ev[:-1]]
'

# ---------------------------------------------------------------- healthz ---
code=$(req "$TMP/h" "$URL/healthz")
if [ "$code" = 200 ] && [ "$(cat "$TMP/h")" = ok ] && [ "$(hdr "$TMP/h" x-mock-provider)" = selftest ]; then
    ok "GET /healthz -> 200 ok with x-mock-provider: selftest"
else
    nok "GET /healthz -> 200 ok with x-mock-provider: selftest" "code=$code body=$(cat "$TMP/h")"
fi

# ------------------------------------------------------------- ok (JSON) ---
cat >"$TMP/req1.json" <<'EOF'
{"model":"gpt-4o","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"H\u00e9llo w\u00f6rld \ud83d\ude00, count my tokens please!"}]}
EOF
code=$(req "$TMP/r1" -H "$JSON_H" -H "Authorization: Bearer sk-test-alice" --data-binary @"$TMP/req1.json" "$CHAT")
[ "$code" = 200 ] || echo "# code $code: $(cat "$TMP/r1")"
pycheck "ok: chat.completion JSON, usage matches the token formula" "$TMP/r1" "$FORMULA
rq = json.load(open('$TMP/req1.json'))
p, c, fr = expect(rq)
assert d['object'] == 'chat.completion', d
assert d['id'].startswith('chatcmpl-') and len(d['id']) > 12
assert isinstance(d['created'], int) and d['model'] == 'gpt-4o' and d['system_fingerprint']
ch = d['choices'][0]
assert ch['index'] == 0 and ch['logprobs'] is None and ch['finish_reason'] == fr
assert ch['message']['role'] == 'assistant' and ch['message']['refusal'] is None
u = d['usage']
assert (u['prompt_tokens'], u['completion_tokens'], u['total_tokens']) == (p, c, p + c), (u, p, c)
assert len(ch['message']['content'].split()) == c
assert u['prompt_tokens_details'] == {'cached_tokens': 0, 'audio_tokens': 0}
assert u['completion_tokens_details'] == {'reasoning_tokens': 0, 'audio_tokens': 0, 'accepted_prediction_tokens': 0, 'rejected_prediction_tokens': 0}
"
if [ -n "$(hdr "$TMP/r1" content-length)" ] && [ "$(hdr "$TMP/r1" x-mock-provider)" = selftest ]; then
    ok "ok: Content-Length and x-mock-provider headers present"
else
    nok "ok: Content-Length and x-mock-provider headers present" "$(cat "$TMP/r1.h")"
fi

cat >"$TMP/req2.json" <<'EOF'
{"messages":[{"role":"user","content":[{"type":"text","text":"part one, "},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"part two"}]}],"max_tokens":2}
EOF
code=$(req "$TMP/r2" -H "$JSON_H" --data-binary @"$TMP/req2.json" "$CHAT")
pycheck "ok: list-of-parts content, max_tokens truncation -> finish_reason length" "$TMP/r2" "$FORMULA
rq = json.load(open('$TMP/req2.json'))
p, c, fr = expect(rq)
assert fr == 'length' and c == 2
u = d['usage']
assert d['model'] == 'gpt-4o-mini', d['model']
assert (u['prompt_tokens'], u['completion_tokens']) == (p, c), (u, p, c)
assert d['choices'][0]['finish_reason'] == 'length'
assert len(d['choices'][0]['message']['content'].split()) == 2
"

cat >"$TMP/req3.json" <<'EOF'
{"model":"o3-mini","messages":[{"role":"user","content":"x"}],"max_completion_tokens":1000}
EOF
code=$(req "$TMP/r3" -H "$JSON_H" -H "x-mock-completion-tokens: 40" --data-binary @"$TMP/req3.json" "$CHAT")
pycheck "ok: x-mock-completion-tokens forces completion length" "$TMP/r3" "
u = d['usage']
assert u['completion_tokens'] == 40 and u['prompt_tokens'] == 3 + 1 + 4, u
assert d['choices'][0]['finish_reason'] == 'stop'
assert len(d['choices'][0]['message']['content'].split()) == 40
"

printf '{"messages": [' >"$TMP/bad.json"
code=$(req "$TMP/r4" -H "$JSON_H" --data-binary @"$TMP/bad.json" "$CHAT")
pycheck "bad JSON -> 400 invalid_request_error (OpenAI error shape)" "$TMP/r4" "
assert '$code' == '400', '$code'
e = d['error']
assert set(e) == {'message', 'type', 'param', 'code'} and e['type'] == 'invalid_request_error', e
assert e['param'] is None and e['code'] is None
"

# ---------------------------------------------------------------- stream ---
cat >"$TMP/req5.json" <<'EOF'
{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Stream me something, please."}]}
EOF
code=$(req "$TMP/r5" -N -H "$JSON_H" -H "x-user: streamer" --data-binary @"$TMP/req5.json" "$CHAT")
pycheck "stream: SSE chunks, finish_reason, usage chunk, [DONE]" "$TMP/r5" "$FORMULA
assert '$code' == '200', '$code'
rq = json.load(open('$TMP/req5.json'))
p, c, fr = expect(rq)
ch = sse(text)
assert all(x['object'] == 'chat.completion.chunk' for x in ch)
assert len({x['id'] for x in ch}) == 1 and ch[0]['id'].startswith('chatcmpl-')
assert ch[0]['choices'][0]['delta']['role'] == 'assistant'
last = ch[-1]
assert last['choices'] == [] and last['usage']['prompt_tokens'] == p and last['usage']['completion_tokens'] == c and last['usage']['total_tokens'] == p + c, last
fin = ch[-2]['choices'][0]
assert fin['finish_reason'] == fr and fin['delta'] == {}, fin
content = ''.join(x['choices'][0]['delta'].get('content') or '' for x in ch[:-1])
assert len(content.split()) == c, (content, c)
assert all(x['usage'] is None for x in ch[:-1])
"
h=$(tr -d '\r' <"$TMP/r5.h" | tr 'A-Z' 'a-z')
case "$h" in
    *"content-type: text/event-stream"*"transfer-encoding: chunked"*)
        if printf '%s' "$h" | grep -q '^content-length:'; then
            nok "stream: text/event-stream, chunked, no Content-Length" "$h"
        else
            ok "stream: text/event-stream, chunked, no Content-Length"
        fi ;;
    *) nok "stream: text/event-stream, chunked, no Content-Length" "$h" ;;
esac

cat >"$TMP/req6.json" <<'EOF'
{"stream":true,"max_tokens":3,"messages":[{"role":"user","content":"no usage chunk"}]}
EOF
code=$(req "$TMP/r6" -N -H "$JSON_H" --data-binary @"$TMP/req6.json" "$CHAT")
pycheck "stream without include_usage: no usage chunk, length finish" "$TMP/r6" "$FORMULA
ch = sse(text)
assert all('usage' not in x for x in ch), ch[-1]
assert all(x['choices'] for x in ch)
assert ch[-1]['choices'][0]['finish_reason'] == 'length'
assert len(ch) == 1 + 3 + 1, len(ch)
"

# ---------------------------------------------------------- error modes ---
code=$(req "$TMP/e1" -H "$JSON_H" -H "x-mock-mode: error500" --data-binary @"$TMP/req1.json" "$CHAT")
pycheck "error500 (header): 500 server_error" "$TMP/e1" "
assert '$code' == '500', '$code'
assert d['error']['type'] == 'server_error' and 'message' in d['error'], d
"
code=$(req "$TMP/e2" -H "$JSON_H" -H "x-mock-mode: error503" --data-binary @"$TMP/req1.json" "$CHAT")
pycheck "error503 (header): 503 server_error" "$TMP/e2" "
assert '$code' == '503', '$code'
assert d['error']['type'] == 'server_error', d
"

code=$(req "$TMP/m1" -H "$JSON_H" --data '{"mode":"ratelimit429","retry_after":7}' "$URL/__mock/mode")
[ "$code" = 200 ] || echo "# set mode -> $code $(cat "$TMP/m1")"
code=$(req "$TMP/e3" -H "$JSON_H" --data-binary @"$TMP/req1.json" "$CHAT")
if [ "$code" = 429 ] && [ "$(hdr "$TMP/e3" retry-after)" = 7 ] \
   && [ "$(hdr "$TMP/e3" x-ratelimit-remaining-requests)" = 0 ] \
   && [ -n "$(hdr "$TMP/e3" x-ratelimit-limit-tokens)" ]; then
    ok "ratelimit429 (server mode): 429, Retry-After: 7, x-ratelimit-* headers"
else
    nok "ratelimit429 (server mode): 429, Retry-After: 7, x-ratelimit-* headers" "code=$code $(cat "$TMP/e3.h")"
fi
pycheck "ratelimit429: OpenAI rate limit error body" "$TMP/e3" "
e = d['error']
assert e['type'] == 'requests' and e['code'] == 'rate_limit_exceeded' and e['param'] is None, e
assert e['message'].startswith('Rate limit reached'), e
"
code=$(req "$TMP/e4" -H "$JSON_H" -H "x-mock-mode: ok" --data-binary @"$TMP/req1.json" "$CHAT")
if [ "$code" = 200 ]; then ok "x-mock-mode header wins over the server mode"
else nok "x-mock-mode header wins over the server mode" "code=$code"; fi
code=$(req "$TMP/m2" "$URL/__mock/mode")
pycheck "GET /__mock/mode reports the server mode" "$TMP/m2" "
assert d['mode'] == 'ratelimit429' and d['retry_after'] == 7, d
"
code=$(req "$TMP/m3" -H "$JSON_H" --data '{"mode":"bogus"}' "$URL/__mock/mode")
if [ "$code" = 400 ]; then ok "unknown mode rejected with 400"; else nok "unknown mode rejected with 400" "code=$code"; fi
req "$TMP/m4" -H "$JSON_H" --data '{"mode":"ok"}' "$URL/__mock/mode" >/dev/null

# ---------------------------------------------------------------- slow ---
t0=$(now_ms)
code=$(req "$TMP/s1" -H "$JSON_H" -H "x-mock-mode: slow" -H "x-mock-delay-ms: 400" --data-binary @"$TMP/req1.json" "$CHAT")
dt=$(( $(now_ms) - t0 ))
if [ "$code" = 200 ] && [ "$dt" -ge 400 ]; then ok "slow (header, 400 ms): 200 after ${dt} ms"
else nok "slow (header, 400 ms): 200 after >= 400 ms" "code=$code elapsed=${dt}ms"; fi

req "$TMP/m5" -H "$JSON_H" --data '{"mode":"slow","delay_ms":300}' "$URL/__mock/mode" >/dev/null
t0=$(now_ms)
code=$(req "$TMP/s2" -N -H "$JSON_H" --data-binary @"$TMP/req5.json" "$CHAT")
dt=$(( $(now_ms) - t0 ))
if [ "$code" = 200 ] && [ "$dt" -ge 300 ] && tail -n 2 "$TMP/s2" | grep -q '^data: \[DONE\]'; then
    ok "slow (server mode, 300 ms) streamed: complete after ${dt} ms"
else
    nok "slow (server mode, 300 ms) streamed: complete after >= 300 ms" "code=$code elapsed=${dt}ms"
fi
req "$TMP/m6" -H "$JSON_H" --data '{"mode":"ok","delay_ms":0}' "$URL/__mock/mode" >/dev/null

# ---------------------------------------------------------- reset / hang ---
curl -sS -o /dev/null --max-time 5 -H "x-mock-mode: reset" -H "$JSON_H" \
    --data-binary @"$TMP/req1.json" "$CHAT" 2>"$TMP/reset.err"
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 28 ]; then ok "reset: connection dropped, curl exit $rc ($(tr -d '\n' <"$TMP/reset.err"))"
else nok "reset: connection dropped with a curl error" "curl exit $rc"; fi

t0=$(now_ms)
curl -sS -o /dev/null --max-time 1 -H "x-mock-mode: hang" -H "$JSON_H" \
    --data-binary @"$TMP/req1.json" "$CHAT" 2>/dev/null
rc=$?
dt=$(( $(now_ms) - t0 ))
if [ "$rc" -eq 28 ] && [ "$dt" -ge 900 ]; then ok "hang: no answer, client times out (curl exit 28 after ${dt} ms)"
else nok "hang: no answer, client times out" "curl exit $rc after ${dt} ms"; fi

code=$(req "$TMP/h2" "$URL/healthz")
if [ "$code" = 200 ]; then ok "server still healthy after reset and hang"
else nok "server still healthy after reset and hang" "code=$code"; fi

# ----------------------------------------------------- request id / last ---
code=$(req "$TMP/q1" -H "$JSON_H" -H "x-request-id: selftest-rid-42" -H "x-forwarded-test: abc" \
    -H "x-user: lastuser" --data-binary @"$TMP/req3.json" "$CHAT")
if [ "$(hdr "$TMP/q1" x-request-id)" = selftest-rid-42 ]; then ok "x-request-id echoed"
else nok "x-request-id echoed" "$(cat "$TMP/q1.h")"; fi
code=$(req "$TMP/q2" "$URL/__mock/last")
pycheck "GET /__mock/last shows the last request's headers and body" "$TMP/q2" "
assert d['method'] == 'POST' and d['path'] == '/v1/chat/completions', d
h = d['headers']
assert h['x-forwarded-test'] == 'abc' and h['x-request-id'] == 'selftest-rid-42', h
assert d['user'] == 'lastuser' and d['body']['model'] == 'o3-mini', d
"
code=$(req "$TMP/q3" -H "$JSON_H" --data-binary @"$TMP/req3.json" "$CHAT")
case "$(hdr "$TMP/q3" x-request-id)" in
    ""|selftest-rid-42) nok "x-request-id generated when absent" "$(cat "$TMP/q3.h")" ;;
    *) ok "x-request-id generated when absent ($(hdr "$TMP/q3" x-request-id))" ;;
esac

# ------------------------------------------------------- models / 404 ---
code=$(req "$TMP/g1" "$URL/v1/models")
pycheck "GET /v1/models: OpenAI list" "$TMP/g1" "
assert '$code' == '200'
assert d['object'] == 'list' and d['data'] and all(m['object'] == 'model' and m['id'] for m in d['data']), d
"
code=$(req "$TMP/g2" "$URL/v1/nope")
pycheck "unknown path -> 404 OpenAI error shape" "$TMP/g2" "
assert '$code' == '404', '$code'
assert d['error']['type'] == 'invalid_request_error' and 'message' in d['error'], d
"

# ------------------------------------------------------------ keep-alive ---
nc=$(curl -sS -o /dev/null -o /dev/null -w '%{num_connects} ' --max-time 10 \
    -H "$JSON_H" --data-binary @"$TMP/req1.json" "$CHAT" "$CHAT" 2>/dev/null)
if [ "$nc" = "1 0 " ]; then ok "HTTP/1.1 keep-alive: second request reuses the connection"
else nok "HTTP/1.1 keep-alive: second request reuses the connection" "num_connects: '$nc'"; fi

# ---------------------------------------------------------------- stats ---
req "$TMP/m7" -H "$JSON_H" --data '{"mode":"error500"}' "$URL/__mock/mode" >/dev/null
code=$(req "$TMP/z0" -X POST "$URL/__mock/reset")
code2=$(req "$TMP/z1" "$URL/__mock/mode")
code3=$(req "$TMP/z2" "$URL/__mock/stats")
pycheck "POST /__mock/reset: mode back to ok, stats zeroed" "$TMP/z2" "
m = json.load(open('$TMP/z1'))
assert '$code' == '200' and m['mode'] == 'ok', m
assert d['requests'] == 0 and d['users'] == {} and d['modes'] == {}, d
"
req "$TMP/a1" -H "$JSON_H" -H "x-user: alice" -H "Authorization: Bearer sk-not-used" --data-binary @"$TMP/req1.json" "$CHAT" >/dev/null
req "$TMP/a2" -H "$JSON_H" -H "x-user: alice" --data-binary @"$TMP/req2.json" "$CHAT" >/dev/null
req "$TMP/b1" -N -H "$JSON_H" -H "Authorization: Bearer sk-test-bob" --data-binary @"$TMP/req5.json" "$CHAT" >/dev/null
req "$TMP/n1" -H "$JSON_H" --data-binary @"$TMP/req3.json" "$CHAT" >/dev/null
req "$TMP/x1" -H "$JSON_H" -H "x-user: alice" -H "x-mock-mode: error500" --data-binary @"$TMP/req1.json" "$CHAT" >/dev/null
req "$TMP/x2" -H "$JSON_H" -H "x-user: alice" -H "x-mock-mode: ratelimit429" --data-binary @"$TMP/req1.json" "$CHAT" >/dev/null
code=$(req "$TMP/st" "$URL/__mock/stats")
pycheck "stats: totals, per-mode counts, per-user tokens (JSON + streamed)" "$TMP/st" "$FORMULA
ld = lambda n: json.load(open('$TMP/' + n))
a1, a2, n1 = ld('a1')['usage'], ld('a2')['usage'], ld('n1')['usage']
b1 = sse(open('$TMP/b1').read())[-1]['usage']
assert d['requests'] == 6, d
assert d['modes'] == {'ok': 4, 'error500': 1, 'ratelimit429': 1}, d['modes']
assert d['status'].get('200') == 4, d['status']
U = d['users']
assert set(U) == {'alice', 'sk-test-bob', 'anonymous'}, U
want = {
 'alice': {'requests': 2, 'prompt_tokens': a1['prompt_tokens'] + a2['prompt_tokens'], 'completion_tokens': a1['completion_tokens'] + a2['completion_tokens'], 'streamed_requests': 0},
 'sk-test-bob': {'requests': 1, 'prompt_tokens': b1['prompt_tokens'], 'completion_tokens': b1['completion_tokens'], 'streamed_requests': 1},
 'anonymous': {'requests': 1, 'prompt_tokens': n1['prompt_tokens'], 'completion_tokens': n1['completion_tokens'], 'streamed_requests': 0},
}
for u, w in want.items():
    for k, v in w.items():
        assert U[u][k] == v, (u, k, U[u][k], v)
"

# ---------------------------------------------------------- concurrency ---
req "$TMP/z3" -X POST "$URL/__mock/reset" >/dev/null
seq 1 200 | xargs -P 200 -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 30 \
    -H "$JSON_H" -H "x-user: load{}" --data-binary @"$TMP/req1.json" "$CHAT" >"$TMP/conc" 2>/dev/null
n200=$(grep -c '^200$' "$TMP/conc")
code=$(req "$TMP/st2" "$URL/__mock/stats")
if [ "$n200" -eq 200 ]; then ok "200 concurrent requests all answered 200"
else nok "200 concurrent requests all answered 200" "got $n200 x 200: $(sort "$TMP/conc" | uniq -c | tr '\n' ' ')"; fi
pycheck "stats after 200 concurrent requests: 200 requests, 200 users" "$TMP/st2" "
assert d['requests'] == 200 and d['ok_requests'] == 200 and len(d['users']) == 200, (d['requests'], d['ok_requests'], len(d['users']))
"

# ----------------------------------------------------- loopback refusal ---
for h in 0.0.0.0 ::; do
    timeout 5 "$PY" "$MOCK" --host "$h" --port 0 --quiet >/dev/null 2>"$TMP/lb.err"
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q loopback "$TMP/lb.err"; then
        ok "refuses to bind non-loopback --host $h (exit $rc)"
    else
        nok "refuses to bind non-loopback --host $h" "exit $rc: $(cat "$TMP/lb.err")"
    fi
done

# -------------------------------------------------------------- SIGTERM ---
# A hanging client is in flight while we stop the server: exit must still be prompt.
curl -s -o /dev/null --max-time 20 -H "x-mock-mode: hang" --data '{}' "$CHAT" 2>/dev/null &
echo $! >>"$TMP/bgpids"
sleep 0.2
t0=$(now_ms)
kill -TERM "$PID"
i=0
while kill -0 "$PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
wait "$PID" 2>/dev/null
rc=$?
dt=$(( $(now_ms) - t0 ))
PID=""
if [ "$rc" -eq 0 ] && [ "$dt" -lt 3000 ] && [ ! -e "$TMP/pid" ]; then
    ok "SIGTERM: exit 0 in ${dt} ms, pid file removed"
else
    nok "SIGTERM: exit 0 promptly, pid file removed" "exit $rc after ${dt} ms; $(tail -n 5 "$TMP/mock.log")"
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
