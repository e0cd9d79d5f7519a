"""PatchDataModule: picks the honest split, loads it once into memory and serves device batches."""

from __future__ import annotations

from typing import Any

import lightning as L  # noqa: N812 - Lightning's documented alias
import numpy as np
import torch

from histodetect.data.loader import PatchBatches, fits_on_gpu, load_split, shard_indices
from histodetect.data.splits import Split, choose_split
from histodetect.data.store import PatchStore
from histodetect.training.config import TrainConfig


class PatchDataModule(L.LightningDataModule):
    """Training and validation batches from a PatchStore.

    The split comes from `choose_split` (official `valid` split, else slide-grouped, else
    stratified random with a warning). Patches are decoded never: they are copied from the
    store's memory map into one tensor per split, kept on the GPU when they fit.
    """

    def __init__(self, store: PatchStore, config: TrainConfig) -> None:
        super().__init__()
        self.store, self.config = store, config
        self.split: Split = choose_split(store, config.valid_fraction, config.seed)
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        self._valid: tuple[torch.Tensor, torch.Tensor] | None = None
        self._targets: torch.Tensor | None = None
        self._train_batches: PatchBatches | None = None
        self._position: dict[str, int] | None = None  # from a checkpoint, until a loader takes it
        self.soft_targets: np.ndarray | None = None
        """A teacher's probability per store row (float32, len(store)); set before fitting in
        the first process, which `setup` broadcasts to the others."""

    def summary(self) -> str:
        """One line: split method and sizes."""
        s = self.split
        disjoint = "slide-disjoint" if s.slide_disjoint else "NOT slide-disjoint (optimistic)"
        return (
            f"split: {s.method} ({disjoint}), {len(s.train)} train / {len(s.valid)} valid patches"
        )

    def setup(self, stage: str) -> None:
        """Load this process's shard of each split into memory (all of it without DDP), on the
        training GPU when it fits there."""
        if self._train is not None:
            return
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        seed = self.config.seed
        train_rows = shard_indices(self.split.train, rank, world, seed, equal=True)
        train = load_split(self.store, train_rows)
        valid = load_split(
            self.store, shard_indices(self.split.valid, rank, world, seed, equal=False)
        )
        device = self._device()
        on_device = self.config.data_on_device == "auto" and fits_on_gpu(
            train[0].nbytes + valid[0].nbytes, device
        )
        self._train, self._valid = (
            (_to(train, device), _to(valid, device)) if on_device else (train, valid)
        )
        if self.config.teacher is not None and world > 1:  # the first process has them
            assert self.trainer is not None
            self.soft_targets = self.trainer.strategy.broadcast(self.soft_targets, src=0)
        if self.config.teacher is not None and self.soft_targets is None:
            raise RuntimeError(f"process {rank} of {world} has no teacher targets")  # a bug
        if self.soft_targets is not None:
            targets = torch.from_numpy(self.soft_targets[train_rows])
            self._targets = targets.to(device) if on_device else targets

    def _device(self) -> torch.device:
        return (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )

    def _batches(self, data: tuple[torch.Tensor, torch.Tensor], train: bool) -> PatchBatches:
        """Training batches carry the teacher's targets as a third tensor when there is one."""
        pixels, labels = data
        return PatchBatches(
            pixels,
            labels,
            self.config.batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.config.seed,
            device=self._device(),
            targets=self._targets if train else None,
        )

    def train_dataloader(self) -> PatchBatches:
        assert self._train is not None
        self._train_batches = self._batches(self._train, train=True)
        if self._position is not None:
            self._train_batches.load_state_dict(self._position)
            self._position = None
        return self._train_batches

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, saved in every checkpoint.

        Lightning saves it too, but restores it only into a loader it builds after the restore;
        `estimated_stepping_batches` (the one-cycle schedule's length) builds it before, so a
        resumed run started its epoch again from the first batch: it repeated batches it had
        trained on and skipped the rest of the epoch. The data module carries the position."""
        if self._train_batches is None:
            return {}
        return {"train_position": self._train_batches.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_position")
        if position is None:
            return
        if self._train_batches is not None:  # built before the restore
            self._train_batches.load_state_dict(position)
        else:
            self._position = dict(position)

    def val_dataloader(self) -> PatchBatches:
        assert self._valid is not None
        return self._batches(self._valid, train=False)


def _to(
    data: tuple[torch.Tensor, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return data[0].to(device), data[1].to(device)
