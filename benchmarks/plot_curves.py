"""Plot train and validation AUC per epoch of several training runs into one PNG.

Usage:
    python benchmarks/plot_curves.py RUN [RUN ...] --out docs/figures/recipes.png

Each run folder's logs/metrics.csv gives train_auc, val_auc (the EMA weights when the run
keeps an average) and val_auc_raw (the raw weights) per epoch; runs whose folder names share a
prefix before "_s<seed>" get one colour, so seeds of one recipe read as one family.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from histodetect.training.metrics_log import read_epoch_metrics


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    families = sorted({run.name.rsplit("_s", 1)[0] for run in args.runs})
    colours = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(families)}
    fig, (ax_val, ax_train) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for run in args.runs:
        curves = read_epoch_metrics(run)
        colour = colours[run.name.rsplit("_s", 1)[0]]
        for key, ax, style in (("val_auc", ax_val, "-"), ("val_auc_raw", ax_val, ":"),
                               ("train_auc", ax_train, "-")):  # fmt: skip
            points = curves.get(key, [])
            if points:
                epochs, values = zip(*points, strict=True)
                label = run.name if key != "val_auc_raw" else None
                ax.plot([e + 1 for e in epochs], values, style, color=colour, label=label)
    ax_val.set(title="validation AUC (solid: EMA weights, dotted: raw)", xlabel="epoch",
               ylabel="AUC", ylim=(0.75, 1.0))  # fmt: skip
    ax_train.set(title="training AUC (on augmented batches)", xlabel="epoch")
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
