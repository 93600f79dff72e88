#!/bin/sh
# Installs what tokengate needs to build, run and test on Debian 12, with
# apt-get. Runs apt-get only when something is missing; uses sudo when not
# root. Idempotent.
set -eu
PKGS="build-essential clang pkg-config libev-dev libsqlite3-dev sqlite3 libssl-dev openssl
libcjson-dev libcmocka-dev haproxy python3 curl tzdata redis-server redis-tools wrk procps prometheus socat valgrind
e2fsprogs mount"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# libFuzzer's runtime comes with clang's compiler-rt on Debian 12.
dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep -q "install ok installed" ||
	missing="$missing libclang-rt-14-dev"
# HAProxy sends one log line per request to the agent over a unix datagram
# socket; the kernel's default queue of 10 datagrams (machines without
# systemd, containers) drops lines under load. systemd raises it to 512.
q=$(cat /proc/sys/net/unix/max_dgram_qlen 2>/dev/null || echo 512)
if [ "$q" -lt 512 ]; then
	SUDO_Q=""
	[ "$(id -u)" -eq 0 ] || SUDO_Q=sudo
	if $SUDO_Q sh -c 'echo 512 > /proc/sys/net/unix/max_dgram_qlen' 2>/dev/null; then
		echo "net.unix.max_dgram_qlen raised from $q to 512 (as systemd sets it)"
	else
		echo "warning: net.unix.max_dgram_qlen is $q; raise it to 512 or HAProxy's log lines to the agent may be dropped" >&2
	fi
fi

# Node.js for the OpenAI SDK test: Debian's (18) when none is installed; a
# newer one already there (e.g. 20) is kept.
command -v node >/dev/null 2>&1 || missing="$missing nodejs npm"
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing:$missing"
$SUDO apt-get update -q
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
# Debian starts these services on install; tokengate's tests start their own.
for svc in haproxy redis-server; do
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$svc" 2>/dev/null; then
		$SUDO systemctl stop "$svc" || true
	fi
done
