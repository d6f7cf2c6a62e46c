# The local test cluster (k8s/cluster/): real Kubernetes from host processes, no Docker or kind.
# Included by the top Makefile. Needs root, Go and the Go module proxy for the first build.
#   make cluster-build   build/reuse the pinned binaries (cache: /var/tmp/music-analytics-cluster)
#   make cluster-up      start the cluster; KUBECONFIG=build/cluster/kubeconfig
#   make cluster-down    stop it and undo every change to the machine
#   make cluster-load    load a podman image into the cluster (CLUSTER_IMAGE=repo:tag)

CLUSTER_IMAGE ?= localhost/music-analytics:dev

.PHONY: cluster-build cluster-up cluster-down cluster-load cluster-e2e

cluster-build: ## build or reuse the pinned Kubernetes, etcd, CoreDNS and Helm binaries (root; ~11 min cold)
	k8s/cluster/build.sh

cluster-up: cluster-build ## start a one-node Kubernetes as host processes (root); KUBECONFIG=build/cluster/kubeconfig
	k8s/cluster/cluster-up.sh

cluster-down: ## stop the local cluster and undo every change it made to the machine
	k8s/cluster/cluster-down.sh

cluster-load: ## load a podman image into the local cluster (CLUSTER_IMAGE=repo:tag)
	k8s/cluster/load-image.sh $(CLUSTER_IMAGE)

# The chart on the real cluster: builds it, runs every check, stops it; report in build/cluster-e2e/.
cluster-e2e: $(TEST_STAMP) ## the chart on a real local cluster: install, Job, helm test, upgrades, faults (root)
	MUSIC_ANALYTICS_CLUSTER_E2E=1 $(BIN)/python -m pytest -v -ra tests/test_cluster_e2e.py
