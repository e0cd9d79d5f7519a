"""Peer benchmark: the original write-up's Keras model in TensorFlow against this project on
the same machine, in one run.

Usage: python benchmarks/bench_peer.py [--repeats 3] [--sizes 32 96] [--threads N] [--no-tf]

The write-up's model (3 x Conv2D(3x3, relu) + MaxPool(2), 32-64-128, Flatten, Dense(256, relu),
Dropout(0.5), Dense(1, sigmoid)) runs in Keras 3 / tensorflow-cpu, which this script installs
into its own virtual environment under benchmarks/.peer-env (git-ignored; not a project
dependency). Against it: this project's seed_cnn (the same model) and histocnn (the default)
at the `auto` path (bf16 autocast + channels_last on CPUs with native bf16; fp32 elsewhere,
channels_last where `histodetect.hardware.use_channels_last` says, and for inference an ONNX
Runtime copy where `Predictor` at auto would take one), seed_cnn at `32-true`
(the same as `auto` on CPUs without native bf16), and ONNX Runtime (inference; seed_cnn also
in int8, `histodetect export --int8-calibration`, calibrated on 256 real training patches of
../shared/data/pcam-subset when it is there).

Method: one persistent worker process per framework and setting (TF default; TF best =
oneDNN on + mixed_bfloat16; torch; onnxruntime), each builds its models and warms up first;
then `--repeats` rounds alternate over rows and workers, each timing a fixed number of steps
on one in-memory batch (no input pipeline, so Keras' autotuning cannot stall a timed call);
the median img/s is reported with the range and the CPU other processes used meanwhile.
`--threads N` gives every framework N compute threads (default: one per core); on a machine
that other jobs keep busy, 1 avoids measuring how each thread pool copes with preemption.
Training: one optimiser step (Adam, binary cross-entropy) on batch 128 of float images, at
the write-up's 32 px centre crop and at 96 px. Inference: batch 256; TensorFlow gets float
images (`predict_on_batch`), this project uint8 patches with its preprocessing (centre crop,
scaling, standardisation) inside the timed call. Weights are untrained: this measures speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("HISTODETECT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
CALIBRATION = SHARED / "pcam-subset" / "train"
"""Real patches for the int8 column's quantisation ranges (the column is left out without them)."""
PEER_ENV = HERE / ".peer-env"
TF_REQUIREMENT = "tensorflow-cpu==2.21.0"
BATCH_TRAIN, BATCH_INFER = 128, 256
STEPS = {("train", 32): 12, ("train", 96): 3, ("infer", 32): 6, ("infer", 96): 2}
"""Steps (train) or batches (inference) per timed block, about a second or two each."""


# ----------------------------------------------------------------------------- workers


