#!/usr/bin/env bash
# Build (or reuse from the cache) every binary the local test cluster runs, at the versions
# pinned in versions.env. Usage:
#   build.sh            install Debian packages if missing, then build what is not cached
#   build.sh deps       only the Debian packages
#   build.sh bin-dir    print the bin/<key>/ directory (no build)
#   build.sh skaffold   also build skaffold (optional; see build_skaffold)
# Go modules come from the Go module proxy; nothing else is downloaded. Binaries are static
# (CGO_ENABLED=0), stripped and -trimpath'd: smaller, faster to link, reproducible paths.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN_DIR=$CACHE_DIR/bin/$(cache_key)
SRC_DIR=$CACHE_DIR/src
export GOCACHE=$CACHE_DIR/gocache GOMODCACHE=$CACHE_DIR/gomod
# -modcacherw: the module cache can then be removed with a plain rm -rf.
export GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0
# Never download a toolchain: the machine's Go must do (no site but the module proxy).
export GOTOOLCHAIN=local

# Debian packages the cluster and the images need. containerd 1.6 speaks CRI v1 (kubelet 1.32
# needs it); runc for containers; containernetworking-plugins for bridge/host-local/loopback/
# portmap; podman builds and saves images; gcc -static builds pause; busybox-static is the smoke
# test image; debootstrap makes the Python base image of the project image.
DEB_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack iproute2 podman
    gcc libc6-dev openssl debootstrap busybox-static procps util-linux)

