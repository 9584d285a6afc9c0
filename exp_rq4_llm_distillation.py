"""RQ4 — Does distilling an LLM's rankings beat the supervised objectives, on every backbone?

Morand et al. (2026) distil RankZephyr's orderings of ColBERTv2's top-50 into cross-encoders with
DistillRankNet and ADR-MSE (Rank-DistiLLM, Schlatt et al. 2025) and find that this LLM distillation
is not better than InfoNCE or MarginMSE. This script trains (or reuses: the cells are the same as
RQ1's and RQ2's) every backbone with the two LLM objectives and with bce, hinge, infonce and
margin_mse, re-ranks every test collection, and counts, for each LLM objective against each other
objective, the (backbone x collection) cells where it wins, ties or loses. Win / loss = significant
difference (two-sided paired t-test over queries, the seeds' spread added at 2+ seeds, Holm–Bonferroni within
the family of the comparisons of one backbone on one collection); tie = not significant.

Commands:
  # the paper's setting: nine backbones, 200k steps, 3 seeds, SPLADE-v3 top-1000 from the kit's own first
  # stage (or from run files of your own: --run-dir runs/splade-v3-distilbert)
  python exp_rq4_llm_distillation.py --gpu 0
  # offline demo: MiniLM-L6 and its 4- and 2-layer students, trained on SciFact
  python exp_rq4_llm_distillation.py --demo
  # a tiny random model for a few steps (what the tests run)
  python exp_rq4_llm_distillation.py --smoke --teacher-pairs T.tsv --teacher-lists T.run

How long it takes: the grid is the one of exp_rq2_backbones.py, whose finished cells are reused
(README.md, "How long it takes", has the measured figures); --smoke about a minute.
"""
from __future__ import annotations

import dataclasses

import numpy as np

import claims
import common
import grid
import paper_setup
import significance
import store
import tables

LLM_OBJECTIVES = ["distill_ranknet", "adr_mse"]
OTHER_OBJECTIVES = ["bce", "hinge", "infonce", "margin_mse"]
MODE_BACKBONES = {"paper": list(paper_setup.PAPER_BACKBONES), "demo": list(paper_setup.DEMO_BACKBONES), "smoke": ["tiny-bert"]}


@dataclasses.dataclass
class Args(grid.ScaleOutFlags):  # + --plan, --slurm and --slurm-options, shared by the training scripts
    backbones: list[str] = dataclasses.field(default_factory=lambda: list(paper_setup.PAPER_BACKBONES))
    """backbones to train (default: the nine of the paper; --demo: minilm-l6/l4/l2; --smoke: tiny-bert)"""
    llm_objectives: list[str] = dataclasses.field(default_factory=lambda: list(LLM_OBJECTIVES))
    """objectives that distil an LLM's rankings (Rank-DistiLLM)"""
    other_objectives: list[str] = dataclasses.field(default_factory=lambda: list(OTHER_OBJECTIVES))
    """objectives every LLM objective is compared with"""
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
    measure: str = "nDCG@10"
    """measure that is tested and counted"""
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
    deterministic: bool = False
    """force deterministic GPU kernels (slower); CPU runs are deterministic anyway"""
    figures: bool = False
    """write each new cell's training curve as PNG beside its model (extras/figures.py; needs matplotlib)"""


def llm_tests(per_query: dict, backbones: list[str], collections: list, llm_objectives: list[str],
              other_objectives: list[str], measure: str, alpha: float) -> list[dict]:
    """One record per (backbone, collection, LLM objective, other objective): the paired t-test of the LLM
    objective against the other, Holm-corrected within the family of one backbone on one collection, and
    its outcome: win / loss (significant, by the sign of the difference) or tie."""
    tests = []
    for backbone in backbones:
        for c in collections:
            own = tables.measure_of(c, measure)
            seeds_of = lambda o: [pq[own] for pq in per_query[f"{backbone}/{o}"].get(c.name, []) if own in pq]
            pairs = [(llm, other) for llm in llm_objectives for other in other_objectives
                     if llm != other and seeds_of(llm) and seeds_of(other)]
            family = [significance.difference([(seeds_of(llm), seeds_of(other))]) for llm, other in pairs]
            for (llm, other), t, p_holm in zip(pairs, family, significance.holm([t.pvalue() for t in family])):
                outcome = "win" if p_holm < alpha and t.mean > 0 else "loss" if p_holm < alpha else "tie"
                tests.append({"backbone": backbone, "collection": c.name, "llm": llm, "other": other,
                              "diff": t.mean, "pvalue": t.pvalue(), "pvalue_holm": p_holm, "outcome": outcome})
    return tests


