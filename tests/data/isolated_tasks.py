"""A task for :class:`llmfab.data.isolated.IsolatedConverter` tests: each payload says what to do."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def make(suffix: str) -> Callable[[bytes, str | None], tuple[str, str | None]]:
    def task(payload: bytes, arg: str | None) -> tuple[str, str | None]:
        if payload == b"crash":
            os._exit(3)  # as the kernel's OOM killer would end it
        if payload == b"raise":
            raise ValueError("a parser error")
        if payload == b"hang":
            time.sleep(600)  # C code that does not return looks the same from outside
        return payload.decode().upper() + suffix, None

    return task
