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
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmfab.api.common import DNS1123_LABEL, Resource, utc_now
from llmfab.rename_exchange import exchange
from llmfab.temporaries import (
    TMP_MARKER,
    Temporary,
    TemporaryInUse,
    adopt_temporary,
    claim_temporary,
    publish_lock,
    remove_dead_temporaries,
    remove_entry,
    retire_tree,
)

MANIFEST = "manifest.json"


class InvalidName(ValueError):
    """A resource name that is not a DNS-1123 label: it could name a path outside its own directory."""


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a DNS-1123 label (what the API accepts as ``metadata.name``), else
    :class:`InvalidName` naming it and the rule. The store builds paths from names: ``""`` would
    be the kind's whole directory, ``..`` or ``/etc`` a directory outside the store."""
    if not isinstance(name, str) or len(name) > 63 or not re.fullmatch(DNS1123_LABEL, name):
        raise InvalidName(
            f"{what} {name!r} is not a resource name: use a DNS-1123 label (lowercase letters, digits "
            "and '-', starting and ending with a letter or digit, at most 63 characters)"
        )
    return name


def artifact_root() -> Path:
    """``$LLMFAB_HOME``, else ``./.llmfab`` (``/artifacts`` in pods, set by the operator)."""
    return Path(os.environ.get("LLMFAB_HOME", ".llmfab")).resolve()


def artifact_dir(kind_dir: str, name: str, root: Path | None = None) -> Path:
    """``<root>/<kind_dir>/<name>``; :class:`InvalidName` unless ``name`` is a DNS-1123 label."""
    return (root or artifact_root()) / kind_dir / check_name(name)


def resource_dir(resource: Resource, root: Path | None = None) -> Path:
    return artifact_dir(resource.ARTIFACT_DIR, resource.name, root)


