"""fit(): train a model from a TrainConfig into a run folder, or resume an interrupted run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from histodetect import __version__
from histodetect.atomic import output_lock, write_text_atomic
from histodetect.data.inspection import channel_mean_std, check_pixels
from histodetect.data.splits import warn_if_trained_on_another_split
from histodetect.data.store import PatchStore, open_store
from histodetect.errors import HistodetectError
from histodetect.hardware import resolve_precision
from histodetect.models import ModelSpec, resolved_model_kwargs
from histodetect.models.checkpoint import MODEL_FILE, load_checkpoint, save_model
from histodetect.training.config import TrainConfig
from histodetect.training.data import PatchDataModule
from histodetect.training.devices import (
    check_runnable_here,
    is_primary_process,
    lightning_refusal,
    on_cuda,
)
from histodetect.training.distill import score_teacher, teacher_targets
from histodetect.training.finetune import (
    init_spec,
    init_weights,
    load_init,
    provenance,
)
from histodetect.training.interrupt import (
    CheckpointAtSigterm,
    run_interrupted,
    stop_gracefully_on_sigterm,
)
from histodetect.training.metrics_log import LOG_DIR, merge_parts, set_aside
from histodetect.training.module import PatchClassifier
from histodetect.training.progress import EpochSummary
from histodetect.training.resume import resumed
from histodetect.training.run_folder import (
    CHECKPOINT_DIR,
    RUN_INFO_FILE,
    SUMMARY_FILE,
    check_run_dir,
    prepare_run_dir,
    read_run_json,
)


@dataclass(frozen=True)
class FitResult:
    """Where the run went and how it ended."""

    run_dir: Path
    model_path: Path
    best_val_auc: float | None
    epochs_run: int
    elapsed_s: float


def library_versions() -> dict[str, str]:
    """Versions that decide whether a run can be reproduced."""
    import lightning
    import numpy

    return {
        "histodetect": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
    }


def _spec_for(config: TrainConfig, store: PatchStore, train_idx: Any) -> ModelSpec:
    mean, std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    if config.normalise == "dataset":
        m, s = channel_mean_std(store, train_idx)
        mean, std = (m[0], m[1], m[2]), (s[0], s[1], s[2])
    return ModelSpec(
        model_name=config.model,
        model_kwargs=resolved_model_kwargs(config.model, config.model_kwargs),
        crop_px=config.crop_px,
        mean=mean,
        std=std,
        mpp=config.mpp,
    )


def _precision(config: TrainConfig) -> str:
    device = "cuda" if on_cuda(config.accelerator) and torch.cuda.is_available() else "cpu"
    return resolve_precision(config.precision, device)


def _callbacks(config: TrainConfig, run_dir: Path, progress: bool) -> list[Any]:
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        ModelCheckpoint,
        TQDMProgressBar,
    )

    ckpt_dir = run_dir / CHECKPOINT_DIR
    callbacks: list[Any] = [
        # best.ckpt by validation AUC; last.ckpt after every validation...
        ModelCheckpoint(
            ckpt_dir,
            filename="best",
            monitor="val_auc",
            mode="max",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        ),
        # ...and every N steps, so a killed run loses little.
        ModelCheckpoint(
            ckpt_dir,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,
            every_n_train_steps=config.checkpoint_every_steps,
        ),
        # ...and at the step a SIGTERM stops the run.
        CheckpointAtSigterm(ckpt_dir / "last.ckpt"),
        EpochSummary(),
    ]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    if config.early_stop_patience > 0:
        callbacks.append(EarlyStopping("val_auc", mode="max", patience=config.early_stop_patience))
    return callbacks


LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
"""The logger of Lightning's rank-zero info lines (lightning.pytorch.utilities.rank_zero)."""


class _NoLightningAdvert(logging.Filter):
    """Drops the line Lightning 2.6 prints at every Trainer start to advertise its cloud logger
    ("💡 Tip: ... try installing litlogger ..."): no advice a user of this tool can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    """Installs `_NoLightningAdvert` on Lightning's info logger, once."""
    log = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _NoLightningAdvert) for f in log.filters):
        log.addFilter(_NoLightningAdvert())


