#!/usr/bin/env bash
# Wait for a Job to finish: exit 0 as soon as it is Complete (its log is printed), 1 as soon as it
# is Failed (its conditions and log are printed), 2 when TIMEOUT_SECONDS pass first. Unlike
# `kubectl wait --for=condition=complete`, a failed Job doesn't keep you waiting until the timeout.
# Usage: k8s/wait-job.sh NAMESPACE JOB [TIMEOUT_SECONDS]    (default 900; KUBECTL: the kubectl to use,
#        WAIT_JOB_POLL_SECONDS: between checks, default 5)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 NAMESPACE JOB [TIMEOUT_SECONDS]" >&2; exit 2; }
namespace=$1 job=$2 timeout=${3:-900}
kubectl=${KUBECTL:-kubectl}
poll=${WAIT_JOB_POLL_SECONDS:-5}
# The types of the Job's true conditions, e.g. "Complete", or "FailureTarget Failed" (Kubernetes
# >= 1.31 sets SuccessCriteriaMet/FailureTarget first; Complete/Failed are the final ones).
conditions='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}'
show_log() { "$kubectl" -n "$namespace" logs "job/$job" --all-containers --tail=200 || true; }
deadline=$((SECONDS + timeout))
while :; do
  # A transient API error is retried until the deadline, like kubectl wait does.
  states=$("$kubectl" -n "$namespace" get "job/$job" -o "jsonpath=$conditions") || states=
  case " $states " in
    *" Complete "*)
      show_log
      echo "job/$job complete"
      exit 0 ;;
    *" Failed "*)
      echo "job/$job failed:" >&2
      "$kubectl" -n "$namespace" get "job/$job" \
        -o 'jsonpath={range .status.conditions[?(@.type=="Failed")]}{.reason}: {.message}{"\n"}{end}' >&2 || true
      show_log >&2
      exit 1 ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "job/$job neither complete nor failed after ${timeout}s (conditions: ${states:-none})" >&2
    show_log >&2
    exit 2
  fi
  sleep "$poll"
done
