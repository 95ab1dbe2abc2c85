#!/usr/bin/env bash
# deploy/stack/up.sh: `make up`. Installs what is missing, starts private
# PostgreSQL, Redis and ClickHouse under .run/data, applies migrations,
# creates the demo account, builds and starts Caddy on GUARDIAN_HTTP_PORT
# (default 8080). Running it again reuses the servers and reloads Caddy's
# config; it restarts Caddy when its binary changed, and the local OpenID
# provider always.
#
# GUARDIAN_RUN_DIR (default .run) holds the data, settings and logs;
# GUARDIAN_HTTP_PORT, PG_PORT, REDIS_PORT, CH_TCP_PORT and CH_HTTP_PORT
# move the ports (the servers' ports only on their first start), and
# DEV_OIDC_PORT the local OpenID provider's.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
run=${GUARDIAN_RUN_DIR:-$root/.run}
data=$run/data
bin=$root/bin
port=${GUARDIAN_HTTP_PORT:-8080}
metrics_port=${GUARDIAN_METRICS_PORT:-19180}

# shellcheck source=deploy/stack/gocheck.sh
. deploy/stack/gocheck.sh
need_go
deploy/stack/deps.sh
mkdir -p "$run" "$data"
# One `make up` or `make down` of a run dir at a time: two at once would
# race for stack.env's first secrets and for each other's pid files. The
# lock lies beside the run dir, which `make clean` removes. What starts a
# daemon gets 7>&- so that no server keeps the lock.
exec 7>>"${run%/}.lock"
if ! flock -n 7; then
	echo "waiting for another make up or make down of $run" >&2
	flock -w 900 7 || { echo "${run%/}.lock held for 15 minutes; is another make up stuck?" >&2; exit 1; }
fi

# Fixed private ports so that stack.env stays the same from one `make up`
# to the next: none is a default port, and all are below both the kernel's
# ephemeral range (32768-60999), where an outgoing connection's local port
# may take them, and the 20000 and up where servers.sh and the tests pick.
PG_PORT=${PG_PORT:-15432} REDIS_PORT=${REDIS_PORT:-16379} \
	CH_TCP_PORT=${CH_TCP_PORT:-19000} CH_HTTP_PORT=${CH_HTTP_PORT:-18123} \
	deploy/stack/servers.sh start "$data" 7>&-

