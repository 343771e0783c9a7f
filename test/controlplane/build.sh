#!/usr/bin/env bash
# Builds the real test control plane (kube-apiserver v1.37.2 and etcd v3.6.x)
# from the nested Go modules beside this script into
#   <repo>/.cache/controlplane/bin/{kube-apiserver,etcd}
# (git-ignored). A binary whose stamp file matches the wanted version is not
# rebuilt. Cold build ≈ 10 min on 2 cores; warm (already built) ≈ 0 s.
#
# Environment:
#   CONTROLPLANE_BIN  output folder (default <repo>/.cache/controlplane/bin)
#   GOFLAGS etc.      passed through to go build
set -euo pipefail
# Temporary outputs carry the PID, so two concurrent runs do not clobber each
# other; the last mv wins with an identical binary.

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${CONTROLPLANE_BIN:-$repo/.cache/controlplane/bin}"

KUBE_VERSION="v1.37.2"
KUBE_MAJOR="1"
KUBE_MINOR="37"

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { printf '[controlplane] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH"
mkdir -p "$bin" || die "cannot create $bin"

# etcd version comes from the nested module's go.mod so the two never drift.
ETCD_VERSION="$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3}' "$here/etcd/go.mod")"
[[ -n "$ETCD_VERSION" ]] || die "cannot read the etcd version from $here/etcd/go.mod"

# up_to_date NAME WANT: the binary exists, runs, and its stamp says WANT.
up_to_date() {
	local name="$1" want="$2"
	[[ -x "$bin/$name" && -f "$bin/$name.stamp" ]] || return 1
	[[ "$(cat "$bin/$name.stamp")" == "$want" ]] || return 1
}

build_apiserver() {
	local want="kube-apiserver $KUBE_VERSION"
	if up_to_date kube-apiserver "$want"; then
		log "kube-apiserver $KUBE_VERSION already built: $bin/kube-apiserver"
		return
	fi
	log "building kube-apiserver $KUBE_VERSION (cold: ~9 min on 2 cores) ..."
	local start=$SECONDS tmp="$bin/.kube-apiserver.$$.tmp"
	rm -f "$bin/kube-apiserver.stamp"
	(cd "$here/apiserver" && go build -ldflags "-s -w \
		-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
		-X k8s.io/component-base/version.gitMajor=$KUBE_MAJOR \
		-X k8s.io/component-base/version.gitMinor=$KUBE_MINOR" \
		-o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver) \
		|| die "go build of kube-apiserver failed (see above)"
	"$tmp" --version >/dev/null 2>&1 || die "built kube-apiserver does not run: $tmp --version"
	local got
	got="$("$tmp" --version)"
	[[ "$got" == *"$KUBE_VERSION"* ]] || die "kube-apiserver reports '$got', want $KUBE_VERSION (ldflags?)"
	mv -f "$tmp" "$bin/kube-apiserver"
	echo "$want" >"$bin/kube-apiserver.stamp"
	log "kube-apiserver built in $((SECONDS - start)) s: $got"
}

build_etcd() {
	local want="etcd $ETCD_VERSION"
	if up_to_date etcd "$want"; then
		log "etcd $ETCD_VERSION already built: $bin/etcd"
		return
	fi
	log "building etcd $ETCD_VERSION (cold: ~1.5 min on 2 cores) ..."
	local start=$SECONDS tmp="$bin/.etcd.$$.tmp"
	rm -f "$bin/etcd.stamp"
	# The program is the module root; go build names it "server": use -o FILE.
	(cd "$here/etcd" && go build -ldflags "-s -w" -o "$tmp" go.etcd.io/etcd/server/v3) \
		|| die "go build of etcd failed (see above)"
	# Read the whole output, then keep its first line: a pipe into head can
	# kill the writer with SIGPIPE (exit 141) under pipefail.
	local got
	got="$("$tmp" --version 2>&1)" || die "built etcd does not run: $tmp --version"
	got="${got%%$'\n'*}"
	[[ "$got" == *"${ETCD_VERSION#v}"* ]] || die "etcd reports '$got', want $ETCD_VERSION"
	mv -f "$tmp" "$bin/etcd"
	echo "$want" >"$bin/etcd.stamp"
	log "etcd built in $((SECONDS - start)) s: $got"
}

total=$SECONDS
build_etcd
build_apiserver
log "control plane ready in $bin ($((SECONDS - total)) s); export KUBEBUILDER_ASSETS=$bin"
