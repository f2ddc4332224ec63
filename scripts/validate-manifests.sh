#!/usr/bin/env bash
# Validates the Kubernetes manifests offline: every *.yaml / *.yml / *.json under
# deploy/kubernetes (or the files given as arguments) against the schemas of pinned
# Kubernetes versions, strictly (an unknown field is an error), with
# kubernetes-validate, which ships the schemas. Then checks the rules the manifests
# promise: no cluster-wide RBAC, no service account token, no privileged container,
# every capability dropped, requests and limits set, ConfigMaps not mounted by subPath.
#
# kubernetes-validate is installed from PyPI at a pinned version into a private venv
# (idempotent: nothing is installed when the venv already has that version).
#
# Usage: scripts/validate-manifests.sh [FILE...]
#
# Environment:
#   CTRPULL_VENV                 the venv (default /opt/ctrpull/venv)
#   CTRPULL_KUBERNETES_VERSIONS  Kubernetes versions to validate against
#                                (default "1.30.0 1.37.0")
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes release the manifests are meant for, and the newest the
# pinned kubernetes-validate knows.
KUBERNETES_VERSIONS="${CTRPULL_KUBERNETES_VERSIONS:-1.30.0 1.37.0}"
VENV="${CTRPULL_VENV:-/opt/ctrpull/venv}"
MANIFEST_DIR=deploy/kubernetes

log() { printf 'validate-manifests: %s\n' "$*" >&2; }
die() {
    printf 'validate-manifests: error: %s\n' "$*" >&2
    exit 1
}

if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
else
    SUDO=()
fi

# --- kubernetes-validate in a private venv ------------------------------------

installed_version() {
    "$VENV/bin/kubernetes-validate" --version 2>/dev/null || true
}

if [[ $(installed_version) != "$KUBERNETES_VALIDATE_VERSION" ]]; then
    if ! command -v python3 >/dev/null; then
        log "installing python3"
        "${SUDO[@]}" apt-get update -qq >/dev/null
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating the venv $VENV"
        "${SUDO[@]}" mkdir -p "$(dirname "$VENV")"
        if ! "${SUDO[@]}" python3 -m venv "$VENV" 2>/dev/null; then
            # Debian's python3 ships venv (and the ensurepip it needs) separately.
            log "installing python3-venv"
            "${SUDO[@]}" rm -rf "$VENV"
            "${SUDO[@]}" apt-get update -qq >/dev/null
            "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
            "${SUDO[@]}" python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
        fi
    fi
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
    "${SUDO[@]}" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
        die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
    [[ $(installed_version) == "$KUBERNETES_VALIDATE_VERSION" ]] ||
        die "$VENV/bin/kubernetes-validate does not report version $KUBERNETES_VALIDATE_VERSION"
fi

# --- the manifests ------------------------------------------------------------

if (($# > 0)); then
    files=("$@")
else
    mapfile -t files < <(find "$MANIFEST_DIR" -type f \( -name '*.yaml' -o -name '*.yml' -o -name '*.json' \) | sort)
fi
((${#files[@]} > 0)) || die "no manifests found under $MANIFEST_DIR"
for file in "${files[@]}"; do
    [[ -f $file ]] || die "$file: no such file"
done

failed=0
for version in $KUBERNETES_VERSIONS; do
    # kubernetes-validate only warns about a kind it has no schema for (a typo in
    # `kind` or `apiVersion`) and exits 0; every manifest here is a built-in kind,
    # so any warning is a failure.
    if ! output=$("$VENV/bin/kubernetes-validate" --strict --quiet \
        --kubernetes-version "$version" "${files[@]}" 2>&1); then
        failed=1
    fi
    if [[ -n $output ]]; then
        printf '%s\n' "$output" >&2
        failed=1
    fi
done
((failed == 0)) || die "manifests do not validate against Kubernetes $KUBERNETES_VERSIONS (strict)"

# Rules beyond the schema, on the same files (PyYAML comes with kubernetes-validate).
"$VENV/bin/python" - "${files[@]}" <<'PY' || die "manifests break the rules above"
import sys
import yaml

CLUSTER_WIDE = {"ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"DaemonSet", "Job", "Deployment", "StatefulSet", "CronJob"}
problems = []


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        kind = doc.get("kind", "?")
        where = f"{path}: {kind}/{(doc.get('metadata') or {}).get('name', '?')}"
        if kind in CLUSTER_WIDE:
            problems.append(f"{where}: cluster-wide RBAC is not wanted")
        if kind not in WORKLOADS:
            continue
        spec = pod_spec(doc)
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false")
        config_maps = {
            v["name"] for v in spec.get("volumes") or [] if "configMap" in v
        }
        for c in spec.get("containers") or []:
            name = f"{where}: container {c.get('name')}"
            sc = c.get("securityContext") or {}
            if sc.get("privileged") is not False:
                problems.append(f"{name}: securityContext.privileged must be false")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: securityContext.allowPrivilegeEscalation must be false")
            caps = sc.get("capabilities") or {}
            if caps.get("drop") != ["ALL"] or caps.get("add"):
                problems.append(f"{name}: capabilities must drop ALL and add none")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (res.get(part) or {}):
                        problems.append(f"{name}: resources.{part}.{resource} is not set")
            for m in c.get("volumeMounts") or []:
                if m.get("name") in config_maps and m.get("subPath"):
                    problems.append(
                        f"{name}: ConfigMap volume {m['name']} is mounted by subPath, "
                        "so updates would never reach the pod"
                    )

for p in problems:
    print(f"validate-manifests: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

echo "validate-manifests: ${#files[@]} file(s) valid against Kubernetes $KUBERNETES_VERSIONS (strict)"