def spec_hash(resource: Resource) -> str:
    """sha256 of the output-relevant spec, canonical JSON; what makes a re-run a no-op."""
    payload = json.dumps(resource.spec_hash_input(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a locked temporary sibling, fsync, rename: readers see the old file or the whole new
    one, and no other writer removes the temporary while this one runs (:mod:`llmfab.temporaries`).

    It does not look for dead writers' temporaries: a trainer writes its status every step, and
    listing a kind's folder of hundreds of entries each time cost more than the write. A killed
    writer's leftover (a few bytes and its lock) goes with ``llmfab delete`` of the resource."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = claim_temporary(path)
    try:
        fd = os.open(temp.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # the umask may have narrowed it; artifacts are for others to read
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp.path, path)
    except BaseException:
        temp.remove()
        raise
    finally:
        temp.release()


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


def _make_readable(directory: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; artifacts are for people and other pods to read."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        mode = path.stat().st_mode
        path.chmod(mode | (0o755 if path.is_dir() else 0o644))


@contextlib.contextmanager
def staged_directory(final: Path, resume_key: str | None = None) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it onto ``final`` on success.

    The caller writes everything, manifest last (:func:`write_manifest`), inside the yielded path.
    On an exception the temporary directory is removed and ``final`` is untouched; on SIGKILL the
    sibling stays behind with a ``.tmp-`` name that no reader trusts and the next writer of
    ``final`` removes (its lock is free then). Temporaries of other names, and a live writer's of
    this name, are never touched: builds of different resources run side by side on one volume.
    A previous ``final`` is replaced only once the new one is whole; two writers of one ``final``
    each publish a whole tree, one after the other (the later one stays). The old tree is swapped
    out under a temporary name and deleted after the publish lock is let go.

    With ``resume_key`` (a spec hash) the temporary is ``<final>.tmp-<resume_key>``: a writer
    killed (SIGKILL, or stopped by SIGINT/SIGTERM, which leave it too) leaves it for the next
    writer with the same key, which continues in it, while any other key's leftovers are removed
    like every dead temporary. If a live writer holds that name, this one builds beside it under a
    random name, as without a key.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temp: Temporary | None = None
    if resume_key is not None:
        with contextlib.suppress(TemporaryInUse):
            temp = adopt_temporary(final, resume_key)
    remove_dead_temporaries(final.parent, f"{final.name}{TMP_MARKER}")  # never ours: we hold its lock
    if temp is None:
        temp = claim_temporary(final)
    tmp = temp.path
    resumable = resume_key is not None and tmp.name.endswith(resume_key)
    try:
        if resumable and (tmp.is_symlink() or (os.path.lexists(tmp) and not tmp.is_dir())):
            remove_entry(tmp)
        tmp.mkdir(mode=0o700, exist_ok=resumable)
        yield tmp
        _make_readable(tmp)
        if read_manifest(tmp) is None:
            raise RuntimeError(f"{final}: writer finished without a manifest; nothing was published")
        old = _publish(tmp, final)
        temp.remove()  # the old tree, if it was swapped into ``tmp``; nothing otherwise
        if old is not None:
            old.discard()
    except KeyboardInterrupt:  # stopped (Ctrl-C, or SIGTERM before a pod's SIGKILL): resumable work stays
        if not resumable:
            temp.remove()
        raise
    except BaseException:
        temp.remove()
        raise
    finally:
        temp.release()


def _publish(tmp: Path, final: Path) -> Temporary | None:
    """Put the tree at ``tmp`` (a temporary this process holds) in ``final``'s place; the old tree
    is left under a locked temporary name for the caller to delete once the publish lock is free
    (deleting a large tree can take long; a crash meanwhile leaves only a dead temporary).

    Where the filesystem can, the two are exchanged in one step: ``final`` never goes missing, and
    the old tree lands in ``tmp``. Elsewhere (NFS) the old tree is renamed away first, then the new
    one in; returned, the old tree's temporary."""
    with publish_lock(final):
        if not os.path.lexists(final):
            os.replace(tmp, final)
            return None
        if exchange(tmp, final):
            return None
        old = claim_temporary(final)
        try:
            os.replace(final, old.path)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old.path, final)  # put the old tree back rather than leave no ``final``
                raise
        except BaseException:
            old.release()
            raise
        return old


def replace_refusal(out: Path, kind: str) -> str | None:
    """Why a writer must not replace ``out`` (a directory given on the command line) without
    ``--force``, or None: only a directory that llmfab wrote as ``kind`` (its manifest says so)
    goes without asking; anything else there (a user's directory, an empty one, a file, a link)
    may hold what llmfab cannot put back."""
    if not os.path.lexists(out):
        return None
    if not out.is_symlink() and out.is_dir():
        manifest = read_manifest(out)
        if manifest is not None and manifest.get("kind") == kind:
            return None
    return (f"{out} exists and is not a {kind} directory that llmfab wrote; it would be replaced: "
            "choose a new directory, or pass --force to replace it")


def delete_artifacts(kind_dir: str, name: str, root: Path | None = None) -> list[Path]:
    """Remove a resource's artifact directory and its bookkeeping files (spec, status, events,
    log) and the temporaries of its writers that crashed; return what was removed. The directory is
    first renamed to a temporary sibling, so a crash half-way leaves nothing that looks complete. :class:`InvalidName` for a name that is not
    a DNS-1123 label (``""`` would be every resource of the kind)."""
    root = root or artifact_root()
    directory = artifact_dir(kind_dir, name, root)
    removed: list[Path] = []
    if directory.parent.is_dir():
        with publish_lock(directory):
            retired = retire_tree(directory)
        if retired is not None:  # deleted after the lock is let go: a writer of the name need not wait
            retired.discard()
            removed.append(directory)
        # A crashed writer's temporaries (its tree, its .lock) are otherwise removed only by the next
        # writer of this name, which after a delete may never come. A live writer's stay.
        removed += remove_dead_temporaries(directory.parent, f"{name}.")
    for suffix in (".spec.yaml", ".status.json", ".events.jsonl", ".log"):
        path = directory.with_name(f"{name}{suffix}")
        if os.path.lexists(path):
            path.unlink()
            removed.append(path)
    return removed
