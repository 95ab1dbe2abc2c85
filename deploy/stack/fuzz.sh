#!/usr/bin/env bash
# deploy/stack/fuzz.sh: run every `go test -fuzz` target of the module for a
# short budget each (GUARDIAN_FUZZTIME, default 3s), one per CPU at a time
# (GUARDIAN_FUZZ_JOBS).
# `make test` runs it beside the tests, at the lowest CPU priority, so
# that a crash any target can find quickly fails CI; `make fuzz
# GUARDIAN_FUZZTIME=10m` digs longer. New crashers are written by Go under
# the package's testdata/fuzz/, where committing them keeps them as
# regression seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."
budget=${GUARDIAN_FUZZTIME:-3s}
if (($# > 0)); then
	echo "usage: fuzz.sh (GUARDIAN_FUZZTIME, GUARDIAN_FUZZ_JOBS from the environment)" >&2
	exit 2
fi

module=$(go list -m)
root=$(go list -m -f '{{.Dir}}')
failed=0

# Targets run GUARDIAN_FUZZ_JOBS at a time (default: one per CPU), each
# with one fuzzing worker (-parallel 1) for the budget, which is wall time:
# a target gets one CPU's worth of the budget, where one at a time with a
# worker per CPU gave it all of them, but building each package's binary
# (mostly one CPU's work) overlaps with other targets' fuzzing, and the
# pass takes about half the time. For a search as deep as before, give
# GUARDIAN_FUZZTIME as many times the budget as there are CPUs.
jobs_max=${GUARDIAN_FUZZ_JOBS:-$(nproc)}
((jobs_max >= 1)) || jobs_max=1
fuzzcache=$(go env GOCACHE)/fuzz

# build WORK: each package's instrumented test binary is built once (go
# test -c -fuzz) and run for each of its targets, which it lists itself
# (-test.list: what go test -fuzz would find, any parameter name). `go
# test -fuzz` per target linked, vetted and listed the same binary again
# for every target: 60 links for 22 packages, and as many more to list
# them. One binary at a time, in the background while the targets of
# those already built are fuzzed: two builds never compile the same
# instrumented dependencies at once on a cold cache. WORK/pkgs lists the
# packages, in the order they are built: every package whose test files
# (as go list gives them: build tags applied) mention "Fuzz" at all.
# WORK/N.done says package N's binary and list are there, WORK/N.fail
# that it did not build or list, and WORK/end that the builder is done.
build() {
	local work=$1 dir k pkgs=()
	# shellcheck disable=SC2064 # the path now: work is gone at exit
	trap "touch $(printf %q "$work/end")" EXIT
	while IFS= read -r dir; do
		pkgs+=(".${dir#"$root"}")
	done < <(go list -e -f '{{$d := .Dir}}{{range .TestGoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .XTestGoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}' ./... |
		xargs -r -d '\n' grep -l 'Fuzz' | xargs -r -d '\n' dirname | sort -u)
	# Written whole, then renamed: the fuzzing side reads it once it exists.
	{ ((${#pkgs[@]} == 0)) || printf '%s\n' "${pkgs[@]}"; } >"$work/pkgs.new"
	mv "$work/pkgs.new" "$work/pkgs"
	for ((k = 0; k < ${#pkgs[@]}; k++)); do
		dir=${pkgs[k]}
		if go test -c -fuzz . -o "$work/$k.test" "$dir" >"$work/$k.build" 2>&1 &&
			(cd "$root/${dir#./}" && "$work/$k.test" -test.list '^Fuzz') >"$work/$k.list" 2>>"$work/$k.build"; then
			touch "$work/$k.done"
		else
			touch "$work/$k.fail"
		fi
	done
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build "$work" &
builder=$!
# building: whether the builder may still make what is not there yet.
building() { [[ ! -e $work/end ]] && kill -0 "$builder" 2>/dev/null; }
fuzzing() { jobs -rp | grep -cvx "$builder" || true; }
while [[ ! -e $work/pkgs ]]; do
	building || { echo "fuzz: the build ended before it listed the packages" >&2; exit 1; }
	sleep 0.1
done
mapfile -t pkgs <"$work/pkgs"
((${#pkgs[@]} > 0)) || { echo "fuzz: no packages with fuzz targets found" >&2; exit 1; }

# Go before 1.27 (golang/go#75804) can end a duration -fuzztime by reporting
# its own deadline as the target's failure: "context deadline exceeded",
# no input found. A finding always says "Failing input written to". Such a
# run is tried again once; if the toolchain's race hits twice in a row it
# is reported and not counted, since nothing was found.
deadline_race() {
	grep -q 'context deadline exceeded' "$1" && ! grep -q 'Failing input written to' "$1"
}
# fuzz_one BIN DIR PKG NAME LOG: runs one target of the test binary BIN in
# its package's directory DIR (where its seeds are, and where a crasher is
# written); its output (and nothing else) goes to LOG, a failure's in full.
# It fails only on a finding or an error.
fuzz_one() {
	local bin=$1 dir=$2 pkg=$3 name=$4 log=$5 out=$5.run attempt
	for attempt in 1 2; do
		if (cd "$dir" && "$bin" -test.run '^$' -test.fuzz "^${name}\$" -test.fuzztime "$budget" -test.parallel 1 \
			-test.fuzzcachedir "$fuzzcache/$pkg") >"$out" 2>&1; then
			return 0
		fi
		if ! deadline_race "$out"; then
			cat "$out" >>"$log"
			return 1
		fi
		if ((attempt == 1)); then
			echo "fuzz: $name ended on Go's fuzztime deadline race (golang/go#75804), nothing found; once more" >>"$log"
		else
			echo "fuzz: $name hit Go's fuzztime deadline race twice, nothing found; not counted as a failure" >>"$log"
		fi
	done
}

# A package that cannot be built or listed fails the run, after the
# others' targets.
i=0
for ((k = 0; k < ${#pkgs[@]}; k++)); do
	dir=${pkgs[k]}
	while [[ ! -e $work/$k.done && ! -e $work/$k.fail ]]; do
		if ! building && [[ ! -e $work/$k.done && ! -e $work/$k.fail ]]; then
			echo "build ended before this package's binary was made" >"$work/$k.build"
			touch "$work/$k.fail"
			break
		fi
		sleep 0.1
	done
	if [[ -e $work/$k.fail ]]; then
		cat "$work/$k.build" >&2
		echo "fuzz: $dir: its fuzz test binary does not build, or cannot list its targets" >&2
		failed=1
		continue
	fi
	while IFS= read -r name; do
		[[ $name == Fuzz* ]] || continue
		printf 'fuzz: %s %s (%s)\n' "$dir" "$name" "$budget" >&2
		while (($(fuzzing) >= jobs_max)); do
			wait -n || true
		done
		i=$((i + 1))
		: >"$work/$i.log"
		(if fuzz_one "$work/$k.test" "$root/${dir#./}" "$module/${dir#./}" "$name" "$work/$i.log"; then :; else touch "$work/$i.failed"; fi) &
	done <"$work/$k.list"
done
wait
((i > 0)) || { echo "fuzz: no targets found" >&2; exit 1; }
for ((j = 1; j <= i; j++)); do
	if [[ -s $work/$j.log ]]; then
		cat "$work/$j.log" >&2
	fi
	if [[ -e $work/$j.failed ]]; then
		failed=1
	fi
done
((failed == 0)) || { echo "fuzz: a target failed (crasher saved under its testdata/fuzz/), or a package did not build" >&2; exit 1; }
echo "fuzz: $i targets, ${budget} each, ${jobs_max} at a time: no crash" >&2
