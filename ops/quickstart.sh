#!/bin/sh
# Installs what is needed, builds, and runs the whole chain in the
# foreground until Ctrl-C:
#
#   client -> HAProxy 127.0.0.1:8080 -> tokengate 127.0.0.1:12345 (SPOE)
#                                    -> mock LLM providers 127.0.0.1:18081/18082
#
# State goes to ./tokengate.db (SQLite, created on first start) and its
# HMAC secret ./tokengate.db.secret. Everything started here is stopped by
# its PID on exit.
set -eu
cd "$(dirname "$0")/.."
sh ops/install-deps.sh
make -s all

RUN=${TG_RUN_DIR:-$(pwd)/run}
mkdir -p "$RUN"
pids=""
cleanup() {
	trap - EXIT INT TERM
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$p" 2>/dev/null || true
	done
	echo "stopped."
}
trap cleanup EXIT INT TERM

wait_port() { # HOST PORT NAME
	i=0
	until /usr/bin/python3 -c "import socket; socket.create_connection(('$1', $2), 0.2)" 2>/dev/null; do
		i=$((i + 1))
		[ $i -lt 100 ] || { echo "$3 did not start on $1:$2" >&2; exit 1; }
		sleep 0.1
	done
}

/usr/bin/python3 tests/mock_provider.py --port 18081 --name primary --quiet &
pids="$pids $!"
/usr/bin/python3 tests/mock_provider.py --port 18082 --name secondary --quiet &
pids="$pids $!"
build/tokengate --listen 127.0.0.1:12345 --db tokengate.db &
pids="$pids $!"
wait_port 127.0.0.1 18081 "mock provider"
wait_port 127.0.0.1 12345 tokengate
# The demo plays the authentication layer in front: curl sets X-User.
TG_TRUST_X_USER=yes TG_RUN_DIR=$RUN haproxy -f haproxy-conf/haproxy.cfg -db &
pids="$pids $!"
wait_port 127.0.0.1 8080 haproxy

cat <<'MSG'

tokengate is running behind HAProxy on http://127.0.0.1:8080 (Ctrl-C stops everything).
Try, from another terminal:

  curl -si http://127.0.0.1:8080/v1/chat/completions -H 'x-user: alice' \
       -H 'content-type: application/json' \
       -d '{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"Hello"}]}'

  sqlite3 tokengate.db 'SELECT * FROM usage_today'
  sqlite3 -cmd '.timeout 5000' tokengate.db "INSERT INTO user_limits(user_id, daily_tokens) VALUES ('alice', 60)"   # then curl again: 429
  build/tokengate key create --user bob --db tokengate.db   # prints an API key for "Authorization: Bearer ..."
  curl -s http://127.0.0.1:9121/metrics | grep tokengate_decisions

MSG
wait