def outcome_table(tests: list[dict], by: str | None, columns: list[str], title: str, note: str) -> tables.Table:
    """Win/tie/loss counts per comparison: one 'W/T/L' column per value of `by` (backbone or
    collection) plus the total, or (by=None) the totals with the mean difference."""
    comparisons = list(dict.fromkeys((t["llm"], t["other"]) for t in tests))
    head = ["comparison", *(columns if by else ["wins", "ties", "losses", "cells", "mean diff"])]
    if by:
        head += ["total W/T/L"]
    rows, records = [], []
    for llm, other in comparisons:
        mine = [t for t in tests if (t["llm"], t["other"]) == (llm, other)]
        count = lambda ts: {o: sum(t["outcome"] == o for t in ts) for o in ("win", "tie", "loss")}
        total = count(mine)
        label = f"{llm} vs {other}"
        if by:
            cells = {c: count([t for t in mine if t[by] == c]) for c in columns}
            rows.append([label, *(f"{k['win']}/{k['tie']}/{k['loss']}" if sum(k.values()) else "–"
                                  for k in cells.values()), f"{total['win']}/{total['tie']}/{total['loss']}"])
            records += [{"llm": llm, "other": other, by: c, **k} for c, k in cells.items()]
        else:
            diff = float(np.mean([t["diff"] for t in mine]))
            rows.append([label, total["win"], total["tie"], total["loss"], len(mine), f"{diff:+.4f}"])
            records.append({"llm": llm, "other": other, **total, "cells": len(mine), "mean_diff": diff})
    return tables.make_table(title, head, rows, note, records=records, label=f"tab:rq4-{by or 'counts'}")


def main() -> None:
    args = grid.parse_args(Args)

    # 1. Mode, device, backbones and collections ----------------------------------------------
    mode, device, precision, seeds, collections, depth = grid.resolve_setting(args)
    backbones = args.backbones if "backbones" in args.given else MODE_BACKBONES[mode]
    objectives = list(dict.fromkeys([*args.llm_objectives, *args.other_objectives]))
    if not args.llm_objectives or not args.other_objectives:
        raise common.KitError("--llm-objectives and --other-objectives each need at least one objective")
    results = store.open_results(args.results)
    print(f"RQ4 ({mode}): backbones {backbones}, objectives {objectives}, seeds {seeds}, {precision} on {device}")

    # 2. One training configuration per (backbone, objective, seed): the cells of RQ1/RQ2 ----------
    configs = {(backbone, objective): [grid.make_config(mode, backbone, objective, seed, precision, steps=args.steps,
                                                        learning_rate=args.learning_rate, negatives=args.demo_negatives, lists=args.paper_lists,
                                                        unpadded=args.unpadded, compile=args.compile,
                                                        teacher_pairs=args.teacher_pairs,
                                                        teacher_lists=args.teacher_lists) for seed in seeds]
               for backbone in backbones for objective in objectives}

    # 3. Train (or reuse) every cell, re-rank every collection ----------------------------------
    metrics, per_query = grid.train_and_evaluate(
        args, {f"{b}/{o}": cfgs for (b, o), cfgs in configs.items()}, collections, results, device, run_dir=args.run_dir,
        depth=depth, batch_size=args.eval_batch_size, token_budget=args.eval_token_budget, token_cache=args.token_cache,
        max_queries=30 if args.smoke else None,
        num_workers=args.num_workers, checkpoint_every=args.checkpoint_every, keep_checkpoint=args.keep_checkpoint,
        figures=args.figures)

    # 4. Paired t-tests: one Holm family per (backbone, collection) ---------------------------
    tests = llm_tests(per_query, backbones, collections, args.llm_objectives, args.other_objectives, args.measure,
                      args.alpha)
    if not tests:
        raise common.KitError(f"no collection reports {args.measure}; pick another --measure")

    # 5. Tables: totals, per collection, per backbone ----------------------------------------
    note = (f"W/T/L = {args.measure} significantly higher / not significantly different / significantly lower "
            f"for the LLM objective (two-sided paired t-test over queries, the seeds' spread added at 2+ seeds, "
            f"Holm-Bonferroni within each backbone x collection, alpha={args.alpha})")
    tag = f"{mode}, {precision}, {len(seeds)} seed(s)"
    out = tables.tables_folder(results, f"rq4_{mode}_{precision}", args, mode, already_in_name=["precision"])
    made = {
        "rq4_counts": outcome_table(tests, None, [], f"RQ4: LLM distillation vs other objectives over "
                                    f"{len(backbones)} backbones x {len(collections)} collections ({tag})", note),
        "rq4_per_collection": outcome_table(tests, "collection", [c.name for c in collections], f"RQ4: W/T/L per "
                                            f"collection over {len(backbones)} backbone(s) ({tag})", note),
        "rq4_per_backbone": outcome_table(tests, "backbone", backbones,
                                          f"RQ4: W/T/L per backbone over {len(collections)} collections ({tag})", note),
    }
    for name, table in made.items():
        tables.write_table(table, out, name)
        print("\n" + table.console + "\n\n" + table.latex)
    common.atomic_write_json(out / "rq4_tests.json", tests)  # every test, for other analyses

    print(f"tables written to {out}")

    # 6. The claim this script checks: what the published table says, what these results say --------
    verdicts = [v for v in claims.published_verdicts(alpha=args.alpha) if v.claim == "M3"]
    runs = claims.runs_of(per_query, {(b, o): f"{b}/{o}" for b in backbones for o in objectives}, collections,
                          args.measure)
    where = claims.scale_of(mode, backbones, objectives, collections, seeds,
                            claims.count_queries(next(iter(runs.values()))))
    if args.measure != "nDCG@10":  # the margin is stated in nDCG@10: say that the claim was judged on another measure
        where += f", judged on {args.measure} with the nDCG@10 margin {claims.MARGIN}"
    verdicts.append(claims.competitive_not_better(claims.settings(runs, tables.group_members(collections)), where,
                                                  alpha=args.alpha, seed_sd=args.seed_sd))
    claims.save(results, out.name, verdicts)
    claims.print_verdicts(verdicts)


if __name__ == "__main__":
    grid.main_guard(main)
