"""RQ3 — Can a strong objective on a small backbone match a large backbone trained with a weak one?

Morand et al. (2026) conclude that "objective choice can yield gains comparable to scaling the backbone
architecture". This script trains (or reuses) the grid backbones x objectives x seeds, counts each
backbone's parameters, and tabulates mean nDCG@10 per collection group (in-domain, out-of-domain)
against model size. It then tests every pair (smaller backbone + objective X) vs (larger backbone +
BCE): two-sided paired t-test over queries (seeds averaged per query), Holm-Bonferroni over the family
of pairs within each collection, and within each group on the concatenated per-query values of its
collections. A pair "matches" when the small model is NOT significantly worse. When matplotlib is
installed it also draws nDCG@10 against parameter count, one line per objective (rq3_size.png).

Commands:
  # the paper's nine backbones x six objectives x 3 seeds, SPLADE-v3 top-1000 candidates from --run-dir
  python exp_rq3_small_vs_large.py --gpu 0 --run-dir runs/splade-v3-distilbert
  # offline demo on a CPU: all-MiniLM-L6-v2 and students cut to its first 4 and 2 layers
  python exp_rq3_small_vs_large.py --demo
  # tiny random models for a few steps (what the tests run)
  python exp_rq3_small_vs_large.py --smoke

How long it takes: the same cells as exp_rq2_backbones.py (shared through --results; after RQ2 this
script trains nothing and takes seconds); README.md, "How long it takes", has the measured figures.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import common
import cross_encoder
import grid
import paper_setup
import tables

OBJECTIVES = ["bce", "hinge", "infonce", "margin_mse", "distill_ranknet", "adr_mse"]
SMOKE_BACKBONES = ["tiny-bert", "tiny-deberta"]  # 1.011M and 1.018M parameters: two sizes, however close


@dataclasses.dataclass
class Args:
    backbones: list[str] = dataclasses.field(default_factory=lambda: list(paper_setup.PAPER_BACKBONES))
    """backbones (names from paper_setup.PAPER_BACKBONES, HF ids, local paths); --demo/--smoke add them to their own"""
    objectives: list[str] = dataclasses.field(default_factory=lambda: list(OBJECTIVES))
    """objectives (names from losses.LOSSES); the first is the weak one the larger backbones are trained with"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: list(paper_setup.PAPER_SEEDS))
    """training seeds (the paper: 3 runs from seed 12); --demo runs seed 12 only unless seeds are given"""
    demo: bool = False
    """run offline on the shipped demo set with the backbones minilm-l6, minilm-l4, minilm-l2"""
    smoke: bool = False
    """tiny random-initialised models (tiny-bert, tiny-deberta) for a few steps, one seed (tests)"""
    gpu: int = -1
    """CUDA device index; -1 runs on the CPU"""
    results: str = "results"
    """results folder shared by all scripts (one sub-folder per trained cell)"""
    collections: list[str] = dataclasses.field(default_factory=list)
    """test collections to re-rank, by name (default: all of the mode's; see paper_setup.PAPER_COLLECTIONS)"""
    run_dir: str | None = None
    """folder of first-stage runs named <collection>.run[.gz] (paper: SPLADE-v3-DistilBERT top-1000)"""
    depth: int | None = None
    """candidates re-ranked per test query (default: the recipe's: 1000 paper, 50 demo, 5 smoke)"""
    steps: int | None = None
    """training steps (default: 200k for the paper, 800 for --demo)"""
    learning_rate: float | None = None
    """peak learning rate (default: the backbone's, from paper_setup.PAPER_BACKBONES / DEMO_BACKBONES)"""
    precision: str = "auto"
    """bf16, fp32, or auto (bf16 where the hardware supports it); compare methods at one precision"""
    teacher_pairs: str | None = None
    """Hofstätter-format teacher file for margin_mse (default: the published T2 ensemble / the demo's)"""
    teacher_lists: str | None = None
    """TREC run of a listwise teacher for distill_ranknet and adr_mse (default: RankZephyr / the demo's)"""
    eval_batch_size: int = 64
    """pairs per re-ranking batch"""
    num_workers: int = 0
    """DataLoader workers that tokenize training and re-ranking batches (several on a GPU machine; 0 on a CPU)"""
    checkpoint_every: int = 500
    """steps between checkpoints; a rerun of the same command resumes from the last one"""
    alpha: float = 0.05
    """significance level after Holm–Bonferroni correction"""
    deterministic: bool = False
    """force deterministic GPU kernels (slower); CPU runs are deterministic anyway"""


