"""Temporaries in the artifact store that no writer can mistake for another's debris (issue 19, #5).

Every artifact is written to a temporary sibling, ``<name>.tmp-<token>``, and renamed into place.
Writers share one volume: Dataset Jobs run side by side on a PVC, from pods on different hosts (and
pid namespaces), so a pid proves nothing, and age proves nothing either (a build can take hours).
What proves a writer alive is a lock it holds: each temporary ``X`` has a sibling ``X.lock``, which
its writer creates and ``flock``\\ s *before* ``X`` exists and unlinks only after ``X`` is gone
(renamed into place or removed). The kernel drops the lock when the writer exits, however it exits
(SIGKILL included); local filesystems and NFSv4 both honour it (Linux's NFS client takes a
whole-file POSIX lock on the server for ``flock``). A cleaner takes a lock without waiting: if it
gets it, the writer is gone and ``X`` is removed; if not, ``X`` is left alone. An entry with no
``.lock`` beside it is never touched: llmfab did not make it (or an llmfab older than this module
did; such debris stays, and no reader trusts it).

Within one process, NFS's POSIX-emulated locks do not exclude a second thread (and closing any
descriptor of a file drops the process's lock on it), so a process also remembers the locks it
holds (:data:`_held`) and never opens them to test. It remembers them by their folder's (device,
inode) and their name, not by the path string: the same lock reached by another spelling (relative,
through a symlinked folder) is still the process's own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TMP_MARKER = ".tmp-"
LOCK_SUFFIX = ".lock"

LockKey = tuple[int, int, str] | str

_held: set[LockKey] = set()
_guard = threading.Lock()
# One threading lock per path being published, with how many threads use it; the entry goes when
# the last one leaves (a run publishes one path per checkpoint step: never pruned, they would pile up).
_thread_locks: dict[LockKey, tuple[threading.Lock, int]] = {}


class TemporaryInUse(RuntimeError):
    """A temporary with a fixed name is held by a writer that is still running."""


def _key(path: Path) -> LockKey:
    """What ``path`` names however it is spelt: its folder's (device, inode) and its own name (a
    lock file is never a link, :func:`_lock` refuses one). The folder's real path if it is gone."""
    try:
        st = os.stat(path.parent)
    except OSError:
        return os.path.join(os.path.realpath(path.parent), path.name)
    return (st.st_dev, st.st_ino, path.name)


def _hold(path: Path) -> LockKey:
    key = _key(path)
    with _guard:
        _held.add(key)
    return key


def _unhold(key: LockKey) -> None:
    with _guard:
        _held.discard(key)