def _respond(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _serve(timer: Any) -> None:
    """Answer {"task", "size", "config"} lines on stdin with {"img_s"} until stdin closes."""
    _respond({"ready": timer.configs, "paths": getattr(timer, "paths", {})})
    for line in sys.stdin:
        request = json.loads(line)
        _respond({"img_s": timer.time(request["config"], request["task"], request["size"])})


def _timed(step: Any, steps: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


class TfTimer:
    """Keras 3 / TensorFlow: the write-up's model, default settings or oneDNN + bf16."""

    def __init__(self, sizes: list[int], bf16: bool, threads: int | None) -> None:
        import keras
        import numpy as np
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)

        if bf16:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.np, self.keras = np, keras
        self.models = {size: self._model(size) for size in sizes}
        rng = np.random.default_rng(0)
        self.x = {s: rng.random((BATCH_INFER, s, s, 3), dtype=np.float32) for s in sizes}
        self.y = rng.integers(0, 2, (BATCH_TRAIN, 1)).astype(np.float32)
        self.configs = ["tf-best" if bf16 else "tf-default"]
        for size in sizes:  # warm-up: tracing and compilation happen here, not in timed calls
            for task in ("train", "infer"):
                self.time(self.configs[0], task, size, steps=2)

    def _model(self, size: int) -> Any:
        layers = self.keras.layers
        blocks = []
        for channels in (32, 64, 128):
            blocks += [layers.Conv2D(channels, 3, activation="relu"), layers.MaxPooling2D(2)]
        model = self.keras.Sequential(
            [
                self.keras.Input((size, size, 3)),
                *blocks,
                layers.Flatten(),
                layers.Dense(256, activation="relu"),
                layers.Dropout(0.5),
                layers.Dense(1, activation="sigmoid", dtype="float32"),
            ]
        )
        model.compile(optimizer=self.keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        return model

    def time(self, config: str, task: str, size: int, steps: int | None = None) -> float:
        model, x = self.models[size], self.x[size]
        n = steps or STEPS[(task, size)]
        if task == "train":
            return _timed(lambda: model.train_on_batch(x[:BATCH_TRAIN], self.y), n, BATCH_TRAIN)
        return _timed(lambda: model.predict_on_batch(x), n, BATCH_INFER)


TORCH_CONFIGS = {
    "seed_cnn auto": ("seed_cnn", "auto"),
    "histocnn auto": ("histocnn", "auto"),
    "seed_cnn fp32": ("seed_cnn", "32-true"),
}
"""Column -> (model family, precision) of the torch worker."""


class TorchTimer:
    """This project in PyTorch: seed_cnn and histocnn at `auto`, seed_cnn in eager fp32."""

    def __init__(self, sizes: list[int], onnx_folder: Path, threads: int | None) -> None:
        import numpy as np
        import torch

        if threads:
            torch.set_num_threads(threads)

        from histodetect.export import export_onnx
        from histodetect.inference.backends.auto import ENV_CACHE_DIR, faster_cpu_backend
        from histodetect.inference.backends.torch import TorchBackend
        from histodetect.models import ModelSpec, build_model
        from histodetect.models.checkpoint import load_checkpoint, save_model

        os.environ[ENV_CACHE_DIR] = str(onnx_folder / "cache")  # measured afresh in every run

        torch.manual_seed(0)
        self.torch, self.np = torch, np
        self.backends: dict[tuple[str, int], Any] = {}
        self.infer_backends: dict[tuple[str, int], Any] = {}
        self.paths: dict[str, str] = {}
        for config, (name, precision) in TORCH_CONFIGS.items():
            for size in sizes:
                spec = ModelSpec(name, crop_px=size if size < 96 else None)
                model = build_model(spec)
                path = onnx_folder / f"{name}-{size}.pt"
                if precision == "auto":
                    save_model(path, model, spec, {})
                backend = TorchBackend(model, spec, torch.device("cpu"), precision)
                self.backends[(config, size)] = self.infer_backends[(config, size)] = backend
                if precision == "auto":
                    # Inference as `Predictor` runs it at auto: an ONNX Runtime copy where it
                    # measures faster on a CPU without native bf16 (inference/backends/auto.py).
                    chosen = faster_cpu_backend(load_checkpoint(path), backend, "auto")
                    self.infer_backends[(config, size)] = chosen
                    self.paths[f"{config} {size} px"] = chosen.description
                    # The same weights for the ONNX Runtime worker.
                    export_onnx(path, path.with_suffix(".onnx"), overwrite=True)
                    if name == "seed_cnn" and CALIBRATION.is_dir():
                        int8 = onnx_folder / f"{name} int8-{size}.onnx"
                        export_onnx(path, int8, int8_calibration=[CALIBRATION], overwrite=True)
        rng = np.random.default_rng(0)
        self.pixels = rng.integers(0, 256, (BATCH_INFER, 96, 96, 3), dtype=np.uint8)
        self.y = torch.randint(0, 2, (BATCH_TRAIN,)).float()
        self.configs = list(TORCH_CONFIGS)
        self.optimisers = {key: torch.optim.Adam(b.model.parameters(), 1e-3)
                           for key, b in self.backends.items()}  # fmt: skip
        for config in self.configs:
            for size in sizes:
                for task in ("train", "infer"):
                    self.time(config, task, size, steps=2)

    def time(self, config: str, task: str, size: int, steps: int | None = None) -> float:
        from histodetect.hardware import autocast, use_channels_last

        torch, backend = self.torch, self.backends[(config, size)]
        n = steps or STEPS[(task, size)]
        if task == "infer":
            infer = self.infer_backends[(config, size)]
            return _timed(lambda: infer.logits(self.pixels, False), n, BATCH_INFER)
        x = torch.randn(BATCH_TRAIN, 3, size, size)
        layout = torch.contiguous_format  # as `train` runs it (hardware.use_channels_last)
        if use_channels_last("cpu", backend.precision, training=True, model=backend.model):
            layout = torch.channels_last
        x = x.contiguous(memory_format=layout)
        model = backend.model.to(memory_format=layout).train()
        optimiser = self.optimisers[(config, size)]

        def step() -> None:
            with autocast("cpu", backend.precision):
                logits = model(x).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

        rate = _timed(step, n, BATCH_TRAIN)
        model.eval()
        return rate


class OrtTimer:
    """ONNX Runtime (inference only) on the torch worker's exported models."""

    def __init__(self, sizes: list[int], onnx_folder: Path, threads: int | None) -> None:
        import numpy as np

        from histodetect.inference.backends.onnx import OnnxBackend

        files = {"seed_cnn onnxruntime": "seed_cnn", "histocnn onnxruntime": "histocnn"}
        if (onnx_folder / f"seed_cnn int8-{sizes[0]}.onnx").exists():
            files["seed_cnn onnxruntime int8"] = "seed_cnn int8"
        self.backends = {(config, size): OnnxBackend(onnx_folder / f"{stem}-{size}.onnx", "cpu", threads)
                         for config, stem in files.items() for size in sizes}  # fmt: skip
        self.pixels = np.random.default_rng(0).integers(0, 256, (BATCH_INFER, 96, 96, 3), np.uint8)
        self.configs = sorted({config for config, _ in self.backends})
        for config, size in self.backends:
            self.time(config, "infer", size, steps=2)

    def time(self, config: str, task: str, size: int, steps: int | None = None) -> float:
        if task != "infer":
            return float("nan")
        backend = self.backends[(config, size)]
        n = steps or STEPS[(task, size)]
        return _timed(lambda: backend.logits(self.pixels, False), n, BATCH_INFER)


def worker_main(kind: str, sizes: list[int], folder: Path, threads: int | None) -> None:
    """Entry point of a worker process."""
    if kind in ("tf-default", "tf-best"):
        _serve(TfTimer(sizes, kind == "tf-best", threads))
    else:
        from histodetect.hardware import keep_freed_memory

        keep_freed_memory()  # as every `histodetect` command does (HISTODETECT_KEEP_FREED_MEMORY=0: off)
        _serve((TorchTimer if kind == "torch" else OrtTimer)(sizes, folder, threads))


# ----------------------------------------------------------------------------- parent


def ensure_peer_env() -> Path:
    """The peer virtual environment's python, created and filled with TensorFlow if needed."""
    python = PEER_ENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_ENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import tensorflow, keras"], capture_output=True)
    if probe.returncode != 0:
        print(f"Installing {TF_REQUIREMENT} into {PEER_ENV} (once) ...", flush=True)
        pip = [str(python), "-m", "pip", "install", "-q", TF_REQUIREMENT]
        subprocess.run(pip, check=True)
    return python


class Worker:
    """A worker process and its pipe."""

    def __init__(
        self, kind: str, python: str, sizes: list[int], folder: Path, log: Path, threads: int | None
    ) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if kind == "tf-best":
            env["TF_ENABLE_ONEDNN_OPTS"] = "1"
        if kind == "tf-default":
            env.pop("TF_ENABLE_ONEDNN_OPTS", None)
        command = [python, str(Path(__file__).resolve()), "--worker", kind, "--folder", str(folder),
                   "--sizes", *map(str, sizes)] + (["--threads", str(threads)] if threads else [])  # fmt: skip
        self.log = log.open("w")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True, env=env)  # fmt: skip
        self.configs: list[str] = []

    def wait_ready(self) -> None:
        ready = self._read()
        self.configs = ready["ready"]
        self.paths: dict[str, str] = ready.get("paths", {})

    def time(self, config: str, task: str, size: int) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"config": config, "task": task, "size": size}) + "\n")
        self.process.stdin.flush()
        return float(self._read()["img_s"])

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args[3]} died; see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


