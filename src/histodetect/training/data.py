"""PatchDataModule: picks the honest split, loads it once into memory and serves device batches."""

from __future__ import annotations

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

    def summary(self) -> str:
        """One line: split method and sizes."""
        s = self.split
        disjoint = "slide-disjoint" if s.slide_disjoint else "NOT slide-disjoint (optimistic)"
        return (
            f"split: {s.method} ({disjoint}), {len(s.train)} train / {len(s.valid)} valid patches"
        )

    def train_indices(self) -> np.ndarray:
        return self.split.train

    def setup(self, stage: str) -> None:
        """Load this process's shard of each split into memory (all of it without DDP)."""
        if self._train is None:
            rank, world = (
                (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            )
            seed = self.config.seed
            train = shard_indices(self.split.train, rank, world, seed, equal=True)
            valid = shard_indices(self.split.valid, rank, world, seed, equal=False)
            self._train = load_split(self.store, train)
            self._valid = load_split(self.store, valid)

    def _device(self) -> torch.device:
        return (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )

    def _batches(self, data: tuple[torch.Tensor, torch.Tensor], train: bool) -> PatchBatches:
        device = self._device()
        pixels, labels = data
        if (
            self.config.data_on_device == "auto"
            and fits_on_gpu(pixels.nbytes, device)
            and pixels.device != device
        ):
            pixels, labels = pixels.to(device), labels.to(device)
            data_holder = (pixels, labels)
            if train:
                self._train = data_holder
            else:
                self._valid = data_holder
        return PatchBatches(
            pixels,
            labels,
            self.config.batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.config.seed,
            device=device,
        )

    def train_dataloader(self) -> PatchBatches:
        assert self._train is not None
        return self._batches(self._train, train=True)

    def val_dataloader(self) -> PatchBatches:
        assert self._valid is not None
        return self._batches(self._valid, train=False)
