"""The deletion decision (``deletionPolicy: Delete``), on plain dicts: what the operator does given
the Jobs, pods and clean-up Job that the cluster shows (llmfab/operator/deletion.py)."""

from __future__ import annotations

import datetime
from typing import Any

from llmfab.operator.deletion import STUCK_AFTER_SECONDS, decide_deletion

UID = "uid-of-tiny"
NOW = datetime.datetime(2026, 12, 7, 1, 0, 0, tzinfo=datetime.UTC)


def stamp(seconds_from_now: float) -> str:
    return (NOW + datetime.timedelta(seconds=seconds_from_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


def obj(kind: str, name: str, deleting: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml"}
    if deleting:
        meta["deletionTimestamp"] = deleting
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, **extra}


def pod(name: str, phase: str = "Running", deleting: str | None = None) -> dict[str, Any]:
    return obj("Pod", name, deleting, status={"phase": phase})


def cleanup(uid: str = UID, *, complete: bool = False, failed: bool = False) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": "True"}] if complete else []
    conditions += [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "x"}] if failed else []
    job = obj("Job", "tiny-cleanup", status={"conditions": conditions})
    job["metadata"]["annotations"] = {"llmfab.dev/owner-uid": uid}
    return job


def test_running_stage_jobs_are_deleted_in_the_foreground_before_any_clean_up() -> None:
    train = obj("Job", "tiny-train-1")
    step = decide_deletion(UID, [train], [pod("tiny-train-1-0-abcde")], None, NOW)
    assert step.delete == [train] and not step.create_cleanup and not step.done
    assert step.waiting and "tiny-train-1-0-abcde" in step.waiting and "Job/tiny-train-1" in step.waiting


def test_a_job_already_being_deleted_is_not_deleted_again_and_still_waited_for() -> None:
    step = decide_deletion(UID, [obj("Job", "tiny-train-1", deleting=stamp(0))], [], None, NOW)
    assert step.delete == [] and not step.create_cleanup
    assert step.waiting and "Job/tiny-train-1" in step.waiting


def test_a_terminating_pod_without_its_job_still_blocks_the_clean_up() -> None:
    """The Job is gone (e.g. deleted in the background) but its pod still runs its grace period."""
    step = decide_deletion(UID, [], [pod("tiny-train-1-0-abcde", deleting=stamp(20))], None, NOW)
    assert not step.create_cleanup and step.stuck == []
    assert step.waiting and "1 pod(s) to stop (tiny-train-1-0-abcde)" in step.waiting


def test_the_deployment_of_an_inference_service_is_stopped_the_same_way() -> None:
    deployment = obj("Deployment", "chat")
    step = decide_deletion(UID, [deployment], [pod("chat-7d9f-x"), pod("chat-7d9f-y")], None, NOW)
    assert step.delete == [deployment] and not step.create_cleanup
    assert step.waiting and "2 pod(s) to stop" in step.waiting


def test_finished_pods_do_not_block_and_with_nothing_left_the_clean_up_starts() -> None:
    step = decide_deletion(UID, [], [pod("tiny-data-0-x", "Succeeded"), pod("tiny-train-0-y", "Failed")], None, NOW)
    assert step.create_cleanup and step.delete == [] and not step.done
    assert step.waiting == "waiting for the artifact clean-up job"


def test_a_pod_past_its_grace_period_is_reported_stuck_but_still_waited_for() -> None:
    late = pod("tiny-train-1-0-abcde", deleting=stamp(-STUCK_AFTER_SECONDS - 1))
    step = decide_deletion(UID, [], [late, pod("fresh", deleting=stamp(-STUCK_AFTER_SECONDS + 5))], None, NOW)
    assert step.stuck == ["tiny-train-1-0-abcde"] and not step.create_cleanup
    assert step.waiting and "--grace-period=0 --force" in step.waiting


def test_the_clean_up_job_decides_once_it_exists_and_success_releases_the_finalizer() -> None:
    """After an operator restart mid-deletion the same facts give the same answer."""
    running = decide_deletion(UID, [], [], cleanup(), NOW)
    assert not running.create_cleanup and not running.done and running.waiting
    done = cleanup(complete=True)
    finished = decide_deletion(UID, [], [], done, NOW)
    assert finished.done and finished.remove_cleanup == [done] and finished.waiting is None
    failed = decide_deletion(UID, [], [], cleanup(failed=True), NOW)
    assert failed.failed and "clean-up job failed" in failed.failed and not failed.done


def test_a_clean_up_job_left_by_an_earlier_resource_of_the_same_name_is_not_taken_for_this_ones() -> None:
    old = cleanup("uid-of-an-earlier-tiny", complete=True)
    step = decide_deletion(UID, [], [], old, NOW)
    assert not step.done and step.remove_cleanup == [old] and not step.create_cleanup and step.waiting
