#!/usr/bin/env bash
# Install the real Prometheus server and promtool the monitoring tests drive (Debian's `prometheus`
# package, 2.42: installs no running service, only /usr/bin/prometheus and /usr/bin/promtool).
#
# The tests start `prometheus` themselves on loopback with their own config and storage directory,
# so nothing is configured here. Idempotent: does nothing when both binaries are on PATH; runs
# `apt-get update` only when the package lists cannot install the package as they are.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

APT_GET=(apt-get -q -o Dpkg::Use-Pty=0)
export DEBIAN_FRONTEND=noninteractive
install() { "${APT_GET[@]}" install -y --no-install-recommends prometheus; }
# Lists that do not know the package, or name a version the mirror no longer has: update, then retry.
if ! apt-cache show prometheus >/dev/null 2>&1 || ! install; then
    "${APT_GET[@]}" update
    install
fi
prometheus --version 2>&1 | head -1
