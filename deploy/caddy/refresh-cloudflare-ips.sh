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
#           distinct ranges, or a line that is not a public CIDR range of
#           at least /8 or /16: never 0.0.0.0/0, private or reserved
#           space): nothing is written
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

v4_re='^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})$'
v6_re='^([0-9a-fA-F]{0,4}):[0-9a-fA-F:]*/([0-9]{1,3})$'

# A range the list decides to trust must be one Cloudflare could publish:
# a valid network of at least /8 (IPv4) or /16 (IPv6), not private,
# loopback, link-local, multicast or reserved. "0.0.0.0/0" would make every
# client a trusted proxy, able to set the address everything else sees.
v4_ok() { # v4_ok CIDR (matched by v4_re)
	local a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]} c=${BASH_REMATCH[3]} d=${BASH_REMATCH[4]} p=${BASH_REMATCH[5]}
	((10#$a <= 255 && 10#$b <= 255 && 10#$c <= 255 && 10#$d <= 255 && 10#$p >= 8 && 10#$p <= 32)) || return 1
	a=$((10#$a)) b=$((10#$b))
	((a != 0 && a != 10 && a != 127 && a < 224)) || return 1
	((!(a == 169 && b == 254) && !(a == 172 && b >= 16 && b <= 31) && !(a == 192 && b == 168) && !(a == 100 && b >= 64 && b <= 127))) || return 1
}
v6_ok() { # v6_ok CIDR (matched by v6_re)
	local first=${BASH_REMATCH[1]} p=${BASH_REMATCH[2]}
	((10#$p >= 16 && 10#$p <= 128)) || return 1
	[ -n "$first" ] || return 1 # ::/n, ::1: unspecified, loopback, mapped
	first=$((16#$first))
	((first >= 0x2000 && first <= 0x3fff)) || return 1 # global unicast only
}

check() { # check NAME REGEX VALIDATOR MIN < list
	local line
	local -A seen=()
	while IFS= read -r line; do
		line=${line%$'\r'}
		[ -z "$line" ] && continue
		if ! [[ $line =~ $2 ]] || ! $3; then
			echo "refresh: $1: '$line' is not a public CIDR range Cloudflare could publish; nothing written" >&2
			return 1
		fi
		[ -n "${seen[$line]:-}" ] && continue
		seen[$line]=1
		echo "$line"
	done
	[ "${#seen[@]}" -ge "$4" ] || { echo "refresh: $1: only ${#seen[@]} distinct ranges (expected at least $4); nothing written" >&2; return 1; }
}

v4=$(fetch "$v4_url") || { echo "refresh: cannot fetch $v4_url" >&2; exit 2; }
v6=$(fetch "$v6_url") || { echo "refresh: cannot fetch $v6_url" >&2; exit 2; }
v4=$(check ips-v4 "$v4_re" v4_ok 5 <<<"$v4") || exit 2
v6=$(check ips-v6 "$v6_re" v6_ok 3 <<<"$v6") || exit 2
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
