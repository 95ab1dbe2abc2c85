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

targets=()
while IFS= read -r line; do
	targets+=("$line")
done < <(grep -rE --include='*_test.go' -l '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . |
	sort | while IFS= read -r file; do
		dir=$(dirname "$file")
		grep -oE '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //' |
			while IFS= read -r name; do printf '%s %s\n' "$dir" "$name"; done
	done)

((${#targets[@]} > 0)) || { echo "fuzz: no targets found" >&2; exit 1; }
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
	dir=${t% *} name=${t#* }
	printf 'fuzz: %s %s (%s)\n' "$dir" "$name" "$budget" >&2
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$budget" "$dir" >"$log" 2>&1; then
		cat "$log" >&2
		failed=1
	fi
done
((failed == 0)) || { echo "fuzz: a target failed (crasher saved under its testdata/fuzz/)" >&2; exit 1; }
echo "fuzz: ${#targets[@]} targets, ${budget} each: no crash" >&2
