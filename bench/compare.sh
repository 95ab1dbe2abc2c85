#!/usr/bin/env bash
# bench/compare.sh: `make bench-compare OLD=<rev> NEW=<rev>`. Runs the edge
# modules' micro-benchmarks (Benchmark* beside the code, with -benchmem) on
# two revisions and prints benchstat's comparison.
#
# Usage: bench/compare.sh [OLD [NEW]]
#   OLD  a git revision (default HEAD~1), checked out with `git worktree add`
#        into a temporary directory that is removed afterwards
#   NEW  a git revision, or empty for the working tree as it is (default)
#
# Environment:
#   COUNT      runs of each benchmark per revision (default 6)
#   BENCHTIME  -benchtime of each run (default 1s)
#   BENCH      -bench pattern (default .)
#   BENCH_PKGS packages (default "./caddymodules/... ./shared/apikey ./shared/session";
#              those without a Benchmark in a revision are skipped there)
#   GUARDIAN_STACK_MODE  passed to servers.sh ("" = durable PostgreSQL, "test" = fsync off)
#
# Both revisions' test binaries are built first, then run alternately
# (old, new, old, new, ... COUNT times each, -count=1 per run), so machine
# noise spreads over both. One private PostgreSQL, Redis and ClickHouse
# (deploy/stack/servers.sh of the working tree) serve every run through
# GUARDIAN_TEST_SERVERS_ENV, as in `make test`. The raw outputs and
# benchstat's table are kept in bench/results/compare-<time>-*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

old_rev=${1:-HEAD~1}
new_rev=${2:-}
count=${COUNT:-6}
benchtime=${BENCHTIME:-1s}
pattern=${BENCH:-.}
read -r -a pkgs <<<"${BENCH_PKGS:-./caddymodules/... ./shared/apikey ./shared/session}"
if ! [[ $count =~ ^[0-9]+$ ]] || ((count < 1 || count > 50)); then
	echo "bench/compare.sh: COUNT must be 1..50" >&2
	exit 2
fi

old_sha=$(git rev-parse --verify --quiet "$old_rev^{commit}") || {
	echo "bench/compare.sh: OLD=$old_rev is not a commit" >&2
	exit 2
}
if [[ -n $new_rev ]]; then
	new_sha=$(git rev-parse --verify --quiet "$new_rev^{commit}") || {
		echo "bench/compare.sh: NEW=$new_rev is not a commit" >&2
		exit 2
	}
	new_label=${new_sha:0:10}
else
	new_label=worktree
	if [[ -n $(git status --porcelain --untracked-files=no) ]]; then
		new_label="worktree(dirty,$(git rev-parse --short=10 HEAD))"
	fi
fi
old_label=${old_sha:0:10}

tmp=$(mktemp -d /tmp/guardian-bench-compare-XXXXXX)
worktrees=()
cleanup() {
	local wt
	for wt in "${worktrees[@]}"; do
		git -C "$root" worktree remove --force "$wt" >/dev/null 2>&1 || true
	done
	git -C "$root" worktree prune >/dev/null 2>&1 || true
	deploy/stack/servers.sh destroy "$tmp/servers" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# checkout REV DIR: a detached worktree of REV in DIR.
checkout() {
	git -C "$root" worktree add --detach --quiet "$2" "$1"
	worktrees+=("$2")
}

checkout "$old_sha" "$tmp/old"
if [[ -n $new_rev ]]; then
	checkout "$new_sha" "$tmp/new"
	new_tree=$tmp/new
else
	new_tree=$root
fi

# build SIDE TREE: one test binary per package that has benchmarks, listed
# in $tmp/SIDE.list as "<binary> <package dir>".
build() {
	local side=$1 tree=$2 dir ip name
	mkdir -p "$tmp/bin-$side"
	: >"$tmp/$side.list"
	while read -r dir ip; do
		grep -qs '^func Benchmark' "$dir"/*_test.go || continue
		name=$(echo "$ip" | tr '/.' '__')
		echo "building $side test binary for $ip" >&2
		(cd "$tree" && CGO_ENABLED=0 go test -c -o "$tmp/bin-$side/$name.test" "$ip")
		echo "$tmp/bin-$side/$name.test $dir" >>"$tmp/$side.list"
	done < <(cd "$tree" && go list -e -f '{{.Dir}} {{.ImportPath}}' "${pkgs[@]}" 2>/dev/null)
}
build old "$tmp/old"
build new "$new_tree"

deploy/stack/servers.sh start "$tmp/servers"
export GUARDIAN_TEST_SERVERS_ENV=$tmp/servers/servers.env
export GUARDIAN_TEST_BIN_DIR=$tmp/testbin

# run SIDE: every benchmark binary of SIDE once, in its package directory.
run() {
	local side=$1 bin dir
	while read -r bin dir; do
		if ! (cd "$dir" && "$bin" -test.run '^$' -test.bench "$pattern" -test.benchmem -test.count 1 -test.benchtime "$benchtime") >"$tmp/last.out" 2>&1; then
			tail -n 30 "$tmp/last.out" >&2
			echo "bench/compare.sh: $side benchmarks in $dir failed" >&2
			exit 1
		fi
		grep -E '^(goos|goarch|pkg|cpu|Benchmark)' "$tmp/last.out" >>"$tmp/$side.txt" || true
	done <"$tmp/$side.list"
}
for i in $(seq 1 "$count"); do
	echo "round $i/$count: $old_label, then $new_label" >&2
	run old
	run new
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$root/bench/results
mkdir -p "$out"
cp "$tmp/old.txt" "$out/compare-$stamp-old-$old_label.txt"
cp "$tmp/new.txt" "$out/compare-$stamp-new-${new_label//[^A-Za-z0-9_.-]/_}.txt"
# benchstat names the columns after the files.
mkdir -p "$tmp/stat"
cp "$tmp/old.txt" "$tmp/stat/$old_label"
cp "$tmp/new.txt" "$tmp/stat/$new_label"
echo
echo "benchstat: OLD=$old_rev ($old_label)  NEW=${new_rev:-working tree} ($new_label), $count runs each, -benchtime $benchtime"
(cd "$tmp/stat" && go run golang.org/x/perf/cmd/benchstat@latest "$old_label" "$new_label") | tee "$out/compare-$stamp-benchstat.txt"
echo "raw results and this table: $out/compare-$stamp-*.txt"
