#!/usr/bin/env bash
# config.sh DIR
#
# Copies what the edge runs besides the binaries into DIR/config, so that
# the release's signature covers it too: the Caddyfile (routes, trusted
# proxies, which secrets each function gets), web/ (the dashboard's
# scripts and pages) and the cron variant's guardian-cron-job (which runs
# every job). Installed from a release directory that verify.sh passed,
# they are what was signed, not whatever a checkout holds.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$1/config
rm -rf "$out"
mkdir -p "$out"
cp -- "$root/Caddyfile" "$out/Caddyfile"
cp -- "$root/deploy/cron/guardian-cron-job" "$out/guardian-cron-job"
# web/ as the commit has it: a file git ignores there (a build's leftover)
# is not part of the release. Outside git (a throwaway release), whole.
if git -C "$root" rev-parse --verify -q HEAD >/dev/null 2>&1; then
	git -C "$root" ls-files -z -- web | while IFS= read -r -d '' f; do
		mkdir -p "$out/$(dirname "$f")"
		cp -- "$root/$f" "$out/$f"
	done
else
	cp -R -- "$root/web" "$out/web"
fi
chmod -R u=rwX,go=rX "$out"
chmod 755 "$out/guardian-cron-job"
