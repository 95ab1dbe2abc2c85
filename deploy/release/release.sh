#!/usr/bin/env bash
# release.sh VERSION   (run by `make release VERSION=x.y.z`)
#
# Builds dist/VERSION/linux_{amd64,arm64}/{caddy,guardianctl,functions/*}
# with build.sh, writes an SBOM and release notes, then SHA256SUMS signed
# with the Ed25519 key at $GUARDIAN_RELEASE_KEY (sign.sh), and verifies the
# result (verify.sh).
#
# Environment:
#   GUARDIAN_RELEASE_KEY  OpenSSH Ed25519 private key; unset = a throwaway
#                         key under dist/ (NOT the real signing key)
#   GUARDIAN_VULNCHECK    "skip" to release without govulncheck (stated in
#                         the release notes); anything else runs it
#   GUARDIAN_VULNDB       optional govulncheck -db URL (e.g. file:///mirror);
#                         unset and https://vuln.go.dev unreachable: a
#                         database is built from the golang.org/x/vulndb
#                         module (vulndb.sh) and its version is stated
#   GOVULNCHECK_VERSION   default "latest"
#   GUARDIAN_RELEASE_TOOLCHAIN  the Go toolchain releases are built and
#                         checked with (default go1.27.3; the notes state it).
#                         The machine's own Go fetches it from the module
#                         proxy like any module. A release is reproducible
#                         with the same toolchain, and its standard library
#                         is what govulncheck judges.
set -euo pipefail
export GOTOOLCHAIN=${GUARDIAN_RELEASE_TOOLCHAIN:-go1.27.3}

version=${1:-}
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]]; then
	echo "release: VERSION must look like x.y.z (got '${version}'): make release VERSION=1.2.3" >&2
	exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
GO=${GO:-go}

# Signed with the real key, a release is of a commit, whole: its notes
# promise anyone can rebuild it byte for byte from that commit. An edit
# not committed, or a stray file, would ship signed and unrebuildable.
# (dist/ is git-ignored.) A throwaway-key release may be of anything.
if [ -n "${GUARDIAN_RELEASE_KEY:-}" ]; then
	if ! git rev-parse --verify -q HEAD >/dev/null; then
		echo "release: not a git checkout with a commit; a release signed with the release key must be of a commit" >&2
		exit 1
	fi
	if [ -n "$(git status --porcelain --untracked-files=all --ignore-submodules=none)" ]; then
		echo "release: the working tree differs from HEAD (git status); commit or remove the changes first" >&2
		exit 1
	fi
fi
platforms="linux/amd64 linux/arm64"
dist=dist/$version

# --- 1. govulncheck -------------------------------------------------------
vulncheck=${GUARDIAN_VULNCHECK:-run}
if [ "$vulncheck" = skip ]; then
	echo "release: WARNING: GUARDIAN_VULNCHECK=skip: no vulnerability check; the release notes will say so" >&2
	vulnstatus="NOT RUN (GUARDIAN_VULNCHECK=skip): this release was not checked against the Go vulnerability database."
else
	dbflag=()
	vulnsource="https://vuln.go.dev"
	if [ -n "${GUARDIAN_VULNDB:-}" ]; then
		dbflag=(-db "$GUARDIAN_VULNDB")
		vulnsource=$GUARDIAN_VULNDB
	elif ! curl -fsS -m 15 -o /dev/null https://vuln.go.dev/index/db.json 2>/dev/null; then
		echo "release: https://vuln.go.dev is unreachable; building the database from the golang.org/x/vulndb module" >&2
		vdb=$(mktemp -d)
		trap 'rm -rf "$vdb"' EXIT
		vulnsource=$(GO="$GO" "$here/vulndb.sh" "$vdb/db")
		dbflag=(-db "file://$vdb/db")
	fi
	echo "release: govulncheck ${dbflag[*]} ./..." >&2
	set +e
	vc_out=$(GOFLAGS= "$GO" run "golang.org/x/vuln/cmd/govulncheck@${GOVULNCHECK_VERSION:-latest}" "${dbflag[@]}" ./... 2>&1)
	vc_rc=$?
	set -e
	printf '%s\n' "$vc_out" >&2
	case $vc_rc in
	0) vulnstatus="govulncheck ($(GOFLAGS= "$GO" run "golang.org/x/vuln/cmd/govulncheck@${GOVULNCHECK_VERSION:-latest}" -version 2>/dev/null | grep -i -m1 'scanner' || echo govulncheck)) with $("$GO" env GOVERSION), database $vulnsource: no known vulnerability reachable from Guardian's code." ;;
	3)
		echo "release: FAILED: govulncheck found vulnerabilities reachable from our code (above). Upgrade the modules or Go toolchain named there." >&2
		exit 1 ;;
	*)
		echo >&2
		echo "release: FAILED: govulncheck could not run (exit $vc_rc)." >&2
		if grep -qiE 'vuln\.go\.dev|fetch|dial|connect|timeout|no such host|database' <<<"$vc_out"; then
			echo "release: the vulnerability database (${GUARDIAN_VULNDB:-https://vuln.go.dev}) could not be fetched from this machine." >&2
		fi
		echo "release: point GUARDIAN_VULNDB at a reachable mirror (file:///path works), or set GUARDIAN_VULNCHECK=skip to release unchecked (the release notes will say so)." >&2
		exit 1 ;;
	esac
