#!/usr/bin/env bash
# deploy/stack/servers.sh: private PostgreSQL, Redis and ClickHouse instances for
# Guardian development and tests. It never touches the system services or default ports.
#
# Usage: deploy/stack/servers.sh <start|stop|status|env|destroy> <dir> [service...]
#   service: postgres | redis | clickhouse   (default: all three)
#
#   start    Start the named services of <dir> (created if missing). Idempotent: a
#            service of this dir that is alive and answering is reused. A stale pid file
#            is cleaned up. Services start in parallel. On success <dir>/servers.env (0600)
#            is written or updated. Lines for services that were not named are kept.
#   stop     Stop the named services of <dir> and wait until their processes are gone
#            (SIGKILL after a bounded wait). Data is kept. Stopping a stopped service is fine.
#   status   One line per service on stdout. Exit 0 if all named services run and answer, else 3.
#   env      Print <dir>/servers.env.
#   destroy  Stop, then delete the service data (including the /var/tmp PostgreSQL dir, see below),
#            servers.env included.
#
# Layout: <dir>/servers.env, <dir>/.lock (flock: calls on one dir are serialised),
#   <dir>/postgres/{data/,postgres.log,guardian.conf is in data/, unix socket .s.PGSQL.<port>}
#   <dir>/redis/{redis.conf,redis.pid,redis.log}
#   <dir>/clickhouse/{config.xml,users.xml,clickhouse.pid,*.log,data/}
# When run as root, PostgreSQL runs as the `postgres` user. If that user cannot traverse
# <dir> (for example under /root or in a mktemp -d dir with mode 0700), or if the socket path
# would be too long, the data lives in /var/tmp/guardian-pg-<hash of dir> and <dir>/postgres
# is a symlink to it. `destroy` removes it. A plain `rm -rf <dir>` does not: the next
# `start` of the same path cleans it up.
#
# Ports: PG_PORT, REDIS_PORT, CH_TCP_PORT, CH_HTTP_PORT. The ports recorded in
# <dir>/servers.env always win. The environment variables are only used when the dir has no
# port recorded for that service yet (its first start). Unset ones are picked at random
# among free loopback ports in 20000-60000, outside the kernel's ephemeral range.
# Everything listens on 127.0.0.1 only.
#
# Other environment variables:
#   GUARDIAN_STACK_MODE=test       PostgreSQL with fsync/synchronous_commit/full_page_writes off
#                                  (applied at each start, because guardian.conf is regenerated)
#   PG_BINDIR                      PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
#   GUARDIAN_STACK_START_TIMEOUT   seconds to wait for each service (default 30)
#   GUARDIAN_STACK_LOCK_TIMEOUT    seconds to wait for <dir>/.lock (default 300)
#
# servers.env keys: PG_PORT REDIS_PORT CH_TCP_PORT CH_HTTP_PORT
#   GUARDIAN_PG_DSN GUARDIAN_PG_APP_DSN GUARDIAN_PG_OWNER_PASSWORD GUARDIAN_PG_APP_PASSWORD
#   GUARDIAN_PG_SOCKET_DIR GUARDIAN_REDIS_ADDR GUARDIAN_REDIS_PASSWORD GUARDIAN_REDIS_SOCKET (when the
#   path fits a unix socket address) GUARDIAN_CLICKHOUSE_ADDR
#   GUARDIAN_CLICKHOUSE_HTTP_URL GUARDIAN_CLICKHOUSE_USER GUARDIAN_CLICKHOUSE_PASSWORD
#   GUARDIAN_CLICKHOUSE_DATABASE GUARDIAN_CLICKHOUSE_DEFAULT_PASSWORD
#   and per function of PG_FUNCTIONS: GUARDIAN_PG_DSN_<NAME> GUARDIAN_PG_<NAME>_PASSWORD
# Values contain no quotes or spaces, so `set -a; . <dir>/servers.env; set +a` works.
# Do not delete servers.env while services run: the passwords are only kept there.
set -euo pipefail

readonly ALL_SERVICES=(postgres redis clickhouse)
# Functions and jobs with a PostgreSQL role of their own (guardian_app_<name>;
# the grants are migrations' work, shared/migrate.FunctionRoles the same list).
readonly PG_FUNCTIONS=(auth mfa oidc keys servers sessions audit ingest secretscan healthz audit_verify retention_sweep account_purge)
readonly KNOWN_KEYS=(
	PG_PORT REDIS_PORT CH_TCP_PORT CH_HTTP_PORT
	GUARDIAN_PG_DSN GUARDIAN_PG_APP_DSN GUARDIAN_PG_OWNER_PASSWORD GUARDIAN_PG_APP_PASSWORD
	GUARDIAN_PG_SOCKET_DIR
	GUARDIAN_REDIS_ADDR GUARDIAN_REDIS_PASSWORD GUARDIAN_REDIS_SOCKET
	GUARDIAN_CLICKHOUSE_ADDR GUARDIAN_CLICKHOUSE_HTTP_URL GUARDIAN_CLICKHOUSE_USER
	GUARDIAN_CLICKHOUSE_PASSWORD GUARDIAN_CLICKHOUSE_DATABASE GUARDIAN_CLICKHOUSE_DEFAULT_PASSWORD
)
START_TIMEOUT=${GUARDIAN_STACK_START_TIMEOUT:-30}
LOCK_TIMEOUT=${GUARDIAN_STACK_LOCK_TIMEOUT:-300}

log() { printf '%s\n' "$*" >&2; }
die() {
	log "servers.sh: $*"
	exit 1
}

