#!/usr/bin/env bash
# deploy/stack/down.sh: `make down` stops what `make up` started (Caddy, its
# functions, and the private servers) and keeps the data. With "clean" it
# also deletes the data.
set -euo pipefail
cd "$(dirname "$0")/../.."
run=${GUARDIAN_RUN_DIR:-$PWD/.run}
pidfile=$run/caddy.pid
if [[ -d $run ]]; then # as up.sh: one at a time
	exec 7>>"${run%/}.lock"
	flock -w 900 7 || { echo "${run%/}.lock held for 15 minutes; is a make up stuck?" >&2; exit 1; }
fi

# shellcheck source=deploy/stack/pidfile.sh
. deploy/stack/pidfile.sh

if ours "$pidfile" "--pidfile $pidfile"; then
	stop_ours "$pidfile" caddy
	echo "caddy: stopped" >&2
fi
rm -f "$pidfile"

if ours "$run/dev-oidc.pid" "$PWD/bin/dev-oidc"; then
	stop_ours "$run/dev-oidc.pid" dev-oidc
	echo "dev-oidc: stopped" >&2
fi
rm -f "$run/dev-oidc.pid"

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
