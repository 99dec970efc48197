"""``python -m llmfab.operator``: the operator image's entrypoint (``kopf run`` underneath).

Watches the four llmfab kinds cluster-wide, or only in the namespaces given (``--namespace``,
repeatable, or ``LLMFAB_OPERATOR_NAMESPACES=a,b``). Settings come from ``LLMFAB_OPERATOR_*``
(:mod:`llmfab.operator.settings`); Prometheus metrics are served on ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf
from kubernetes.config import ConfigException
from prometheus_client import start_http_server

from llmfab.operator.handlers import build_registry
from llmfab.operator.kube import Kube, load_config
from llmfab.operator.metrics import REGISTRY
from llmfab.operator.settings import OperatorSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmfab.operator", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="Watch only this namespace (repeatable); default: all namespaces.")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("LLMFAB_OPERATOR_METRICS_PORT", "8080")))
    parser.add_argument("--liveness-port", type=int, default=8081)
    parser.add_argument("--log-level", default=os.environ.get("LLMFAB_OPERATOR_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        base = OperatorSettings.from_env()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        load_config()
    except ConfigException as e:
        print(f"error: no Kubernetes credentials: not in a pod with a ServiceAccount, and no usable "
              f"kubeconfig ($KUBECONFIG or ~/.kube/config): {e}", file=sys.stderr)
        return 2
    kube = Kube()
    settings = base.model_copy(update={"service_monitors": kube.group_version_served("monitoring.coreos.com/v1")})
    namespaces = args.namespace or [n for n in os.environ.get("LLMFAB_OPERATOR_NAMESPACES", "").split(",") if n]
    start_http_server(args.metrics_port, registry=REGISTRY)
    kopf.run(
        registry=build_registry(settings, kube),
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
