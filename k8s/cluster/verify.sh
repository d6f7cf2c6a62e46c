#!/usr/bin/env bash
# Check a running local cluster end to end, in a namespace that enforces the "restricted" Pod
# Security Standard: a Deployment behind a ClusterIP Service, reached by name from another pod
# (cluster DNS + kube-proxy + the pod bridge). With IMAGE (the project image, loaded with
# load-image.sh) also a Deployment of `music-analytics serve mapreduce` made Ready by the
# kubelet's native gRPC probe, and called through its Service with grpc health.
# Usage: verify.sh [IMAGE]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE=${1:-}
NS=cluster-verify
PATH=$(cat "$STATE_DIR/bin-dir"):$PATH
kc() { kubectl --kubeconfig="$STATE_DIR/kubeconfig" "$@"; }

kc delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
  labels: {pod-security.kubernetes.io/enforce: restricted}
EOF
for _ in $(seq 60); do kc -n "$NS" get serviceaccount default >/dev/null 2>&1 && break; sleep 0.5; done

# What "restricted" requires of every container.
RESTRICTED='securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}'
POD_SECURITY='securityContext: {runAsNonRoot: true, runAsUser: 65534, seccompProfile: {type: RuntimeDefault}}'

log "pod traffic stays on this machine: our FORWARD chain comes first and drops the rest"
first=$(iptables -w -S FORWARD | sed -n 2p)
[ "$first" = "-A FORWARD -j $FW_CHAIN" ] || die "FORWARD does not start with $FW_CHAIN: $first"
iptables -w -C "$FW_CHAIN" -s "$POD_CIDR" -j DROP || die "$FW_CHAIN lacks its DROP rule"

log "admission: a privileged pod must be refused"
if out=$(kc -n "$NS" run refused --image="$SMOKE_IMAGE" --image-pull-policy=Never --restart=Never \
    --overrides='{"spec":{"containers":[{"name":"refused","image":"'"$SMOKE_IMAGE"'","securityContext":{"privileged":true}}]}}' 2>&1); then
    die "a privileged pod was admitted into a restricted namespace"
fi
[[ $out == *'violates PodSecurity "restricted'* ]] || die "privileged pod refused, but not by PodSecurity: $out"

log "Deployment + ClusterIP Service (busybox httpd), readiness over HTTP"
kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      automountServiceAccountToken: false
      $POD_SECURITY
      containers:
      - name: httpd
        image: $SMOKE_IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'echo "hello from \$(hostname)" > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 2}
        volumeMounts: [{name: tmp, mountPath: /tmp}]
        $RESTRICTED
      volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http, name: http}]
EOF
kc -n "$NS" rollout status deployment/web --timeout=120s

log "another pod: DNS names and the Service"
kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  $POD_SECURITY
  containers:
  - name: client
    image: $SMOKE_IMAGE
    imagePullPolicy: Never
    command: [sh, -c]
    args:
    - |
      set -e
      nslookup kubernetes.default.svc.$CLUSTER_DOMAIN
      nslookup web.$NS.svc.$CLUSTER_DOMAIN
      # the search path of resolv.conf: the short name works too
      wget -qO- http://web/index.html
      wget -qO- http://web.$NS.svc.$CLUSTER_DOMAIN/index.html
      # nothing outside the cluster resolves: CoreDNS has no upstream
      if nslookup example.org >/dev/null 2>&1; then echo "example.org resolved"; exit 1; fi
      echo CLIENT OK
    $RESTRICTED
EOF
phase=""
for _ in $(seq 120); do
    phase=$(kc -n "$NS" get pod client -o jsonpath='{.status.phase}')
    case $phase in Succeeded | Failed) break ;; esac
    sleep 1
done
kc -n "$NS" logs client
[ "$phase" = Succeeded ] || die "client pod: $phase"

if [ -n "$IMAGE" ]; then
    log "the project image: Ready through the kubelet's gRPC probe"
    kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: mapreduce}
spec:
  replicas: 1
  selector: {matchLabels: {app: mapreduce}}
  template:
    metadata: {labels: {app: mapreduce}}
    spec:
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: mapreduce
        image: $IMAGE
        imagePullPolicy: Never
        args: [serve, mapreduce]
        ports: [{containerPort: 50051, name: grpc}]
        startupProbe: {grpc: {port: 50051, service: music.v1.MapReduceService}, periodSeconds: 2, failureThreshold: 60}
        readinessProbe: {grpc: {port: 50051, service: music.v1.MapReduceService}, periodSeconds: 5}
        volumeMounts: [{name: tmp, mountPath: /tmp}]
        $RESTRICTED
      volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: mapreduce}
spec:
  selector: {app: mapreduce}
  ports: [{port: 50051, targetPort: grpc, name: grpc}]
EOF
    kc -n "$NS" rollout status deployment/mapreduce --timeout=180s
    log "the project image: gRPC health through the Service from another pod"
    kc -n "$NS" run grpc-client --image="$IMAGE" --image-pull-policy=Never --restart=Never \
        --overrides='{"spec":{"automountServiceAccountToken":false,"securityContext":{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"grpc-client","image":"'"$IMAGE"'","imagePullPolicy":"Never","command":["python3","-c","import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel(\"mapreduce:50051\"); print(g.HealthStub(ch).Check(h.HealthCheckRequest(service=\"music.v1.MapReduceService\"), timeout=10))"],"securityContext":{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"capabilities":{"drop":["ALL"]}}}]}}' >/dev/null
    for _ in $(seq 120); do
        phase=$(kc -n "$NS" get pod grpc-client -o jsonpath='{.status.phase}')
        case $phase in Succeeded | Failed) break ;; esac
        sleep 1
    done
    kc -n "$NS" logs grpc-client
    [ "$phase" = Succeeded ] || die "grpc-client pod: $phase"
fi

kc delete namespace "$NS" --wait=false >/dev/null
log "verify: all checks passed"
