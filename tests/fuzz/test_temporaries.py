"""Property: however the folder of a lock this process holds is spelt (relative, through symlinks,
with ``..``), a cleaner in the same process recognises the lock as its own and never opens it."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from llmfab.temporaries import _is_held, claim_temporary, remove_dead_temporaries

# Each step leads from the store's folder back to it: a symlink to it, a detour through a sibling
# and ``..``, a symlink to its parent then its name, or ``.``.
STEPS = {"link": ["link"], "detour": ["..", "store"], "parent-link": ["up", "store"], "dot": ["."]}


@given(st.lists(st.sampled_from(sorted(STEPS)), max_size=6), st.booleans())
def test_a_held_lock_is_recognised_under_every_spelling(tmp_path_factory, steps: list[str], relative: bool) -> None:
    root = tmp_path_factory.mktemp("spellings")
    store = root / "store"
    store.mkdir(exist_ok=True)
    (store / "link").symlink_to(store)
    (store / "up").symlink_to(root)
    temp = claim_temporary(store / "books")
    try:
        folder = Path(*[part for step in steps for part in STEPS[step]]) if steps else Path(".")
        spelt = folder if relative else store / folder
        cwd = os.getcwd()
        os.chdir(store)
        try:
            assert _is_held(spelt / temp.lock.name)
            assert remove_dead_temporaries(spelt) == []
        finally:
            os.chdir(cwd)
        assert temp.lock.exists()
    finally:
        temp.release()
