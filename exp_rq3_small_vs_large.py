"""RQ3 — Can a strong objective on a small backbone match a large backbone trained with a weak one?

Morand et al. (2026) conclude that "objective choice can yield gains comparable to scaling the backbone
architecture". This script trains (or reuses) the grid backbones x objectives x seeds, counts each
backbone's parameters, and tabulates mean nDCG@10 per collection group (in-domain, out-of-domain)
against model size. It then compares every pair (smaller backbone + objective X) with (larger backbone +
BCE), per collection and per group of collections (the group's collections weighted equally, as in the
size table), on per-query values averaged over seeds:
  * "matches": equivalence shown by two one-sided t-tests against a margin of --margin nDCG@10 (0.01 by
    default): the difference lies within +-margin. Not finding a difference is not enough.
  * "worse" / "better": a two-sided paired t-test finds a difference, and equivalence is not shown.
  * "inconclusive": neither.
Holm-Bonferroni corrects each kind of test over the pairs of one column. When matplotlib is installed it
also draws nDCG@10 against parameter count, one line per objective (rq3_size.png).

Commands:
  # the paper's nine backbones x six objectives x 3 seeds, SPLADE-v3 top-1000 candidates from the kit's own
  # first stage (or from run files of your own: --run-dir runs/splade-v3-distilbert)
  python exp_rq3_small_vs_large.py --gpu 0
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


import claims
import common
import cross_encoder
import grid
import paper_setup
import significance
import store
import tables

OBJECTIVES = ["bce", "hinge", "infonce", "margin_mse", "distill_ranknet", "adr_mse"]
SMOKE_BACKBONES = ["tiny-bert", "tiny-deberta"]  # 1.011M and 1.018M parameters: two sizes, however close


@dataclasses.dataclass
class Args(grid.ScaleOutFlags):  # + --plan, --slurm and --slurm-options, shared by the training scripts
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
    """test collections: the mode's names, ir_datasets ids, or local collection specs (.json); default: all the mode's"""
    run_dir: str | None = None
    """folder of first-stage runs named <collection>.run[.gz] (paper: SPLADE-v3-DistilBERT top-1000)"""
    retriever: str = "splade"
    """without --run-dir, the kit's own first stage for the paper's collections: splade (the paper's) or bm25"""
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
    demo_negatives: str = "bm25"
    """--demo/--smoke: InfoNCE's negatives and the teacher's lists from BM25, or dense (as the paper; needs the dense teacher files: README)"""
    paper_lists: str = "colbert-top50"
    """paper mode: the LLM teacher's lists, RankZephyr's order of ColBERTv2's top 50 (as the paper) or rankzephyr-top50"""
    eval_batch_size: int = 64
    """pairs per re-ranking batch"""
    num_workers: int = 0
    """DataLoader workers that tokenize training and re-ranking batches (several on a GPU machine; 0 on a CPU)"""
    eval_token_budget: int = 0
    """tokens per re-ranking batch: pairs of similar length batched together up to this many tokens (padding
    counted, unless --unpadded); 0: --eval-batch-size pairs per batch"""
    token_cache: bool = False
    """keep the candidates' token ids in <results>/tokens: later cells re-rank them without the tokenizer (same scores)"""
    unpadded: bool = False
    """train and re-rank without padding (pairs packed, variable-length attention) where the backbone allows it
    (not DeBERTa: it stays padded); scores differ from padded ones by rounding, so these cells are kept apart"""
    compile: bool = False
    """torch.compile the encoder for training and re-ranking (no gain measured on a CPU, bench/README.md);
    the compiled kernels round differently, so these cells are kept apart"""
    checkpoint_every: int = 500
    """steps between checkpoints; a rerun of the same command resumes from the last one"""
    keep_checkpoint: bool = False
    """keep each finished cell's last checkpoint (its optimizer state doubles the model's size)"""
    alpha: float = 0.05
    """significance level after Holm–Bonferroni correction"""
    margin: float = 0.01
    """equivalence margin: a small model "matches" when its nDCG@10 is shown to lie within +-margin of the large one's"""
    seed_sd: float | None = None
    """with one seed: the seed sd the tests assume (claims.SEED_SD = 0.02 is the kit's documented value); else none"""
    deterministic: bool = False
    """force deterministic GPU kernels (slower); CPU runs are deterministic anyway"""
    figures: bool = False
    """write the figures as PNG beside the tables and each new cell's training curve (extras/figures.py; matplotlib)"""


def compare_pairs(per_query: dict, pairs: list[tuple[str, str]], columns: dict[str, list[str]], measure: str,
                  alpha: float, margin: float, seed_sd: float | None = None) -> dict:
    """{(pair, column): record} for every (small, large) system pair and column (a collection, or a group of
    them weighted equally): the difference, its 95% interval, two-sided and equivalence p-values (each
    Holm-corrected over the pairs of the column) and the verdict. The seed term: each backbone's seed variance
    pooled over its systems' runs of the column, or --seed-sd; with one seed and none stated nothing is tested
    (the query-level test alone reads seed noise as an effect) and every pair reads "inconclusive (one seed)"."""
    out = {}
    for column, names in columns.items():
        # Each backbone's seed variance, pooled over its systems' runs of this column (backbones differ in how
        # much their seeds move); --seed-sd where a backbone has one seed.
        by_backbone: dict = {}
        for x in sorted({x for pair in pairs for x in pair}):
            by_backbone.setdefault(x.split("|")[0], []).append(
                np.mean([[np.mean(list(pq[measure].values())) for pq in per_query[x][n]] for n in names], axis=0))
        noise = {b: claims.backbone_seed_noise(m, seed_sd) for b, m in by_backbone.items()}
        found = [significance.difference([([pq[measure] for pq in per_query[a][n]],
                                            [pq[measure] for pq in per_query[b][n]]) for n in names],
                                          _pair_noise(noise[a.split("|")[0]], noise[b.split("|")[0]]))
                 for a, b in pairs]
        found = [d.require_seed_noise() for d in found]
        differ = significance.holm([d.pvalue() for d in found]) if found else []
        equal = significance.holm([d.equivalence_pvalue(margin) for d in found]) if found else []
        worse = significance.holm([d.less_pvalue(-margin) for d in found]) if found else []  # below -margin
        for (a, b), d, p_differ, p_equal, p_worse in zip(pairs, found, differ, equal, worse):
            verdict = "matches" if p_equal < alpha else "better" if p_differ < alpha and d.mean > 0 else \
                "worse" if p_worse < alpha else "inconclusive" if d.seed_noise_known else "inconclusive (one seed)"
            low, high = d.interval()
            out[(a, b), column] = {"small": label(a), "large": label(b), "column": column, "n_queries": d.n,
                                   "delta": d.mean, "ci95_low": low, "ci95_high": high, "pvalue": d.pvalue(),
                                   "pvalue_holm": p_differ, "pvalue_equivalence": d.equivalence_pvalue(margin),
                                   "pvalue_equivalence_holm": p_equal, "pvalue_worse_holm": p_worse,
                                   "verdict": verdict,
                                   "seed_noise": d.seed_noise or "one seed: unknown"}
    return out


def _pair_noise(a, b):
    """The seed term of a (small, large) pair: one per side, or None while a side's is unknown (one seed)."""
    return (a, b) if a is not None and b is not None else None


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
        config = transformers.AutoConfig.from_pretrained(store.cell_dir(results, cells[backbone]) / "model")
        with torch.device("meta"):
            cache[backbone] = transformers.AutoModelForSequenceClassification.from_config(config).num_parameters()
    if missing:
        common.atomic_write_json(path, cache)
    return {b: int(cache[b]) for b in cells}


def size_table(rows: dict[str, dict[str, list[float]]], params: dict[str, int], columns: list[str], title: str,
               note: str) -> tables.Table:
    """Backbones (rows, in the given order) x objectives: mean (± std over seeds); best per row starred/bold."""
    cells = tables.best_per_row(rows, columns)
    size = {r: f"{params[r.removesuffix(' (paper)')] / 1e6:.4g}M" for r in rows}
    records = [{"backbone": r, "parameters": params[r.removesuffix(" (paper)")], "objective": c, "mean": v.mean, "std": v.std,
                "n_seeds": len(rows[r][c])} for (r, c), v in cells.items()]
    return tables.make_table(title, ["backbone", "params", *columns],
                             [[r, size[r], *(cells.get((r, c)) for c in columns)] for r in rows],
                             "* best per row; " + note, records=records, latex_head=["Backbone", "Params", *columns],
                             caption=f"{tables.latex_escape(title)}. {tables.latex_escape(note)} Best per row in bold.",
                             align="lr" + "r" * len(columns))


def main() -> None:
    args = grid.parse_args(Args)

    # 1. Mode, device, backbones and collections -------------------------------------------------
    mode, device, precision, seeds, collections, depth = grid.resolve_setting(args)
    backbones = list(args.backbones)
    if mode != "paper":  # the paper's backbones are not available offline: the mode's own, plus any passed
        passed = backbones if "backbones" in args.given else []
        backbones = list(dict.fromkeys([*(SMOKE_BACKBONES if args.smoke else paper_setup.DEMO_BACKBONES), *passed]))
    weak, strong = args.objectives[0], args.objectives[1:]
    members = tables.group_members(collections)
    results = store.open_results(args.results)
    print(f"RQ3 ({mode}): backbones {backbones}, objectives {args.objectives} (large ones with {weak}), "
          f"seeds {seeds}, {precision} on {device}")

    # 2. Train (or reuse) every (backbone, objective, seed) cell and re-rank every collection ----
    configs = {f"{backbone}|{objective}": [
        grid.make_config(mode, backbone, objective, seed, precision, steps=args.steps,
                         learning_rate=args.learning_rate, negatives=args.demo_negatives, lists=args.paper_lists,
                         unpadded=args.unpadded, compile=args.compile,
                         teacher_pairs=args.teacher_pairs, teacher_lists=args.teacher_lists) for seed in seeds]
        for backbone in backbones for objective in args.objectives}
    metrics, per_query = grid.train_and_evaluate(
        args, configs, collections, results, device, run_dir=args.run_dir, method=args.retriever, depth=depth, first_stage=None,
        batch_size=args.eval_batch_size, token_budget=args.eval_token_budget, token_cache=args.token_cache,
        max_queries=30 if args.smoke else None, num_workers=args.num_workers, figures=args.figures,
        checkpoint_every=args.checkpoint_every, keep_checkpoint=args.keep_checkpoint)

    # 3. Parameter counts (cached), backbones sorted by size ------------------------------------
    params = count_parameters(results, {b: configs[f"{b}|{weak}"][0] for b in backbones})
    order = sorted(backbones, key=lambda b: (params[b], b))
    print("parameters: " + ", ".join(f"{b} {params[b]:,}" for b in order))

    # 4. Effectiveness by size: per group, backbones (by size) x objectives ----------------------
    out = tables.tables_folder(results, f"rq3_{mode}", args, mode)
    means = {b: {o: tables.group_means(metrics[f"{b}|{o}"], collections, "nDCG@10") for o in args.objectives} for b in order}
    published = claims.published_in_kit_columns() if mode == "paper" else {}  # the paper's means beside the kit's
    for group in members:
        rows = {}
        for b in order:
            rows[b] = {o: means[b][o][group] for o in args.objectives if group in means[b][o]}
            if any((b, o) in published for o in args.objectives):
                rows[f"{b} (paper)"] = {o: [published[b, o][f"avg {group}"]] for o in args.objectives if (b, o) in published}
        note = (f"nDCG@10 averaged over the {len(members[group])} {group} collections, "
                f"mean over {len(seeds)} seed(s) with the std when more than one.")
        table = size_table(rows, params, args.objectives, f"RQ3: effectiveness by size, {group} ({mode})", note)
        tables.write_table(table, out, f"rq3_size_{group}_nDCG10")
        print("\n" + table.console + "\n\n" + table.latex)

    # 5. (small + X) vs (large + weak): equivalence and difference tests, Holm over the pairs of a column --
    pairs = [(f"{small}|{x}", f"{large}|{weak}") for i, small in enumerate(order) for x in strong
             for large in order[i + 1:]]
    columns = {**{c.name: [c.name] for c in collections}, **members}  # a collection, or a group of them
    tests = compare_pairs(per_query, pairs, columns, "nDCG@10", args.alpha, args.margin, args.seed_sd)
    body = []
    for a, b in pairs:
        row = [label(a), label(b)]
        for group, names in members.items():
            test = tests[(a, b), group]
            matched = sum(tests[(a, b), n]["verdict"] == "matches" for n in names)
            interval = f"[{test['ci95_low']:+.4f}, {test['ci95_high']:+.4f}]" if test["ci95_low"] == test["ci95_low"] \
                else "(untested)"
            row += [f"{test['delta']:+.4f} {interval}",
                    f"{test['verdict']} ({matched}/{len(names)})"]
        body.append(row)
    headers = ["small + objective", f"large + {weak}", *(h for g in members for h in (f"Δ {g} [95% CI]", "verdict"))]
    note = (f"Δ: nDCG@10 of the small model minus the large one's, mean over the group's collections (each "
            f"weighted equally) of the mean over queries (seeds averaged per query), with its 95% confidence "
            f"interval. 'matches': equivalence within ±{args.margin} shown by two one-sided t-tests; 'better': "
            f"a two-sided t-test finds a win and equivalence is not shown; 'worse': shown below -{args.margin} "
            f"(one-sided); 'inconclusive': none of these (with one seed and no --seed-sd nothing is tested). "
            f"Seeds: each backbone's seed variance pooled over its runs of the column. Holm-Bonferroni over the {len(pairs)} pairs of each collection and group, alpha={args.alpha}; "
            f"(k/n): collections of the group where the pair matches.")
    title = f"RQ3: small backbone + objective vs larger backbone + {weak} ({mode})"
    table = tables.make_table(title, headers, body, note, records=list(tests.values()),
                              align="ll" + "rl" * len(members))
    tables.write_table(table, out, "rq3_pairs_nDCG10")
    print("\n" + table.console + "\n\n" + table.latex)

    # 6. Plot: nDCG@10 against parameter count, one line per objective ---------------------------
    if args.figures:
        common.extra("figures", "--figures").size_curves(out / "rq3_size.png", means, params, args.objectives,
                                                         list(members), f"RQ3 ({mode}): nDCG@10 vs backbone size")
    print(f"tables written to {out} (one .txt/.tex/.csv/.json per table)")

    # 7. The claim this script checks: what the published table says, what these results say --------
    verdicts = [v for v in claims.published_verdicts(alpha=args.alpha) if v.claim == "M4"]
    verdicts.append(claims.small_matches_large(list(tests.values()), list(members),
                                               claims.scale_of(mode, backbones, args.objectives, collections, seeds,
                                                               claims.count_queries(next(iter(per_query.values()))))))
    claims.save(results, out.name, verdicts)
    claims.print_verdicts(verdicts)


if __name__ == "__main__":
    grid.main_guard(main)