STARTED_S = time.monotonic()


def progress(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.monotonic() - STARTED_S:6.0f} s] {message}", file=sys.stderr, flush=True)


def start_workers(
    sizes: list[int], folder: Path, with_tf: bool, threads: int | None
) -> list[Worker]:
    """Start every worker (torch first: it exports the models ONNX Runtime runs)."""
    torch_worker = Worker("torch", sys.executable, sizes, folder, folder / "torch.log", threads)
    workers = [torch_worker]
    if with_tf:
        python = str(ensure_peer_env())
        workers += [Worker(k, python, sizes, folder, folder / f"{k}.log", threads) for k in ("tf-default", "tf-best")]  # fmt: skip
    torch_worker.wait_ready()
    progress("torch worker ready (models built, exported, warmed up)")
    workers.append(
        Worker("onnxruntime", sys.executable, sizes, folder, folder / "ort.log", threads)
    )
    for worker in workers[1:]:
        worker.wait_ready()
        progress(f"worker {worker.process.args[3]} ready")
    return workers


def run_rounds(workers: list[Worker], sizes: list[int], repeats: int) -> dict[tuple, list[float]]:
    """Alternate over rows and configurations `repeats` times; img/s per (task, size, config)."""
    rates: dict[tuple, list[float]] = {}
    for round_ in range(repeats):
        progress(f"round {round_ + 1} of {repeats}")
        for task in ("train", "infer"):
            for size in sizes:
                for worker in workers:
                    for config in worker.configs:
                        rate = worker.time(config, task, size)
                        rates.setdefault((task, size, config), []).append(rate)
    return rates