fi

# --- 2. build -------------------------------------------------------------
rm -rf "$dist"
mkdir -p "$dist"
for p in $platforms; do
	goos=${p%/*} goarch=${p#*/}
	out=$dist/${goos}_${goarch}
	echo "release: building $out" >&2
	GUARDIAN_VERSION=$version "$here/build.sh" "$out" "$goos" "$goarch" ./cmd/caddy ./cmd/guardianctl
	GUARDIAN_VERSION=$version "$here/build.sh" "$out/functions" "$goos" "$goarch" ./functions/...
done
# The Caddyfile, web/ and the cron wrapper, signed with the binaries.
"$here/config.sh" "$dist"

# No local paths may leak into an artefact.
leaks=()
for d in "$root" "$HOME" "$(GOFLAGS= "$GO" env GOMODCACHE)" "$(GOFLAGS= "$GO" env GOROOT)"; do
	[ -n "$d" ] && [ "$d" != / ] || continue
	# With a trailing slash: "/root" alone occurs in crypto/x509/root.go.
	while IFS= read -r f; do leaks+=("$f contains $d/"); done < <(grep -rlaF -- "$d/" "$dist" || true)
done
if [ ${#leaks[@]} -gt 0 ]; then
	printf 'release: FAILED: local path in artefact: %s\n' "${leaks[@]}" >&2
	exit 1
fi

# --- 3. SBOM --------------------------------------------------------------
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=""
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
	dirty=" (working tree had uncommitted changes: vcs.modified=true)"
fi
goversion=$(GOFLAGS= "$GO" env GOVERSION)
{
	echo "# Guardian $version software bill of materials"
	echo "# commit $commit$dirty, built with $goversion, CGO_ENABLED=0"
	echo "# Per binary: \`go version -m\` output (path = main package, mod = main module,"
	echo "# dep = module version and go.sum hash, build = build settings)."
	(cd "$dist" && find . -path './linux_*/*' -type f -printf '%P\n' | LC_ALL=C sort | while IFS= read -r f; do
		echo
		GOFLAGS= "$GO" version -m "$f"
	done)
} >"$dist/SBOM.txt"

# --- 4. key ---------------------------------------------------------------
key=${GUARDIAN_RELEASE_KEY:-}
throwaway=false
if [ -z "$key" ]; then
	throwaway=true
	key=dist/throwaway-release-key/id_ed25519
	if [ ! -f "$key" ]; then
		mkdir -p "$(dirname "$key")"
		chmod 700 "$(dirname "$key")"
		ssh-keygen -q -t ed25519 -N '' -C 'THROWAWAY release@guardian' -f "$key"
	fi
	cat >&2 <<MSG

######################################################################
#  GUARDIAN_RELEASE_KEY is not set: signing with a THROWAWAY key      #
#  $key
#  This is NOT the real Guardian release signing key. Do not publish  #
#  this release; set GUARDIAN_RELEASE_KEY=/path/to/ed25519 key.       #
######################################################################

MSG
fi
fingerprint=$(ssh-keygen -l -f "$key" | awk '{print $2}')

# --- 5. notes, sums, signature --------------------------------------------
artefacts=$(cd "$dist" && find . -path './linux_*/*' -type f -printf '%P\n' | LC_ALL=C sort | sed 's/^/- `/; s/$/`/')
keynote="Signing key: \`$fingerprint\`."
$throwaway && keynote="**WARNING: signed with a THROWAWAY key ($fingerprint), not the real Guardian release key. Do not trust or publish.**"
VERSION=$version COMMIT="$commit$dirty" GOVERSION=$goversion VULNCHECK=$vulnstatus \
	KEYNOTE=$keynote ARTEFACTS=$artefacts \
	awk '{
		gsub(/\{\{VERSION\}\}/, ENVIRON["VERSION"]); gsub(/\{\{COMMIT\}\}/, ENVIRON["COMMIT"])
		gsub(/\{\{GOVERSION\}\}/, ENVIRON["GOVERSION"]); gsub(/\{\{VULNCHECK\}\}/, ENVIRON["VULNCHECK"])
		gsub(/\{\{KEY\}\}/, ENVIRON["KEYNOTE"])
		if ($0 == "{{ARTEFACTS}}") { print ENVIRON["ARTEFACTS"]; next }
		print
	}' "$here/NOTES.template.md" >"$dist/NOTES.md"

"$here/sign.sh" "$dist" "$key"
"$here/verify.sh" --own-key "$dist"
echo "release: $dist ready ($(wc -l <"$dist/SHA256SUMS") files in SHA256SUMS)" >&2
$throwaway && echo "release: REMINDER: signed with the THROWAWAY key $key, not the real release key" >&2
exit 0
