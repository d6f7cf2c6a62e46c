# The local test cluster (k8s/cluster/): real Kubernetes from host processes, no Docker or kind.
# Included by the top Makefile. Needs root, Go and the Go module proxy for the first build.
#   make cluster-build   build/reuse the pinned binaries (cache: /var/tmp/music-analytics-cluster)
#   make cluster-up      start the cluster; KUBECONFIG=build/cluster/kubeconfig
#   make cluster-down    stop it and undo every change to the machine
#   make cluster-load    load a podman image into the cluster (CLUSTER_IMAGE=repo:tag)

CLUSTER_IMAGE ?= localhost/music-analytics:dev

.PHONY: cluster-build cluster-up cluster-down cluster-load

cluster-build:
	k8s/cluster/build.sh

cluster-up: cluster-build
	k8s/cluster/cluster-up.sh

cluster-down:
	k8s/cluster/cluster-down.sh

cluster-load:
	k8s/cluster/load-image.sh $(CLUSTER_IMAGE)
