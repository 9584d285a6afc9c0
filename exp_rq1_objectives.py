"""RQ1 — Which training objective makes the best cross-encoder?

Morand et al. (2026) train one backbone with six objectives — pointwise BCE, pairwise hinge, listwise
InfoNCE, MarginMSE distillation from a cross-encoder ensemble, and DistillRankNet / ADR-MSE
distillation from an LLM's rankings — and report that the relative objectives (MarginMSE, InfoNCE)
beat pointwise BCE everywhere. This script trains the six on one backbone, re-ranks every test
collection, and tests each objective against BCE (two-sided paired t-test over queries that, with 2 or
more seeds, also counts how whole runs move from seed to seed; Holm–Bonferroni within each collection).

Commands:
  # the paper's setting: 200k steps, 3 seeds, SPLADE-v3 top-1000 candidates from the kit's own first stage
  python exp_rq1_objectives.py --gpu 0 --backbone bert-base
  # ... the same with candidates from run files of your own (<collection>.run), or BM25 (--retriever bm25)
  python exp_rq1_objectives.py --gpu 0 --backbone bert-base --run-dir runs/splade-v3-distilbert
  # the authors' released checkpoints as the objectives' rows: nothing trained
  python exp_rq1_objectives.py --gpu 0 --backbone bert-base --released
  # offline demo on a laptop CPU: all-MiniLM-L6-v2 trained on SciFact, re-ranking the BM25 top-50
  python exp_rq1_objectives.py --demo
  # a tiny random model for a few steps (what the tests run)
  python exp_rq1_objectives.py --smoke

How long it takes: --demo trains 6 cells of 800 steps (three of them are the demo's teacher ensemble,
shared with scripts/make_demo_teachers.py) and re-ranks the 4 test collections with each: hours on a
2-core CPU, minutes on a GPU (README.md, "How long it takes", has the measured figures). The paper's
setting is 200k steps per cell, days of GPU time per backbone. Finished cells are reused by every script.
"""
from __future__ import annotations

import dataclasses
import functools

import claims
import common
import grid
import paper_setup
import significance
import store
import tables

OBJECTIVES = ["bce", "hinge", "infonce", "margin_mse", "distill_ranknet", "adr_mse"]


@dataclasses.dataclass
class Args(grid.ScaleOutFlags):  # + --plan, --slurm and --slurm-options, shared by the training scripts
    backbone: str = "bert-base"
    """backbone to train (a name from paper_setup.PAPER_BACKBONES, or a Hugging Face id / local path)"""
    objectives: list[str] = dataclasses.field(default_factory=lambda: list(OBJECTIVES))
    """objectives to compare (names from losses.LOSSES); the first is the baseline of the t-tests"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: list(paper_setup.PAPER_SEEDS))
    """training seeds (the paper: 3 runs from seed 12); --demo runs seed 12 only unless seeds are given"""
    demo: bool = False
    """run offline on the shipped demo set (train SciFact; test SciFact, NFCorpus, Vaswani, Cranfield)"""
    smoke: bool = False
    """a tiny random-initialised model for a few steps on a few queries (tests)"""
    gpu: int = -1
    """CUDA device index; -1 runs on the CPU"""
    results: str = "results"
    """results folder shared by all scripts (one sub-folder per trained cell)"""
    collections: list[str] = dataclasses.field(default_factory=list)
    """test collections: the mode's names, ir_datasets ids, or local collection specs (.json); default: all the mode's"""
    models: list[str] = dataclasses.field(default_factory=list)
    """cross-encoders trained elsewhere, re-ranked as rows: Hugging Face ids (xpmir/cross-encoder-bert-base-BCE) or folders"""
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
    seed_sd: float | None = None
    """with one seed: the seed sd the verdicts' tests assume (the kit documents 0.02); unset, one seed is untested"""
    cells: list[str] = dataclasses.field(default_factory=list)
    """--demo: train and re-rank only these cells, objective:seed (e.g. bce:12), and compare each with its shipped
    twin (data/demo-results): does this machine reproduce the shipped numbers"""
    released: bool = False
    """re-rank the authors' released checkpoints (xpmir/cross-encoder-<backbone>-<loss>) as the objectives' rows,
    training nothing; each is the best of the paper's 3 seeds"""
    skip_missing: bool = False
    """--released: go on without the checkpoints that cannot be found (one note each) instead of stopping"""
    from_shipped: bool = False
    """--demo: rebuild the tables from the shipped results (data/demo-results) instead of training; the cells asked
    for must be shipped"""
    deterministic: bool = False
    """force deterministic GPU kernels (slower); CPU runs are deterministic anyway"""
    figures: bool = False
    """write the figures as PNG beside the tables and each new cell's training curve (extras/figures.py; matplotlib)"""


