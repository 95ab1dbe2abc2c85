#!/usr/bin/env bash
# refresh-cloudflare-ips.sh [--write] FILE...
#
# Compares the Cloudflare ranges in each FILE (a cloudflare-ips.env with a
# GUARDIAN_TRUSTED_PROXIES="..." line, or a cloudflare-real-ip.caddy with a
# `trusted_proxies static ...` line) with the list Cloudflare publishes at
# https://www.cloudflare.com/ips-v4 and https://www.cloudflare.com/ips-v6.
#
#   exit 0  every FILE holds exactly the published list
#   exit 1  a FILE differs (the difference is printed); with --write the FILE
#           is rewritten (atomically, same owner and mode, "Copied:" date
#           updated) and the exit status is 0
#   exit 2  the list could not be fetched or does not look like one (too few
#           ranges, or a line that is not a CIDR): nothing is written
#
# After --write on /etc/guardian/cloudflare-ips.env: systemctl reload
# guardian-caddy (the reload adapts the Caddyfile with the new file).
# Review the difference before writing: the list decides whose
# Cf-Connecting-Ip header is believed.
#
# CF_IPS_V4_URL and CF_IPS_V6_URL override the sources (tests use file://).
set -euo pipefail

write=false
if [ "${1:-}" = --write ]; then
	write=true
	shift
fi
[ $# -ge 1 ] || { echo "usage: $0 [--write] FILE..." >&2; exit 2; }

v4_url=${CF_IPS_V4_URL:-https://www.cloudflare.com/ips-v4}
v6_url=${CF_IPS_V6_URL:-https://www.cloudflare.com/ips-v6}

fetch() {
	local proto="=https"
	case $1 in file://*) proto="=file" ;; esac
	curl -fsS --proto "$proto" --max-time 30 --retry 2 "$1"
}

v4_re='^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$'
v6_re='^[0-9a-fA-F:]*:[0-9a-fA-F:]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$'
check() { # check NAME REGEX MIN < list
	local n=0 line
	while IFS= read -r line; do
		line=${line%$'\r'}
		[ -z "$line" ] && continue
		[[ $line =~ $2 ]] || { echo "refresh: $1: '$line' is not a CIDR range; nothing written" >&2; return 1; }
		echo "$line"
		n=$((n + 1))
	done
	[ "$n" -ge "$3" ] || { echo "refresh: $1: only $n ranges (expected at least $3); nothing written" >&2; return 1; }
}

v4=$(fetch "$v4_url") || { echo "refresh: cannot fetch $v4_url" >&2; exit 2; }
v6=$(fetch "$v6_url") || { echo "refresh: cannot fetch $v6_url" >&2; exit 2; }
v4=$(check ips-v4 "$v4_re" 5 <<<"$v4") || exit 2
v6=$(check ips-v6 "$v6_re" 3 <<<"$v6") || exit 2
published=$(printf '%s\n%s\n' "$v4" "$v6" | tr '\n' ' ' | sed 's/ *$//')
today=$(date -u +%Y-%m-%d)

status=0
for f in "$@"; do
	case $f in
	*.env) current=$(sed -n 's/^GUARDIAN_TRUSTED_PROXIES="\(.*\)"$/\1/p' "$f") ;;
	*.caddy) current=$(sed -n 's/^[[:space:]]*trusted_proxies static //p' "$f") ;;
	*) echo "refresh: $f: expected a .env or .caddy file" >&2; exit 2 ;;
	esac
	[ -n "$current" ] || { echo "refresh: $f: no range list found" >&2; exit 2; }
	if [ "$(tr ' ' '\n' <<<"$current" | sort)" = "$(tr ' ' '\n' <<<"$published" | sort)" ]; then
		echo "refresh: $f: up to date ($(wc -w <<<"$published") ranges)"
		continue
	fi
	echo "refresh: $f differs from the published list:"
	{ diff <(tr ' ' '\n' <<<"$current" | sort) <(tr ' ' '\n' <<<"$published" | sort) || true; } |
		sed -n 's/^</  remove/p; s/^>/  add   /p'
	if ! $write; then
		status=1
		continue
	fi
	tmp=$(mktemp "$(dirname "$f")/.refresh.XXXXXX")
	case $f in
	*.env) sed "s|^GUARDIAN_TRUSTED_PROXIES=\".*\"$|GUARDIAN_TRUSTED_PROXIES=\"$published\"|" "$f" ;;
	*.caddy) sed "s|^\([[:space:]]*trusted_proxies static \).*$|\1$published|" "$f" ;;
	esac | sed "s|^\(# Copied: \)[0-9-]*.*$|\1$today (fetched by refresh-cloudflare-ips.sh).|" >"$tmp"
	chmod --reference="$f" "$tmp"
	chown --reference="$f" "$tmp" 2>/dev/null || true
	mv "$tmp" "$f"
	echo "refresh: $f rewritten"
done
exit $status
