"""Where a training run executes (--accelerator, --devices, --num-nodes, --strategy): the options
Lightning would otherwise refuse with a traceback, or wait on forever, checked before any work."""

from __future__ import annotations

import os
import re
from typing import Any

from histodetect.errors import HistodetectError, first_line

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
"""--accelerator values; tpu is not offered (histodetect does not support torch_xla)."""
CLUSTER_RANK_VARIABLES = ("NODE_RANK", "GROUP_RANK", "RANK")
"""With MASTER_ADDR, one of these tells Lightning which node of a multi-node run this is."""


def check_accelerator_and_devices(accelerator: str, devices: str) -> None:
    """Refuse a value of --accelerator or --devices that is not one histodetect accepts.

    Raises:
        HistodetectError: an unknown accelerator, or devices that are not auto or a whole
            number of at least 1.
    """
    if accelerator not in ACCELERATORS:
        raise HistodetectError(
            f"--accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}."
        )
    if devices != "auto" and not (re.fullmatch(r"[0-9]+", devices) and int(devices) >= 1):
        raise HistodetectError(
            f"--devices must be auto or a whole number of devices per node (at least 1), "
            f"got {devices!r}."
        )


def on_cuda(accelerator: str) -> bool:
    """True when a run with this --accelerator trains on CUDA GPUs here: gpu or cuda, or auto
    on a machine that has one (the one rule `train` resolves its device and precision by)."""
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_runnable_here(accelerator: str, devices: str, num_nodes: int, strategy: str) -> None:
    """Refuse, before any folder is made, a device request this machine cannot honour.

    Raises:
        HistodetectError: a GPU or MPS accelerator without that hardware, more GPUs than the
            machine has, an unknown strategy, or several nodes without a cluster environment.
    """
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise HistodetectError(
            f"--accelerator {accelerator} asks for a GPU but none is available here; "
            "use --accelerator cpu or auto."
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise HistodetectError(
            "--accelerator mps asks for Apple's GPU (MPS) but it is not available here; "
            "use --accelerator cpu or auto."
        )
    if on_cuda(accelerator) and devices != "auto" and int(devices) > torch.cuda.device_count():
        raise HistodetectError(
            f"--devices {devices} asks for {devices} GPUs but this machine has "
            f"{torch.cuda.device_count()}; give at most that many, or --devices auto."
        )
    _check_strategy(strategy)
    if num_nodes > 1 and not _cluster_detected():
        raise HistodetectError(
            f"--num-nodes {num_nodes} needs a cluster environment to find the other nodes, and "
            "none was found: launch under SLURM (srun) or torchrun, or set MASTER_ADDR, "
            "MASTER_PORT and NODE_RANK on every node; on one machine use --num-nodes 1."
        )


def _check_strategy(strategy: str) -> None:
    from lightning.pytorch.strategies import StrategyRegistry

    known = ["auto", *StrategyRegistry.available_strategies()]
    if strategy not in known:
        raise HistodetectError(
            f"--strategy {strategy!r} is not a Lightning strategy; use auto (the default; DDP "
            "for several devices) or one of ddp, ddp_spawn, ddp_find_unused_parameters_true, fsdp."
        )


def _cluster_detected() -> bool:
    """True under a cluster environment Lightning detects (SLURM, torchrun, LSF), or when the
    variables of a manual multi-node launch (Kubeflow sets them too) are set."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if "MASTER_ADDR" in os.environ and any(v in os.environ for v in CLUSTER_RANK_VARIABLES):
        return True
    for environment in (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment):
        try:
            if environment.detect():
                return True
        except Exception:  # a detector that cannot tell means "not this one"
            continue
    return False


def lightning_refusal(exc: BaseException, options: dict[str, Any]) -> HistodetectError:
    """A sentence for an option combination Lightning refused when the Trainer was built."""
    given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
    return HistodetectError(
        f"Lightning cannot train with {given} ({first_line(exc).rstrip('.')}); change these "
        "options."
    )


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
"""Where a launcher says which process this is: Lightning's own DDP launcher (LOCAL_RANK,
NODE_RANK), torchrun (RANK, GROUP_RANK) and srun (SLURM_PROCID, one process per task)."""


def is_primary_process() -> bool:
    """True only in the process of global rank 0: the one that prepares, locks and clears the
    run folder. LOCAL_RANK and NODE_RANK alone took every srun task and each torchrun node's
    first process for it, and those then refused one another on the run folder's lock."""
    return all(_rank(os.environ.get(name)) == 0 for name in RANK_VARIABLES)


def _rank(value: str | None) -> int:
    try:
        return int(value) if value not in (None, "") else 0
    except ValueError:  # a launcher's variable we cannot read: not taken for rank 0's
        return -1