def _trainer(config: TrainConfig, run_dir: Path, progress: bool) -> Any:
    import lightning as L  # noqa: N812 - Lightning's documented alias
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    devices: Any = int(config.devices) if config.devices.isdigit() else config.devices
    _quiet_lightning()
    try:
        return L.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=_precision(config),  # type: ignore[arg-type]
            callbacks=_callbacks(config, run_dir, progress),
            logger=[
                CSVLogger(run_dir, name=LOG_DIR, version=""),
                TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False),
            ],
            default_root_dir=run_dir,
            # None, not 1.0: an explicit 1.0 makes Lightning print that every batch is used
            limit_train_batches=config.max_steps_per_epoch or None,
            log_every_n_steps=10,
            use_distributed_sampler=False,
            enable_progress_bar=progress,
            enable_model_summary=progress,
            num_sanity_val_steps=0,
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        # A combination of where-to-run options that `check_runnable_here` does not foresee.
        where = {k: getattr(config, k) for k in ("accelerator", "devices", "num_nodes", "strategy")}
        raise lightning_refusal(exc, where) from exc


def check_trainable(config: TrainConfig, store: PatchStore, dm: PatchDataModule) -> None:
    """Refuse, before any folder is made, data that cannot train a classifier.

    Raises:
        HistodetectError: devices this machine cannot provide (see `check_runnable_here`), a
            split with a single class, or a batch larger than the training split.
    """
    check_runnable_here(config.accelerator, config.devices, config.num_nodes, config.strategy)
    labels = store.manifest.labels
    for name, rows in (("training", dm.split.train), ("validation", dm.split.valid)):
        n_tumour = int((labels[rows] == 1).sum())
        n_normal = int((labels[rows] == 0).sum())
        if n_tumour == 0 or n_normal == 0:
            raise HistodetectError(
                f"the {name} split of {store.root} ({dm.split.method}) has {n_normal} normal and "
                f"{n_tumour} tumour patches; a classifier needs both classes in both splits."
            )
    if config.batch_size > len(dm.split.train):
        raise HistodetectError(
            f"--batch-size {config.batch_size} is larger than the training split "
            f"({len(dm.split.train)} patches); choose a smaller one."
        )


