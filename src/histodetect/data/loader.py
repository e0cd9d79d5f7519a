"""Batches straight from memory (host RAM or GPU) to the model: no decoding, no per-sample Python."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from histodetect.data.store import PatchStore

GPU_MEMORY_SHARE = 0.5
"""Largest share of free GPU memory the pixels may take to be kept resident on the GPU."""


def load_split(store: PatchStore, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy patches and labels into host tensors: uint8 (n, 96, 96, 3) and float32 (n,)."""
    pixels = torch.from_numpy(store.read(indices))
    labels = torch.from_numpy(store.manifest.labels[indices].astype(np.float32))
    return pixels, labels


def shard_indices(
    indices: np.ndarray, rank: int, world_size: int, seed: int, equal: bool
) -> np.ndarray:
    """This process's fixed share of `indices` under data parallelism.

    A seeded permutation is dealt out round-robin, so every process holds a random, disjoint
    part and loads only that part of the store. With `equal`, every share is cut to the same
    length (training: all processes must take the same number of steps).
    """
    if world_size <= 1:
        return indices
    order = np.random.default_rng(seed).permutation(len(indices))
    per_rank = len(indices) // world_size
    share = order[rank::world_size]
    return np.sort(indices[share[:per_rank] if equal else share])


def fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    """True when `nbytes` takes at most half of the free memory of a CUDA `device`."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= GPU_MEMORY_SHARE * free


class PatchBatches:
    """An iterable of (pixels uint8 (b, 96, 96, 3), labels float (b,)[, targets float (b,)])
    batches on `device`.

    Shuffled with a new seeded permutation each epoch (`set_epoch`, which Lightning calls
    through the `sampler` attribute). Under data parallelism each process builds its own
    PatchBatches from its shard (`shard_indices`). `state_dict`/`load_state_dict` record the position in the epoch, so a run resumed from a
    mid-epoch checkpoint continues with the batches it had not seen. When the pixels live on the GPU, a batch is one gather on the GPU. Otherwise
    the batch is gathered on the host into pinned memory and copied asynchronously.

    Args:
        pixels: all patches of the split, uint8 (n, 96, 96, 3), on the CPU or the target device.
        labels: float32 (n,), same device as pixels.
        batch_size: patches per batch per process.
        shuffle: new order every epoch (training) or the stored order (validation).
        drop_last: drop a final short batch (training, keeps BatchNorm statistics sane).
        seed: base seed; epoch e uses seed + e.
        device: where batches are delivered.
        targets: float32 (n,) soft targets (a teacher's, see `histodetect.training.distill`),
            same device as pixels; when given, batches are (pixels, labels, targets).
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        targets: torch.Tensor | None = None,
    ) -> None:
        self.pixels, self.labels, self.targets = pixels, labels, targets
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed = seed
        self.device = torch.device(device)
        self.epoch = 0
        self._yielded = 0  # batches handed out in the current epoch
        self._resume_at = 0  # first batch of the next iteration, after load_state_dict
        self.sampler = self  # so that Lightning's set_epoch reaches us
        self.batch_sampler = None  # Lightning inspects it beside `sampler`

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration follows."""
        if epoch != self.epoch:
            self.epoch, self._resume_at, self._yielded = epoch, 0, 0

    def state_dict(self) -> dict[str, int]:
        """Position in the data: epoch and batches already handed out in it."""
        return {"epoch": self.epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position (the next iteration skips batches already seen)."""
        self.epoch, self._resume_at = int(state["epoch"]), int(state["batches"])
        self._yielded = self._resume_at  # so a state saved before the next batch is the same

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self._order()
        start, self._resume_at = self._resume_at, 0
        for b in range(start, len(self)):
            self._yielded = b + 1
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self._gather(idx)

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sources = [self.pixels, self.labels] + ([self.targets] if self.targets is not None else [])
        if self.pixels.device == self.device:
            idx = idx.to(self.device)
            return tuple(t.index_select(0, idx) for t in sources)
        parts = [t.index_select(0, idx) for t in sources]
        if self.device.type == "cuda":
            parts = [t.pin_memory() for t in parts]
        return tuple(t.to(self.device, non_blocking=True) for t in parts)
