"""helm uninstall (pre-delete hook): delete this release's helm test pods.

Helm never deletes hook resources on uninstall, and the test pods are kept after `helm test` so
that `helm test --logs` can read them. This deletes them by name through the API server, with
the pod's service-account token; the chart's Role allows `delete` on exactly these pod names.
A failure that may pass (no connection yet, a timeout, HTTP 429 or 5xx) is tried again for up to
RETRY_SECONDS. Best effort: it always exits 0, so a cleanup problem never blocks the uninstall; it
names in its log every pod it could not delete (`kubectl delete pod NAME` removes it by hand).
Usage: python delete-test-pods.py NAMESPACE POD...
"""

import os
import ssl
import sys
import time
import urllib.error
import urllib.request

ACCOUNT = os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
# Within the Job's activeDeadlineSeconds (120), with room for the last try's own timeout.
RETRY_SECONDS = float(os.environ.get("RETRY_SECONDS", "90"))


def main(namespace: str, pods: list[str]) -> int:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        with open(os.path.join(ACCOUNT, "token")) as f:
            token = f.read().strip()
        context = ssl.create_default_context(cafile=os.path.join(ACCOUNT, "ca.crt"))
    except OSError as exc:
        print(f"warning: no service-account credentials ({exc}); test pods left: {' '.join(pods)}", file=sys.stderr)
        return 0
    deadline = time.monotonic() + RETRY_SECONDS
    for pod in pods:
        request = urllib.request.Request(
            f"https://{host}:{port}/api/v1/namespaces/{namespace}/pods/{pod}",
            method="DELETE",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        delay = 0.5
        while True:
            try:
                with urllib.request.urlopen(request, context=context, timeout=10):
                    print(f"deleted pod {pod}")
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    print(f"pod {pod} not found (helm test not run, or already deleted)")
                    break
                problem, passing = f"HTTP {exc.code} {exc.reason}", exc.code == 429 or exc.code >= 500
            except OSError as exc:  # URLError included: no connection, a timeout, a TLS failure
                reason = getattr(exc, "reason", exc)
                problem, passing = str(reason), not isinstance(reason, ssl.SSLCertVerificationError)
            if not passing or time.monotonic() + delay > deadline:
                print(f"warning: could not delete pod {pod}: {problem}", file=sys.stderr)
                break
            print(f"pod {pod}: {problem}; trying again in {delay:g}s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
