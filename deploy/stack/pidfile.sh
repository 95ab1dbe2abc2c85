# deploy/stack/pidfile.sh: sourced by up.sh and down.sh.

# ours PIDFILE NEEDLE: the pid in PIDFILE runs and its command line holds
# NEEDLE. A pidfile left by a crash or a reboot may name an unrelated
# process by now, which must be neither signalled nor taken for ours.
ours() {
	local pid
	pid=$(cat "$1" 2>/dev/null) && [[ $pid =~ ^[1-9][0-9]*$ ]] && kill -0 "$pid" 2>/dev/null &&
		tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# stop_ours PIDFILE NAME: end the process in PIDFILE, which ours vouched
# for, and remove PIDFILE: SIGTERM (Caddy stops its functions before it
# exits), SIGKILL after 15 s. Returns once the process is gone.
stop_ours() {
	local pid
	pid=$(cat "$1")
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 150); do
		running "$pid" || break
		sleep 0.1
	done
	if running "$pid"; then
		echo "$2: still running after 15 s, killing" >&2
		kill -KILL "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do
			running "$pid" || break
			sleep 0.1
		done
	fi
	rm -f "$1"
}

# running PID: PID exists and is not a zombie.
running() { [[ -d /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
