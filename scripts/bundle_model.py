"""Copy a calibrated model into the package as the bundled model, stamped with its figures.

Usage: python scripts/bundle_model.py MODEL METRICS_JSON [TTA_METRICS_JSON]
MODEL is a run folder or a model.pt (an ensemble's included); see
scripts/train_bundled_model.sh for the whole recipe. The large weight matrices are stored as
int8 with a scale per output channel and the rest as float16 (about a quarter of the float32
size; everything is float32 again on load, and the model card's AUC is measured on the bundled
file itself by tests/inference/test_bundled_model.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from histodetect.models.checkpoint import BUNDLED_MODEL, load_checkpoint, save_model

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "histodetect"


def main(run_dir: Path, metrics_path: Path, tta_metrics_path: Path | None) -> None:
    loaded = load_checkpoint(run_dir)
    if "calibration" not in loaded.metadata:
        raise SystemExit(f"{run_dir} is not calibrated: run `histodetect calibrate` first.")
    loaded.model.half()  # float16 storage; BatchNorm's integer counters are untouched
    metrics = json.loads(metrics_path.read_text())
    figures = {key: metrics[key] for key in ("auc", "auc_ci95", "accuracy", "balanced_accuracy", "split_role",
                                             "sensitivity", "specificity", "threshold", "n")}  # fmt: skip
    metadata = {**loaded.metadata, "valid_auc": metrics["auc"], "valid_metrics": figures,
                "recipe": "scripts/train_bundled_model.sh"}  # fmt: skip
    if tta_metrics_path is not None:
        metadata["valid_auc_tta"] = json.loads(tta_metrics_path.read_text())["auc"]
    out = PACKAGE / BUNDLED_MODEL
    out.parent.mkdir(exist_ok=True)
    # save_model names every builder option, so a later change of a default cannot change it
    save_model(out, loaded.model, loaded.spec, metadata, int8_weights=True)
    print(
        f"bundled {loaded.path} -> {out} ({out.stat().st_size / 1e6:.1f} MB), valid AUC {metrics['auc']:.4f}"
    )


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    if len(args) not in (2, 3):
        raise SystemExit(__doc__)
    main(args[0], args[1], args[2] if len(args) == 3 else None)
