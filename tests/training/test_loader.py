"""PatchBatches: seeded epochs, disjoint shards per process, resumable position."""

import torch

from histodetect.data.loader import PatchBatches


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
    shards = [
        _seen(_batches(shuffle=True, drop_last=True, seed=0, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 24
    assert not set(shards[0]) & set(shards[1])
    assert len(_batches(shuffle=True, drop_last=True, rank=0, world_size=2)) == 3


def test_validation_covers_every_patch_in_order() -> None:
    assert _seen(_batches(shuffle=False, drop_last=False)) == list(range(50))
    shards = [
        _seen(_batches(shuffle=False, drop_last=False, rank=r, world_size=3)) for r in range(3)
    ]
    assert sorted(shards[0] + shards[1] + shards[2]) == list(range(50))


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
