"""RQ2 — Does the best objective depend on the backbone, in and out of domain?

Morand et al. (2026) train nine backbones (Ettin 17M-150M, MiniLM-L12, BERT, ELECTRA, RoBERTa,
DeBERTa-v3) with each of six objectives and report that the relative objectives (MarginMSE, InfoNCE)
beat pointwise BCE "across all backbones and evaluation settings". This script trains the grid
backbones x objectives x seeds, re-ranks every test collection, and writes (a) per backbone, the table
objectives x collections (+ group averages) with two-sided paired t-tests against BCE (the seeds'
spread added at 2+ seeds, Holm-Bonferroni within each collection), and (b) a summary per collection group (in-domain,
out-of-domain): a row per backbone, a column per objective, the best objective of each backbone marked.

Commands:
  # the paper's grid: 9 backbones x 6 objectives x 3 seeds, SPLADE-v3 top-1000 candidates from the kit's own
  # first stage (or from run files of your own: --run-dir runs/splade-v3-distilbert)
  python exp_rq2_backbones.py --gpu 0
  # a subset of it, or the authors' released checkpoints of the grid (--released: nothing trained)
  python exp_rq2_backbones.py --gpu 0 --backbones bert-base ettin-17m \
      --objectives bce infonce margin_mse
  # offline demo on a CPU: all-MiniLM-L6-v2 and students cut to its first 4 and 2 layers, trained on SciFact
  python exp_rq2_backbones.py --demo
  # tiny random models for a few steps (what the tests run)
  python exp_rq2_backbones.py --smoke

How long it takes: --demo trains 3 backbones x 6 objectives x 1 seed = 18 cells of 800 steps and
re-ranks 4 collections with each: most of a day on a 2-core CPU, minutes on a GPU (README.md, "How long
it takes", has the measured figures); the paper's grid is 162 cells of 200k steps. --smoke: under a
minute. `--plan` prints the estimate for this machine (or `--gpu 0`) before anything runs. Finished cells are
reused by every script (RQ1 and RQ3 read the same ones), and an interrupted run resumes where it stopped. Several
GPUs, machines or a SLURM cluster: start the same command once per GPU, or pass --slurm (README, "Many GPUs and
SLURM").
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

import claims
import common
import grid
import paper_setup
import store
import tables

OBJECTIVES = ["bce", "hinge", "infonce", "margin_mse", "distill_ranknet", "adr_mse"]
SMOKE_BACKBONES = ["tiny-bert", "tiny-electra"]


@dataclasses.dataclass
class Args(grid.ScaleOutFlags):  # + --plan, --slurm and --slurm-options, shared by the training scripts
    backbones: list[str] = dataclasses.field(default_factory=lambda: list(paper_setup.PAPER_BACKBONES))
    """backbones (names from paper_setup.PAPER_BACKBONES, HF ids, local paths); --demo/--smoke add them to their own"""
    objectives: list[str] = dataclasses.field(default_factory=lambda: list(OBJECTIVES))
    """objectives to compare (names from losses.LOSSES); the first is the baseline of the t-tests"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: list(paper_setup.PAPER_SEEDS))
    """training seeds (the paper: 3 runs from seed 12); --demo runs seed 12 only unless seeds are given"""
    demo: bool = False
    """run offline on the shipped demo set with the backbones minilm-l6, minilm-l4, minilm-l2"""
    smoke: bool = False
    """tiny random-initialised models (tiny-bert, tiny-electra) for a few steps, one seed (tests)"""
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
    seed_sd: float | None = None
    """with one seed: the seed sd the verdicts' tests assume (the kit documents 0.02); unset, one seed is untested"""
    released: bool = False
    """re-rank the authors' released checkpoints (xpmir/cross-encoder-<backbone>-<loss>) as the grid's rows,
    training nothing; each is the best of the paper's 3 seeds"""
    skip_missing: bool = False
    """--released: go on without the checkpoints that cannot be found (one note each) instead of stopping"""
    deterministic: bool = False
    """force deterministic GPU kernels (slower); CPU runs are deterministic anyway"""
    figures: bool = False
    """write the figures as PNG beside the tables and each new cell's training curve (extras/figures.py; matplotlib)"""


def describe(members: list[str], collections: list[paper_setup.Collection]) -> str:
    """The collections by name when few, else by group with counts: 'BEIR 13, LoTTE 10, Robust04 1'."""
    if len(members) <= 5:
        return ", ".join(members)
    groups = [c.group for c in collections if c.name in members]
    return ", ".join(f"{g} {groups.count(g)}" for g in dict.fromkeys(groups))


