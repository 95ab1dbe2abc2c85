#!/usr/bin/env bash
# deploy/stack/deps.sh: install the Debian packages Guardian's stack and tests
# use, only those missing. Runs apt-get as root, or through sudo. The
# servers among them are neither started nor left to start at boot: ours run
# privately (servers.sh).
set -euo pipefail

PACKAGES=(
	postgresql redis-server clickhouse-server clickhouse-client
	pgbackrest age openssh-server openssh-client zstd chromium
	curl ca-certificates unzip util-linux iproute2 nftables
)
# classify PKG...: split into available (the configured repositories
# offer a candidate) and unavailable. In the C locale, whose word is
# "Candidate"; read whole, not through grep -q, which would stop apt-cache
# with SIGPIPE under pipefail and count the package as unavailable.
classify() {
	local p candidate
	available=() unavailable=()
	for p in "$@"; do
		candidate=$(LC_ALL=C apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
		if [[ -n $candidate && $candidate != "(none)" ]]; then
			available+=("$p")
		else
			unavailable+=("$p")
		fi
	done
}
# --classify PKG...: print the split, install nothing (for tests).
if [[ ${1:-} == --classify ]]; then
	shift
	classify "$@"
	echo "available: ${available[*]}"
	echo "unavailable: ${unavailable[*]}"
	exit 0
fi
# Named packages instead (gocheck.sh's download needs only curl and unzip).
if (($#)); then
	PACKAGES=("$@")
fi

find_missing() {
	missing=()
	for p in "${PACKAGES[@]}"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
}
find_missing
if ((${#missing[@]} == 0)); then
	exit 0
fi

# One run at a time, whatever the checkout or user: a second run would take
# the first's policy-rc.d for the system's, and install unguarded once the
# first removed it. Under the lock the packages are looked at again: the
# first run may have installed them all.
# In /run, which only root may write: in /tmp any user could plant a link
# there that root then creates a file through, or hold the lock for ever.
sudo=()
if ((EUID != 0)); then
	command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
	sudo=(sudo)
fi
lock=/run/guardian-deps.lock
if [[ ! -e $lock ]]; then
	"${sudo[@]}" sh -c 'umask 022 && : >>/run/guardian-deps.lock' # others open it read-only
fi
if [[ -L $lock || ! -f $lock ]]; then # a FIFO would block the open for ever
	echo "deps: $lock is not a plain file; remove it" >&2
	exit 1
fi
exec 8<"$lock"
if ! flock -n 8; then
	echo "deps: waiting for another deps.sh to finish" >&2
	flock -w 900 8 || { echo "deps: $lock held for 15 minutes; is another deps.sh stuck?" >&2; exit 1; }
fi
find_missing
if ((${#missing[@]} == 0)); then
	exit 0
fi

echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Installing must not start the system's own instances: ours run privately.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 755 "$policy"
	added_policy=1
fi
# The servers' packages also enable them at boot, which would open, say, SSH
# with Debian's defaults after the next reboot: disable those this run
# brings, even when it fails half-way. A service is this run's when the
# package that ships it is not installed now (only its conffiles left, as
# after apt remove, counts as not installed: reinstalling enables it
# again); one installed before is the user's. service:package pairs.
BOOT_SERVICES=(ssh:openssh-server postgresql:postgresql-common redis-server:redis-server clickhouse-server:clickhouse-server)
installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }
has_service() { [[ -e /lib/systemd/system/$1.service || -e /usr/lib/systemd/system/$1.service || -e /etc/init.d/$1 ]]; }
new_services=()
for sp in "${BOOT_SERVICES[@]}"; do
	installed "${sp#*:}" || new_services+=("${sp%%:*}")
done
cleanup() {
	for s in "${new_services[@]}"; do
		has_service "$s" || continue
		echo "deps: $s will not start at boot (systemctl enable $s to undo)" >&2
		"${sudo[@]}" systemctl disable --quiet "$s" 2>/dev/null || true # also without systemd running
		"${sudo[@]}" update-rc.d "$s" disable >/dev/null 2>&1 || true
	done
	if ((added_policy)); then "${sudo[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT
# install waits up to 10 min for another apt (a fresh cloud machine runs
# unattended-upgrades); update has no such wait, so it is tried again. A
# failed update (say, a broken third-party repository) only warns: install
# then says whether the package lists there are will do.
# env: sudo's default env_reset would drop DEBIAN_FRONTEND.
apt_get=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
for try in 1 2 3 4 5; do
	"${apt_get[@]}" update -qq 8<&- && break
	if ((try == 5)); then
		echo "deps: warning: apt-get update failed; installing from the package lists there are" >&2
	else
		echo "deps: apt-get update failed; trying again in 30 s" >&2
		sleep 30
	fi
done
# A package the configured repositories do not offer (clickhouse-server is
# built for amd64 only in Debian 12; a machine without bookworm's main)
# would fail the whole install with "Unable to locate package": the rest
# are installed, and those are named with what to do.
classify "${missing[@]}"
# 8<&-: nothing the packages start may keep holding the lock. The dpkg
# options keep a changed config file of a package removed but not purged
# (reinstalled here) without asking: without a terminal, dpkg would fail.
if ((${#available[@]})); then
	"${apt_get[@]}" -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		install -y -qq --no-install-recommends "${available[@]}" >&2 8<&-
fi
if ((${#unavailable[@]})); then
	cat >&2 <<MSG
deps: the configured package repositories offer no ${unavailable[*]} for $(dpkg --print-architecture).
Guardian's stack uses Debian 12's packages (bookworm main). Add bookworm's
main to /etc/apt/sources.list, or install the packages from their vendors
(ClickHouse: https://clickhouse.com/docs/en/install, whose current
releases Guardian also runs on), then run this again.
MSG
	exit 1
fi