def _is_held(path: Path) -> bool:
    key = _key(path)
    with _guard:
        return key in _held


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a cleaner may have unlinked it)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _lock(path: Path, *, create: bool, exclusive_create: bool = False, wait: bool = False) -> int | None:
    """A descriptor of ``path`` holding its flock, or None: taken by a live holder, or gone.

    O_RDWR because NFS maps an exclusive flock to a write lock; O_NOFOLLOW so a planted symlink
    is never followed.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT | (os.O_EXCL if exclusive_create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:  # a writer gets every error (EEXIST included); a cleaner skips the entry
        if not create and e.errno in (errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.EACCES, errno.EPERM):
            return None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same_file(fd, path):  # unlinked (or replaced) between our open and our flock
        os.close(fd)
        return None
    return fd


@dataclass
class Temporary:
    """A reserved temporary name ``path`` and the lock that says its writer is alive.

    The path itself does not exist yet: the caller makes a directory or a file there, or renames
    something onto it. :meth:`release` (after the path is renamed away or removed) lets it go.
    """

    path: Path
    lock: Path
    fd: int
    key: LockKey  # the lock's entry in :data:`_held`
    released: bool = field(default=False, init=False)

    def remove(self) -> None:
        """Delete whatever is at ``path`` (a tree, a file or a link; never what a link points to)."""
        remove_entry(self.path)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        with contextlib.suppress(FileNotFoundError):
            self.lock.unlink()
        os.close(self.fd)
        _unhold(self.key)

    def discard(self) -> None:
        """Remove the path, then the lock: the order a cleaner relies on."""
        self.remove()
        self.release()


def remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()


def claim_temporary(final: Path, token: str | None = None) -> Temporary:
    """Reserve ``<final>.tmp-<token>`` (a random token unless given) beside ``final``, locked.

    With a fixed ``token`` (ranks of one training job agree on it without talking) a dead
    predecessor's leftover of that name is removed; a live one raises :class:`TemporaryInUse`.
    """
    for _ in range(1000):
        name = f"{final.name}{TMP_MARKER}{token or secrets.token_hex(8)}"
        path = final.with_name(name)
        lock = final.with_name(name + LOCK_SUFFIX)
        if token is not None:
            remove_dead_temporaries(final.parent, name)
        key = _hold(lock)  # before it exists: no thread of this process opens it to test it
        try:
            fd = _lock(lock, create=True, exclusive_create=True)
        except FileExistsError:
            _unhold(key)
            if token is not None:
                raise TemporaryInUse(f"{path}: another writer that is still running holds {lock}") from None
            continue
        except BaseException:
            _unhold(key)
            raise
        if fd is None:  # a cleaner took our fresh, still unlocked file first; take another name
            _unhold(key)
            continue
        temp = Temporary(path, lock, fd, key)
        if os.path.lexists(path):  # the leftover of a dead writer that shared the fixed token
            temp.remove()
        return temp
    raise RuntimeError(f"{final.parent}: could not reserve a temporary name beside {final.name}")


def adopt_temporary(final: Path, token: str) -> Temporary:
    """Reserve ``<final>.tmp-<token>``, keeping what a dead writer of that name left there.

    For work that resumes (a Dataset build keyed by its spec hash): where :func:`claim_temporary`
    with a fixed token removes a dead predecessor's leftover, this takes over its lock and leaves
    its tree for the caller to continue. A live writer of the name raises :class:`TemporaryInUse`.
    """
    name = f"{final.name}{TMP_MARKER}{token}"
    path = final.with_name(name)
    lock = final.with_name(name + LOCK_SUFFIX)
    if _is_held(lock):
        raise TemporaryInUse(f"{path}: this process is already writing it")
    for _ in range(3):  # a cleaner may unlink the dead lock between our open and our flock
        key = _hold(lock)
        try:
            fd = _lock(lock, create=True)
        except BaseException:
            _unhold(key)
            raise
        if fd is not None:
            return Temporary(path, lock, fd, key)
        _unhold(key)
    raise TemporaryInUse(f"{path}: another writer that is still running holds {lock}")


def remove_dead_temporaries(parent: Path, prefix: str = "", *, unlocked_too: bool = False) -> list[Path]:
    """Remove the temporaries under ``parent`` whose names start with ``prefix`` and whose writers
    no longer run (their lock can be taken); return what was removed.

    A live writer's temporary stays, and so does anything without an llmfab lock beside it, unless
    ``unlocked_too``: for a directory only llmfab writes (a run's ``checkpoints/``), where such an
    entry is the debris of an llmfab from before these locks.
    """
    removed: list[Path] = []
    try:
        entries = sorted(os.listdir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in entries:
        if not (name.startswith(prefix) and TMP_MARKER in name):
            continue
        if not name.endswith(LOCK_SUFFIX):
            # Writers create X.lock before X and remove it after X: X alone is nobody's.
            if unlocked_too and not os.path.lexists(parent / (name + LOCK_SUFFIX)):
                remove_entry(parent / name)
                removed.append(parent / name)
            continue
        lock = parent / name
        if _is_held(lock):
            continue
        fd = _lock(lock, create=False)
        if fd is None:
            continue
        try:
            target = parent / name[: -len(LOCK_SUFFIX)]
            if os.path.lexists(target):
                remove_entry(target)
                removed.append(target)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def _thread_lock(key: LockKey) -> Iterator[None]:
    """The threading lock of ``key``, held; its entry is dropped when no thread uses it any more."""
    with _guard:
        lock, users = _thread_locks.get(key, (threading.Lock(), 0))
        _thread_locks[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _guard:
            lock, users = _thread_locks[key]
            if users == 1:
                del _thread_locks[key]
            else:
                _thread_locks[key] = (lock, users - 1)


@contextlib.contextmanager
def publish_lock(final: Path) -> Iterator[None]:
    """Hold the lock that serialises every change of ``final`` itself (rename into place, removal),
    so two writers of one path never interleave their renames and a reader never sees half a tree.

    Blocking: a second writer of the same resource waits for the first one's rename (short).
    """
    lock = final.with_name(f"{final.name}{TMP_MARKER}publish{LOCK_SUFFIX}")
    with _thread_lock(_key(lock)):
        key = _hold(lock)
        try:
            while True:
                fd = _lock(lock, create=True, wait=True)
                if fd is not None:
                    break
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # while still held: a waiter's inode check fails and it retries
                os.close(fd)
        finally:
            _unhold(key)


def retire_tree(path: Path) -> Temporary | None:
    """Rename ``path`` to a locked temporary and return it (None if nothing is there), for the
    caller to :meth:`~Temporary.discard` once it has let go of :func:`publish_lock` of ``path``,
    which it holds here: deleting a large tree takes long, and a crash meanwhile leaves only a
    dead temporary."""
    if not os.path.lexists(path):
        return None
    temp = claim_temporary(path)
    try:
        os.replace(path, temp.path)
    except BaseException:
        temp.release()
        raise
    return temp


def remove_tree(path: Path) -> bool:
    """Remove ``path`` so that a crash half-way leaves nothing under its name: first renamed to a
    locked temporary, then deleted. The caller holds :func:`publish_lock` of ``path``."""
    temp = retire_tree(path)
    if temp is None:
        return False
    temp.discard()
    return True
