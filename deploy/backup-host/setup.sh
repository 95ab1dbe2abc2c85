#!/usr/bin/env bash
# deploy/backup-host/setup.sh: one chrooted, SFTP-only backup account on the
# backup host. Run as root on the backup host, once per account:
#
#   setup.sh clickhouse-backup /root/backup-clickhouse.pub
#   setup.sh pgbackrest        /root/pgbackrest.pub
#
# PUBKEY_FILE holds the app host's public keys for that account, one per
# line (`ssh-keygen -y -f <private key>` on the app host): for
# clickhouse-backup, the key of the backup-clickhouse job and the key of the
# restore-verify job. A line starting "read-only " is a key that may only
# read (restore-verify's: it holds the age identity, and if it were taken
# it must not be able to change or delete the backups); the others may
# write. The file replaces the account's keys.
#
#   setup.sh --authorized-keys ADDR PUBKEY_FILE
#
# only prints the authorized_keys lines it would write (no root needed).
# The script:
#   1. creates the system user (no password, shell /usr/sbin/nologin);
#   2. creates the chroot /srv/guardian-backup/<user> and its one writable
#      directory data/ (sshd refuses a chroot whose path has any component
#      that is not owned by root or is writable by group or others, so
#      /srv, /srv/guardian-backup and the chroot itself are root:root 0755
#      and only data/ belongs to the user);
#   3. writes /etc/ssh/guardian-backup/authorized_keys/<user>, root-owned
#      and outside the chroot, with from="<app host wg address>",restrict;
#   4. installs sshd_config.d/00-guardian-backup.conf, checks it with
#      `sshd -t` and reloads sshd;
#   5. prints the known_hosts line the app host's jobs pin.
#
# Environment: APP_WG_ADDR (default 10.100.0.1), BACKUP_WG_ADDR (default
# 10.100.0.2), CHROOT_BASE (default /srv/guardian-backup).
set -euo pipefail

die() { echo "setup.sh: $*" >&2; exit 1; }

