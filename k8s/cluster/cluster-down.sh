#!/usr/bin/env bash
# Stop the cluster cluster-up.sh started and put the machine back as it was: processes by their
# recorded PIDs, containers and their shims, pod network namespaces, mounts, bridges, routes,
# iptables chains and rules, cgroups, sysctls. Safe to run twice, or after a failed start.
#   cluster-down.sh          keep $STATE_DIR's PKI and containerd image store for the next up
#   cluster-down.sh --purge  also delete $STATE_DIR
# Each step goes on when one fails: a half-started cluster must still be taken down fully.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root"
PURGE=false
[ "${1:-}" = --purge ] && PURGE=true

PIDS=$STATE_DIR/pids
BIN_DIR=$(cat "$STATE_DIR/bin-dir" 2>/dev/null || "$CLUSTER_DIR/build.sh" bin-dir)
export PATH=$BIN_DIR:$PATH
KC=(kubectl --kubeconfig="$STATE_DIR/kubeconfig" --request-timeout=5s)
CTR=(ctr --address "$CONTAINERD_SOCK" --namespace k8s.io)

# The PID is only ours if it still runs the program we started (PIDs get reused).
ours() { # name pid
    local exe
    exe=$(readlink "/proc/$2/exe" 2>/dev/null) || return 1
    [ "$(basename "${exe% (deleted)}")" = "$1" ]
}
stop() { # name [seconds]: SIGTERM, wait, SIGKILL
    local n=$1 secs=${2:-20} f=$PIDS/$1.pid p i
    [ -f "$f" ] || return 0
    p=$(cat "$f")
    if ours "$n" "$p"; then
        kill "$p" 2>/dev/null || true
        for ((i = 0; i < secs * 4; i++)); do ours "$n" "$p" || break; sleep 0.25; done
        if ours "$n" "$p"; then kill -9 "$p" 2>/dev/null || true; sleep 0.5; fi
        log "stopped $n ($p)"
    fi
    rm -f "$f"
}
running() { local p; p=$(cat "$PIDS/$1.pid" 2>/dev/null) && ours "$1" "$p"; }

# 1. Let the kubelet remove the pods itself while it still can: it stops the containers, tears
# down their network (CNI DEL) and unmounts their volumes. Controllers are stopped first so
# nothing recreates what is deleted.
stop kube-controller-manager
stop kube-scheduler
if running kubelet && running kube-apiserver && "${KC[@]}" get --raw /readyz >/dev/null 2>&1; then
    "${KC[@]}" delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 60); do
        [ -z "$("${CTR[@]}" tasks ls -q 2>/dev/null)" ] && break
        sleep 0.5
    done
fi
stop kubelet

# 2. Whatever containers are left: kill their tasks (the shims exit with them), then delete the
# containers with their snapshots.
if running containerd; then
    for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    for _ in $(seq 20); do
        [ -z "$("${CTR[@]}" tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"')" ] && break
        sleep 0.25
    done
    for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers delete "$c" >/dev/null 2>&1 || true; done
fi

# 3. kube-proxy, then its rules: --cleanup removes the chains it knows; the kubelet's own
# (KUBE-FIREWALL, the canaries) are removed further down.
stop kube-proxy
if [ -x "$BIN_DIR/kube-proxy" ]; then kube-proxy --cleanup >/dev/null 2>&1 || true; fi

for n in coredns containerd kube-apiserver etcd; do stop "$n"; done

# 4. Shims whose containerd is gone: ours are the ones started with our socket's address.
for d in /proc/[0-9]*; do
    exe=$(readlink "$d/exe" 2>/dev/null) || continue
    case $(basename "$exe") in containerd-shim*) ;; *) continue ;; esac
    cmdline=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
    if [[ $cmdline == *" -address $CONTAINERD_SOCK "* ]]; then
        kill -9 "${d#/proc/}" 2>/dev/null && log "killed leftover shim ${d#/proc/}"
    fi
done
sleep 0.5