def concat_queries(by_collection: dict, names: list[str], measure: str) -> list[dict[str, float]]:
    """Per seed, the per-query values of several collections as one {"collection/qid": value}."""
    seeds = min(len(by_collection[n]) for n in names)
    return [{f"{n}/{q}": v for n in names for q, v in by_collection[n][k][measure].items()} for k in range(seeds)]


def label(system: str) -> str:
    """'tiny-bert|bce' (a run_grid system) as 'tiny-bert + bce'."""
    return system.replace("|", " + ")


def count_parameters(results: Path, cells: dict[str, cross_encoder.TrainConfig]) -> dict[str, int]:
    """{backbone: parameters of its trained model}, counted from the saved config on the meta device (no
    weights read) and cached in results/parameter_counts.json so that later summaries never reload."""
    import torch
    import transformers
    path = results / "parameter_counts.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    missing = [b for b in cells if b not in cache]
    for backbone in missing:
        transformers.logging.set_verbosity_error()
        config = transformers.AutoConfig.from_pretrained(grid.cell_dir(results, cells[backbone]) / "model")
        with torch.device("meta"):
            cache[backbone] = transformers.AutoModelForSequenceClassification.from_config(config).num_parameters()
    if missing:
        common.atomic_write_json(path, cache)
    return {b: int(cache[b]) for b in cells}


def size_table(rows: dict[str, dict[str, list[float]]], params: dict[str, int], columns: list[str], title: str,
               note: str) -> tables.Table:
    """Backbones (rows, in the given order) x objectives: mean (± std over seeds); best per row starred/bold."""
    cells = tables.best_per_row(rows, columns)
    size = {r: f"{params[r] / 1e6:.4g}M" for r in rows}
    records = [{"backbone": r, "parameters": params[r], "objective": c, "mean": v.mean, "std": v.std,
                "n_seeds": len(rows[r][c])} for (r, c), v in cells.items()]
    return tables.make_table(title, ["backbone", "params", *columns],
                             [[r, size[r], *(cells.get((r, c)) for c in columns)] for r in rows],
                             "* best per row; " + note, records=records, latex_head=["Backbone", "Params", *columns],
                             caption=f"{tables.latex_escape(title)}. {tables.latex_escape(note)} Best per row in bold.",
                             align="lr" + "r" * len(columns))


def plot_sizes(path: Path, means: dict, params: dict[str, int], objectives: list[str], groups: list[str],
               title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib to draw rq3_size.png)")
        return
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
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    print(f"plot written to {path}")


