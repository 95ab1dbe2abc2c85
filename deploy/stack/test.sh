#!/usr/bin/env bash
# deploy/stack/test.sh: `make test`. Starts one private PostgreSQL, Redis and
# ClickHouse on free ports for the whole run, runs go vet and every Go test
# against them, and every fuzz target briefly beside them
# (deploy/stack/fuzz.sh), and destroys the servers afterwards whatever the
# outcome, with those of tests that were killed before their own cleanup
# ran (testenv.Private).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

# shellcheck source=deploy/stack/gocheck.sh
. deploy/stack/gocheck.sh
need_go
deploy/stack/deps.sh

# -trimpath keeps the checkout's path out of the build cache's keys: a
# clone at another path (CI clones afresh) reuses what an earlier run
# compiled of the module's own packages instead of compiling them all
# again. -ldflags=-w leaves out the DWARF tables, which no test reads:
# a third of each link's time (measured: 4.3 s to 2.9 s per test binary
# here), and there are some ninety links in a run, test binaries and
# the binaries the tests start. Tests' own go builds inherit both.
GOFLAGS="$(go env GOFLAGS) -trimpath -ldflags=-w"
export GOFLAGS

run_dir=$(mktemp -d /tmp/guardian-test-run-XXXXXX)
fuzzer=
# stop_fuzzing stops the fuzz pass, its builds and fuzzers with it.
stop_fuzzing() {
	if [[ -n $fuzzer ]]; then
		kill -- -"$fuzzer" 2>/dev/null || true
		wait "$fuzzer" 2>/dev/null || true
		fuzzer=
	fi
}
cleanup() {
	local d
	stop_fuzzing
	for d in "$run_dir"/private/*/; do
		deploy/stack/servers.sh destroy "$d" >/dev/null 2>&1 || true
	done
	deploy/stack/servers.sh destroy "$run_dir" >/dev/null 2>&1 || true
	rm -rf "$run_dir"
}
trap cleanup EXIT

# The ports are the script's to pick: those of a shell that loaded make up's
# stack.env would collide with make up's servers.
PG_PORT= REDIS_PORT= CH_TCP_PORT= CH_HTTP_PORT= GUARDIAN_STACK_MODE=test \
	deploy/stack/servers.sh start "$run_dir"
export GUARDIAN_TEST_SERVERS_ENV=$run_dir/servers.env
export GUARDIAN_TEST_BIN_DIR=$run_dir/bin
mkdir "$run_dir/private"
export GUARDIAN_TEST_PRIVATE_DIR=$run_dir/private

whole=$(($# == 0))
if ((whole)); then
	# Every fuzz target for a short budget (deploy/stack/fuzz.sh; 1 s
	# each unless GUARDIAN_FUZZTIME says otherwise, `make fuzz` for
	# longer), beside the tests and at the lowest priority: the tests
	# leave a CPU idle much of the time (waiting for servers, timeouts
	# and each other), and after them the pass took two minutes more.
	# The budget is wall time, so a target fuzzes less while the tests
	# are busy. In a session of its own (setsid), so that it is stopped
	# with its go commands and fuzzers together; its files are under
	# run_dir (TMPDIR), which cleanup removes, whatever ends it.
	mkdir "$run_dir/fuzz"
	GUARDIAN_FUZZTIME=${GUARDIAN_FUZZTIME:-1s} TMPDIR=$run_dir/fuzz \
		setsid nice -n 19 deploy/stack/fuzz.sh >"$run_dir/fuzz.log" 2>&1 &
	fuzzer=$!
	# Longest first (measured: each of these takes 35 s to two minutes on
	# 2 CPUs, most packages a few seconds), so that no long package starts
	# last and runs alone while the other slot has nothing left to do;
	# go test starts packages in the order given.
	slow=(./deploy/stack ./functions/jobs/restore-verify ./shared/chbackup ./faults ./floods ./asvs
		./functions/auth ./caddymodules/audit ./functions/jobs/backup-postgres ./functions/mfa ./functions/keys
		./caddymodules/auth ./caddymodules/function ./functions/audit ./shared/pgbackup)
	module=$(go list -m)
	all=$(go list ./...)
	mapfile -t rest < <(grep -vxF -f <(printf '%s\n' "${slow[@]/#./$module}") <<<"$all")
	set -- "${slow[@]}" "${rest[@]}"
fi

go vet ./...
# -p 2: two packages at a time on this size of machine; each package's
# tests still run in parallel inside it.
go test -count=1 -p 2 -timeout 14m "$@"
if ((whole)); then
	# What is left of the fuzz pass gets the CPUs the tests had (lowering
	# a niceness takes root; otherwise it goes on at the lowest).
	renice -n 0 -g "$fuzzer" >/dev/null 2>&1 || true
	fuzz_status=0
	wait "$fuzzer" || fuzz_status=$?
	fuzzer=
	cat "$run_dir/fuzz.log" >&2
	exit "$fuzz_status"
fi
