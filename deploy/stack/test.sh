#!/usr/bin/env bash
# deploy/stack/test.sh: `make test`. Starts one private PostgreSQL, Redis and
# ClickHouse on free ports for the whole run, runs go vet and every Go test
# against them, then every fuzz target briefly (deploy/stack/fuzz.sh), and
# destroys the servers afterwards whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

deploy/stack/deps.sh

run_dir=$(mktemp -d /tmp/guardian-test-run-XXXXXX)
cleanup() {
	deploy/stack/servers.sh destroy "$run_dir" >/dev/null 2>&1 || true
	rm -rf "$run_dir"
}
trap cleanup EXIT

GUARDIAN_STACK_MODE=test deploy/stack/servers.sh start "$run_dir"
export GUARDIAN_TEST_SERVERS_ENV=$run_dir/servers.env
export GUARDIAN_TEST_BIN_DIR=$run_dir/bin

go vet ./...
# -p 2: two packages at a time on this size of machine; each package's
# tests still run in parallel inside it.
go test -count=1 -p 2 -timeout 14m "${@:-./...}"
# Every fuzz target for a short budget (only on a whole run).
if (($# == 0)); then
	deploy/stack/fuzz.sh
fi
