#!/usr/bin/env bash
# [GUARDIAN_VERSION=x.y.z] build.sh OUTDIR GOOS GOARCH PACKAGE...
#
# The one place that defines Guardian's release build flags; `make release`
# (release.sh) and release_test.go both call it. Each main package among
# PACKAGE... (patterns such as ./functions/... allowed) is written to
# OUTDIR/<last path element>. Two runs on the same commit with the same Go
# toolchain produce byte-identical files.
set -euo pipefail

if [ $# -lt 4 ]; then
	echo "usage: $0 OUTDIR GOOS GOARCH PACKAGE..." >&2
	exit 2
fi
out=$1 goos=$2 goarch=$3
shift 3

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
GO=${GO:-go}

# VCS stamping (revision, commit time, modified flag) only where a git
# checkout exists; the machine-wide GOFLAGS=-buildvcs=false is overridden
# here on purpose, and GOFLAGS is cleared so nothing else leaks in.
buildvcs=false
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	buildvcs=true
fi

# Pin the micro-architecture levels, experiments and FIPS mode to Go's
# defaults so a builder's environment cannot change the code generated;
# GOENV=off also ignores the settings `go env -w` keeps in a file.
unset GOAMD64 GOARM64 GO386 GOARM GOPPC64 GORISCV64 GOMIPS GOMIPS64 GOWASM GOEXPERIMENT GOFIPS140
export GOENV=off GOFLAGS= CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch"

mkdir -p "$out"
# GUARDIAN_VERSION (release.sh sets it) is stamped into every binary,
# which prints it with --version (shared/version); unset, they say "devel".
ldflags="-s -w -buildid="
if [ -n "${GUARDIAN_VERSION:-}" ]; then
	if ! [[ $GUARDIAN_VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]]; then
		echo "build.sh: GUARDIAN_VERSION must look like x.y.z (got '$GUARDIAN_VERSION')" >&2
		exit 2
	fi
	ldflags="$ldflags -X github.com/glassmkr/guardian/shared/version.Version=$GUARDIAN_VERSION"
fi

# -trimpath: no local file system paths; -buildid=: no per-build ID;
# -s -w: no symbol table or DWARF.
exec "$GO" build \
	-trimpath \
	-buildvcs="$buildvcs" \
	-mod=readonly \
	-ldflags="$ldflags" \
	-o "$out/" \
	"$@"
