#!/usr/bin/env bash
# Start a real one-node Kubernetes (the versions in versions.env) from host processes: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy and
# CoreDNS; pods are real runc containers on a CNI bridge. Needs root and `build.sh` first.
#
# Only this machine is ever addressed: the node IP lives on a bridge we create, services and
# pods route onto our bridges, and a FORWARD rule drops pod traffic headed anywhere else.
# Every process is recorded by PID under $STATE_DIR/pids; cluster-down.sh undoes all of it.
# Ends when the node is Ready and a pod resolves kubernetes.default.svc.cluster.local.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (network, mounts, containers)"
BIN_DIR=$("$CLUSTER_DIR/build.sh" bin-dir)
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns pause; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing: run k8s/cluster/build.sh (make cluster-build) first"
done
for b in containerd ctr runc podman openssl iptables ip /usr/lib/cni/bridge; do
    command -v "$b" >/dev/null || die "$b missing: run k8s/cluster/build.sh deps"
done
export PATH=$BIN_DIR:$PATH
# Our podman settings (see templates/containers.conf): the sandbox refuses podman's defaults.
export CONTAINERS_CONF=$CLUSTER_DIR/templates/containers.conf

PKI=$STATE_DIR/pki CONF=$STATE_DIR/conf PIDS=$STATE_DIR/pids LOGS=$STATE_DIR/logs
ADMIN_KUBECONFIG=$STATE_DIR/kubeconfig
kc() { kubectl --kubeconfig="$ADMIN_KUBECONFIG" "$@"; }

# A previous cluster (or a half-started one) is taken down first: starting over is simpler
# and more predictable than adopting whatever survived.
if compgen -G "$PIDS/*.pid" >/dev/null || ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "stale cluster state found: running cluster-down.sh first"
    "$CLUSTER_DIR/cluster-down.sh"
fi

# A fresh cluster each time: etcd, kubelet and logs are wiped. The PKI and containerd's image
# store are kept (no reason to regenerate keys, and images take a while to import).
rm -rf "$STATE_DIR/etcd" "$STATE_DIR/kubelet" "$STATE_DIR/pod-logs" "$LOGS" "$CONF"
mkdir -p "$PKI" "$CONF/cni" "$PIDS" "$LOGS" "$STATE_DIR/etcd" "$STATE_DIR/kubelet" \
    "$STATE_DIR/pod-logs" "$STATE_DIR/containerd" "$STATE_DIR/images"
chmod 700 "$STATE_DIR/etcd" "$PKI"
echo "$BIN_DIR" > "$STATE_DIR/bin-dir"

# --- templates ----------------------------------------------------------------------------
render() { # template output: replace each @VAR@ by the shell variable of that name
    local src=$CLUSTER_DIR/templates/$1 out=$2 line var
    local vars=(STATE_DIR CONTAINERD_RUN CONTAINERD_SOCK PAUSE_IMAGE POD_BRIDGE NODE_POD_CIDR
        POD_GATEWAY CNI_IPAM_DIR NODE_IP CLUSTER_DNS_IP CLUSTER_DOMAIN POD_CIDR NODE_NAME
        COREDNS_HEALTH_PORT COREDNS_READY_PORT)
    local sed_args=()
    for var in "${vars[@]}"; do sed_args+=(-e "s|@$var@|${!var}|g"); done
    sed "${sed_args[@]}" "$src" > "$out"
    if line=$(grep -n '@[A-Z_]*@' "$out"); then die "$out: unreplaced $line"; fi
}
# shellcheck disable=SC2034  # used by render through ${!var}
POD_GATEWAY=${NODE_POD_CIDR%.*}.1
render containerd.toml "$CONF/containerd.toml"
render cni.conflist "$CONF/cni/10-music-analytics.conflist"
render kubelet.yaml "$CONF/kubelet.yaml"
render kube-proxy.yaml "$CONF/kube-proxy.yaml"
render Corefile "$CONF/Corefile"
render kube-dns.yaml "$CONF/kube-dns.yaml"
# Pods never see the machine's resolver: the cluster DNS only.
echo "nameserver $CLUSTER_DNS_IP" > "$CONF/resolv.conf"

