#!/usr/bin/env bash
# deploy/stack/fuzz.sh: run every `go test -fuzz` target of the module for a
# short budget each (GUARDIAN_FUZZTIME, default 3s), one per CPU at a time
# (GUARDIAN_FUZZ_JOBS).
# `make test` runs it after the tests so that a crash any target can find
# quickly fails CI; `make fuzz GUARDIAN_FUZZTIME=10m` digs longer. New
# crashers are written by Go under the package's testdata/fuzz/, where
# committing them keeps them as regression seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."
budget=${GUARDIAN_FUZZTIME:-3s}

# Targets as go test itself lists them (any parameter name, build tags
# applied), in every package whose test files mention "Fuzz" at all. A
# package that cannot be listed fails the run, after the others' targets.
module=$(go list -m)
root=$(go list -m -f '{{.Dir}}')
failed=0
pkgs=()
while IFS= read -r dir; do
	pkgs+=(".${dir#"$root"}")
done < <(go list -e -f '{{$d := .Dir}}{{range .TestGoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .XTestGoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}' ./... |
	xargs -r -d '\n' grep -l 'Fuzz' | xargs -r -d '\n' dirname | sort -u)
((${#pkgs[@]} > 0)) || { echo "fuzz: no targets found" >&2; exit 1; }
if ! listing=$(go test -list '^Fuzz' "${pkgs[@]}" 2>&1); then
	printf '%s\n' "$listing" >&2
	echo "fuzz: cannot list the targets of every package" >&2
	failed=1
fi
# Each package's names come before its "ok<TAB>import path<TAB>time" line.
targets=()
names=()
while IFS= read -r line; do
	case $line in
	Fuzz*) names+=("$line") ;;
	ok[[:blank:]]*)
		pkg=$(cut -f2 <<<"$line")
		for name in "${names[@]}"; do
			targets+=(".${pkg#"$module"} $name")
		done
		names=()
		;;
	FAIL[[:blank:]]*) names=() ;;
	esac
done <<<"$listing"

((${#targets[@]} > 0)) || { echo "fuzz: no targets found" >&2; exit 1; }
# Targets run GUARDIAN_FUZZ_JOBS at a time (default: one per CPU), each
# with one fuzzing worker (-parallel 1) for the budget, which is wall time:
# a target gets one CPU's worth of the budget, where one at a time with a
# worker per CPU gave it all of them, but building, linking and starting
# each target's binary (mostly one CPU's work) now overlaps with another
# target's fuzzing, and the pass takes about half the time. For a search
# as deep as before, give GUARDIAN_FUZZTIME as many times the budget as
# there are CPUs.
jobs_max=${GUARDIAN_FUZZ_JOBS:-$(nproc)}
((jobs_max >= 1)) || jobs_max=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Go before 1.27 (golang/go#75804) can end a duration -fuzztime by reporting
# its own deadline as the target's failure: "context deadline exceeded",
# no input found. A finding always says "Failing input written to". Such a
# run is tried again once; if the toolchain's race hits twice in a row it
# is reported and not counted, since nothing was found.
deadline_race() {
	grep -q 'context deadline exceeded' "$1" && ! grep -q 'Failing input written to' "$1"
}
# fuzz_one DIR NAME LOG: runs one target; its output (and nothing else)
# goes to LOG, a failure's in full. It fails only on a finding or an error.
fuzz_one() {
	local dir=$1 name=$2 log=$3 out=$3.run attempt
	for attempt in 1 2; do
		if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$budget" -parallel 1 "$dir" >"$out" 2>&1; then
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
i=0
for t in "${targets[@]}"; do
	dir=${t% *} name=${t#* }
	printf 'fuzz: %s %s (%s)\n' "$dir" "$name" "$budget" >&2
	while (($(jobs -rp | wc -l) >= jobs_max)); do
		wait -n || true
	done
	i=$((i + 1))
	: >"$work/$i.log"
	( if fuzz_one "$dir" "$name" "$work/$i.log"; then :; else touch "$work/$i.failed"; fi ) &
	if ((i == 1)); then
		# The first target alone: its build fills the cache with the
		# coverage-instrumented dependencies every target shares. Started
		# side by side on a cold cache, each target compiled them all
		# itself, at once, several minutes each on two CPUs.
		wait -n || true
	fi
done
wait
for ((j = 1; j <= i; j++)); do
	if [[ -s $work/$j.log ]]; then
		cat "$work/$j.log" >&2
	fi
	if [[ -e $work/$j.failed ]]; then
		failed=1
	fi
done
((failed == 0)) || { echo "fuzz: a target failed (crasher saved under its testdata/fuzz/)" >&2; exit 1; }
echo "fuzz: ${#targets[@]} targets, ${budget} each, ${jobs_max} at a time: no crash" >&2