def print_table(rates: dict[tuple, list[float]], sizes: list[int], configs: list[str]) -> None:
    """One markdown row per task and size, one column per configuration: median (range)."""
    print("| row | " + " | ".join(configs) + " |")
    print("|---|" + "---:|" * len(configs))
    for task in ("train", "infer"):
        for size in sizes:
            cells = []
            for config in configs:
                values = rates.get((task, size, config), [float("nan")])
                if values[0] != values[0]:  # NaN: this configuration does not train
                    cells.append("-")
                    continue
                cells.append(
                    f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"
                )
            print(f"| {task} {size} px | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--threads", type=int, help="compute threads per framework")
    parser.add_argument("--no-tf", dest="tf", action="store_false", help="skip TensorFlow")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.sizes, args.folder, args.threads)
        return
    sys.path.insert(0, str(HERE))
    from cpu_load import CpuMonitor

    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        workers = start_workers(args.sizes, Path(tmp), args.tf, args.threads)
        monitor = CpuMonitor(lambda: [os.getpid()] + [w.process.pid for w in workers])
        monitor.start()
        try:
            rates = run_rounds(workers, args.sizes, args.repeats)
        finally:
            load = monitor.stop()
            for worker in workers:
                worker.close()
        configs = [c for w in workers for c in w.configs]
        threads = args.threads or os.cpu_count()
        print(f"\nimg/s, median (range) of {args.repeats} alternating rounds, {threads} threads each; {load.text()} "
              f"over {load.elapsed_s:.0f} s of timing ({time.monotonic() - start:.0f} s in all)\n")  # fmt: skip
        print_table(rates, args.sizes, configs)
        paths = {k: v for w in workers for k, v in getattr(w, "paths", {}).items()}
        if paths:
            print("\n`auto` inference ran: " + "; ".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
    main()