def main() -> None:
    args = common.parse_args(Args)

    # 1. Mode, device, backbones and collections -------------------------------------------------
    mode, device, precision, seeds, collections, depth = grid.resolve_setting(args)
    backbones = list(args.backbones)
    if mode != "paper":  # the paper's backbones are not available offline: the mode's own, plus any passed
        passed = [] if backbones == list(paper_setup.PAPER_BACKBONES) else backbones
        backbones = list(dict.fromkeys([*(SMOKE_BACKBONES if args.smoke else paper_setup.DEMO_BACKBONES), *passed]))
    weak, strong = args.objectives[0], args.objectives[1:]
    members = tables.group_members(collections)
    results = grid.open_results(args.results)
    print(f"RQ3 ({mode}): backbones {backbones}, objectives {args.objectives} (large ones with {weak}), "
          f"seeds {seeds}, {precision} on {device}")

    # 2. Train (or reuse) every (backbone, objective, seed) cell and re-rank every collection ----
    configs = {f"{backbone}|{objective}": [
        grid.make_config(mode, backbone, objective, seed, precision, steps=args.steps,
                         learning_rate=args.learning_rate, teacher_pairs=args.teacher_pairs,
                         teacher_lists=args.teacher_lists) for seed in seeds]
        for backbone in backbones for objective in args.objectives}
    metrics, per_query = grid.train_and_evaluate(
        configs, collections, results, device, run_dir=args.run_dir, depth=depth, first_stage=None,
        batch_size=args.eval_batch_size, max_queries=30 if args.smoke else None, num_workers=args.num_workers,
        checkpoint_every=args.checkpoint_every)

    # 3. Parameter counts (cached), backbones sorted by size ------------------------------------
    params = count_parameters(results, {b: configs[f"{b}|{weak}"][0] for b in backbones})
    order = sorted(backbones, key=lambda b: (params[b], b))
    print("parameters: " + ", ".join(f"{b} {params[b]:,}" for b in order))

    # 4. Effectiveness by size: per group, backbones (by size) x objectives ----------------------
    out = tables.tables_folder(results, f"rq3_{mode}", args)
    means = {b: {o: tables.group_means(metrics[f"{b}|{o}"], collections, "nDCG@10") for o in args.objectives} for b in order}
    for group in members:
        rows = {b: {o: means[b][o][group] for o in args.objectives if group in means[b][o]} for b in order}
        note = (f"nDCG@10 averaged over the {len(members[group])} {group} collections, "
                f"mean over {len(seeds)} seed(s) with the std when more than one.")
        table = size_table(rows, params, args.objectives, f"RQ3: effectiveness by size, {group} ({mode})", note)
        tables.write_table(table, out, f"rq3_size_{group}_nDCG10")
        print("\n" + table.console + "\n\n" + table.latex)

    # 5. (small + X) vs (large + weak): paired t-tests, Holm over the pairs in each column -------
    pairs = [(f"{small}|{x}", f"{large}|{weak}") for i, small in enumerate(order) for x in strong
             for large in order[i + 1:]]
    columns = {**{c.name: [c.name] for c in collections}, **members}  # a collection, or a group's concatenation
    tests: dict = {}
    for column, names in columns.items():
        found = [common.paired_ttest(concat_queries(per_query[a], names, "nDCG@10"),
                                     concat_queries(per_query[b], names, "nDCG@10")) for a, b in pairs]
        for pair, t, p_holm in zip(pairs, found, common.holm([t.pvalue for t in found]) if found else []):
            tests[pair, column] = (t, p_holm, "worse" if p_holm < args.alpha and t.mean_diff < 0 else "matches")
    records = []
    for ((a, b), column), (t, p, verdict) in tests.items():
        records.append({"small": label(a), "large": label(b), "column": column, "n_queries": t.n,
                        "delta": t.mean_diff, "pvalue": t.pvalue, "pvalue_holm": p, "verdict": verdict})
    body = []
    for a, b in pairs:
        row = [label(a), label(b)]
        for group, names in members.items():
            t, p, verdict = tests[(a, b), group]
            matched = sum(tests[(a, b), n][2] == "matches" for n in names)
            row += [f"{t.mean_diff:+.4f}", f"{p:.3g}", f"{verdict} ({matched}/{len(names)})"]
        body.append(row)
    headers = ["small + objective", f"large + {weak}",
               *(h for g in members for h in (f"Δ {g}", "p (Holm)", "verdict"))]
    note = (f"Delta: mean nDCG@10 difference over the queries of the group's collections (seeds averaged per "
            f"query); two-sided paired t-test, Holm-Bonferroni over the {len(pairs)} pairs per collection and per "
            f"group, alpha={args.alpha}; 'matches' = not significantly worse; (k/n): collections of the group "
            f"where it matches.")
    title = f"RQ3: small backbone + objective vs larger backbone + {weak} ({mode})"
    table = tables.make_table(title, headers, body, note, records=records, align="ll" + "rrl" * len(members))
    tables.write_table(table, out, "rq3_pairs_nDCG10")
    print("\n" + table.console + "\n\n" + table.latex)

    # 6. Plot: nDCG@10 against parameter count, one line per objective ---------------------------
    plot_sizes(out / "rq3_size.png", means, params, args.objectives, list(members),
               f"RQ3 ({mode}): nDCG@10 vs backbone size")
    print(f"tables written to {out} (one .txt/.tex/.csv/.json per table)")


if __name__ == "__main__":
    common.main_guard(main)
