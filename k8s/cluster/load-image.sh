#!/usr/bin/env bash
# Copy a podman image into the local cluster's containerd (namespace k8s.io), where the kubelet
# finds it: nothing can be pulled here, so pods use imagePullPolicy Never/IfNotPresent.
# Usage: load-image.sh IMAGE [IMAGE...]   (as podman names it, e.g. localhost/music-analytics:dev)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || die "usage: $0 IMAGE [IMAGE...]"
[ -S "$CONTAINERD_SOCK" ] || die "the cluster's containerd is not running (make cluster-up)"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$CLUSTER_DIR/templates/containers.conf}
for image in "$@"; do
    t0=$SECONDS
    # docker-archive keeps the repo:tag podman shows, which is the name pods must use. A short
    # name like music-analytics:dev is stored by podman as localhost/music-analytics:dev.
    podman save --format docker-archive "$image" \
        | ctr --address "$CONTAINERD_SOCK" --namespace k8s.io images import -
    log "loaded $image in $((SECONDS - t0)) s"
done
