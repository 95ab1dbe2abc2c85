#!/usr/bin/env bash
# deploy/stack/fuzz.sh: run every `go test -fuzz` target of the module for a
# short budget each (GUARDIAN_FUZZTIME, default 3s), one after another.
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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Go before 1.27 (golang/go#75804) can end a duration -fuzztime by reporting
# its own deadline as the target's failure: "context deadline exceeded",
# no input found. A finding always says "Failing input written to". Such a
# run is tried again once; if the toolchain's race hits twice in a row it
# is reported and not counted, since nothing was found.
deadline_race() {
	grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written to' "$log"
}
for t in "${targets[@]}"; do
	dir=${t% *} name=${t#* }
	printf 'fuzz: %s %s (%s)\n' "$dir" "$name" "$budget" >&2
	for attempt in 1 2; do
		if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$budget" "$dir" >"$log" 2>&1; then
			break
		fi
		if ! deadline_race; then
			cat "$log" >&2
			failed=1
			break
		fi
		if ((attempt == 1)); then
			echo "fuzz: $name ended on Go's fuzztime deadline race (golang/go#75804), nothing found; once more" >&2
		else
			echo "fuzz: $name hit Go's fuzztime deadline race twice, nothing found; not counted as a failure" >&2
		fi
	done
done
((failed == 0)) || { echo "fuzz: a target failed (crasher saved under its testdata/fuzz/)" >&2; exit 1; }
echo "fuzz: ${#targets[@]} targets, ${budget} each: no crash" >&2
