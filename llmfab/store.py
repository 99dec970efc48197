"""The artifact store: one root (``LLMFAB_HOME``), one layout, atomic writes, manifests last.

Layout (ARCHITECTURE.md §3)::

    <root>/datasets/<name>/        manifest.json tokenizer.model train/ val/ test/ stats.json
    <root>/runs/<name>/            checkpoints/step-<n>/ model/ tensorboard/ metrics.jsonl report.html
    <root>/rewardmodels/<name>/    same as runs
    <root>/services/<name>/        model-4bit/ feedback.sqlite
    <root>/<kind dir>/<name>.status.json, .events.jsonl, .log    (local runner bookkeeping)

A reader trusts a directory only if its ``manifest.json`` exists; writers build in a temporary
sibling and rename it into place, manifest last, so a crash (even SIGKILL) leaves nothing that
looks complete. The manifest records a hash of the spec fields that change the output: re-running
with the same spec is a no-op, a changed spec rebuilds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmfab.api.common import Resource, utc_now

MANIFEST = "manifest.json"
TMP_MARKER = ".tmp-"


def artifact_root() -> Path:
    """``$LLMFAB_HOME``, else ``./.llmfab`` (``/artifacts`` in pods, set by the operator)."""
    return Path(os.environ.get("LLMFAB_HOME", ".llmfab")).resolve()


def artifact_dir(kind_dir: str, name: str, root: Path | None = None) -> Path:
    return (root or artifact_root()) / kind_dir / name


def resource_dir(resource: Resource, root: Path | None = None) -> Path:
    return artifact_dir(resource.ARTIFACT_DIR, resource.name, root)


def spec_hash(resource: Resource) -> str:
    """sha256 of the output-relevant spec, canonical JSON; what makes a re-run a no-op."""
    payload = json.dumps(resource.spec_hash_input(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary sibling, fsync, rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}{TMP_MARKER}")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; artifacts are for people and other pods to read
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON (sorted keys, indented) through :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete artifact directory, or None if it is absent or unreadable."""
    try:
        data: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
        return data
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def is_complete(directory: Path, wanted_hash: str | None = None) -> bool:
    """True if ``directory`` has a manifest (and, when given, was built from ``wanted_hash``)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return False
    return wanted_hash is None or manifest.get("specHash") == wanted_hash


def write_manifest(directory: Path, data: dict[str, Any], spec_hash_value: str | None = None) -> None:
    """Write the manifest last: its existence is what marks ``directory`` complete."""
    body = dict(data)
    body.setdefault("createdAt", utc_now())
    if spec_hash_value is not None:
        body["specHash"] = spec_hash_value
    write_json_atomic(directory / MANIFEST, body)


def remove_stale_temporaries(parent: Path) -> None:
    """Delete leftovers of writers that were killed (temporary siblings of artifacts)."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if TMP_MARKER in entry.name:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def _make_readable(directory: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; artifacts are for people and other pods to read."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        mode = path.stat().st_mode
        path.chmod(mode | (0o755 if path.is_dir() else 0o644))


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it onto ``final`` on success.

    The caller writes everything, manifest last (:func:`write_manifest`), inside the yielded path.
    On an exception the temporary directory is removed and ``final`` is untouched; on SIGKILL the
    sibling stays behind with a ``.tmp-`` name that no reader trusts and the next writer removes.
    A previous ``final`` is replaced only once the new one is whole.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{final.name}{TMP_MARKER}"))
    try:
        yield tmp
        _make_readable(tmp)
        if read_manifest(tmp) is None:
            raise RuntimeError(f"{final}: writer finished without a manifest; nothing was published")
        if final.exists():
            old = final.with_name(f"{final.name}{TMP_MARKER}old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def delete_artifacts(kind_dir: str, name: str, root: Path | None = None) -> list[Path]:
    """Remove a resource's artifact directory and its bookkeeping files (spec, status, events,
    log); return what was removed. The directory is first renamed to a temporary sibling, so a
    crash half-way leaves nothing that looks complete."""
    root = root or artifact_root()
    directory = artifact_dir(kind_dir, name, root)
    removed: list[Path] = []
    if directory.exists():
        doomed = directory.with_name(f"{directory.name}{TMP_MARKER}deleted")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(directory, doomed)
        shutil.rmtree(doomed)
        removed.append(directory)
    for suffix in (".spec.yaml", ".status.json", ".events.jsonl", ".log"):
        path = directory.with_name(f"{name}{suffix}")
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed
