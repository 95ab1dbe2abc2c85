#!/usr/bin/env bash
# verify.sh DIR TRUSTED_ALLOWED_SIGNERS
# verify.sh --own-key DIR
#
# Checks a release directory exactly as the release notes tell users to:
# the signature over SHA256SUMS, then every artefact's SHA-256. Exits
# non-zero on a bad signature, a changed or missing artefact, or a file in
# DIR that SHA256SUMS does not list.
#
# The signature is checked against TRUSTED_ALLOWED_SIGNERS (or
# $GUARDIAN_RELEASE_ALLOWED_SIGNERS): your own copy of the release key,
# obtained apart from the release. Without one it refuses: the release's
# own allowed_signers proves only that the files match each other, not who
# made them (a release swapped whole, key included, would pass), and an
# exit status of 0 must not say more. --own-key checks that much anyway,
# with a warning (release.sh, on what it has just signed).
set -euo pipefail

own=false
if [ "${1:-}" = --own-key ]; then
	own=true
	shift
fi
if [ $# -lt 1 ] || [ $# -gt 2 ] || { $own && [ $# -gt 1 ]; }; then
	echo "usage: $0 DIR TRUSTED_ALLOWED_SIGNERS, or $0 --own-key DIR" >&2
	exit 2
fi
trusted=${2:-${GUARDIAN_RELEASE_ALLOWED_SIGNERS:-}}
$own && trusted=
if [ -z "$trusted" ] && ! $own; then
	echo "verify.sh: no trusted copy of the release key: pass yours ($0 DIR FILE; make release-verify ALLOWED_SIGNERS=FILE)." >&2
	echo "verify.sh: the release's own allowed_signers proves only that its files match each other (--own-key checks that much)." >&2
	exit 2
fi
if [ -n "$trusted" ]; then
	[ -f "$trusted" ] || { echo "verify.sh: $trusted is missing" >&2; exit 1; }
	trusted=$(cd "$(dirname "$trusted")" && pwd)/$(basename "$trusted")
fi
cd "$1"
for f in SHA256SUMS SHA256SUMS.sig allowed_signers; do
	[ -f "$f" ] || { echo "verify.sh: $1/$f is missing" >&2; exit 1; }
done
# Only regular files and directories, before anything is read: a link
# would be followed by the install after the check, and a FIFO (or a link
# to /dev/zero) would keep the check from ever ending.
odd=$(find . ! -type f ! -type d -printf '%P\n')
if [ -n "$odd" ]; then
	echo "verify.sh: not regular files:" >&2
	printf '%s\n' "$odd" | sed 's/^/  /' >&2
	exit 1
fi

if [ -n "$trusted" ]; then
	ssh-keygen -Y verify -f "$trusted" -I release@guardian -n guardian-release -s SHA256SUMS.sig <SHA256SUMS
else
	echo "verify.sh: WARNING: --own-key: checked against the allowed_signers inside the release," >&2
	echo "verify.sh: which proves the files match each other, not who signed them. Pass your own copy: $0 DIR FILE" >&2
	ssh-keygen -Y verify -f allowed_signers -I release@guardian -n guardian-release -s SHA256SUMS.sig <SHA256SUMS
fi
sha256sum --strict --quiet -c SHA256SUMS


extra=$(comm -23 \
	<(find . -type f ! -path ./SHA256SUMS ! -path ./SHA256SUMS.sig ! -path ./allowed_signers -printf '%P\n' | LC_ALL=C sort) \
	<(sed 's/^[0-9a-f]\{64\}  //' SHA256SUMS | LC_ALL=C sort))
if [ -n "$extra" ]; then
	echo "verify.sh: files not covered by SHA256SUMS:" >&2
	printf '%s\n' "$extra" | sed 's/^/  /' >&2
	exit 1
fi
if [ -n "$trusted" ]; then
	echo "verify.sh: $1: signed by the trusted release key, $(wc -l <SHA256SUMS) artefacts match SHA256SUMS"
else
	echo "verify.sh: $1: signature good against the release's own key (not a trusted copy), $(wc -l <SHA256SUMS) artefacts match SHA256SUMS"
fi
