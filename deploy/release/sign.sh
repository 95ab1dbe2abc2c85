#!/usr/bin/env bash
# sign.sh DIR KEY
#
# Writes DIR/SHA256SUMS over every regular file below DIR (paths relative to
# DIR, sorted), signs it with the Ed25519 OpenSSH key KEY into
# DIR/SHA256SUMS.sig (namespace guardian-release) and writes
# DIR/allowed_signers with KEY's public half for identity release@guardian.
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 DIR KEY" >&2
	exit 2
fi
dir=$1 key=$(realpath -- "$2")
namespace=guardian-release
identity=release@guardian

if ! ssh-keygen -l -f "$key" 2>/dev/null | grep -q '(ED25519)$'; then
	echo "sign.sh: $key is not a readable Ed25519 OpenSSH key" >&2
	exit 1
fi
if [ -f "$key.pub" ]; then
	pub=$(cat "$key.pub")
else
	pub=$(ssh-keygen -y -f "$key")
fi
pub=$(printf '%s\n' "$pub" | awk '{print $1" "$2}')

cd "$dir"
rm -f SHA256SUMS SHA256SUMS.sig allowed_signers
find . -type f ! -path ./SHA256SUMS ! -path ./SHA256SUMS.tmp ! -path ./SHA256SUMS.sig ! -path ./allowed_signers -printf '%P\n' |
	LC_ALL=C sort | while IFS= read -r f; do sha256sum -- "$f"; done >SHA256SUMS.tmp
mv SHA256SUMS.tmp SHA256SUMS
printf '%s namespaces="%s" %s\n' "$identity" "$namespace" "$pub" >allowed_signers
ssh-keygen -q -Y sign -n "$namespace" -f "$key" SHA256SUMS
