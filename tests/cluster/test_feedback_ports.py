"""The feedback app's port on the InferenceService's server container and Service (spec.feedback)."""

from __future__ import annotations

from llmfab.operator.builders.inference import build_deployment, build_service

from .test_builders import SETTINGS, resource


def test_feedback_port_is_exposed_only_when_enabled() -> None:
    off = resource("InferenceService", {"model": {"trainingRun": "base"}})
    on = resource(
        "InferenceService", {"model": {"trainingRun": "base"}, "feedback": {"enabled": True, "port": 8090}}
    )
    container_ports = [
        build_deployment(r, SETTINGS, False)["spec"]["template"]["spec"]["containers"][0]["ports"]
        for r in (off, on)
    ]
    assert [p["name"] for p in container_ports[0]] == ["http"]
    assert container_ports[1][1] == {"name": "feedback", "containerPort": 8090, "protocol": "TCP"}
    assert [p["name"] for p in build_service(off)["spec"]["ports"]] == ["http"]
    assert build_service(on)["spec"]["ports"][1] == {
        "name": "feedback",
        "port": 8090,
        "targetPort": "feedback",
        "protocol": "TCP",
    }