# 5. Containers that outlived their shim (containerd or the kubelet died, or a shim was killed):
# their processes were reparented and still hold pod network namespaces and cgroups. runc, with
# our root, knows them by id; anything left in the kubelet's pod cgroups is ours by definition.
RUNC_ROOT=$CONTAINERD_RUN/runc/k8s.io
if [ -d "$RUNC_ROOT" ]; then
    for c in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do
        runc --root "$RUNC_ROOT" kill "$c" KILL >/dev/null 2>&1 || true
        runc --root "$RUNC_ROOT" delete -f "$c" >/dev/null 2>&1 && log "deleted leftover container ${c:0:12}"
    done
fi
pod_cgroup_pids() {
    local d
    for d in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/kubepods; do
        if [ -d "$d" ]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
    done | sort -u
}
for _ in 1 2 3 4 5; do
    pids=$(pod_cgroup_pids)
    [ -z "$pids" ] && break
    log "killing processes left in pod cgroups: $(echo "$pids" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one PID per word
    kill -9 $pids 2>/dev/null || true
    sleep 0.5
done

# 6. Pod network namespaces containerd made (cni-*), unless they were there before cluster-up.
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    grep -qx "$ns" "$STATE_DIR/netns.baseline" 2>/dev/null && continue
    ip netns delete "$ns" 2>/dev/null && log "deleted netns $ns"
done

# 7. Mounts: pod volumes under the kubelet's root, container rootfs and shm under containerd's
# state and root. Deepest first; lazily if something still holds one.
umount_under() {
    local m
    awk -v p="$1/" 'index($2 "/", p) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done
}
umount_under "$STATE_DIR"
umount_under "$CONTAINERD_RUN"

# 8. Network: our bridges (their routes go with them), our FORWARD chain, the Kubernetes chains.
ip link delete "$POD_BRIDGE" 2>/dev/null || true
ip link delete "$NODE_BRIDGE" 2>/dev/null || true
while iptables -w -D FORWARD -j "$FW_CHAIN" 2>/dev/null; do :; done
iptables -w -F "$FW_CHAIN" 2>/dev/null || true
iptables -w -X "$FW_CHAIN" 2>/dev/null || true
for cmd in iptables ip6tables; do
    for t in nat filter mangle; do
        # Jumps into KUBE-* chains from the built-in chains first, or the chains cannot go.
        rules=$($cmd -w -t "$t" -S 2>/dev/null | sed -n 's/^-A \([A-Z]*\) \(.*-j KUBE-.*\)/-D \1 \2/p')
        while IFS= read -r rule; do
            if [ -n "$rule" ]; then eval "$cmd -w -t $t $rule" 2>/dev/null || true; fi
        done <<< "$rules"
        for ch in $($cmd -w -t "$t" -S 2>/dev/null | awk '/^-N KUBE-/ {print $2}'); do $cmd -w -t "$t" -F "$ch" 2>/dev/null || true; done
        for ch in $($cmd -w -t "$t" -S 2>/dev/null | awk '/^-N KUBE-/ {print $2}'); do $cmd -w -t "$t" -X "$ch" 2>/dev/null || true; done
    done
done

# 9. The kubelet's cgroups (kubepods and below, in every v1 hierarchy and the unified one).
for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$root" ] || continue
    find "$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$root" ] && log "cgroup $root still in use"
done

# 10. Sysctls back to what they were before the first cluster-up.
if [ -f "$STATE_DIR/sysctl.saved" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" 2>/dev/null || log "could not restore $kv"; done < "$STATE_DIR/sysctl.saved"
    log "restored sysctls: $(tr "\n" " " < "$STATE_DIR/sysctl.saved")"
    rm -f "$STATE_DIR/sysctl.saved"
fi

rm -rf "$CONTAINERD_RUN" "$CNI_IPAM_DIR" "$PIDS" "$STATE_DIR/netns.baseline" "$STATE_DIR/kubeconfig"
if $PURGE; then
    umount_under "$STATE_DIR"
    rm -rf "$STATE_DIR"
    log "purged $STATE_DIR"
fi
log "cluster down"
