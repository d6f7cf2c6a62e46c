# Kubernetes targets (included by the top Makefile), for users with Docker (or podman) and kind.
# Nothing here runs in CI; the image build itself is tested with podman (tests/test_image.py).
# `make help` lists them all.

CONTAINER_TOOL ?= docker
KIND ?= kind
HELM ?= helm
KUBECTL ?= kubectl
KIND_CLUSTER ?= music-analytics
IMAGE_REPO ?= music-analytics
IMAGE_TAG ?= dev
# The latest CPython 3.11 patch release, on the official slim image (pin a digest in production).
BASE_IMAGE ?= docker.io/library/python:3.11.18-slim-bookworm
# linux/amd64 or linux/arm64; empty: the container tool's default (the host's platform).
PLATFORM ?=
# A directory of the pinned third-party wheels (make wheelhouse) for a build without a package
# index; empty: the build gets them from PyPI.
WHEELHOUSE ?=
K8S_NAMESPACE ?= music-analytics
RELEASE ?= music-analytics
MONITORING_NAMESPACE ?= monitoring
# How long the pipeline Job may take (k8s/wait-job.sh stops at once if it fails).
JOB_TIMEOUT_SECONDS ?= 900
# Pinned chart version of the monitoring stack (bump deliberately, then re-run kind-e2e).
KPS_VERSION ?= 75.15.0
PUSHGATEWAY_VERSION ?= 3.2.0

.PHONY: wheelhouse image image-lock kind-up kind-monitoring kind-load kind-e2e kind-down

image: ## build the image from the sources (PLATFORM=linux/arm64, WHEELHOUSE=DIR for no package index)
	$(CONTAINER_TOOL) build $(if $(PLATFORM),--platform $(PLATFORM)) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  $(if $(WHEELHOUSE),--build-context wheels=$(WHEELHOUSE) --build-arg PIP_NO_INDEX=1) \
	  -t $(IMAGE_REPO):$(IMAGE_TAG) .

wheelhouse: | $(BIN)/python ## download the pinned third-party wheels for PLATFORM into build/wheelhouse-<platform>
	k8s/build-wheelhouse.sh --python $(BIN)/python --platform $(or $(PLATFORM),linux/amd64) \
	  build/wheelhouse-$(subst /,-,$(or $(PLATFORM),linux/amd64))

# Resolved for x86_64; tests/test_lock_platforms.py checks that the same pins resolve on arm64.
image-lock: venv ## re-resolve k8s/image-requirements.txt (then review the diff and run make test)
	rm -rf build/lock && mkdir -p build/lock
	$(BIN)/pip wheel --quiet --no-deps -w build/lock .
	$(BIN)/pip download --quiet --only-binary=:all: -d build/lock --find-links build/lock \
	  --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  'music-analytics[kubernetes]'
	{ grep '^#' k8s/image-requirements.txt; ls build/lock | grep -v '^music_analytics-' \
	  | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/' | tr '_' '-' | LC_ALL=C sort; } > k8s/image-requirements.txt.new
	mv k8s/image-requirements.txt.new k8s/image-requirements.txt

kind-up: ## create the kind cluster, install kube-prometheus-stack and the Pushgateway, load the image
	$(KIND) get clusters | grep -qx $(KIND_CLUSTER) || $(KIND) create cluster --name $(KIND_CLUSTER) --config k8s/kind-cluster.yaml --wait 120s
	$(MAKE) kind-monitoring kind-load

kind-monitoring: ## install kube-prometheus-stack and the Pushgateway (pinned chart versions)
	$(HELM) repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
	$(HELM) upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
	  --version $(KPS_VERSION) --namespace $(MONITORING_NAMESPACE) --create-namespace \
	  --values k8s/kube-prometheus-stack-values.yaml --wait --timeout 10m
	# The pipeline Job ends before any scrape: it pushes its own metrics here (job.pushgateway).
	$(HELM) upgrade --install prometheus-pushgateway prometheus-community/prometheus-pushgateway \
	  --version $(PUSHGATEWAY_VERSION) --namespace $(MONITORING_NAMESPACE) \
	  --set serviceMonitor.enabled=true --set serviceMonitor.honorLabels=true \
	  --set serviceMonitor.additionalLabels.release=kube-prometheus-stack --wait --timeout 5m

kind-load: image ## build the image and load it into the kind cluster's nodes
	$(KIND) load docker-image $(IMAGE_REPO):$(IMAGE_TAG) --name $(KIND_CLUSTER)

# The same chart users install, with the kind values (monitoring on, locally loaded image). The
# Job is waited for until it completes or fails (its log is shown either way), and the results it
# stored in the ConfigMap are checked, not just printed.
kind-e2e: ## install the chart, wait for the pipeline Job, run helm test, check the stored results
	$(HELM) upgrade --install $(RELEASE) charts/music-analytics --namespace $(K8S_NAMESPACE) --create-namespace \
	  --values k8s/music-analytics-kind-values.yaml \
	  --set image.repository=$(IMAGE_REPO) --set image.tag=$(IMAGE_TAG) --wait --timeout 5m
	job=$$($(KUBECTL) -n $(K8S_NAMESPACE) get jobs -l app.kubernetes.io/instance=$(RELEASE),app.kubernetes.io/component=pipeline \
	  --sort-by=.metadata.creationTimestamp -o jsonpath='{.items[-1:].metadata.name}'); \
	KUBECTL=$(KUBECTL) k8s/wait-job.sh $(K8S_NAMESPACE) "$$job" $(JOB_TIMEOUT_SECONDS)
	$(HELM) test $(RELEASE) --namespace $(K8S_NAMESPACE) --logs
	$(KUBECTL) -n $(K8S_NAMESPACE) get configmap $(RELEASE)-results -o jsonpath='{.data.summary\.json}' \
	  | $(PYTHON) k8s/check-results.py

kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
