"""The figures, written as PNG beside the tables when matplotlib is installed (it stays optional: without it
each function says so in one line and returns None).

  heatmap_vs_baseline  RQ2: backbone x objective, the difference of mean nDCG@10 from the baseline objective
  differences          RQ1: per collection, each objective minus the baseline with its 95% interval
  paper_vs_kit         paper mode: the kit's mean against the paper's published mean, one point per cell
  size_curves          RQ3: nDCG@10 against parameter count, one line per objective
  training_curve       one cell: its loss (and validation, when it has one) over the steps
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _missing(path: Path) -> None:
    print(f"matplotlib is not installed: no figure {path.name} (pip install matplotlib to draw it)")


def heatmap_vs_baseline(path: Path, means: dict[tuple[str, str], float], backbones: list[str], objectives: list[str],
                        baseline: str, title: str) -> Path | None:
    """means: {(backbone, objective): mean nDCG@10}; each cell shows objective - baseline of its backbone."""
    plt = _pyplot()
    if plt is None:
        return _missing(path)
    others = [o for o in objectives if o != baseline]
    delta = np.array([[means.get((b, o), np.nan) - means.get((b, baseline), np.nan) for o in others] for b in backbones])
    limit = np.nanmax(np.abs(delta)) if np.isfinite(delta).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.2 * len(others) + 2.5, 0.5 * len(backbones) + 1.8))
    image = ax.imshow(delta, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(others)), others, rotation=30, ha="right")
    ax.set_yticks(range(len(backbones)), backbones)
    for (i, j), value in np.ndenumerate(delta):
        if np.isfinite(value):
            ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.6 * limit else "black")
    fig.colorbar(image, ax=ax, label=f"nDCG@10 minus {baseline}")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def differences(path: Path, rows: dict[str, dict[str, tuple[float, float, float]]], baseline: str,
                title: str) -> Path | None:
    """rows: {objective: {collection: (difference, low, high)}}: one panel, a group of bars per collection."""
    plt = _pyplot()
    if plt is None:
        return _missing(path)
    columns = list(dict.fromkeys(c for cells in rows.values() for c in cells))
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 3.5))
    width = 0.8 / max(1, len(rows))
    for k, (objective, cells) in enumerate(rows.items()):
        x = [columns.index(c) + (k - (len(rows) - 1) / 2) * width for c in cells]
        mid = [d for d, _, _ in cells.values()]
        err = [[d - lo for d, lo, _ in cells.values()], [hi - d for d, _, hi in cells.values()]]
        ax.errorbar(x, mid, yerr=err, fmt="o", capsize=3, label=objective)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel(f"nDCG@10 minus {baseline} (95% interval)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def paper_vs_kit(path: Path, points: list[tuple[float, float, str]], title: str) -> Path | None:
    """points: (paper's mean, kit's mean, label); the diagonal is agreement."""
    plt = _pyplot()
    if plt is None:
        return _missing(path)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if points:
        paper, kit, _ = zip(*points)
        ax.scatter(paper, kit, s=12)
        low, high = min(paper + kit), max(paper + kit)
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
    ax.set(xlabel="the paper's mean nDCG@10", ylabel="the kit's mean nDCG@10")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def size_curves(path: Path, means: dict, params: dict[str, int], objectives: list[str], groups: list[str],
                title: str) -> Path | None:
    """means: {backbone: {objective: {group: [value per seed]}}}, a panel per group, x = parameters (log)."""
    plt = _pyplot()
    if plt is None:
        return _missing(path)
    order = sorted(params, key=lambda b: (params[b], b))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for objective in objectives:
            points = [(params[b], np.mean(means[b][objective][group])) for b in order if group in means[b][objective]]
            if points:
                ax.plot(*zip(*points), marker="o", label=objective)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([params[b] for b in order], [f"{b} ({params[b] / 1e6:.4g}M)" for b in order], rotation=40,
                      ha="right", fontsize=7)
        ax.set(xlabel="parameters (log scale)", ylabel=f"mean nDCG@10, {group}", title=group)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(plt, fig, path)


def training_curve(cell: Path) -> Path | None:
    """cell/training_curve.png from train_log.jsonl (and the validation curve of training.json, if any)."""
    plt = _pyplot()
    log = cell / "train_log.jsonl"
    if plt is None or not log.exists():
        return None if plt else _missing(cell / "training_curve.png")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], linewidth=0.8, label="loss")
    ax.set(xlabel="step", ylabel="loss", title=cell.name)
    training = json.loads((cell / "training.json").read_text()) if (cell / "training.json").exists() else {}
    if training.get("curve"):
        twin = ax.twinx()
        twin.plot([p["step"] for p in training["curve"]], [p["value"] for p in training["curve"]], color="C1",
                  marker="o", label="validation")
        twin.set_ylabel("validation nDCG@10")
    ax.title.set_fontsize(7)
    return _save(plt, fig, cell / "training_curve.png")
