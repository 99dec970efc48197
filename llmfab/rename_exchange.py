"""Swap two names in one step: Linux's ``renameat2(RENAME_EXCHANGE)``, which Python does not wrap.

Replacing a directory with ``os.replace`` is impossible while the old one is non-empty, so a writer
used two renames (old away, new in); killed between them, it left the name missing. An exchange
leaves the name always present, naming the old tree or the new one. glibc has had ``renameat2``
since 2.28; some filesystems (NFS among them) answer EINVAL or ENOSYS, and then the caller falls
back to two renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

AT_FDCWD = -100
RENAME_EXCHANGE = 1 << 1
# errnos that mean "this system or filesystem cannot exchange", not "these paths are wrong"
UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def _load_renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a libc older than glibc 2.28
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap what ``a`` and ``b`` name, atomically; False (nothing changed) where the system or the
    filesystem cannot, OSError for any other failure (one of them missing, say)."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