def fit(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> FitResult:
    """Train (or resume) a run; writes config.json, logs, checkpoints/, model.pt, summary.json.

    With ``resume=True``, `config` is read again from ``config.out`` (see `resume_config`).
    The run folder is locked for the whole run (by the launching process only: DDP's workers
    re-run this command): two `--resume` of one run (a scheduler's requeue while the first
    still runs) took turns overwriting one another's checkpoints.

    Raises:
        HistodetectError: missing store, pixels changed since ingest, data that cannot train,
            existing run without resume, another process training into the same folder,
            store changed since the run began, or a diverged run (non-finite loss).
        Interrupted: stopped by SIGTERM or Ctrl-C; the last checkpoint is kept for --resume.
    """
    # the real path: `--resume .` is a folder name too, and a link and its target one folder
    lock = (
        output_lock(Path(config.out).resolve())
        if is_primary_process()
        else contextlib.nullcontext()
    )
    with lock:
        return _fit(config, resume, progress)


def _fit(config: TrainConfig, resume: bool, progress: bool) -> FitResult:
    import lightning as L  # noqa: N812 - Lightning's documented alias

    started = time.monotonic()
    ckpt_path = None
    resumed_spec = None
    if resume:
        config, ckpt_path, resumed_spec = resumed(config.out)
    run_dir = Path(config.out)
    store = open_store(config.data)
    L.seed_everything(config.seed, workers=False, verbose=False)
    datamodule = PatchDataModule(store, config)
    check_trainable(config, store, datamodule)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # each node's copy; before Lightning speaks
        check_pixels(store)  # pixels changed after ingest would be trained on silently
    print(f"data: {store.root} ({len(store)} patches); {datamodule.summary()}")
    # The network and the Trainer are built before the run folder: options that cannot build
    # them are refused with nothing left behind.
    init = load_init(config.init) if config.init is not None and not resume else None
    if init is not None:
        spec = init_spec(config, init)
        where = f"--init {config.init}"
        warn_if_trained_on_another_split(where, init.metadata, store, datamodule.split)
    else:  # a resumed run's own spec; the store's statistics (a pass over it) only for new runs
        spec = resumed_spec or _spec_for(config, store, datamodule.split.train)
    module = PatchClassifier(spec.to_dict(), config.to_dict())
    if init is not None:
        init_weights(module, init)
    trainer = _trainer(config, run_dir, progress)
    if not resume:
        check_run_dir(Path(config.out))
    scored = None  # a new run scores its teacher before its folder exists: a bad one leaves none
    if config.teacher is not None and not resume and trainer.global_rank == 0:
        scored = score_teacher(config, store, datamodule.split, progress)
    if not resume:
        prepare_run_dir(Path(config.out))
    if config.teacher is not None and trainer.global_rank == 0:  # before a resume moves anything
        # The other processes receive them from this one (PatchDataModule.setup).
        datamodule.soft_targets = teacher_targets(config, store, datamodule.split, scored)
    if resume and is_primary_process():
        set_aside(run_dir)
    if trainer.global_rank == 0:
        extra = provenance(str(config.init), init) if init is not None else {}
        _write_run_info(run_dir, config, store, datamodule, resume, extra)
    _train(trainer, module, datamodule, ckpt_path, run_dir)
    return _finish(trainer, run_dir, store, datamodule, started)


def _train(
    trainer: Any, module: Any, dm: PatchDataModule, ckpt_path: Path | None, run_dir: Path
) -> None:
    """``trainer.fit``; a run stopped by SIGTERM or Ctrl-C raises `Interrupted`, which says how
    to resume it (Lightning itself would end the process with exit 0 after SIGTERM, 1 after
    Ctrl-C, and no word of --resume)."""
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    with warnings.catch_warnings(), stop_gracefully_on_sigterm() as sigterm:
        # Our batches come from an in-memory iterable, not a DataLoader with workers.
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*Your `IterableDataset` has `__len__` defined.*")
        # Lightning 2.6 calls an API torch 2.13 deprecates; nothing a user can change
        warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        try:
            # tensors and plain values only, as every other load: a checkpoint cannot run code
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit:  # Lightning's exit after SIGTERM (SIGTERMException) or Ctrl-C
            if not (sigterm or trainer.received_sigterm or trainer.interrupted):
                raise
            signum = signal.SIGTERM if sigterm or trainer.received_sigterm else signal.SIGINT
            raise run_interrupted(run_dir, last, signum) from None
    if sigterm:  # it came before Lightning's own handler was in place
        raise run_interrupted(run_dir, last, signal.SIGTERM)


def _write_run_info(
    run_dir: Path,
    config: TrainConfig,
    store: PatchStore,
    dm: PatchDataModule,
    resume: bool,
    extra: dict[str, Any],
) -> None:
    if resume:
        info = read_run_json(run_dir / RUN_INFO_FILE)
        if info.get("store_fingerprint") != store.fingerprint:
            raise HistodetectError(
                f"the store {store.root} changed since this run began; start a new run."
            )
        return
    config.save(run_dir)
    info = {
        "store": str(store.root),
        "store_path": str(Path(store.root).resolve()),
        "store_fingerprint": store.fingerprint,
        "split_method": dm.split.method,
        "slide_disjoint": dm.split.slide_disjoint,
        "n_train": len(dm.split.train),
        "n_valid": len(dm.split.valid),
        "versions": library_versions(),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        **extra,
    }
    write_text_atomic(run_dir / RUN_INFO_FILE, json.dumps(info, indent=2) + "\n")


def _finish(
    trainer: Any, run_dir: Path, store: PatchStore, dm: PatchDataModule, started: float
) -> FitResult:
    """Export the best checkpoint as model.pt and write summary.json (rank 0 only)."""
    elapsed_s = time.monotonic() - started
    best_cb = trainer.checkpoint_callbacks[0]
    best_path = (
        Path(best_cb.best_model_path)
        if best_cb.best_model_path
        else run_dir / CHECKPOINT_DIR / "last.ckpt"
    )
    best_auc = float(best_cb.best_model_score) if best_cb.best_model_score is not None else None
    model_path = run_dir / MODEL_FILE
    if trainer.global_rank == 0:
        merge_parts(run_dir)
        loaded = load_checkpoint(best_path)
        info = read_run_json(run_dir / RUN_INFO_FILE)
        metadata = {**info, "best_val_auc": best_auc, "best_epoch": loaded.metadata.get("epoch"),
                    "trained_from": str(best_path.name)}  # fmt: skip
        save_model(model_path, loaded.model, loaded.spec, metadata)
        summary = {"best_val_auc": best_auc, "epochs_run": trainer.current_epoch,
                   "global_step": trainer.global_step, "elapsed_s": round(elapsed_s, 1),
                   "model": str(model_path)}  # fmt: skip
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        print(
            f"best validation AUC {best_auc:.4f} ({dm.split.method} split); model: {model_path}"
            if best_auc is not None
            else f"model: {model_path}"
        )
    return FitResult(run_dir, model_path, best_auc, trainer.current_epoch, elapsed_s)
