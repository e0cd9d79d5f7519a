"""The data report of `histodetect inspect`: class balance, splits, duplicates, outliers, colours, a sample grid."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from histodetect.atomic import atomic_dir
from histodetect.data.patch import CENTRE_SIZE_PX, CENTRE_START_PX, patch_ids
from histodetect.data.quality import LABEL_CONFLICT, cross_split_groups
from histodetect.data.store import (
    INSPECT_DIR,
    INSPECT_FILES,
    PIXELS_FILE,
    PatchStore,
    check_not_in_store,
    foreign_entries,
)
from histodetect.errors import HistodetectError
from histodetect.wording import plural

CHUNK_PATCHES = 4096


def channel_mean_std(
    store: PatchStore, indices: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel (R, G, B) mean and standard deviation of pixels scaled to [0, 1]."""
    idx = np.arange(len(store)) if indices is None else np.sort(np.asarray(indices))
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(idx), CHUNK_PATCHES):
        chunk = store.pixels[idx[start : start + CHUNK_PATCHES]].reshape(-1, 3).astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += (chunk**2).sum(axis=0)
    count = max(1, len(idx) * store.pixels.shape[1] * store.pixels.shape[2])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return (mean / 255).round(4).tolist(), (std / 255).round(4).tolist()


def class_lines(labels: np.ndarray) -> list[str]:
    """Counts per class with percentages, as the original write-up reported them."""
    labelled = labels[labels >= 0]
    lines = ["| class | patches | share |", "|---|---:|---:|"]
    for value, name in ((0, "0 normal"), (1, "1 tumour")):
        n = int((labelled == value).sum())
        lines.append(f"| {name} | {n} | {100 * n / max(1, len(labelled)):.1f}% |")
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        lines.append(f"| unlabelled | {unlabelled} | |")
    return lines