# stack.env: the servers' settings plus the edge's secrets and the demo
# login, generated once and kept, so sessions and keys survive a restart.
env_file=$run/stack.env
secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
old() { if [[ -f $env_file ]]; then sed -n "s/^$1=//p" "$env_file" | head -n1; fi; }
pepper=$(old GUARDIAN_KEY_PEPPER); pepper=${pepper:-$(secret)}
session=$(old GUARDIAN_SESSION_SECRET); session=${session:-$(secret)}
mfa=$(old GUARDIAN_MFA_SECRET); mfa=${mfa:-$(secret)}
demo_password=$(old GUARDIAN_DEMO_PASSWORD); demo_password=${demo_password:-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')}
# A local OpenID provider stands in for Google (cmd/dev-oidc).
oidc_port=${DEV_OIDC_PORT:-15556}
oidc_secret=$(old GUARDIAN_OIDC_CLIENT_SECRET); oidc_secret=${oidc_secret:-$(secret)}
umask 077
{
	cat "$data/servers.env"
	echo "GUARDIAN_URL=http://localhost:$port"
	echo "GUARDIAN_HTTP_PORT=$port"
	echo "GUARDIAN_METRICS_PORT=$metrics_port"
	echo "GUARDIAN_LISTEN=loopback"
	echo "GUARDIAN_BIN_DIR=$bin"
	echo "GUARDIAN_WEB_DIR=$root/web"
	echo "GUARDIAN_RUN_DIR=$run"
	echo "GUARDIAN_ADMIN_ADDR=unix/$run/caddy-admin.sock"
	echo "GUARDIAN_KEY_PEPPER=$pepper"
	echo "GUARDIAN_SESSION_SECRET=$session"
	echo "GUARDIAN_MFA_SECRET=$mfa"
	echo "GUARDIAN_DEMO_EMAIL=demo@guardian.localhost"
	echo "GUARDIAN_DEMO_PASSWORD=$demo_password"
	echo "GUARDIAN_OIDC_ISSUER=http://127.0.0.1:$oidc_port/oidc"
	echo "GUARDIAN_OIDC_CLIENT_ID=guardian-dev"
	echo "GUARDIAN_OIDC_CLIENT_SECRET=$oidc_secret"
} >"$env_file.tmp"
chmod 600 "$env_file.tmp"
mv "$env_file.tmp" "$env_file"
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a

make --no-print-directory build
"$bin/guardianctl" migrate
"$bin/guardianctl" demo-account

# shellcheck source=deploy/stack/pidfile.sh
. deploy/stack/pidfile.sh

# port_free NAME PORT VAR: fail unless PORT is free for NAME to listen on.
# ss, or a connection to it where ss cannot tell (no netlink, no ss).
port_free() {
	if [[ -n $(ss -Hltn "sport = :$2" 2>/dev/null) ]] || (: <"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
		echo "$1: port $2 is in use by another process (see: ss -ltnp 'sport = :$2'); stop it, or set $3 to another port" >&2
		exit 1
	fi
}

# wait_ready NAME PID URL LOG: wait until URL answers on 127.0.0.1, where both
# listen, while PID lives; its port was free or its own, so the answer is
# from PID.
wait_ready() {
	local end=$((SECONDS + 20))
	while ((SECONDS < end)); do
		if ! kill -0 "$2" 2>/dev/null; then
			echo "$1 failed to start; last lines of $4:" >&2
			tail -n 20 "$4" >&2
			exit 1
		fi
		if curl -fsS --max-time 2 -o /dev/null "$3" 2>/dev/null && kill -0 "$2" 2>/dev/null; then
			return 0
		fi
		sleep 0.2
	done
	echo "$1: $3 did not answer within 20 s; see $4" >&2
	exit 1
}

# The local OpenID provider (its client secret comes from the environment),
# restarted at each run: it keeps nothing worth keeping, and so runs the
# binary just built with this run's settings.
go build -o "$bin/dev-oidc" ./cmd/dev-oidc
if ours "$run/dev-oidc.pid" "$bin/dev-oidc"; then
	stop_ours "$run/dev-oidc.pid" dev-oidc
fi
port_free dev-oidc "$oidc_port" DEV_OIDC_PORT
nohup "$bin/dev-oidc" -addr "127.0.0.1:$oidc_port" -client-id "$GUARDIAN_OIDC_CLIENT_ID" \
	-redirect "$GUARDIAN_URL/auth/google/callback" -email "$GUARDIAN_DEMO_EMAIL" -name Demo \
	>>"$run/dev-oidc.log" 2>&1 </dev/null 7>&- &
echo $! >"$run/dev-oidc.pid"
wait_ready dev-oidc $! "http://127.0.0.1:$oidc_port/oidc/.well-known/openid-configuration" "$run/dev-oidc.log"

# A running Caddy reloads the config, unless `make build` replaced its
# binary (then it is restarted, to run the new modules) or the settings it
# started with changed (a reload keeps its environment, which functions
# take theirs from: a moved dev-oidc port would leave oidc asking the old).
pidfile=$run/caddy.pid
if ours "$pidfile" "--pidfile $pidfile"; then
	if [[ ! /proc/$(cat "$pidfile")/exe -ef $bin/caddy ]]; then
		echo "caddy: $bin/caddy was rebuilt; restarting" >&2
		stop_ours "$pidfile" caddy
	elif ! cmp -s "$env_file" "$run/caddy-started.env"; then
		echo "caddy: $env_file changed since it started; restarting" >&2
		stop_ours "$pidfile" caddy
	fi
fi
if ours "$pidfile" "--pidfile $pidfile"; then
	echo "caddy: already running (pid $(cat "$pidfile")); reloading config" >&2
	"$bin/caddy" reload --config Caddyfile --adapter caddyfile --address "$GUARDIAN_ADMIN_ADDR" >/dev/null
	caddy_pid=$(cat "$pidfile")
else
	rm -f "$pidfile"
	port_free caddy "$port" GUARDIAN_HTTP_PORT
	port_free "caddy's metrics" "$metrics_port" GUARDIAN_METRICS_PORT
	cp "$env_file" "$run/caddy-started.env"
	XDG_CONFIG_HOME=$run/caddy XDG_DATA_HOME=$run/caddy nohup "$bin/caddy" run --config Caddyfile --adapter caddyfile --pidfile "$pidfile" \
		>>"$run/caddy.log" 2>&1 </dev/null 7>&- &
	caddy_pid=$!
fi
wait_ready caddy "$caddy_pid" "http://127.0.0.1:$port/healthz" "$run/caddy.log"

cat <<MSG

Guardian is up: http://localhost:$port
  demo login: $GUARDIAN_DEMO_EMAIL / $GUARDIAN_DEMO_PASSWORD
  settings:   $env_file
  logs:       $run/caddy.log
  metrics:    http://127.0.0.1:$metrics_port/metrics
Stop with 'make down' (keeps data); 'make clean' removes it.
MSG
