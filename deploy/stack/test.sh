#!/usr/bin/env bash
# deploy/stack/test.sh: `make test`. Starts one private PostgreSQL, Redis and
# ClickHouse on free ports for the whole run, runs go vet and every Go test
# against them, then every fuzz target briefly (deploy/stack/fuzz.sh), and
# destroys the servers afterwards whatever the outcome, with those of tests
# that were killed before their own cleanup ran (testenv.Private).
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
# again. Tests' own go builds inherit it.
GOFLAGS="$(go env GOFLAGS) -trimpath"
export GOFLAGS

run_dir=$(mktemp -d /tmp/guardian-test-run-XXXXXX)
fuzz_builder=
# stop_fuzz_builder stops the fuzz binaries' build and its go commands,
# and waits for it.
stop_fuzz_builder() {
	if [[ -n $fuzz_builder ]]; then
		kill -- -"$fuzz_builder" 2>/dev/null || true
		wait "$fuzz_builder" 2>/dev/null || true
		fuzz_builder=
	fi
}
cleanup() {
	local d
	stop_fuzz_builder
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
	# The fuzz targets' instrumented binaries are built beside the tests,
	# at the lowest priority: the tests leave a CPU idle much of the time
	# (waiting for servers, timeouts and each other), and the links took
	# half of the fuzz pass. In a session of its own (setsid), so that it
	# is stopped with its go commands together; fuzz.sh run builds what
	# it did not finish.
	setsid nice -n 19 deploy/stack/fuzz.sh build "$run_dir/fuzz" >"$run_dir/fuzz-build.log" 2>&1 &
	fuzz_builder=$!
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
# Every fuzz target for a short budget (only on a whole run).
if ((whole)); then
	# The build at the lowest priority would wait for the fuzzing's CPUs:
	# run builds what is left at the normal one.
	stop_fuzz_builder
	deploy/stack/fuzz.sh run "$run_dir/fuzz"
fi