def split_lines(store: PatchStore) -> list[str]:
    """One table row per split: total, tumour, normal, unlabelled, percent tumour."""
    lines = [
        "| split | total | tumour | normal | unlabelled | % tumour |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for split, c in store.header["counts"].items():
        labelled = c["tumour"] + c["normal"]
        pct = f"{100 * c['tumour'] / labelled:.1f}%" if labelled else "-"
        lines.append(
            f"| {split} | {c['total']} | {c['tumour']} | {c['normal']} | {c['unlabelled']} | {pct} |"
        )
    return lines


def quality_lines(store: PatchStore, max_listed: int = 20) -> list[str]:
    """Duplicate groups (and any crossing splits) and outlier flags with example ids."""
    m = store.manifest
    in_groups = int((m.dup_groups >= 0).sum())
    n_groups = len(np.unique(m.dup_groups[m.dup_groups >= 0]))
    crossing = cross_split_groups(m.dup_groups, m.splits)
    lines = [
        f"- Exact duplicates: {plural(n_groups, 'group')} covering {plural(in_groups, 'patch')}; "
        f"{plural(len(crossing), 'group')} {'crosses' if len(crossing) == 1 else 'cross'} splits.",
    ]
    flag_counts = Counter(f for flags in m.flags.tolist() for f in flags.split(";") if f)
    conflicts = flag_counts.pop(LABEL_CONFLICT, 0)
    if conflicts:
        lines.append(
            f"- Label conflicts: {plural(conflicts, 'patch')} whose pixels were labelled both 0 "
            "and 1, kept unlabelled (flag label_conflict): never trained or evaluated on."
        )
    if not flag_counts:
        lines.append("- Outliers: none flagged.")
        return lines
    lines.append("- Outliers: " + ", ".join(f"{k} {v}" for k, v in sorted(flag_counts.items())))
    for i in np.flatnonzero((m.flags != "") & (m.flags != LABEL_CONFLICT))[:max_listed]:
        lines.append(f"  - `{m.ids[i]}` ({m.flags[i]}) {m.origins[i]}")
    return lines


def render_markdown(store: PatchStore) -> str:
    """The whole data report as Markdown."""
    mean, std = channel_mean_std(store)
    balance = store.header.get("tumour_fraction")
    parts = [
        f"# Data report: {store.root}",
        "",
        f"Source: {store.header.get('source', '?')} ({store.header.get('source_format', '?')}); "
        f"{plural(len(store), 'patch')}; slide ids: {'yes' if store.header.get('has_slides') else 'no'}.",
        "",
        "## Classes",
        *class_lines(store.manifest.labels),
        "",
        f"Tumour share of labelled patches: {100 * balance:.1f}%."
        if balance is not None
        else "No labels.",
        "",
        "## Splits",
        *split_lines(store),
        "",
        "## Quality",
        *quality_lines(store),
        "",
        "## Colour",
        f"Per-channel mean (R, G, B, pixels in [0, 1]): {mean}; std: {std}.",
        "",
        "![class balance](class_balance.png)",
        "",
        "![samples](samples.png)",
        "",
    ]
    return "\n".join(parts)


def sample_grid(store: PatchStore, out: Path, per_class: int = 8, seed: int = 0) -> None:
    """Save a PNG grid: a row of random normal and a row of random tumour patches, centre box drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rng = np.random.default_rng(seed)
    rows = [(0, "normal (0)"), (1, "tumour (1)")]
    fig, axes = plt.subplots(2, per_class, figsize=(1.4 * per_class, 3.4), squeeze=False)
    for r, (label, name) in enumerate(rows):
        pool = np.flatnonzero(store.manifest.labels == label)
        picks = (
            rng.choice(pool, size=min(per_class, len(pool)), replace=False) if len(pool) else pool
        )
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(picks):
                ax.imshow(store.pixels[picks[c]])
                box = Rectangle((CENTRE_START_PX - 0.5, CENTRE_START_PX - 0.5), CENTRE_SIZE_PX,
                                CENTRE_SIZE_PX, fill=False, edgecolor="lime", linewidth=1)  # fmt: skip
                ax.add_patch(box)
        axes[r][0].set_title(name, loc="left", fontsize=9)
    fig.suptitle("Random patches; green box = centre 32x32 px that decides the label", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def class_balance_plot(store: PatchStore, out: Path) -> None:
    """Save a PNG bar chart of normal/tumour/unlabelled counts per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = store.header["counts"]
    splits = list(counts)
    x = np.arange(len(splits))
    fig, ax = plt.subplots(figsize=(5, 3))
    for k, (key, colour) in enumerate(
        (("normal", "#e7a1c4"), ("tumour", "#5b2a86"), ("unlabelled", "#999999"))
    ):
        ax.bar(
            x + (k - 1) * 0.27,
            [counts[s][key] for s in splits],
            width=0.27,
            label=key,
            color=colour,
        )
    ax.set_xticks(x, splits)
    ax.set_ylabel("patches")
    ax.legend(fontsize=8)
    ax.set_title("Patches per split and class", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def check_pixels(store: PatchStore) -> None:
    """Recompute every patch's SHA-1 id from its pixels and compare it with the manifest.

    The fingerprint check every command runs covers manifest.csv, not the pixels (hashing them
    all on every open would cost seconds per command); this one covers the pixels, so bytes
    changed inside pixels.u8 (a disk error, an edit, a copy cut short and padded) are found.

    Raises:
        HistodetectError: naming the file, how many patches differ and the first of them.
    """
    ids = store.manifest.ids
    changed: list[int] = []
    for start in range(0, len(store), CHUNK_PATCHES):
        now = patch_ids(store.pixels[start : start + CHUNK_PATCHES])
        changed += [start + i for i, pid in enumerate(now) if pid != ids[start + i]]
    if changed:
        first = changed[0]
        raise HistodetectError(
            f"{store.root / PIXELS_FILE}: the pixels of {plural(len(changed), 'patch', 'patches')} "
            f"no longer match the ids ingest gave them (first: row {first} counting from 0, id "
            f"{ids[first]}): the file was changed after ingest; ingest the source again."
        )


def write_inspection(store: PatchStore, out_dir: Path, seed: int = 0) -> Path:
    """Check the pixels against their ids (`check_pixels`), then write inspect.md, samples.png
    and class_balance.png into `out_dir`; return the .md path.

    All three appear at once (written in a temporary folder, then renamed). `out_dir` may be
    new, empty, or an earlier report, which is replaced; a folder holding anything else is refused.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise HistodetectError(f"report folder {out_dir} is a file; choose another --out.")
    if out_dir.resolve() != (Path(store.root) / INSPECT_DIR).resolve():  # its own is allowed
        check_not_in_store(out_dir, "report")  # another store's folder made it unreplaceable
    foreign = foreign_entries(out_dir, INSPECT_FILES) if out_dir.is_dir() else []
    if foreign:
        raise HistodetectError(
            f"report folder {out_dir} already holds {', '.join(foreign[:3])}, which inspect did "
            "not write; choose a new or empty --out (nothing was changed)."
        )
    check_pixels(store)
    with atomic_dir(out_dir, replace=True) as tmp:
        sample_grid(store, tmp / "samples.png", seed=seed)
        class_balance_plot(store, tmp / "class_balance.png")
        (tmp / "inspect.md").write_text(render_markdown(store))
    return out_dir / "inspect.md"
