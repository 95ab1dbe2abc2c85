# deploy/stack/pidfile.sh: sourced by up.sh and down.sh.

# ours PIDFILE NEEDLE: the pid in PIDFILE runs and its command line holds
# NEEDLE. A pidfile left by a crash or a reboot may name an unrelated
# process by now, which must be neither signalled nor taken for ours.
ours() {
	local pid
	pid=$(cat "$1" 2>/dev/null) && [[ $pid =~ ^[1-9][0-9]*$ ]] && kill -0 "$pid" 2>/dev/null &&
		tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}
