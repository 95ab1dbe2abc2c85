#!/usr/bin/env bash
# verify.sh DIR
#
# Checks a release directory exactly as the release notes tell users to:
# the signature over SHA256SUMS, then every artefact's SHA-256. Exits
# non-zero on a bad signature, a changed or missing artefact, or a file in
# DIR that SHA256SUMS does not list.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
cd "$1"
for f in SHA256SUMS SHA256SUMS.sig allowed_signers; do
	[ -f "$f" ] || { echo "verify.sh: $1/$f is missing" >&2; exit 1; }
done

ssh-keygen -Y verify -f allowed_signers -I release@guardian -n guardian-release -s SHA256SUMS.sig <SHA256SUMS
sha256sum --strict --quiet -c SHA256SUMS

extra=$(comm -23 \
	<(find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig ! -name allowed_signers -printf '%P\n' | LC_ALL=C sort) \
	<(sed 's/^[0-9a-f]\{64\}  //' SHA256SUMS | LC_ALL=C sort))
if [ -n "$extra" ]; then
	echo "verify.sh: files not covered by SHA256SUMS:" >&2
	printf '  %s\n' $extra >&2
	exit 1
fi
echo "verify.sh: $1: signature good, $(wc -l <SHA256SUMS) artefacts match SHA256SUMS"
