# deploy/stack/gocheck.sh: sourced by up.sh and test.sh, in the repository
# root, before anything is installed or started.

# need_go: exit with what to install unless `go` runs Go at least as new as
# go.mod's `go` line. A Go of 1.21 or newer with GOTOOLCHAIN=auto (its
# default) fetches that version itself on its first command in the module,
# which `go env GOVERSION` is.
need_go() {
	local want have="" out="" found="no go command on PATH"
	want=$(sed -n 's/^go \([0-9][0-9.]*\)$/\1/p' go.mod)
	if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
		export PATH=$PATH:/usr/local/go/bin
	fi
	if command -v go >/dev/null; then
		# The version is the last line, after any download messages.
		if out=$(go env GOVERSION 2>&1) && [[ ${out##*$'\n'} =~ go([0-9]+(\.[0-9]+)*) ]]; then
			have=${BASH_REMATCH[1]} found="Go $have"
		else
			printf '%s\n' "$out" >&2 # why: no network for the download, GOTOOLCHAIN=local...
			found="$(command -v go), which failed (above)"
		fi
	fi
	if [[ -n $have && $(printf '%s\n' "$want" "$have" | sort -V | head -n1) == "$want" ]]; then
		return 0
	fi
	cat >&2 <<MSG
Guardian needs Go $want or newer (go.mod); found $found.
Install it from https://go.dev/dl/ into /usr/local/go and put /usr/local/go/bin
on PATH, or use a Go of 1.21 or newer with GOTOOLCHAIN=auto and network access,
which downloads Go $want by itself. Nothing was installed or started.
MSG
	exit 1
}