# --- certificates -------------------------------------------------------------------------
cert() { # name CN [O] [subjectAltName]: a key and a certificate signed by our CA, once
    local n=$1 cn=$2 o=${3:-} san=${4:-} subj
    [ -f "$PKI/$n.crt" ] && return 0
    subj="/CN=$cn"; [ -n "$o" ] && subj="/O=$o/CN=$cn"
    openssl genrsa -out "$PKI/$n.key" 2048 2>/dev/null
    openssl req -new -key "$PKI/$n.key" -subj "$subj" -out "$PKI/$n.csr"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
        else echo "extendedKeyUsage=clientAuth"; fi
    } > "$PKI/$n.ext"
    openssl x509 -req -in "$PKI/$n.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/$n.ext" -out "$PKI/$n.crt" 2>/dev/null
}
kubeconfig() { # name: a kubeconfig for the client certificate of that name
    cat > "$PKI/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: music-analytics-local
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$1.crt")
    client-key-data: $(base64 -w0 < "$PKI/$1.key")
contexts:
- name: default
  context: {cluster: music-analytics-local, user: $1}
current-context: default
EOF
}
gen_pki() {
    if [ ! -f "$PKI/ca.crt" ]; then
        openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
        openssl req -x509 -new -key "$PKI/ca.key" -days 3650 -subj "/CN=music-analytics-local-ca" -out "$PKI/ca.crt"
    fi
    cert apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP"
    cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    cert admin admin system:masters
    cert controller-manager system:kube-controller-manager
    cert scheduler system:kube-scheduler
    cert kube-proxy system:kube-proxy
    cert coredns system:coredns
    # The Node authorizer and NodeRestriction identify the kubelet by this name and group.
    cert kubelet "system:node:$NODE_NAME" system:nodes
    cert kubelet-serving "$NODE_NAME" system:nodes "DNS:$NODE_NAME,IP:$NODE_IP"
    if [ ! -f "$PKI/sa.key" ]; then
        openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
        openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    fi
    local n
    for n in admin controller-manager scheduler kube-proxy kubelet coredns; do kubeconfig "$n"; done
    cp "$PKI/admin.kubeconfig" "$ADMIN_KUBECONFIG"
}

# --- machine settings ---------------------------------------------------------------------
# Sysctls the cluster changes (ip_forward and bridge netfilter for Service traffic between
# pods on one bridge) or the kubelet changes on its own (its kernel tunables). Saved once, before
# the first change, and restored by cluster-down.sh.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
    vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)