def pivot_table(rows: dict[str, dict[str, list[float]]], columns: list[str], title: str, note: str) -> tables.Table:
    """A table of mean (± std over seeds) per row and column; the best value of each ROW is starred
    (console) / bold (LaTeX) and named in a last column 'best' (console only)."""
    cells = tables.best_per_row(rows, columns)
    best = {r: next((c for c in columns if (r, c) in cells and cells[r, c].best), None) for r in rows}
    body = [[r, *(cells.get((r, c)) for c in columns)] for r in rows]
    records = [{"row": r, "column": c, "mean": v.mean, "std": v.std, "n_seeds": len(rows[r][c]),
                "best_in_row": v.best} for (r, c), v in cells.items()]
    return tables.make_table(title, ["backbone", *columns, "best"], [[*row, best[row[0]] or "–"] for row in body],
                             "* best per row; " + note, records=records, latex_head=["Backbone", *columns],
                             latex_rows=body,
                             caption=f"{tables.latex_escape(title)}. {tables.latex_escape(note)} Best per row in bold.")


def main() -> None:
    args = grid.parse_args(Args)

    # 1. Mode, device, backbones and collections -------------------------------------------------
    mode, device, precision, seeds, collections, depth = grid.resolve_setting(args)
    backbones = list(args.backbones)
    if mode != "paper" and not args.released:  # the paper's backbones are not available offline: the mode's own,
        # plus any passed
        passed = backbones if "backbones" in args.given else []
        backbones = list(dict.fromkeys([*(SMOKE_BACKBONES if args.smoke else paper_setup.DEMO_BACKBONES), *passed]))
    first_stage = grid.first_stage_label(collections, args.run_dir, args.retriever, depth)
    results = store.open_results(args.results)
    print(f"RQ2 ({mode}): backbones {backbones}, objectives {args.objectives}, seeds {seeds}, "
          f"{precision} on {device}")

    # 2. One training configuration per (backbone, objective, seed) ------------------------------
    configs = {f"{backbone}|{objective}": [
        grid.make_config(mode, backbone, objective, seed, precision, steps=args.steps,
                         learning_rate=args.learning_rate, negatives=args.demo_negatives, lists=args.paper_lists,
                         unpadded=args.unpadded, compile=args.compile,
                         teacher_pairs=args.teacher_pairs, teacher_lists=args.teacher_lists) for seed in seeds]
        for backbone in backbones for objective in args.objectives}

    # 3. Train (or reuse) every cell, re-rank every collection (the collections are loaded once) ----
    train_and_evaluate = grid.train_and_evaluate
    if args.released:  # the authors' checkpoints as the grid's rows: nothing is trained
        released = common.extra("released", "--released")
        chosen = released.resolve([(b, o) for b in backbones for o in args.objectives], args.skip_missing)
        train_and_evaluate = functools.partial(released.rerank, cells=chosen, lengths=next(iter(configs.values()))[0],
                                               labels={n: f"{b}|{o}" for (b, o), n in chosen.items()})
        configs = {}
    metrics, per_query = train_and_evaluate(
        args, configs, collections, results, device, run_dir=args.run_dir, method=args.retriever, depth=depth, first_stage=first_stage,
        batch_size=args.eval_batch_size, token_budget=args.eval_token_budget, token_cache=args.token_cache,
        max_queries=30 if args.smoke else None, num_workers=args.num_workers, figures=args.figures,
        checkpoint_every=args.checkpoint_every, keep_checkpoint=args.keep_checkpoint)

    # 4. Per backbone: objectives x collections, each objective tested against the baseline ------
    out = tables.tables_folder(results, f"rq2_{mode}", args, mode)
    if args.released:  # a row per checkpoint found; the cells it lacks are left out of every table
        print("\n".join(["", *released.describe(chosen, out)]))
        for b in backbones:
            for o in args.objectives:
                metrics.setdefault(f"{b}|{o}", {})
    baseline = args.objectives[0]
    published = claims.published_in_kit_columns() if mode == "paper" else {}  # the paper's means beside the kit's
    kit_means: dict = {}
    for backbone in backbones:
        systems = {first_stage: first_stage, **{o: f"{backbone}|{o}" for o in args.objectives}}  # row: system
        sub_metrics = {row: metrics[s] for row, s in systems.items()}
        sub_per_query = {row: per_query[s] for row, s in systems.items() if s in per_query}
        table = tables.grid_table(sub_metrics, sub_per_query, collections, "nDCG@10", baseline=baseline,
                                  title=f"RQ2: objectives on {backbone} ({mode}, {precision})"
                                        + (f" — {released.NOTE}" if args.released else ""), alpha=args.alpha,
                                  published={o: published[backbone, o] for o in args.objectives
                                             if (backbone, o) in published})
        tables.write_table(table, out, f"rq2_{common.slug(backbone)}_nDCG10")
        print("\n" + table.console)
        for record in table.records:  # the kit's means, for the reproduction report
            kit_means.setdefault((backbone, record["system"]), {})[record["column"]] = record["mean"]

    def metrics_of(b, o, c):  # per-seed nDCG@10 of a cell on a collection
        return [m["nDCG@10"] for m in metrics[f"{b}|{o}"].get(c, [])]

    # 5. Summary: backbones x objectives, mean nDCG@10 per collection group ----------------------
    means = {backbone: {o: tables.group_means(metrics[f"{backbone}|{o}"], collections, "nDCG@10") for o in args.objectives}
             for backbone in backbones}
    for group, members in tables.group_members(collections).items():  # groups --collections left empty are skipped
        rows = {}
        for b in backbones:
            rows[b] = {o: means[b][o][group] for o in args.objectives if group in means[b][o]}
            if any((b, o) in published for o in args.objectives):
                rows[f"{b} (paper)"] = {o: [published[b, o][f"avg {group}"]] for o in args.objectives if (b, o) in published}
        note = (f"nDCG@10 averaged over the {len(members)} {group} collections ({describe(members, collections)}), "
                f"mean over {len(seeds)} seed(s) with the std when more than one.")
        table = pivot_table(rows, args.objectives, f"RQ2 summary, {group}: backbones x objectives ({mode}, "
                                                   f"{precision})", note)
        tables.write_table(table, out, f"rq2_summary_{group}_nDCG10")
        print("\n" + table.console + "\n\n" + table.latex)
        if args.figures:
            common.extra("figures", "--figures").heatmap_vs_baseline(
                out / f"rq2_delta_{group}.png", {(b, o): float(np.mean(v)) for b in backbones for o, v in rows[b].items()},
                backbones, args.objectives, baseline, f"RQ2 {group}: nDCG@10 minus {baseline}")
    if published:  # the kit's mean against the paper's, for every cell the paper reports
        reproduction = common.extra("reproduction", "the paper mode's reproduction report")
        points = [(published[b, o][c], float(np.mean(metrics_of(b, o, c))), f"{b} {o} {c}") for b in backbones
                  for o in args.objectives for c in [c.name for c in collections] if (b, o) in published
                  and c in published[b, o] and metrics_of(b, o, c)]
        if args.figures:
            common.extra("figures", "--figures").paper_vs_kit(out / "rq2_paper_vs_kit.png", points,
                                                              f"RQ2 ({mode}): the kit against the paper")
        report = reproduction.table(reproduction.report({k: v for k, v in kit_means.items() if k[1] in args.objectives},
                                                        published), f"RQ2: the kit against the paper ({mode})")
        tables.write_table(report, out, "rq2_reproduction")
        print("\n" + report.console + "\n\n" + report.latex)
    print(f"tables written to {out} (one .txt/.tex/.csv/.json per table)")

    # 6. The claims this script checks: what the published table says, what these results say ------
    verdicts = [v for v in claims.published_verdicts(alpha=args.alpha) if v.claim in ("M1", "M2")]
    where = claims.scale_of(mode, backbones, args.objectives, collections, seeds,
                            claims.count_queries(per_query.get(f"{backbones[0]}|{baseline}", {})))
    cell_means = {(b, o, c.name): float(np.mean([m["nDCG@10"] for m in metrics[f"{b}|{o}"][c.name]]))
                  for b in backbones for o in args.objectives for c in collections if c.name in metrics[f"{b}|{o}"]}
    if baseline == "bce":
        runs = claims.runs_of(per_query, {(b, o): f"{b}|{o}" for b in backbones for o in args.objectives}, collections)
        verdicts.append(claims.beats("M1", claims.settings(runs, tables.group_members(collections)),
                                     [o for o in claims.STRONG if o in args.objectives], "bce", where,
                                     named=claims.STRONG, alpha=args.alpha, seed_sd=args.seed_sd))
    verdicts.append(claims.factor_verdict(cell_means, backbones, args.objectives, [c.name for c in collections], where))
    claims.save(results, out.name, verdicts)
    claims.print_verdicts(verdicts)


if __name__ == "__main__":
    grid.main_guard(main)