deps() {
    local missing=() p
    for p in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    # The lock timeout: another apt run (unattended or a parallel CI step) may hold the lock.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

# Time each step so a cold CI run shows where its minutes went.
timed() {
    local what=$1 t0=$SECONDS
    shift
    "$@"
    log "$what: $((SECONDS - t0)) s"
}

have() { local b; for b in "$@"; do [ -x "$BIN_DIR/$b" ] || return 1; done; }

# Kubernetes as a module: k8s.io/kubernetes replaces its k8s.io/* staging modules with
# ./staging/... paths, and replace directives of a dependency are ignored, so our own go.mod
# must replace each with the published v0.<minor>.<patch> of that staging module.
build_kubernetes() {
    local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
    have "${cmds[@]}" && return 0
    local v=$KUBERNETES_VERSION d=$SRC_DIR/kubernetes-$KUBERNETES_VERSION
    local staging=v0.${v#v1.} gomod c major minor
    mkdir -p "$d"
    gomod=$(cd "$d" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ] || die "k8s.io/kubernetes@$v: go.mod not downloaded"
    {
        echo "module music-analytics.local/cluster-build/kubernetes"
        echo
        # The language version and GODEBUG defaults Kubernetes itself builds with.
        echo "go 1.23.0"
        echo
        echo "godebug default=go1.23"
        echo
        echo "require k8s.io/kubernetes $v"
        echo
        echo "replace ("
        sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
        echo ")"
    } > "$d/go.mod"
    {
        echo "//go:build tools"
        echo
        echo "// Package tools only pins the commands we build, so go mod tidy keeps their deps."
        echo "package tools"
        echo
        echo "import ("
        for c in "${cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
        echo ")"
    } > "$d/tools.go"
    local o
    for o in $KUBERNETES_STAGING_OVERRIDES; do
        sed -i "s#^\t${o%%=*} => ${o%%=*} .*#\t${o%%=*} => ${o%%=*} ${o#*=}#" "$d/go.mod"
    done
    (cd "$d" && go mod tidy)
    # Version stamps, as hack/lib/version.sh sets them: kubectl version, the node's
    # kubeletVersion and Helm's kubeVersion checks read these.
    major=${v#v}; major=${major%%.*}; minor=${v#v*.}; minor=${minor%%.*}
    local ld="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ld+=" -X $pkg.gitCommit=$KUBERNETES_GIT_COMMIT -X $pkg.gitTreeState=clean"
        ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    local out; out=$(mktemp -d "$BIN_DIR/.tmp.XXXXXX")
    # One go build for all six: the shared packages compile once.
    (cd "$d" && go build -trimpath -ldflags "$ld" -o "$out/" "${cmds[@]/#/k8s.io/kubernetes/cmd/}")
    for c in "${cmds[@]}"; do mv "$out/$c" "$BIN_DIR/$c"; done
    rmdir "$out"
}

# A module whose go.mod has replace directives (etcd's point at ../sibling dirs) cannot be
# `go install`ed at a version: wrap it in a go.mod of our own, let tidy take its requirements.
build_wrapped() { # name module version package output
    local name=$1 mod=$2 ver=$3 pkg=$4 out=$5
    have "$out" && return 0
    local d=$SRC_DIR/$name-$ver
    mkdir -p "$d"
    printf 'module music-analytics.local/cluster-build/%s\n\ngo 1.24\n\nrequire %s %s\n' \
        "$name" "$mod" "$ver" > "$d/go.mod"
    # go get, not go mod tidy: tidy also resolves the tests of every dependency, and
    # etcdctl's test graph has an ambiguous import (cloud.google.com/go/compute/metadata).
    (cd "$d" && go get "$pkg@$ver" && go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/.$out.tmp" "$pkg")
    mv "$BIN_DIR/.$out.tmp" "$BIN_DIR/$out"
}

# Modules without replace directives install as they are, with their own go.sum.
build_installed() { # module/cmd version output ldflags
    local pkg=$1 ver=$2 out=$3 ld=${4:-}
    have "$out" && return 0
    local gobin; gobin=$(mktemp -d "$BIN_DIR/.tmp.XXXXXX")
    GOBIN=$gobin go install -trimpath -ldflags "-s -w $ld" "$pkg@$ver"
    mv "$gobin/$(basename "$pkg")" "$BIN_DIR/$out"
    rmdir "$gobin"
}

# pause: the sandbox container's only process. Kubernetes' own build/pause/linux/pause.c from
# the k8s.io/kubernetes module zip, linked statically so the image can be FROM scratch.
build_pause() {
    have pause && return 0
    local dir
    dir=$(cd "$SRC_DIR" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    gcc -Os -static -DVERSION="\"$KUBERNETES_VERSION\"" -o "$BIN_DIR/.pause.tmp" "$dir/build/pause/linux/pause.c"
    strip "$BIN_DIR/.pause.tmp"
    mv "$BIN_DIR/.pause.tmp" "$BIN_DIR/pause"
}

# The ServiceMonitor and PrometheusRule CRDs, so the chart's monitoring objects can be created
# (no operator runs them). The prometheus-operator Go module zip carries the CRD yaml files.
fetch_crds() {
    local files=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
    local f dir absent=false
    for f in "${files[@]}"; do [ -f "$BIN_DIR/crds/$f" ] || absent=true; done
    $absent || return 0
    dir=$(cd "$SRC_DIR" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    mkdir -p "$BIN_DIR/crds"
    for f in "${files[@]}"; do cp "$dir/example/prometheus-operator-crd/$f" "$BIN_DIR/crds/$f"; done
}

# skaffold v2, optional (`build.sh skaffold`): its go.mod has replace directives, so a wrapper
# module copies them (single-line form, as skaffold writes them). Before running it, turn its
# telemetry off (`skaffold config set --global collect-metrics false`): with metrics on it probes
# an internet address to decide whether to upload. SKAFFOLD_UPDATE_CHECK=false for the update check.
build_skaffold() {
    have skaffold && return 0
    local mod=github.com/GoogleContainerTools/skaffold/v2 d=$SRC_DIR/skaffold-$SKAFFOLD_VERSION gomod
    mkdir -p "$d" "$BIN_DIR"
    gomod=$(cd "$d" && go mod download -json "$mod@$SKAFFOLD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ] || die "$mod@$SKAFFOLD_VERSION: go.mod not downloaded"
    {
        printf 'module music-analytics.local/cluster-build/skaffold\n\ngo 1.24.1\n\nrequire %s %s\n\n' "$mod" "$SKAFFOLD_VERSION"
        grep '^replace ' "$gomod" || true
    } > "$d/go.mod"
    (cd "$d" && go get "$mod/cmd/skaffold@$SKAFFOLD_VERSION" \
        && go build -trimpath -ldflags "-s -w -X $mod/pkg/skaffold/version.version=$SKAFFOLD_VERSION" \
            -o "$BIN_DIR/.skaffold.tmp" "$mod/cmd/skaffold")
    mv "$BIN_DIR/.skaffold.tmp" "$BIN_DIR/skaffold"
}

build_all() {
    mkdir -p "$BIN_DIR" "$SRC_DIR"
    log "binaries: $BIN_DIR"
    timed pause build_pause
    timed helm build_installed helm.sh/helm/v3/cmd/helm "$HELM_VERSION" helm \
        "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    timed etcd build_wrapped etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 etcd
    timed etcdctl build_wrapped etcdctl go.etcd.io/etcd/etcdctl/v3 "$ETCDCTL_VERSION" go.etcd.io/etcd/etcdctl/v3 etcdctl
    timed coredns build_installed github.com/coredns/coredns "$COREDNS_VERSION" coredns
    timed kubernetes build_kubernetes
    timed crds fetch_crds
    # A manifest of what this key holds, for humans and for cluster-up.sh's sanity check.
    (cd "$BIN_DIR" && find . -type f ! -name 'SHA256SUMS*' -printf '%P\n' | sort | xargs sha256sum > SHA256SUMS.tmp \
        && mv SHA256SUMS.tmp SHA256SUMS)
    log "done: $(du -sh "$BIN_DIR" | cut -f1) in $BIN_DIR"
}

case ${1:-all} in
    deps) timed deps deps ;;
    bin-dir) echo "$BIN_DIR" ;;
    skaffold) timed skaffold build_skaffold ;;
    all) timed deps deps; timed total build_all ;;
    *) die "usage: $0 [all|deps|bin-dir|skaffold]" ;;
esac
