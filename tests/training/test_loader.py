"""PatchBatches: seeded epochs, disjoint shards per process, resumable position."""

import numpy as np
import torch

from histodetect.data.loader import PatchBatches, shard_indices


def _batches(n: int = 50, **kw: object) -> PatchBatches:
    pixels = (
        torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 96, 96, 3).contiguous()
    )
    labels = torch.arange(n, dtype=torch.float32)
    return PatchBatches(pixels, labels, 8, **kw)  # type: ignore[arg-type]


def _seen(batches: PatchBatches) -> list[int]:
    return [int(v) for _, labels in batches for v in labels]


def test_epochs_are_seeded_permutations() -> None:
    b = _batches(shuffle=True, drop_last=False, seed=1)
    first = _seen(b)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert _seen(b) == first, "same epoch, same order"
    b.set_epoch(1)
    second = _seen(b)
    assert sorted(second) == list(range(50)) and second != first


def test_shards_are_disjoint_and_equal_when_training() -> None:
    indices = np.arange(100, 151)
    shards = [shard_indices(indices, r, 2, seed=0, equal=True) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 25
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) <= set(indices)
    again = shard_indices(indices, 0, 2, seed=0, equal=True)
    assert np.array_equal(shards[0], again), "the same shard every epoch for a seed"
    assert np.array_equal(shard_indices(indices, 0, 1, seed=0, equal=True), indices)


def test_validation_covers_every_patch_in_order() -> None:
    assert _seen(_batches(shuffle=False, drop_last=False)) == list(range(50))
    indices = np.arange(50)
    shards = [shard_indices(indices, r, 3, seed=1, equal=False) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(50))


def test_state_dict_resumes_mid_epoch() -> None:
    b = _batches(shuffle=True, drop_last=True, seed=3)
    b.set_epoch(2)
    full = _seen(b)
    it = iter(b)
    for _ in range(2):
        next(it)
    state = b.state_dict()
    fresh = _batches(shuffle=True, drop_last=True, seed=3)
    fresh.load_state_dict(state)
    assert _seen(fresh) == full[16:]
    assert _seen(fresh) == full, "the next epoch iteration starts from the beginning again"


def test_soft_targets_travel_with_their_patches() -> None:
    n = 50
    pixels = (
        torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 96, 96, 3).contiguous()
    )
    labels = (torch.arange(n) % 2).float()
    targets = torch.arange(n, dtype=torch.float32) / 100
    b = PatchBatches(pixels, labels, 8, shuffle=True, drop_last=True, seed=3, targets=targets)
    seen = 0
    for batch in b:
        assert len(batch) == 3
        index = batch[0][:, 0, 0, 0].long()
        assert torch.equal(batch[1], (index % 2).float())
        assert torch.allclose(batch[2], index.float() / 100), "each target stays with its patch"
        seen += len(index)
    assert seen == 48
    plain = PatchBatches(pixels, labels, 8, shuffle=False, drop_last=False)
    assert all(len(batch) == 2 for batch in plain), "no targets: (pixels, labels) as before"
