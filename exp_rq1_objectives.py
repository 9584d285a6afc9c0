"""RQ1 — Which training objective makes the best cross-encoder?

Morand et al. (2026) train one backbone with six objectives — pointwise BCE, pairwise hinge, listwise
InfoNCE, MarginMSE distillation from a cross-encoder ensemble, and DistillRankNet / ADR-MSE
distillation from an LLM's rankings — and report that the relative objectives (MarginMSE, InfoNCE)
beat pointwise BCE everywhere. This script trains the six on one backbone, re-ranks every test
collection, and tests each objective against BCE (two-sided paired t-test over queries, seeds
averaged per query, Holm–Bonferroni within each collection).

Commands:
  # the paper's setting: 200k steps, 3 seeds, SPLADE-v3 top-1000 candidates from --run-dir
  python exp_rq1_objectives.py --gpu 0 --backbone bert-base --run-dir runs/splade-v3-distilbert
  # offline demo on a laptop CPU: all-MiniLM-L6-v2 trained on SciFact, re-ranking the BM25 top-50
  python exp_rq1_objectives.py --demo
  # a tiny random model for a few steps (what the tests run)
  python exp_rq1_objectives.py --smoke

Expected time, measured on a 2-core CPU in fp32 (no AVX512-BF16), idle: --demo trains 6 cells (one
seed) of 800 steps, about 27 min each (2 s per step of 16 passages), and re-ranks the BM25 top-50 of
the 4 test collections (~47k pairs, about 20 min per cell at ~37 pairs/s): about 45-50 min per cell,
5 hours in all. Three of the six (bce, hinge, infonce) are the members of the demo's teacher ensemble,
so after scripts/make_demo_teachers.py only three cells are left to train. CPUs with AVX512-BF16 run
it about 2x faster in bf16. Measured on one H100 (bf16, --gpu 0): 22 s of training and ~20 s of re-ranking
per cell; the teachers and this script from scratch took 6 min. The paper's setting is
200k steps per cell, days of GPU time per backbone. Finished cells are reused by every script.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import common

OBJECTIVES = ["bce", "hinge", "infonce", "margin_mse", "distill_ranknet", "adr_mse"]


@dataclasses.dataclass
class Args:
    backbone: str = "bert-base"
    """backbone to train (a name from common.PAPER_BACKBONES, or a Hugging Face id / local path)"""
    objectives: list[str] = dataclasses.field(default_factory=lambda: list(OBJECTIVES))
    """objectives to compare (names from losses.LOSSES); the first is the baseline of the t-tests"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: list(common.PAPER_SEEDS))
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
    """test collections to re-rank, by name (default: all of the mode's; see common.PAPER_COLLECTIONS)"""
    run_dir: str | None = None
    """folder of first-stage runs named <collection>.run[.gz] (paper: SPLADE-v3-DistilBERT top-1000)"""
    depth: int | None = None
    """candidates re-ranked per test query (default: the recipe's: 1000 paper, 50 demo, 5 smoke)"""
    steps: int | None = None
    """training steps (default: 200k for the paper, 800 for --demo)"""
    learning_rate: float | None = None
    """peak learning rate (default: the backbone's, from common.PAPER_BACKBONES / DEMO_BACKBONES)"""
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


def main() -> None:
    args = common.parse_args(Args)

    # 1. Mode, device and collections ---------------------------------------------------------
    mode = "smoke" if args.smoke else "demo" if args.demo else "paper"
    device = common.choose_device(args.gpu)
    common.setup_speed(device, args.deterministic, threads=1 if args.smoke else None)
    precision = common.resolve_precision("fp32" if args.smoke and args.precision == "auto" else args.precision, device)
    backbone = args.backbone
    if mode != "paper" and backbone == Args.backbone:  # the paper's default is not available offline
        backbone = "tiny-bert" if args.smoke else "minilm-l6"
    seeds = common.seeds_for(mode, args.seeds)
    collections = common.select_collections(
        common.PAPER_COLLECTIONS if mode == "paper" else common.DEMO_COLLECTIONS, args.collections)
    depth = args.depth or common.RECIPES[mode]["rerank_depth"]
    results = common.open_results(Path(args.results))
    print(f"RQ1 ({mode}): {backbone}, objectives {args.objectives}, seeds {seeds}, {precision} on {device}")

    # 2. One training configuration per (objective, seed) --------------------------------------
    configs = {objective: [common.make_config(mode, backbone, objective, seed, precision, steps=args.steps,
                                              learning_rate=args.learning_rate, teacher_pairs=args.teacher_pairs,
                                              teacher_lists=args.teacher_lists)
                           for seed in seeds]
               for objective in args.objectives}

    # 3. Train (or reuse) every cell, re-rank every collection ----------------------------------
    metrics, per_query = common.run_grid(
        configs, collections, results, device, run_dir=args.run_dir, depth=depth,
        batch_size=args.eval_batch_size, max_queries=30 if args.smoke else None, num_workers=args.num_workers,
        checkpoint_every=args.checkpoint_every)

    # 4. Tables: every objective against the first one (BCE), per collection ------------------
    out = common.tables_folder(results, f"rq1_{mode}_{common._slug(backbone)}", args,
                               already_in_name=["backbone"])
    for measure in ("nDCG@10", "RR@10"):
        if not any(measure in m for by_c in metrics.values() for ms in by_c.values() for m in ms):
            continue
        table = common.grid_table(metrics, per_query, collections, measure, baseline=args.objectives[0],
                                  title=f"RQ1: objectives on {backbone} ({mode}, {precision})", alpha=args.alpha)
        common.write_table(table, out, f"rq1_{measure.replace('@', '').replace('(', '').replace(')', '')}")
        print("\n" + table.console + "\n\n" + table.latex)
    print(f"tables written to {out}")


if __name__ == "__main__":
    common.main_guard(main)
