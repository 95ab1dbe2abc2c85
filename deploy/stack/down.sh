#!/usr/bin/env bash
# deploy/stack/down.sh: `make down` stops what `make up` started (Caddy, its
# functions, and the private servers) and keeps the data. With "clean" it
# also deletes the data.
set -euo pipefail
cd "$(dirname "$0")/../.."
run=${GUARDIAN_RUN_DIR:-$PWD/.run}
pidfile=$run/caddy.pid

# shellcheck source=deploy/stack/pidfile.sh
. deploy/stack/pidfile.sh

if [[ -f $pidfile ]]; then
	pid=$(cat "$pidfile")
	if ours "$pidfile" "--pidfile $pidfile"; then
		# SIGTERM: Caddy stops its functions before it exits.
		kill -TERM "$pid"
		for _ in $(seq 1 150); do
			[[ -d /proc/$pid ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
			echo "caddy: still running after 15 s, killing" >&2
			kill -KILL "$pid" || true
		fi
		echo "caddy: stopped" >&2
	fi
	rm -f "$pidfile"
fi

if [[ -f $run/dev-oidc.pid ]]; then
	if ours "$run/dev-oidc.pid" "$PWD/bin/dev-oidc"; then
		kill "$(cat "$run/dev-oidc.pid")" 2>/dev/null || true
		echo "dev-oidc: stopped" >&2
	fi
	rm -f "$run/dev-oidc.pid"
fi

if [[ -d $run/data ]]; then
	if [[ ${1:-} == clean ]]; then
		deploy/stack/servers.sh destroy "$run/data"
	else
		deploy/stack/servers.sh stop "$run/data"
	fi
fi
if [[ ${1:-} == clean ]]; then
	rm -rf "$run"
	echo "removed $run" >&2
fi
