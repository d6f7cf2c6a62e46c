# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts
# Shared settings for build.sh, cluster-up.sh, cluster-down.sh and load-image.sh.
# Sourced, not run. Everything is derived from versions.env and two overridable locations:
#   MUSIC_ANALYTICS_CLUSTER_CACHE  build cache (Go caches, sources, binaries); survives
#                                  across checkouts and CI runs on the same machine
#   MUSIC_ANALYTICS_CLUSTER_STATE  one running cluster's state (PIDs, certs, logs, etcd,
#                                  containerd); build/cluster in the repo by default

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
# shellcheck source=versions.env
. "$CLUSTER_DIR/versions.env"

CACHE_DIR=${MUSIC_ANALYTICS_CLUSTER_CACHE:-/var/tmp/music-analytics-cluster}
STATE_DIR=${MUSIC_ANALYTICS_CLUSTER_STATE:-$REPO_ROOT/build/cluster}

# Bump when build.sh changes how binaries are made, so cached ones built the old way are
# not reused.
BUILD_RECIPE=1

# The cache key covers every pinned version, the recipe and the Go toolchain: any change
# builds into a fresh bin/<key>/ and leaves older keys alone (delete them by hand).
cache_key() {
    local gov
    gov=$(go env GOVERSION 2>/dev/null || echo nogo)
    printf 'k8s-%s-%s\n' "$KUBERNETES_VERSION" \
        "$( { grep -v '^#' "$CLUSTER_DIR/versions.env"; echo "recipe=$BUILD_RECIPE go=$gov"; } | sha256sum | cut -c1-12)"
}

# Network layout. Only addresses on this machine: a bridge we create holds the node IP,
# pods live on the CNI bridge, services are virtual (kube-proxy iptables).
NODE_NAME=music-analytics-node
NODE_BRIDGE=k8snode0
NODE_IP=10.77.0.1
POD_BRIDGE=k8spods0
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
CLUSTER_DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
APISERVER_PORT=6443
APISERVER_URL=https://$NODE_IP:$APISERVER_PORT
# Loopback ports of the host processes; not the defaults, so a system etcd cannot collide.
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
COREDNS_HEALTH_PORT=18053
COREDNS_READY_PORT=18054
# containerd gets its own socket and state under /run, so it never meets a system containerd.
CONTAINERD_RUN=/run/music-analytics-containerd
CONTAINERD_SOCK=$CONTAINERD_RUN/containerd.sock
# host-local IPAM state; under /run so a reboot clears it like the netns it describes.
CNI_IPAM_DIR=/run/music-analytics-cni
# The smoke-test image cluster-up.sh makes from Debian's static busybox.
SMOKE_IMAGE=localhost/music-analytics/busybox:local
# Our own iptables chain in FORWARD: keeps pod traffic on this machine.
FW_CHAIN=MUSIC-ANALYTICS-FWD

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
