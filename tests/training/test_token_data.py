"""Training windows: deterministic, disjoint across ranks, resumable, independent of world size."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from llmfab.data.shards import DataFormatError, DatasetInfo
from llmfab.data.token_windows import WindowSampler, validation_batches


@pytest.fixture
def info(dataset_template: Path) -> DatasetInfo:
    return DatasetInfo.load(dataset_template)


def test_reads_across_shard_boundaries(info: DatasetInfo) -> None:
    stream = info.split("train")
    first = np.fromfile(info.directory / "train/shard-00000.bin", dtype=np.uint16)
    second = np.fromfile(info.directory / "train/shard-00001.bin", dtype=np.uint16)
    both = np.concatenate([first, second]).astype(np.int64)
    start = len(first) - 5
    np.testing.assert_array_equal(stream.read(start, 12), both[start : start + 12])
    assert stream.num_tokens == len(both)


def _rows(batch: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in batch.tolist()}


def test_ranks_get_disjoint_shares_of_the_same_global_batch(info: DatasetInfo) -> None:
    stream = info.split("train")
    whole = WindowSampler(stream, 32, seed=3).next_batch(8, rank=0, world=1)
    shares = [WindowSampler(stream, 32, seed=3).next_batch(8, rank=r, world=2) for r in range(2)]
    assert _rows(shares[0]).isdisjoint(_rows(shares[1]))
    torch.testing.assert_close(torch.cat(shares), whole)
    assert whole.shape == (8, 33)


def test_windows_do_not_overlap_within_an_epoch_and_depend_on_the_seed(info: DatasetInfo) -> None:
    sampler = WindowSampler(info.split("train"), 32, seed=0)
    starts = [sampler.start_of(i) for i in range(500)]
    assert len(set(starts)) == 500
    assert all((b - a) % 33 == 0 for a, b in itertools.pairwise(starts))
    other = WindowSampler(info.split("train"), 32, seed=1)
    assert [other.start_of(i) for i in range(20)] != starts[:20]


def test_restored_sampler_continues_exactly(info: DatasetInfo) -> None:
    stream = info.split("train")
    a = WindowSampler(stream, 32, seed=5)
    for _ in range(3):
        a.next_batch(8, 0, 1)
    state = a.state_dict()
    expected = a.next_batch(8, 0, 1)
    b = WindowSampler(stream, 32, seed=5)
    b.load_state_dict(state)
    torch.testing.assert_close(b.next_batch(8, 0, 1), expected)


def test_epochs_wrap_around_with_a_new_order(info: DatasetInfo) -> None:
    sampler = WindowSampler(info.split("val"), 32, seed=0)
    per_epoch = (sampler.stream.num_tokens - 33) // 33
    assert sampler.start_of(per_epoch) is not None
    assert [sampler.start_of(per_epoch + i) for i in range(5)] != [sampler.start_of(i) for i in range(5)]


def test_validation_windows_are_fixed_and_split_across_ranks(info: DatasetInfo) -> None:
    stream = info.split("val")
    one = validation_batches(stream, 32, batch_size=2, batches=3, rank=0, world=1)
    again = validation_batches(stream, 32, batch_size=2, batches=3, rank=0, world=1)
    assert all(torch.equal(x, y) for x, y in zip(one, again, strict=True))
    r0 = validation_batches(stream, 32, batch_size=2, batches=1, rank=0, world=2)[0]
    r1 = validation_batches(stream, 32, batch_size=2, batches=1, rank=1, world=2)[0]
    assert _rows(r0).isdisjoint(_rows(r1))


def test_a_split_shorter_than_two_windows_is_refused(info: DatasetInfo) -> None:
    with pytest.raises(DataFormatError, match="contextLength"):
        WindowSampler(info.split("val"), 100_000, seed=0)