def main() -> None:
    args = grid.parse_args(Args)

    # 1. Mode, device and collections ---------------------------------------------------------
    mode, device, precision, seeds, collections, depth = grid.resolve_setting(args)
    backbone = args.backbone
    if mode != "paper" and "backbone" not in args.given:  # the paper's default is not available offline
        backbone = "tiny-bert" if args.smoke else "minilm-l6"
    results = store.open_results(args.results)
    print(f"RQ1 ({mode}): {backbone}, objectives {args.objectives}, seeds {seeds}, {precision} on {device}")

    # 2. One training configuration per (objective, seed) --------------------------------------
    def config(objective: str, seed: int):
        return grid.make_config(mode, backbone, objective, seed, precision, steps=args.steps,
                                learning_rate=args.learning_rate, negatives=args.demo_negatives, lists=args.paper_lists,
                                unpadded=args.unpadded, compile=args.compile,
                                teacher_pairs=args.teacher_pairs, teacher_lists=args.teacher_lists)
    configs = {objective: [config(objective, seed) for seed in seeds] for objective in args.objectives}
    if args.cells:  # only the named cells, each to be compared with its shipped twin
        shipped = common.extra("shipped", "--cells")
        if mode != "demo":
            raise common.KitError("--cells compares cells with the demo's shipped results: pass it with --demo")
        wanted = [cell.partition(":") for cell in args.cells]
        for (objective, _, seed), cell in zip(wanted, args.cells):
            if objective not in configs or not seed.isdigit():
                raise common.KitError(f"--cells {cell}: expected objective:seed with an objective of --objectives "
                                      f"({', '.join(configs)}) and a seed, e.g. bce:12")
        configs = {f"{o}:{s}": [config(o, int(s))] for o, _, s in wanted}
        missing = [key for key, (cfg,) in configs.items() if store.cell_dir(results, cfg).name not in shipped.shipped_cells()]
        if missing:
            raise common.KitError(f"--cells: no shipped twin for {', '.join(missing)} (not measured yet); shipped: "
                                  f"{', '.join(sorted(shipped.shipped_cells())) or 'none'}")
    if args.from_shipped:  # the shipped cells are copied into the results folder, which then reuses them
        shipped = common.extra("shipped", "--from-shipped")
        if mode != "demo":
            raise common.KitError("--from-shipped reads the demo's shipped results: pass it with --demo")
        missing = [f"{c.objective} seed {c.seed}" for cfgs in configs.values() for c in cfgs
                   if store.cell_dir(results, c).name not in shipped.shipped_cells()]
        if missing:
            raise common.KitError(f"--from-shipped: not measured yet (not in {shipped.SHIPPED.name}): "
                                  f"{', '.join(missing)}; shipped: {', '.join(sorted(shipped.shipped_cells())) or 'none'}")
        print(f"from {shipped.SHIPPED}: {len(shipped.install(results))} cell(s) copied into {results}")

    # 3. Train (or reuse) every cell, re-rank every collection (--released: re-rank the authors' checkpoints) -----
    train_and_evaluate = grid.train_and_evaluate
    if args.released:
        released = common.extra("released", "--released")
        chosen = released.resolve([(backbone, o) for o in args.objectives], args.skip_missing)
        args.objectives = [o for o in args.objectives if (backbone, o) in chosen]
        train_and_evaluate = functools.partial(released.rerank, cells=chosen, labels={n: o for (_, o), n in chosen.items()},
                                               lengths=configs[args.objectives[0]][0])
        configs = {}
    metrics, per_query = train_and_evaluate(
        args, configs, collections, results, device, run_dir=args.run_dir, method=args.retriever, depth=depth,
        batch_size=args.eval_batch_size, token_budget=args.eval_token_budget, token_cache=args.token_cache,
        max_queries=30 if args.smoke else None, num_workers=args.num_workers, figures=args.figures,
        checkpoint_every=args.checkpoint_every, keep_checkpoint=args.keep_checkpoint,
        **({} if args.released else {"models": args.models}))
    if args.cells:  # each cell trained here against its shipped twin, and nothing else
        for key, (cfg,) in configs.items():
            for r in shipped.twin_report(store.cell_dir(results, cfg)):
                spread = (f"within the shipped seeds' spread {r['seed_spread']:.4f}" if r["within_spread"] else
                          f"outside the shipped seeds' spread {r['seed_spread']:.4f}" if r["seed_spread"] is not None
                          else "seed spread unknown (one shipped seed)")
                print(f"{key} {r['collection']}: here {r['here']:.4f}, shipped {r['shipped']:.4f}, difference "
                      f"{r['diff']:+.4f} (paired t-test over queries, p = {r['pvalue']:.2g}); {spread}"
                      + ("; this is the shipped cell itself (--from-shipped put it here): pass another --results to "
                         "retrain it" if r["identical"] else ""))
        return
    if any(m.startswith("xpmir/cross-encoder-") for m in args.models):
        print("note: a released xpmir/cross-encoder-* checkpoint is the best of the paper's 3 seeds, not their mean")

    # 4. Tables: every objective against the first one (BCE), per collection ------------------
    out = tables.tables_folder(results, f"rq1_{mode}_{common.slug(backbone)}", args, mode, already_in_name=["backbone"])
    title = f"RQ1: objectives on {backbone} ({mode}, {precision})"
    if args.released:
        title += f" — {released.NOTE}"
        print("\n".join(["", *released.describe(chosen, out)]))
    published = claims.published_in_kit_columns() if mode == "paper" else {}  # the paper's means beside the kit's
    for measure in ("nDCG@10", "RR@10"):
        if not any(tables.measure_of(c, measure) in c.measures for c in collections):
            continue  # no collection reports this measure, in any form
        table = tables.grid_table(metrics, per_query, collections, measure, baseline=args.objectives[0],
                                  title=title, alpha=args.alpha,
                                  published={o: published[backbone, o] for o in args.objectives
                                             if (backbone, o) in published and measure == "nDCG@10"})
        tables.write_table(table, out, f"rq1_{tables.measure_file_name(measure)}")
        print("\n" + table.console + "\n\n" + table.latex)
        if measure == "nDCG@10":
            records = table.records
    baseline, intervals = args.objectives[0], {}  # each objective minus the baseline, with its 95% interval
    for objective in args.objectives[1:]:
        for c in collections:
            difference = significance.difference([([p["nDCG@10"] for p in per_query[objective][c.name]],
                                                   [p["nDCG@10"] for p in per_query[baseline][c.name]])])
            intervals.setdefault(objective, {})[c.name] = (difference.mean, *difference.interval())
    if published:  # how close the kit's effects are to the paper's (README, "How close to the paper")
        reproduction = common.extra("reproduction", "the paper mode's reproduction report")
        kit = {(backbone, r["system"]): {} for r in records if r["system"] in args.objectives}
        for r in records:
            if r["system"] in args.objectives:
                kit[backbone, r["system"]][r["column"]] = r["mean"]
        report = reproduction.table(reproduction.report(kit, published), f"RQ1: the kit against the paper ({backbone})")
        tables.write_table(report, out, "rq1_reproduction")
        print("\n" + report.console + "\n\n" + report.latex)
    if args.figures:
        common.extra("figures", "--figures").differences(out / "rq1_differences_nDCG10.png", intervals, baseline,
                                                         f"RQ1: objectives on {backbone} ({mode})")
    print(f"tables written to {out}")

    # 5. The claim this script checks: what the published table says, what these results say -------
    verdicts = [v for v in claims.published_verdicts(alpha=args.alpha) if v.claim == "M1"]
    if args.objectives[0] == "bce":
        runs = claims.runs_of(per_query, {(backbone, o): o for o in args.objectives}, collections)
        where = claims.scale_of(mode, [backbone], args.objectives, collections, seeds,
                                claims.count_queries(runs[backbone, "bce"]))
        verdicts.append(claims.beats("M1", claims.settings(runs, tables.group_members(collections)),
                                     [o for o in claims.STRONG if o in args.objectives], "bce", f"{where}, {backbone}",
                                     named=claims.STRONG, alpha=args.alpha, seed_sd=args.seed_sd))
        claims.save(results, out.name, verdicts)
    claims.print_verdicts(verdicts)


if __name__ == "__main__":
    grid.main_guard(main)