save_sysctls() {
    local f=$STATE_DIR/sysctl.saved s
    [ -f "$f" ] && return 0
    for s in "${SYSCTLS[@]}"; do
        if [ -e "/proc/sys/${s//.//}" ]; then echo "$s=$(cat "/proc/sys/${s//.//}")"; fi
    done > "$f.tmp"
    mv "$f.tmp" "$f"
}

net_up() {
    # The node's address on a bridge without ports (this kernel has no dummy driver). The whole
    # /24, the pod range and the service range route onto it, so a packet to an address that
    # nothing answers dies here instead of following the default route off the machine.
    # Network namespaces that exist already are never ours to delete (cluster-down.sh).
    ip netns list | awk '{print $1}' > "$STATE_DIR/netns.baseline"
    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
    ip route add "$POD_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
    ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
    modprobe br_netfilter 2>/dev/null || true
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
    # Pods talk only to each other (on the pod bridge) and to this machine (INPUT, not FORWARD):
    # anything a pod sends that would be forwarded elsewhere is dropped, and so is anything
    # forwarded towards a pod from elsewhere.
    iptables -w -N "$FW_CHAIN"
    iptables -w -A "$FW_CHAIN" -s "$POD_CIDR" -o "$POD_BRIDGE" -j RETURN
    iptables -w -A "$FW_CHAIN" -s "$POD_CIDR" -j DROP
    iptables -w -A "$FW_CHAIN" -d "$POD_CIDR" -i "$POD_BRIDGE" -j RETURN
    iptables -w -A "$FW_CHAIN" -d "$POD_CIDR" -j DROP
    ensure_fw_first
}
# kube-proxy inserts its own jumps at the top of FORWARD; ours goes back in front of them.
ensure_fw_first() {
    while iptables -w -D FORWARD -j "$FW_CHAIN" 2>/dev/null; do :; done
    iptables -w -I FORWARD 1 -j "$FW_CHAIN"
}

# --- processes ----------------------------------------------------------------------------
start() { # name command...: run detached in its own session, log and PID under the state dir
    local n=$1
    shift
    setsid "$@" > "$LOGS/$n.log" 2>&1 < /dev/null &
    echo $! > "$PIDS/$n.pid"
    log "started $n (pid $!)"
}
alive() { local p; p=$(cat "$PIDS/$1.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }
wait_for() { # name seconds command...: poll until the command succeeds; fail if the process died
    local n=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        alive "$n" || { tail -30 "$LOGS/$n.log" >&2; die "$n exited (log: $LOGS/$n.log)"; }
        sleep 0.5
    done
    tail -30 "$LOGS/$n.log" >&2
    die "$n not ready after ${secs}s (log: $LOGS/$n.log)"
}

start_etcd() {
    start etcd etcd --name "$NODE_NAME" --data-dir "$STATE_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls "" --log-level warn
    wait_for etcd 30 etcdctl --endpoints "127.0.0.1:$ETCD_CLIENT_PORT" endpoint health
}

start_apiserver() {
    # PodSecurity is on by default in 1.32 (no flag needed); NodeRestriction is added.
    # InternalIP first: `kubectl logs/exec` must reach the kubelet at the node IP, never by
    # resolving the node name with the machine's resolver.
    start kube-apiserver kube-apiserver \
        --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
        --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$PKI/ca.crt" \
        --kubelet-preferred-address-types=InternalIP \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --allow-privileged=true --profiling=false
    wait_for kube-apiserver 120 kc get --raw /readyz
}

start_controllers() {
    # Both exit at once if RBAC is not bootstrapped yet: only after /readyz.
    start kube-controller-manager kube-controller-manager \
        --kubeconfig="$PKI/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --leader-elect=false \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
        --use-service-account-credentials=true \
        --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
        --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
    start kube-scheduler kube-scheduler \
        --kubeconfig="$PKI/scheduler.kubeconfig" \
        --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
        --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

CTR=(ctr --address "$CONTAINERD_SOCK" --namespace k8s.io)
start_containerd() {
    mkdir -p "$CONTAINERD_RUN"
    start containerd containerd --config "$CONF/containerd.toml"
    wait_for containerd 30 "${CTR[@]}" version
}

# Images are built by podman and kept as archives in the cache, keyed like the binaries, so a
# second cluster-up imports without building.
IMAGE_CACHE=$CACHE_DIR/images/$(basename "$BIN_DIR")
build_image_archive() { # name image context-dir: podman build FROM scratch, save the archive
    local archive=$IMAGE_CACHE/$1.tar
    [ -f "$archive" ] && return 0
    mkdir -p "$IMAGE_CACHE"
    podman build --quiet --layers=false -t "$2" "$3" >/dev/null
    podman save --quiet --format docker-archive -o "$archive.tmp" "$2"
    podman rmi --force "$2" >/dev/null
    mv "$archive.tmp" "$archive"
}
import_images() {
    local ctx
    ctx=$(mktemp -d)
    # pause: the sandbox of every pod. Its UID is the one upstream's image uses.
    cp "$BIN_DIR/pause" "$ctx/pause"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$ctx/Containerfile"
    build_image_archive pause "$PAUSE_IMAGE" "$ctx"
    rm -rf "$ctx"
    # A busybox image (Debian's static busybox) for smoke tests: nslookup, wget, nc.
    ctx=$(mktemp -d)
    mkdir "$ctx/bin"
    cp /bin/busybox "$ctx/bin/busybox"
    local a
    for a in sh nslookup wget nc httpd sleep cat ls echo env hostname ip; do ln -s busybox "$ctx/bin/$a"; done
    printf 'FROM scratch\nCOPY bin /bin\nUSER 65534:65534\nENTRYPOINT ["/bin/sh"]\n' > "$ctx/Containerfile"
    build_image_archive busybox "$SMOKE_IMAGE" "$ctx"
    rm -rf "$ctx"
    "${CTR[@]}" images import "$IMAGE_CACHE/pause.tar" >/dev/null
    "${CTR[@]}" images import "$IMAGE_CACHE/busybox.tar" >/dev/null
}

start_coredns() {
    kc apply -f "$CONF/kube-dns.yaml" >/dev/null
    start coredns coredns -conf "$CONF/Corefile"
    wait_for coredns 60 curl -sf "http://127.0.0.1:$COREDNS_READY_PORT/ready"
}

# ServiceMonitor and PrometheusRule CRDs (from build.sh), so the chart installs with its
# monitoring objects enabled; server-side because client-side apply's annotation is too small.
install_crds() {
    if ! compgen -G "$BIN_DIR/crds/*.yaml" >/dev/null; then
        log "no CRDs in $BIN_DIR/crds (run build.sh): skipped"
        return 0
    fi
    kc apply --server-side -f "$BIN_DIR/crds/" >/dev/null
    # Retried: `kubectl wait` fails at once ("status.conditions accessor error") on a CRD whose
    # status the API server has not written yet, rather than waiting for it.
    wait_for kube-apiserver 60 kc wait --for=condition=Established --timeout=5s -f "$BIN_DIR/crds/"
}

start_node() {
    start kubelet kubelet --config="$CONF/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
        --root-dir="$STATE_DIR/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
    start kube-proxy kube-proxy --config="$CONF/kube-proxy.yaml"
    wait_for kubelet 120 kc get node "$NODE_NAME"
    wait_for kubelet 180 kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
    wait_for kube-proxy 60 iptables -w -t nat -C PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
    ensure_fw_first
}

# The namespace of the smoke test enforces the "restricted" Pod Security Standard: the smoke
# pod proves that admission, DNS through the kube-dns Service and CoreDNS all work.
smoke_dns() {
    kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: cluster-smoke
  labels: {pod-security.kubernetes.io/enforce: restricted}
EOF
    # The default ServiceAccount appears shortly after the namespace; pods need it.
    wait_for kube-controller-manager 60 kc -n cluster-smoke get serviceaccount default
    kc -n cluster-smoke delete pod dns --ignore-not-found --wait=true >/dev/null
    kc -n cluster-smoke apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: dns}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65534
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: nslookup
    image: $SMOKE_IMAGE
    imagePullPolicy: Never
    command: [nslookup, kubernetes.default.svc.$CLUSTER_DOMAIN]
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
EOF
    local phase=""
    for _ in $(seq 120); do
        phase=$(kc -n cluster-smoke get pod dns -o jsonpath='{.status.phase}')
        case $phase in Succeeded | Failed) break ;; esac
        sleep 1
    done
    kc -n cluster-smoke logs dns >&2 || true
    [ "$phase" = Succeeded ] || die "DNS smoke pod: phase '$phase' (kubectl -n cluster-smoke describe pod dns)"
    kc -n cluster-smoke logs dns | grep -q "Address: $KUBERNETES_SERVICE_IP" \
        || die "DNS smoke pod did not resolve kubernetes.default to $KUBERNETES_SERVICE_IP"
    kc -n cluster-smoke delete pod dns --wait=false >/dev/null
}

t0=$SECONDS
gen_pki
save_sysctls
net_up
start_etcd
start_apiserver
start_controllers
start_containerd
import_images
start_coredns
install_crds
start_node
log "node $NODE_NAME Ready after $((SECONDS - t0)) s"
smoke_dns
log "cluster up in $((SECONDS - t0)) s: export KUBECONFIG=$ADMIN_KUBECONFIG"