# authorized_keys_lines ADDR PUBKEY_FILE: each key, usable only from ADDR,
# with every forwarding, pty and rc file off (restrict), and the one
# command it may run: SFTP in /data, read-only for a "read-only " line.
# sshd's Match block has no ForceCommand, which would override these.
authorized_keys_lines() {
	local addr=$1 file=$2 keys line cmd
	[ -r "$file" ] || die "cannot read the public key file '$file'"
	keys=$(grep -Ev '^[[:space:]]*(#|$)' "$file") || die "'$file' holds no key"
	while IFS= read -r line; do
		cmd="internal-sftp -d /data -u 0077"
		if [[ $line == "read-only "* ]]; then
			line=${line#read-only }
			cmd="internal-sftp -R -d /data"
		fi
		[[ $line =~ ^(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa)\ [A-Za-z0-9+/=]+ ]] ||
			die "'$file': every line must be an OpenSSH public key, optionally after \"read-only \""
		ssh-keygen -l -f <(printf '%s\n' "$line") >/dev/null || die "'$file': a line is not a valid public key"
		printf 'from="%s",restrict,command="%s" %s\n' "$addr" "$cmd" "$line"
	done <<<"$keys"
}

if [ "${1:-}" = --authorized-keys ]; then
	[ $# = 3 ] || die "usage: $0 --authorized-keys ADDR PUBKEY_FILE"
	authorized_keys_lines "$2" "$3"
	exit 0
fi

user=${1:-}
pubkey=${2:-}
app_addr=${APP_WG_ADDR:-10.100.0.1}
backup_addr=${BACKUP_WG_ADDR:-10.100.0.2}
base=${CHROOT_BASE:-/srv/guardian-backup}
here=$(cd "$(dirname "$0")" && pwd)

case $user in
pgbackrest | clickhouse-backup) ;;
*) die "usage: $0 pgbackrest|clickhouse-backup PUBKEY_FILE" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root"
[[ $app_addr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "APP_WG_ADDR must be an IPv4 address"
lines=$(authorized_keys_lines "$app_addr" "$pubkey") || exit 1

# 1. The user: a system account with no password and no shell. Its home is
#    the writable directory as seen inside the chroot. The password field is
#    "*" (no password can match), not "!" (locked): sshd without PAM refuses
#    a locked account even for a key.
if ! id "$user" >/dev/null 2>&1; then
	useradd --system --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin "$user"
fi
usermod -p '*' "$user"

# 2. The chroot. Every component of its path must be root-owned and not
#    writable by group or others.
install -d -o root -g root -m 0755 "$base" "$base/$user"
install -d -o "$user" -g "$user" -m 0700 "$base/$user/data"
p=$base/$user
while :; do
	read -r owner mode < <(stat -c '%u %a' "$p")
	[ "$owner" = 0 ] || die "$p is not owned by root: sshd will refuse the chroot"
	(( (8#$mode & 8#022) == 0 )) || die "$p is writable by group or others: sshd will refuse the chroot"
	[ "$p" = / ] && break
	p=$(dirname "$p")
done

# 3. The key, kept by root outside the chroot, usable only from the app
#    host's WireGuard address and with every forwarding, pty and rc file off.
install -d -o root -g root -m 0755 /etc/ssh/guardian-backup /etc/ssh/guardian-backup/authorized_keys
umask 022
printf '%s\n' "$lines" >"/etc/ssh/guardian-backup/authorized_keys/$user.tmp"
mv "/etc/ssh/guardian-backup/authorized_keys/$user.tmp" "/etc/ssh/guardian-backup/authorized_keys/$user"

# 4. sshd's rules, with the app host's address and the chroot base if they
# are not the defaults.
grep -q '^Include /etc/ssh/sshd_config.d/\*\.conf' /etc/ssh/sshd_config ||
	die "/etc/ssh/sshd_config does not include sshd_config.d/*.conf: add 'Include /etc/ssh/sshd_config.d/*.conf' as its first line"
conf=/etc/ssh/sshd_config.d/00-guardian-backup.conf
old_conf=/etc/ssh/sshd_config.d/guardian-backup.conf # its name before it sorted first
sed -e "s#10\.100\.0\.1/32#$app_addr/32#g" -e "s#^\([[:space:]]*ChrootDirectory[[:space:]]\+\)/srv/guardian-backup/#\1$base/#" \
	"$here/sshd_config.d/00-guardian-backup.conf" >"$conf.tmp"
[ ! -e "$conf" ] || cp -p "$conf" "$conf.previous"
mv "$conf.tmp" "$conf"
if ! sshd -t; then
	# A configuration sshd refuses must not stay installed: sshd would
	# not start again after its next restart.
	if [ -e "$conf.previous" ]; then mv "$conf.previous" "$conf"; else rm -f "$conf"; fi
	die "sshd -t failed with the new file; the previous configuration is back in place"
fi
rm -f "$conf.previous" "$old_conf"
# The posture's keys-only rule must be what sshd applies to an operator
# from anywhere, whatever other drop-ins say.
eff=$(sshd -T -C user=root,host=operator,addr=203.0.113.9)
grep -qx 'passwordauthentication no' <<<"$eff" && grep -qx 'kbdinteractiveauthentication no' <<<"$eff" ||
	die "sshd still allows passwords or keyboard-interactive for operators: another file in /etc/ssh/sshd_config.d (or sshd_config before its Include) sets them; remove that setting"
if command -v systemctl >/dev/null && systemctl is-active --quiet ssh 2>/dev/null; then
	systemctl reload ssh
fi

# 5. What the app host pins (GUARDIAN_BACKUP_SSH_KNOWN_HOSTS): copy it over a
#    trusted channel, never by ssh-keyscan across the network.
echo "setup.sh: $user ready: chroot $base/$user, writable dir /data, SFTP target $user@$backup_addr:22/data"
echo "setup.sh: known_hosts line for the app host:"
for k in /etc/ssh/ssh_host_ed25519_key.pub; do
	[ -r "$k" ] && echo "$backup_addr $(cut -d' ' -f1,2 "$k")"
done
