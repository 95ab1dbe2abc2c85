#!/usr/bin/env bash
# vulndb.sh OUTDIR
#
# Builds a Go vulnerability database in OUTDIR (the v1 layout govulncheck
# reads with -db file://OUTDIR) from the OSV entries of the
# golang.org/x/vulndb module, fetched through the Go module proxy: for
# builders that reach the proxy but not https://vuln.go.dev. It is a
# snapshot: the module version (GUARDIAN_VULNDB_VERSION, default latest)
# and its date are printed on stdout as "golang.org/x/vulndb@<version>",
# and release.sh puts them in the release notes.
set -euo pipefail
out=${1:?usage: vulndb.sh OUTDIR}
GO=${GO:-go}
want=${GUARDIAN_VULNDB_VERSION:-latest}

info=$(GOFLAGS= "$GO" mod download -json "golang.org/x/vulndb@$want")
dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")
version=$(sed -n 's/^[[:space:]]*"Version": "\(.*\)",$/\1/p' <<<"$info")
if [ -z "$dir" ] || [ -z "$version" ] || [ ! -d "$dir/data/osv" ]; then
	echo "vulndb: golang.org/x/vulndb@$want has no data/osv" >&2
	exit 1
fi
rm -rf "$out"
GOFLAGS= "$GO" run "golang.org/x/vulndb/cmd/indexdb@$version" -vulns "$dir/data/osv" -out "$out" >&2
[ -s "$out/index/db.json" ] || { echo "vulndb: no index written" >&2; exit 1; }
echo "golang.org/x/vulndb@$version"