usage() {
	cat >&2 <<'EOF'
usage: servers.sh <start|stop|status|env|destroy> <dir> [postgres|redis|clickhouse ...]
  Ports come from PG_PORT, REDIS_PORT, CH_TCP_PORT and CH_HTTP_PORT on a dir's first start
  (random free ports if unset). After that, <dir>/servers.env is authoritative.
  GUARDIAN_STACK_MODE=test turns off PostgreSQL durability (fsync etc.) to make it faster.
EOF
	exit "${1:-2}"
}

# ---------------------------------------------------------------- small helpers

now_ms() {
	local t=${EPOCHREALTIME//[!0-9]/}
	printf '%s' "$((10#$t / 1000))"
}

# pid_alive PID: the process exists and is not a zombie. The daemons are reparented to PID 1,
# which in a container may never reap them.
pid_alive() {
	local pid=$1 line rest
	[[ $pid =~ ^[1-9][0-9]*$ ]] || return 1
	IFS= read -r line 2>/dev/null <"/proc/$pid/stat" || return 1
	rest=${line##*) }
	rest=${rest%% *}
	[[ $rest != Z && $rest != X ]]
}

read_pidfile() {
	local f=$1 p=""
	[[ -r $f ]] || return 1
	IFS= read -r p <"$f" || true
	[[ $p =~ ^[1-9][0-9]*$ ]] || return 1
	printf '%s' "$p"
}

proc_cwd_is() { [[ $(readlink "/proc/$1/cwd" 2>/dev/null) == "$2" ]]; }

proc_cmdline_has() {
	local cmd
	cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
	[[ $cmd == *"$2"* ]]
}

# wait_for TIMEOUT_S READY_FN [ARGS...]: poll READY_FN every 100 ms. Set ABORT_FN to a function
# that returns 0 when waiting is pointless (the process died).
ABORT_FN=""
wait_for() {
	local timeout=$1 deadline
	shift
	deadline=$(($(now_ms) + timeout * 1000))
	while :; do
		"$@" && return 0
		if [[ -n $ABORT_FN ]] && "$ABORT_FN"; then return 1; fi
		(($(now_ms) < deadline)) || return 1
		sleep 0.1
	done
}

# stop_pid NAME PID TIMEOUT_S: wait until PID is gone (after the caller asked it to stop). If it is
# still there after TIMEOUT_S, SIGKILL it and its direct children.
wait_gone() {
	local pid=$1 timeout=$2 deadline
	deadline=$(($(now_ms) + timeout * 1000))
	while pid_alive "$pid"; do
		(($(now_ms) < deadline)) || return 1
		sleep 0.1
	done
}
stop_pid() {
	local name=$1 pid=$2 timeout=$3
	if ! wait_gone "$pid" "$timeout"; then
		log "$name: pid $pid still alive after ${timeout}s, sending SIGKILL"
		pkill -KILL -P "$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" 10 || die "$name: pid $pid survives SIGKILL"
	fi
}

port_listening() {
	local p=$1
	if command -v ss >/dev/null 2>&1; then
		[[ -n $(ss -Hltn "sport = :$p" 2>/dev/null) ]]
	else
		(: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null
	fi
}

valid_port() { [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] && (($1 <= 65535)); }

# pick_port: set PICKED to a random free port not in USED_PORTS, and add it there.
USED_PORTS=" "
PICKED=""
pick_port() {
	local lo=20000 hi=60000 elo ehi span p i
	if read -r elo ehi 2>/dev/null </proc/sys/net/ipv4/ip_local_port_range; then
		if ((elo - lo >= 5000)); then
			hi=$((elo - 1))
		elif ((hi - ehi >= 5000)); then
			lo=$((ehi + 1))
		fi
	fi
	span=$((hi - lo + 1))
	for ((i = 0; i < 500; i++)); do
		p=$((lo + ((RANDOM << 15) | RANDOM) % span))
		[[ $USED_PORTS == *" $p "* ]] && continue
		port_listening "$p" && continue
		USED_PORTS+="$p "
		PICKED=$p
		return 0
	done
	die "no free port found in $lo-$hi"
}

gen_secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# as_pg CMD...: run as the postgres user when we are root (initdb/postgres refuse root).
as_pg() {
	if ((EUID == 0)); then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

find_pgbin() {
	local d
	if [[ -n ${PG_BINDIR:-} ]]; then
		PGBIN=$PG_BINDIR
	else
		PGBIN=""
		for d in /usr/lib/postgresql/*/bin; do
			[[ -x $d/initdb ]] && PGBIN=$d # glob sorts ascending: the last one is the newest
		done
		if [[ -z $PGBIN ]] && command -v initdb >/dev/null 2>&1; then
			PGBIN=$(dirname "$(command -v initdb)")
		fi
	fi
	[[ -n $PGBIN && -x $PGBIN/pg_ctl ]] || die "PostgreSQL server binaries not found (set PG_BINDIR)"
}

# ---------------------------------------------------------------- servers.env

declare -A ENVV=()
ENV_ORDER=()

set_env() {
	[[ -v "ENVV[$1]" ]] || ENV_ORDER+=("$1")
	ENVV[$1]=$2
}

load_kv() {
	local line k
	[[ -f $1 ]] || return 0
	while IFS= read -r line || [[ -n $line ]]; do
		[[ $line == *=* && $line != \#* ]] || continue
		k=${line%%=*}
		[[ $k =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
		set_env "$k" "${line#*=}"
	done <"$1"
}

save_env() {
	local tmp="$ENV_FILE.tmp.$$" k
	(
		umask 077
		{
			for k in "${KNOWN_KEYS[@]}"; do
				[[ -v "ENVV[$k]" ]] && printf '%s=%s\n' "$k" "${ENVV[$k]}"
			done
			for k in "${ENV_ORDER[@]}"; do
				[[ " ${KNOWN_KEYS[*]} " == *" $k "* ]] || printf '%s=%s\n' "$k" "${ENVV[$k]}"
			done
		} >"$tmp"
	)
	chmod 600 "$tmp"
	mv -f "$tmp" "$ENV_FILE"
}

ensure_secret() { [[ -n ${ENVV[$1]:-} ]] || set_env "$1" "$(gen_secret)"; }

# resolve_port KEY: PORT[KEY] from servers.env, else from the environment, else a random one.
# AUTO[KEY]=1 when random (and so may be re-picked if another process grabs it first).
declare -A PORT=() AUTO=()
resolve_port() {
	local key=$1 v
	v=${ENVV[$key]:-}
	if [[ -n $v ]]; then
		valid_port "$v" || die "$ENV_FILE: bad $key=$v"
		if [[ -n ${!key:-} && ${!key} != "$v" ]]; then
			log "note: $key=${!key} ignored: $DIR already uses $key=$v (see servers.env)"
		fi
		PORT[$key]=$v AUTO[$key]=0
	elif [[ -n ${!key:-} ]]; then
		valid_port "${!key}" || die "bad $key=${!key}"
		PORT[$key]=${!key} AUTO[$key]=0
		USED_PORTS+="${!key} "
	else
		pick_port
		PORT[$key]=$PICKED AUTO[$key]=1
	fi
}

# port_conflict KEY: the port of KEY is busy. Re-pick it if it was random (returns 0), else fail.
port_conflict() {
	local key=$1 svc=$2
	if [[ ${AUTO[$key]} == 1 ]]; then
		pick_port
		log "$svc: port ${PORT[$key]} was taken meanwhile, retrying on $PICKED"
		PORT[$key]=$PICKED
		return 0
	fi
	die "$svc: $key=${PORT[$key]} is already in use by another process (change it in $ENV_FILE or the environment)"
}

tail_log() {
	local f
	for f in "$@"; do
		[[ -s $f ]] || continue
		log "---- tail of $f"
		tail -n 25 "$f" >&2 || true
	done
}

# ---------------------------------------------------------------- postgres

# pg_locate: PG_SVC=<dir>/postgres and PG_REAL=its physical path ("" if absent).
pg_locate() {
	PG_SVC=$DIR/postgres
	PG_REAL=""
	if [[ -d $PG_SVC ]]; then
		PG_REAL=$(cd "$PG_SVC" && pwd -P)
	fi
}

pg_reloc_path() {
	local h
	h=$(printf '%s' "$DIR" | sha256sum)
	printf '/var/tmp/guardian-pg-%s' "${h:0:12}"
}

pg_pid() {
	local pid
	[[ -n $PG_REAL ]] || return 1
	pid=$(read_pidfile "$PG_REAL/data/postmaster.pid") || return 1
	pid_alive "$pid" && proc_cwd_is "$pid" "$PG_REAL/data" || return 1
	printf '%s' "$pid"
}

pg_pid_port() { sed -n 4p "$PG_REAL/data/postmaster.pid" 2>/dev/null; }

pg_answering() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2 >/dev/null 2>&1; }

# pg_stop_dir REALDIR MODE: stop a postmaster running on REALDIR/data.
pg_stop_dir() {
	local real=$1 mode=$2 pid
	pid=$(read_pidfile "$real/data/postmaster.pid") || return 0
	pid_alive "$pid" && proc_cwd_is "$pid" "$real/data" || return 0
	as_pg "$PGBIN/pg_ctl" stop -D "$real/data" -m "$mode" -w -t 30 -s >/dev/null 9>&- ||
		log "postgres: pg_ctl stop failed"
	stop_pid postgres "$pid" 10
}

pg_prepare() {
	local reloc need_reloc=0
	pg_locate
	[[ -n $PG_REAL ]] && return 0
	if [[ -L $PG_SVC ]]; then
		log "postgres: removing dangling symlink $PG_SVC"
		rm -f "$PG_SVC"
	fi
	# The socket path <dir>/postgres/.s.PGSQL.NNNNN must fit in sun_path (107 bytes).
	((${#DIR} + 25 <= 100)) || need_reloc=1
	if ((EUID == 0)) && ! runuser -u postgres -- test -x "$DIR" 2>/dev/null; then
		need_reloc=1
	fi
	if ((need_reloc)); then
		reloc=$(pg_reloc_path)
		if [[ -e $reloc || -L $reloc ]]; then
			# Left over from an earlier <dir> of the same path that was
			# deleted, if it is ours: the name is predictable, and another
			# user of the host could have made it, with a postmaster.pid
			# naming a process pg_ctl would then signal.
			local owner want
			want=$(id -un)
			((EUID != 0)) || want=postgres
			owner=$(stat -c %U -- "$reloc" 2>/dev/null || echo '?')
			if [[ -L $reloc || $owner != "$want" ]]; then
				die "postgres: $reloc is not ours (a link, or owned by $owner, not $want); remove it and start again"
			fi
			log "postgres: removing stale $reloc"
			pg_stop_dir "$reloc" immediate
			rm -rf -- "$reloc"
		fi
		mkdir -m 0700 -- "$reloc"
		((EUID != 0)) || chown postgres:postgres "$reloc"
		ln -s -- "$reloc" "$PG_SVC"
		log "postgres: data in $reloc ($PG_SVC is a symlink)"
	else
		mkdir -m 0700 -- "$PG_SVC"
		((EUID != 0)) || chown postgres:postgres "$PG_SVC"
	fi
	pg_locate
}

pg_write_conf() {
	local port=$1 f=$PG_REAL/data/guardian.conf
	{
		echo "# Written by deploy/stack/servers.sh at each start: edits are lost."
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$PG_REAL'"
		echo "max_connections = 200"
		if [[ ${GUARDIAN_STACK_MODE:-} == test ]]; then
			echo "fsync = off"
			echo "synchronous_commit = off"
			echo "full_page_writes = off"
		fi
	} >"$f"
	((EUID != 0)) || chown postgres:postgres "$f"
}

pg_setup_sql() {
	local port=$1 fn fn_roles=""
	for fn in "${PG_FUNCTIONS[@]}"; do
		fn_roles+="SELECT 'CREATE ROLE guardian_app_$fn' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'guardian_app_$fn') \\gexec
ALTER ROLE guardian_app_$fn WITH LOGIN PASSWORD '${ENVV[GUARDIAN_PG_${fn^^}_PASSWORD]}';
"
	done
	as_pg "$PGBIN/psql" -X -q -h "$PG_REAL" -p "$port" -U postgres -d postgres >/dev/null 9>&- <<EOF
\\set ON_ERROR_STOP on
\\set owner_pw '${ENVV[GUARDIAN_PG_OWNER_PASSWORD]}'
\\set app_pw '${ENVV[GUARDIAN_PG_APP_PASSWORD]}'
SELECT 'CREATE ROLE guardian_owner' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'guardian_owner') \\gexec
ALTER ROLE guardian_owner WITH LOGIN CREATEDB PASSWORD :'owner_pw';
SELECT 'CREATE ROLE guardian_app' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'guardian_app') \\gexec
ALTER ROLE guardian_app WITH LOGIN PASSWORD :'app_pw';
${fn_roles}SELECT 'CREATE DATABASE guardian OWNER guardian_owner' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'guardian') \\gexec
\\connect guardian
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO guardian_owner;
EOF
}

pg_emit() {
	local port=$1 own=${ENVV[GUARDIAN_PG_OWNER_PASSWORD]} app=${ENVV[GUARDIAN_PG_APP_PASSWORD]} fn pw
	printf '%s\n' "PG_PORT=$port" \
		"GUARDIAN_PG_DSN=postgres://guardian_owner:$own@127.0.0.1:$port/guardian?sslmode=disable" \
		"GUARDIAN_PG_APP_DSN=postgres://guardian_app:$app@127.0.0.1:$port/guardian?sslmode=disable" \
		"GUARDIAN_PG_OWNER_PASSWORD=$own" "GUARDIAN_PG_APP_PASSWORD=$app" \
		"GUARDIAN_PG_SOCKET_DIR=$PG_REAL"
	for fn in "${PG_FUNCTIONS[@]}"; do
		pw=${ENVV[GUARDIAN_PG_${fn^^}_PASSWORD]}
		printf '%s\n' "GUARDIAN_PG_DSN_${fn^^}=postgres://guardian_app_$fn:$pw@127.0.0.1:$port/guardian?sslmode=disable" \
			"GUARDIAN_PG_${fn^^}_PASSWORD=$pw"
	done
}

pg_dead() {
	local pid
	pid=$(read_pidfile "$PG_REAL/data/postmaster.pid") || return 1
	! pid_alive "$pid"
}

# pg_clear_stale DATA: after a crash (kill -9), remove postmaster.pid and socket locks ourselves: the dead postmaster
# may be an unreaped zombie, which pg_ctl/postgres take for a live one. Wait for orphaned backends
# (their cwd is DATA too) to exit first, or postgres refuses the still attached shared memory.
pg_clear_stale() {
	local data=$1 pid p deadline busy lock
	for lock in "$PG_REAL"/.s.PGSQL.*.lock; do # the socket lock files hold the pid as well
		[[ -f $lock ]] || continue
		pid=$(read_pidfile "$lock") || pid=""
		if [[ -z $pid ]] || ! pid_alive "$pid"; then
			rm -f -- "$lock" "${lock%.lock}"
		fi
	done
	[[ -f $data/postmaster.pid ]] || return 0
	pid=$(read_pidfile "$data/postmaster.pid") || pid=""
	if [[ -n $pid ]] && pid_alive "$pid" && proc_cwd_is "$pid" "$data"; then
		return 0
	fi
	log "postgres: removing stale postmaster.pid (pid ${pid:-?} is gone)"
	deadline=$(($(now_ms) + 15000))
	while :; do
		busy=""
		for p in /proc/[0-9]*; do
			p=${p#/proc/}
			proc_cwd_is "$p" "$data" && pid_alive "$p" && busy+=" $p"
		done
		[[ -n $busy ]] || break
		(($(now_ms) < deadline)) || die "postgres: leftover processes still use $data:$busy"
		sleep 0.1
	done
	rm -f -- "$data/postmaster.pid"
}

svc_start_postgres() {
	local data logf pid port attempt
	pg_prepare
	data=$PG_REAL/data
	logf=$PG_REAL/postgres.log
	if pid=$(pg_pid); then
		port=$(pg_pid_port)
		ABORT_FN=pg_dead
		wait_for "$START_TIMEOUT" pg_answering "$port" ||
			die "postgres: pid $pid is alive but does not answer on 127.0.0.1:$port (see $logf)"
		log "postgres: already running on 127.0.0.1:$port (pid $pid)"
		# Roles added since it was first set up (function roles) appear too.
		pg_setup_sql "$port" || die "postgres: creating roles failed"
		pg_emit "$port"
		return 0
	fi
	pg_clear_stale "$data"
	if [[ ! -s $data/PG_VERSION ]]; then
		# initdb writes into data.new, renamed once complete: an initdb killed
		# part-way leaves no data dir, and the next start begins again.
		rm -rf -- "$data" "$data.new"
		log "postgres: initdb $data"
		if ! as_pg "$PGBIN/initdb" -D "$data.new" -U postgres -E UTF8 --locale=C.UTF-8 \
			--auth-local=trust --auth-host=scram-sha-256 >"$PG_REAL/initdb.log" 2>&1 9>&-; then
			tail_log "$PG_REAL/initdb.log"
			die "postgres: initdb failed"
		fi
		mv -- "$data.new" "$data"
	fi
	grep -q "^include_if_exists = 'guardian.conf'" "$data/postgresql.conf" ||
		printf "\ninclude_if_exists = 'guardian.conf'\n" >>"$data/postgresql.conf"
	port=${PORT[PG_PORT]}
	for attempt in 1 2 3; do
		if port_listening "$port"; then
			port_conflict PG_PORT postgres
			port=${PORT[PG_PORT]}
			continue
		fi
		pg_write_conf "$port"
		if as_pg "$PGBIN/pg_ctl" start -D "$data" -l "$logf" -w -t "$START_TIMEOUT" -s \
			</dev/null >/dev/null 9>&-; then
			break
		fi
		if ((attempt < 3)) && port_listening "$port" && [[ ${AUTO[PG_PORT]} == 1 ]]; then
			port_conflict PG_PORT postgres
			port=${PORT[PG_PORT]}
			continue
		fi
		tail_log "$logf"
		die "postgres: failed to start (log: $logf)"
	done
	pg_answering "$port" || die "postgres: not answering on 127.0.0.1:$port"
	if ! pg_setup_sql "$port"; then
		die "postgres: creating roles/database failed"
	fi
	log "postgres: started on 127.0.0.1:$port (pid $(pg_pid || echo ?))"
	pg_emit "$port"
}

svc_stop_postgres() {
	local pid
	pg_locate
	if ! pid=$(pg_pid); then
		log "postgres: not running"
		return 0
	fi
	pg_stop_dir "$PG_REAL" fast
	log "postgres: stopped (pid $pid)"
}

svc_status_postgres() {
	local pid port
	pg_locate
	if ! pid=$(pg_pid); then
		echo "postgres: stopped"
		return 3
	fi
	port=$(pg_pid_port)
	if pg_answering "$port"; then
		echo "postgres: running (pid $pid, 127.0.0.1:$port)"
	else
		echo "postgres: running (pid $pid) but not answering on 127.0.0.1:$port"
		return 3
	fi
}

# ---------------------------------------------------------------- redis

REDIS_DIR=""
redis_pid() {
	local pid
	pid=$(read_pidfile "$REDIS_DIR/redis.pid") || return 1
	pid_alive "$pid" && proc_cwd_is "$pid" "$REDIS_DIR" || return 1
	printf '%s' "$pid"
}

redis_answering() {
	[[ $(REDISCLI_AUTH=${ENVV[GUARDIAN_REDIS_PASSWORD]:-} timeout 5 redis-cli --no-auth-warning \
		-h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]
}

redis_dead() {
	local pid
	pid=$(read_pidfile "$REDIS_DIR/redis.pid") || return 1
	! pid_alive "$pid"
}

redis_emit() {
	printf '%s\n' "REDIS_PORT=$1" "GUARDIAN_REDIS_ADDR=127.0.0.1:$1" \
		"GUARDIAN_REDIS_PASSWORD=${ENVV[GUARDIAN_REDIS_PASSWORD]}"
	[[ -S $REDIS_DIR/redis.sock ]] && printf '%s\n' "GUARDIAN_REDIS_SOCKET=$REDIS_DIR/redis.sock"
	return 0
}

svc_start_redis() {
	local pid port attempt conf
	mkdir -p -- "$REDIS_DIR"
	chmod 0700 "$REDIS_DIR"
	if pid=$(redis_pid) && [[ -z ${ENVV[REDIS_PORT]:-} ]]; then
		# Started by a run cut short before it saved its settings: its port
		# is unknown, so it is started again (it keeps nothing of value).
		log "redis: pid $pid was started by a run that did not finish; restarting it"
		svc_stop_redis
	fi
	if pid=$(redis_pid); then
		port=${ENVV[REDIS_PORT]:-}
		ABORT_FN=redis_dead
		{ [[ -n $port ]] && wait_for "$START_TIMEOUT" redis_answering "$port"; } ||
			die "redis: pid $pid is alive but does not answer on 127.0.0.1:${port:-?}"
		log "redis: already running on 127.0.0.1:$port (pid $pid)"
		redis_emit "$port"
		return 0
	fi
	rm -f -- "$REDIS_DIR/redis.pid"
	conf=$REDIS_DIR/redis.conf
	port=${PORT[REDIS_PORT]}
	for attempt in 1 2 3; do
		if port_listening "$port"; then
			port_conflict REDIS_PORT redis
			port=${PORT[REDIS_PORT]}
			continue
		fi
		# A config file rather than flags: keeps the password out of the process list.
		(
			umask 077
			cat >"$conf" <<EOF
# Written by deploy/stack/servers.sh at each start: edits are lost.
port $port
bind 127.0.0.1
protected-mode yes
dir "$REDIS_DIR"
daemonize yes
pidfile "$REDIS_DIR/redis.pid"
logfile "$REDIS_DIR/redis.log"
save ""
appendonly no
requirepass ${ENVV[GUARDIAN_REDIS_PASSWORD]}
EOF
			# A unix socket too, when its path fits sun_path (108 bytes).
			if ((${#REDIS_DIR} < 90)); then
				printf '%s\n' "unixsocket \"$REDIS_DIR/redis.sock\"" "unixsocketperm 700" >>"$conf"
			fi
		)
		rm -f -- "$REDIS_DIR/redis.pid"
		redis-server "$conf" </dev/null >>"$REDIS_DIR/redis.log" 2>&1 9>&- ||
			{
				tail_log "$REDIS_DIR/redis.log"
				die "redis: redis-server failed"
			}
		ABORT_FN=redis_dead
		if wait_for "$START_TIMEOUT" redis_answering "$port"; then
			log "redis: started on 127.0.0.1:$port (pid $(redis_pid || echo ?))"
			redis_emit "$port"
			return 0
		fi
		if pid=$(redis_pid); then
			kill -TERM "$pid" 2>/dev/null || true
			stop_pid redis "$pid" 10
		fi
		if ((attempt < 3)) && [[ ${AUTO[REDIS_PORT]} == 1 ]] && port_listening "$port"; then
			port_conflict REDIS_PORT redis
			port=${PORT[REDIS_PORT]}
			continue
		fi
		tail_log "$REDIS_DIR/redis.log"
		die "redis: did not answer PING within ${START_TIMEOUT}s or exited (log: $REDIS_DIR/redis.log)"
	done
	die "redis: failed to start"
}

svc_stop_redis() {
	local pid
	if ! pid=$(redis_pid); then
		log "redis: not running"
		rm -f -- "$REDIS_DIR/redis.pid"
		return 0
	fi
	# SIGTERM: with no save points configured redis exits without writing anything.
	kill -TERM "$pid" 2>/dev/null || true
	stop_pid redis "$pid" 15
	rm -f -- "$REDIS_DIR/redis.pid"
	log "redis: stopped (pid $pid)"
}

svc_status_redis() {
	local pid port=${ENVV[REDIS_PORT]:-}
	if ! pid=$(redis_pid); then
		echo "redis: stopped"
		return 3
	fi
	if [[ -n $port ]] && redis_answering "$port"; then
		echo "redis: running (pid $pid, 127.0.0.1:$port)"
	else
		echo "redis: running (pid $pid) but not answering on 127.0.0.1:${port:-?}"
		return 3
	fi
}

# ---------------------------------------------------------------- clickhouse

CH_DIR=""
ch_pid() {
	local pid
	pid=$(read_pidfile "$CH_DIR/clickhouse.pid") || return 1
	pid_alive "$pid" && proc_cmdline_has "$pid" "--config-file=$CH_DIR/config.xml" || return 1
	printf '%s' "$pid"
}

ch_answering() { [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$1/ping" 2>/dev/null) == "Ok." ]]; }

# ch_dead: no clickhouse-server of this dir is alive. The daemon has forked when the launcher
# returns, but may die before it writes its pid file: look for its command line as well.
ch_dead() {
	local pid f
	if pid=$(read_pidfile "$CH_DIR/clickhouse.pid"); then
		if pid_alive "$pid"; then return 1; fi
		return 0
	fi
	while IFS= read -r f; do
		f=${f#/proc/}
		if pid_alive "${f%/cmdline}"; then return 1; fi
	done < <(grep -laF -- "--config-file=$CH_DIR/config.xml" /proc/[0-9]*/cmdline 2>/dev/null)
	return 0
}

ch_emit() {
	printf '%s\n' "CH_TCP_PORT=$1" "CH_HTTP_PORT=$2" \
		"GUARDIAN_CLICKHOUSE_ADDR=127.0.0.1:$1" "GUARDIAN_CLICKHOUSE_HTTP_URL=http://127.0.0.1:$2" \
		"GUARDIAN_CLICKHOUSE_USER=guardian" \
		"GUARDIAN_CLICKHOUSE_PASSWORD=${ENVV[GUARDIAN_CLICKHOUSE_PASSWORD]}" \
		"GUARDIAN_CLICKHOUSE_DATABASE=guardian" \
		"GUARDIAN_CLICKHOUSE_DEFAULT_PASSWORD=${ENVV[GUARDIAN_CLICKHOUSE_DEFAULT_PASSWORD]}"
}

ch_write_conf() {
	local tcp=$1 http=$2 default_sha guardian_sha
	default_sha=$(printf '%s' "${ENVV[GUARDIAN_CLICKHOUSE_DEFAULT_PASSWORD]}" | sha256sum)
	guardian_sha=$(printf '%s' "${ENVV[GUARDIAN_CLICKHOUSE_PASSWORD]}" | sha256sum)
	mkdir -p -- "$CH_DIR/data" "$CH_DIR/tmp" "$CH_DIR/user_files" "$CH_DIR/format_schemas"
	# No interserver_http_port: without it ClickHouse does not open that (9009) listener.
	cat >"$CH_DIR/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Written by deploy/stack/servers.sh at each start: edits are lost. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$CH_DIR/clickhouse-server.log</log>
        <errorlog>$CH_DIR/clickhouse-server.err.log</errorlog>
        <size>50M</size>
        <count>3</count>
        <console>0</console>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$tcp</tcp_port>
    <http_port>$http</http_port>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/tmp/</tmp_path>
    <user_files_path>$CH_DIR/user_files/</user_files_path>
    <format_schema_path>$CH_DIR/format_schemas/</format_schema_path>
    <users_config>$CH_DIR/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
EOF
	(
		umask 077
		cat >"$CH_DIR/users.xml" <<EOF
<?xml version="1.0"?>
<!-- Written by deploy/stack/servers.sh at each start: edits are lost. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password_sha256_hex>${default_sha%% *}</password_sha256_hex>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <guardian>
            <password_sha256_hex>${guardian_sha%% *}</password_sha256_hex>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </guardian>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
	)
}

ch_create_db() {
	local tcp=$1 i conf=$CH_DIR/client.xml pw
	# The password goes in a client config file of mode 0600, not on the
	# command line, where any local user could read it in /proc.
	pw=${ENVV[GUARDIAN_CLICKHOUSE_PASSWORD]}
	pw=${pw//&/&amp;}
	pw=${pw//</&lt;}
	pw=${pw//>/&gt;}
	(umask 077 && printf '<config><user>guardian</user><password>%s</password></config>\n' "$pw" >"$conf")
	for i in 1 2 3 4 5; do
		if timeout 20 clickhouse-client --config-file "$conf" --host 127.0.0.1 --port "$tcp" \
			--query "CREATE DATABASE IF NOT EXISTS guardian" </dev/null >/dev/null 9>&-; then
			rm -f -- "$conf"
			return 0
		fi
		sleep 0.5
	done
	rm -f -- "$conf"
	return 1
}

svc_start_clickhouse() {
	local pid tcp http attempt
	mkdir -p -- "$CH_DIR"
	chmod 0700 "$CH_DIR"
	if pid=$(ch_pid) && [[ -z ${ENVV[CH_HTTP_PORT]:-} || -z ${ENVV[CH_TCP_PORT]:-} ]]; then
		# As for Redis; its data stays on disk, and users.xml is written
		# again with the saved passwords.
		log "clickhouse: pid $pid was started by a run that did not finish; restarting it"
		svc_stop_clickhouse
	fi
	if pid=$(ch_pid); then
		http=${ENVV[CH_HTTP_PORT]:-}
		tcp=${ENVV[CH_TCP_PORT]:-}
		ABORT_FN=ch_dead
		{ [[ -n $http && -n $tcp ]] && wait_for "$START_TIMEOUT" ch_answering "$http"; } ||
			die "clickhouse: pid $pid is alive but does not answer on 127.0.0.1:${http:-?}"
		log "clickhouse: already running on 127.0.0.1:$tcp (http $http, pid $pid)"
		ch_emit "$tcp" "$http"
		return 0
	fi
	rm -f -- "$CH_DIR/clickhouse.pid"
	tcp=${PORT[CH_TCP_PORT]}
	http=${PORT[CH_HTTP_PORT]}
	for attempt in 1 2 3; do
		if port_listening "$tcp"; then
			port_conflict CH_TCP_PORT clickhouse
			tcp=${PORT[CH_TCP_PORT]}
			continue
		fi
		if port_listening "$http"; then
			port_conflict CH_HTTP_PORT clickhouse
			http=${PORT[CH_HTTP_PORT]}
			continue
		fi
		ch_write_conf "$tcp" "$http"
		rm -f -- "$CH_DIR/clickhouse.pid"
		if ! clickhouse-server --config-file="$CH_DIR/config.xml" --daemon \
			--pid-file="$CH_DIR/clickhouse.pid" </dev/null >>"$CH_DIR/stdout.log" 2>&1 9>&-; then
			tail_log "$CH_DIR/stdout.log" "$CH_DIR/clickhouse-server.err.log"
			die "clickhouse: clickhouse-server failed"
		fi
		ABORT_FN=ch_dead
		if wait_for "$START_TIMEOUT" ch_answering "$http"; then
			ch_create_db "$tcp" || {
				tail_log "$CH_DIR/clickhouse-server.err.log"
				die "clickhouse: CREATE DATABASE guardian failed"
			}
			log "clickhouse: started on 127.0.0.1:$tcp (http $http, pid $(ch_pid || echo ?))"
			ch_emit "$tcp" "$http"
			return 0
		fi
		if pid=$(ch_pid); then
			kill -TERM "$pid" 2>/dev/null || true
			stop_pid clickhouse "$pid" 30
		fi
		if ((attempt < 3)) && { { [[ ${AUTO[CH_TCP_PORT]} == 1 ]] && port_listening "$tcp"; } ||
			{ [[ ${AUTO[CH_HTTP_PORT]} == 1 ]] && port_listening "$http"; }; }; then
			continue # the checks at the top of the loop re-pick the busy port
		fi
		tail_log "$CH_DIR/stdout.log" "$CH_DIR/clickhouse-server.err.log" "$CH_DIR/clickhouse-server.log"
		if ch_dead; then
			die "clickhouse: clickhouse-server exited during startup (logs in $CH_DIR)"
		fi
		die "clickhouse: not ready after ${START_TIMEOUT}s (logs in $CH_DIR)"
	done
	die "clickhouse: failed to start"
}

svc_stop_clickhouse() {
	local pid
	if ! pid=$(ch_pid); then
		log "clickhouse: not running"
		rm -f -- "$CH_DIR/clickhouse.pid"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	stop_pid clickhouse "$pid" 30
	rm -f -- "$CH_DIR/clickhouse.pid"
	log "clickhouse: stopped (pid $pid)"
}

svc_status_clickhouse() {
	local pid http=${ENVV[CH_HTTP_PORT]:-}
	if ! pid=$(ch_pid); then
		echo "clickhouse: stopped"
		return 3
	fi
	if [[ -n $http ]] && ch_answering "$http"; then
		echo "clickhouse: running (pid $pid, 127.0.0.1:${ENVV[CH_TCP_PORT]:-?}, http $http)"
	else
		echo "clickhouse: running (pid $pid) but not answering on 127.0.0.1:${http:-?}"
		return 3
	fi
}

# ---------------------------------------------------------------- commands

# run_parallel ACTION: run svc_ACTION_<service> for every service in the background. Each one's
# stdout (KEY=value lines) goes to $WORK/<service>.kv. FAILED lists the ones that failed.
run_parallel() {
	local action=$1 svc
	local -A bg=()
	FAILED=()
	for svc in "${SERVICES[@]}"; do
		("svc_${action}_$svc") >"$WORK/$svc.kv" 9>&- &
		bg[$svc]=$!
	done
	for svc in "${SERVICES[@]}"; do
		wait "${bg[$svc]}" || FAILED+=("$svc")
	done
}

take_lock() {
	exec 9>>"$DIR/.lock"
	flock -w "$LOCK_TIMEOUT" 9 || die "could not lock $DIR/.lock within ${LOCK_TIMEOUT}s"
}

cmd_start() {
	local svc fn
	[[ -x $(command -v redis-server) || " ${SERVICES[*]} " != *" redis "* ]] || die "redis-server not found"
	[[ -x $(command -v clickhouse-server) || " ${SERVICES[*]} " != *" clickhouse "* ]] ||
		die "clickhouse-server not found"
	take_lock
	load_kv "$ENV_FILE"
	for key in PG_PORT REDIS_PORT CH_TCP_PORT CH_HTTP_PORT; do
		[[ -n ${ENVV[$key]:-} ]] && USED_PORTS+="${ENVV[$key]} "
	done
	for svc in "${SERVICES[@]}"; do
		case $svc in
		postgres)
			ensure_secret GUARDIAN_PG_OWNER_PASSWORD
			ensure_secret GUARDIAN_PG_APP_PASSWORD
			for fn in "${PG_FUNCTIONS[@]}"; do
				ensure_secret "GUARDIAN_PG_${fn^^}_PASSWORD"
			done
			resolve_port PG_PORT
			;;
		redis)
			ensure_secret GUARDIAN_REDIS_PASSWORD
			resolve_port REDIS_PORT
			;;
		clickhouse)
			ensure_secret GUARDIAN_CLICKHOUSE_PASSWORD
			ensure_secret GUARDIAN_CLICKHOUSE_DEFAULT_PASSWORD
			resolve_port CH_TCP_PORT
			resolve_port CH_HTTP_PORT
			;;
		esac
	done
	# The secrets, saved before any server is given one: a run cut short
	# during the starts (Ctrl-C) leaves servers set up with them, which the
	# next run must know. The ports follow once the servers answer.
	save_env
	run_parallel start
	for svc in "${SERVICES[@]}"; do
		[[ " ${FAILED[*]} " == *" $svc "* ]] || load_kv "$WORK/$svc.kv"
	done
	save_env
	((${#FAILED[@]} == 0)) || die "failed to start: ${FAILED[*]}"
	log "environment: $ENV_FILE"
}

cmd_stop() {
	[[ -d $DIR ]] || {
		log "nothing to stop: $DIR does not exist"
		return 0
	}
	take_lock
	load_kv "$ENV_FILE"
	run_parallel stop
	((${#FAILED[@]} == 0)) || die "failed to stop: ${FAILED[*]}"
}

cmd_status() {
	local svc rc=0
	load_kv "$ENV_FILE"
	for svc in "${SERVICES[@]}"; do
		"svc_status_$svc" || rc=3
	done
	return "$rc"
}

cmd_destroy() {
	local reloc
	cmd_stop
	[[ -d $DIR ]] || return 0
	pg_locate
	reloc=$(pg_reloc_path)
	if [[ -L $PG_SVC && -d $reloc && $PG_REAL == "$reloc" ]]; then
		rm -rf -- "$reloc"
	fi
	rm -rf -- "$DIR/postgres" "$DIR/redis" "$DIR/clickhouse" "$ENV_FILE"
	log "destroyed the services of $DIR"
}

main() {
	local cmd dir svc s
	[[ $# -ge 1 && ($1 == -h || $1 == --help || $1 == help) ]] && usage 0
	[[ $# -ge 2 ]] || usage 2
	cmd=$1 dir=$2
	shift 2
	[[ -n $dir ]] || usage 2
	case $cmd in start | stop | status | env | destroy) ;; *) usage 2 ;; esac

	SERVICES=()
	[[ $# -gt 0 ]] || set -- "${ALL_SERVICES[@]}"
	for svc in "$@"; do
		[[ " ${ALL_SERVICES[*]} " == *" $svc "* ]] || die "unknown service: $svc (want: ${ALL_SERVICES[*]})"
	done
	for s in "${ALL_SERVICES[@]}"; do # canonical order, no duplicates
		[[ " $* " == *" $s "* ]] && SERVICES+=("$s")
	done

	[[ $cmd != start ]] || mkdir -p -- "$dir"
	if [[ -d $dir ]]; then
		DIR=$(cd -- "$dir" && pwd -P)
	else
		DIR=$(realpath -m -- "$dir")
	fi
	# These characters would need escaping in postgresql.conf, redis.conf or XML.
	[[ $DIR != *[\&\<\>\"\'\\,$'\n'$'\t'\ ]* ]] || die "unsupported characters in dir path: $DIR"
	ENV_FILE=$DIR/servers.env
	REDIS_DIR=$DIR/redis
	CH_DIR=$DIR/clickhouse
	cd /
	[[ $cmd == env ]] || find_pgbin

	WORK=""
	if [[ $cmd == start || $cmd == stop || $cmd == destroy ]] && [[ -d $DIR ]]; then
		WORK=$(mktemp -d "$DIR/.work.XXXXXX")
		trap 'rm -rf -- "$WORK"' EXIT
	fi

	case $cmd in
	start) cmd_start ;;
	stop) cmd_stop ;;
	status) cmd_status ;;
	destroy) cmd_destroy ;;
	env)
		[[ -f $ENV_FILE ]] || die "$ENV_FILE does not exist (run start first)"
		cat -- "$ENV_FILE"
		;;
	esac
}

main "$@"
