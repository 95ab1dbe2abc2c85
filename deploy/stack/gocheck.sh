# deploy/stack/gocheck.sh: sourced by up.sh and test.sh, in the repository
# root, before anything else is installed or started.

# The Go that need_go installs where none will do: its version, and the
# SHA-256 of its module zip (golang.org/toolchain, as `go` itself fetches
# toolchains) per Debian architecture, checked against the checksum
# database when pinned. Make reads GO_TOOLCHAIN from here too.
GO_TOOLCHAIN=1.26.8
declare -A GO_TOOLCHAIN_SHA256=(
	[amd64]=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
	[arm64]=02b36b6787b3ac767668f630e2998df45a3b1f9ffee08d1bf3ef6487cd658d99
)

# GO_SYSTEM_ROOT is where Go's own installer puts Go, often not on PATH.
GO_SYSTEM_ROOT=/usr/local/go

# go_home: where need_go installs Go: the user's own cache, so no root is
# needed and no system Go is replaced.
go_home() { printf '%s\n' "${GUARDIAN_GO_HOME:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/guardian/go$GO_TOOLCHAIN}"; }

# go_version: the version `go` runs in this module, or nothing. A Go of
# 1.21 or newer with GOTOOLCHAIN=auto (its default) fetches go.mod's
# version itself on its first command here, which `go env GOVERSION` is.
go_version() {
	local out
	command -v go >/dev/null || return 0
	# The version is the last line, after any download messages.
	if out=$(go env GOVERSION 2>&1) && [[ ${out##*$'\n'} =~ go([0-9]+(\.[0-9]+)*) ]]; then
		printf '%s\n' "${BASH_REMATCH[1]}"
	else
		printf '%s\n' "$out" >&2 # why: no network for the download, GOTOOLCHAIN=local...
	fi
}

# need_go: make `go` on PATH run Go at least as new as $GO_TOOLCHAIN,
# installing that into go_home when none does (Debian 12's own golang-go is
# 1.19, too old to fetch a newer one); exit saying why when that fails.
# go.mod's `go` line is lower: it says what the language needs, but the
# releases between it and the pin fixed security faults in the standard
# library (net/http, crypto/...) that every binary here links.
need_go() {
	local want have home
	want=$GO_TOOLCHAIN
	home=$(go_home)
	if [[ -x $home/bin/go ]]; then
		export PATH=$home/bin:$PATH
	elif ! command -v go >/dev/null && [[ -x $GO_SYSTEM_ROOT/bin/go ]]; then
		export PATH=$PATH:$GO_SYSTEM_ROOT/bin
	fi
	have=$(go_version)
	if [[ -n $have ]] && version_at_least "$have" "$want"; then
		return 0
	fi
	local found="no usable go command"
	[[ -n $have ]] && found="Go $have, older than $want (the pinned Go)"
	echo "go: found $found; installing Go $GO_TOOLCHAIN into $home" >&2
	install_go "$home" || {
		cat >&2 <<MSG
Guardian needs Go $want or newer, and installing it failed (above).
Install it from https://go.dev/dl/ into /usr/local/go and put /usr/local/go/bin
on PATH, then run this again. Nothing else was installed or started.
MSG
		exit 1
	}
	export PATH=$home/bin:$PATH
	have=$(go_version)
	if [[ -z $have ]] || ! version_at_least "$have" "$want"; then
		echo "go: the Go installed in $home answers ${have:-nothing}, not $want or newer" >&2
		exit 1
	fi
	echo "go: installed Go $have in $home; put $home/bin on PATH to run go yourself" >&2
}

# version_at_least A B: A >= B, as dotted versions.
version_at_least() { [[ $(printf '%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

# install_go DIR: fetch Go $GO_TOOLCHAIN's module zip from the first Go
# module proxy of GOPROXY (proxy.golang.org by default), check its pinned
# SHA-256, and unpack it into DIR, which appears whole or not at all.
install_go() {
	local dir=$1 arch sum proxy tmp mod
	arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
	sum=${GO_TOOLCHAIN_SHA256[$arch]:-}
	if [[ -z $sum ]]; then
		echo "go: no Go build is pinned for architecture $arch (only ${!GO_TOOLCHAIN_SHA256[*]})" >&2
		return 1
	fi
	for tool in curl unzip sha256sum; do
		if ! command -v "$tool" >/dev/null; then
			deploy/stack/deps.sh curl ca-certificates unzip coreutils || return 1
			break
		fi
	done
	# GOPROXY as the go command reads it (go env -w too), when one runs.
	proxy=${GOPROXY:-$(GOTOOLCHAIN=local go env GOPROXY 2>/dev/null || true)}
	proxy=${proxy:-https://proxy.golang.org}
	proxy=${proxy%%[,|]*}
	if [[ $proxy != http://* && $proxy != https://* && $proxy != file://* ]]; then
		echo "go: GOPROXY's first entry is not a proxy to download Go from (off or direct)" >&2
		return 1
	fi
	mod=golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN.linux-$arch
	mkdir -p "$(dirname "$dir")" || return 1
	tmp=$(mktemp -d "$(dirname "$dir")/.go-install.XXXXXX") || return 1
	# A subshell, so that its trap removes the scratch directory however it
	# ends, and the caller's traps stay as they are.
	(
		trap 'rm -rf "$tmp"' EXIT
		# One install at a time (two `make` runs at once): the second finds
		# the first's.
		exec 9>"$(dirname "$dir")/.go-install-lock" && flock -w 900 9 || exit 1
		[[ -x $dir/bin/go ]] && exit 0
		curl -fsSL --retry 3 --connect-timeout 20 -o "$tmp/go.zip" \
			"${proxy%/}/golang.org/toolchain/@v/v0.0.1-go$GO_TOOLCHAIN.linux-$arch.zip" || exit 1
		if ! echo "$sum  $tmp/go.zip" | sha256sum -c --quiet - >/dev/null 2>&1; then
			echo "go: the download from the Go module proxy does not have the pinned SHA-256; not installed" >&2
			exit 1
		fi
		unzip -q "$tmp/go.zip" "$mod/*" -d "$tmp/x" || exit 1
		chmod -R u+w,go-w "$tmp/x/$mod" || exit 1
		chmod +x "$tmp/x/$mod"/bin/* "$tmp/x/$mod"/pkg/tool/*/* 2>/dev/null
		rm -rf "$dir" && mv -T "$tmp/x/$mod" "$dir"
	)
}
