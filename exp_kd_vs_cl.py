"""Distillation versus contrastive learning (Xu et al. 2025, arXiv 2507.08336), scaled down.

Xu et al. train rerankers of 0.5B-7B parameters (LLM-based, Transformer and recurrent) either with
contrastive learning (InfoNCE over (q, d+, D-)) or by distilling a teacher's scores with a KL loss,
and find that distillation helps in and out of domain when the teacher is larger than the student,
but not when it has the same size; contrastive learning stays a robust baseline. This script is a
scaled-down analogue with encoder cross-encoders: (a) it trains, with InfoNCE, a large teacher and one
same-size teacher per student (the student's backbone under another seed); (b) each teacher scores
the positives and top candidates of the training queries, written as a TREC run (for kl) and as a
Hofstätter-format pairs file (for margin_mse) under results/teachers/<teacher cell>/; (c) each student
is trained with infonce (CL), kl and margin_mse from the large teacher, kl and margin_mse from the
same-size teacher; (d) per student, every method is tested against its infonce (two-sided paired
t-test over queries, with the seeds' spread added at 2+ seeds; Holm–Bonferroni per collection).

Commands:
  # paper-sized: students Ettin-17M/32M/68M, large teacher Ettin-150M, SPLADE-v3 candidates at test from the
  # kit's own first stage (or from run files of your own: --run-dir runs/splade-v3-distilbert)
  python exp_kd_vs_cl.py --gpu 0
  # offline demo: students MiniLM-L4 and -L5 (cut from all-MiniLM-L6-v2), large teacher MiniLM-L6
  python exp_kd_vs_cl.py --demo
  # tiny random models for a few steps (what the tests run): student tiny-bert, teacher tiny-electra
  python exp_kd_vs_cl.py --smoke

How long it takes: --demo trains 3 teachers and 2 students x 5 methods x 1 seed = 10 student cells of
1,600 steps, and each teacher scores 809 queries x ~100 passages (~82k pairs): about a quarter of an hour
on one H100, most of a day on a 2-core CPU. README.md ("KD vs CL", "How long it takes") has the measured
figures, why the demo's students are MiniLM-L4/-L5 at 1,600 steps, and what the demo found.
Caveat: in paper mode the teachers score --teacher-queries (10,000) sampled training queries, so kl /
margin_mse students see those only, while infonce samples every training query (the demo scores all
809: same data for every method).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import claims
import common
import cross_encoder
import grid
import paper_setup
import store
import tables

# Per mode: students, large teacher, training queries scored by each teacher (None: all), depth scored,
# training steps of every cell (None: the mode's recipe in paper_setup.RECIPES).
MODES = {"paper": (["ettin-17m", "ettin-32m", "ettin-68m"], "ettin-150m", 10_000, None, None),
         "demo": (["minilm-l4", "minilm-l5"], "minilm-l6", None, None, 1600),
         "smoke": (["tiny-bert"], "tiny-electra", 16, 8, None)}
METHODS = [("CL: infonce", "infonce", None), ("KD: kl from large", "kl", "large"),
           ("KD: kl from same size", "kl", "same"), ("KD: margin_mse from large", "margin_mse", "large"),
           ("KD: margin_mse from same size", "margin_mse", "same")]


@dataclasses.dataclass
class Args(grid.ScaleOutFlags):  # + --plan, --slurm and --slurm-options, shared by the training scripts
    students: list[str] = dataclasses.field(default_factory=lambda: list(MODES["paper"][0]))
    """student backbones (default: Ettin-17M/32M/68M; --demo: minilm-l4/l5; --smoke: tiny-bert)"""
    teacher: str = "ettin-150m"
    """backbone of the large teacher (--demo: minilm-l6; --smoke: tiny-electra)"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: list(paper_setup.PAPER_SEEDS))
    """student training seeds (the paper: 3 runs from seed 12); --demo runs seed 12 only unless seeds are given"""
    teacher_seed: int = 12
    """training seed of the large teacher"""
    same_size_seed: int = 112
    """training seed of each same-size teacher (must differ from every student seed)"""
    demo: bool = False
    """run offline on the shipped demo set (train SciFact; test SciFact, NFCorpus, Vaswani, Cranfield)"""
    smoke: bool = False
    """tiny random-initialised models for a few steps on a few queries (tests)"""
    gpu: int = -1
    """CUDA device index; -1 runs on the CPU"""
    results: str = "results"
    """results folder shared by all scripts (one sub-folder per trained cell; teacher files in teachers/)"""
    collections: list[str] = dataclasses.field(default_factory=list)
    """test collections: the mode's names, ir_datasets ids, or local collection specs (.json); default: all the mode's"""
    run_dir: str | None = None
    """folder of first-stage runs named <collection>.run[.gz] (paper: SPLADE-v3-DistilBERT top-1000)"""
    retriever: str = "splade"
    """without --run-dir, the kit's own first stage for the paper's collections: splade (the paper's) or bm25"""
    depth: int | None = None
    """candidates re-ranked per test query (default: the recipe's: 1000 paper, 50 demo, 5 smoke)"""
    steps: int | None = None
    """training steps of students and teachers (default: 200k for the paper, 1600 for --demo)"""
    learning_rate: float | None = None
    """peak learning rate (default: the backbone's, from paper_setup.PAPER_BACKBONES / DEMO_BACKBONES)"""
    precision: str = "auto"
    """bf16, fp32, or auto (bf16 where the hardware supports it); compare methods at one precision"""
    teacher_queries: int | None = None
    """training queries each teacher scores, sampled with a fixed seed (default: 10,000 paper, all demo; 0: all)"""
    teacher_depth: int | None = None
    """top candidates per training query a teacher scores, with the positives (default: the setup's depth)"""
    demo_negatives: str = "bm25"
    """--demo/--smoke: InfoNCE's negatives and the teacher's lists from BM25, or dense (as the paper; needs the dense teacher files: README)"""
    paper_lists: str = "colbert-top50"
    """paper mode: the LLM teacher's lists, RankZephyr's order of ColBERTv2's top 50 (as the paper) or rankzephyr-top50"""
    eval_batch_size: int = 64
    """pairs per re-ranking batch (test collections and teacher scoring)"""
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


def _portable(path: Path) -> str:
    """A path as it goes into a TrainConfig: relative to the repo when inside it (so the cell hash does not
    depend on where the repo lives; common.resolve_file reads it from the repo root), else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(common.REPO))
    except ValueError:
        return str(path)


def teacher_files(cfg: cross_encoder.TrainConfig, results: Path, device: str, setup: paper_setup.TrainingSetup,
                  n_queries: int | None, depth: int, batch_size: int, num_workers: int = 0,
                  compute: bool = True, token_budget: int = 0, token_cache: bool = False) -> tuple[str, str]:
    """(TREC run of teacher scores, Hofstätter pairs file) of a trained teacher, computed once and reused:
    the teacher scores every positive and top-`depth` candidate of `n_queries` sampled training queries.
    One worker computes them (the others wait for it); `compute=False` only names them (--plan, --slurm)."""
    folder = results / "teachers" / store.cell_dir(results, cfg).name
    scores_path = folder / f"scores_q{n_queries or 'all'}_d{depth}.run.gz"
    pairs_path = folder / f"pairs_q{n_queries or 'all'}_d{depth}.tsv"
    if not compute:
        return _portable(scores_path), _portable(pairs_path)
    folder.mkdir(parents=True, exist_ok=True)
    lock = store.CellLock(folder)
    if not lock.acquire(wait=True, done=lambda: scores_path.exists() and pairs_path.exists()):
        print(f"reusing the teacher files in {folder}")
        return _portable(scores_path), _portable(pairs_path)
    try:
        if not (scores_path.exists() and pairs_path.exists()):
            _score_with_teacher(cfg, results, device, setup, n_queries, depth, batch_size, num_workers, folder,
                                scores_path, pairs_path, token_budget, token_cache)
    finally:
        lock.release()
    return _portable(scores_path), _portable(pairs_path)


def _score_with_teacher(cfg, results, device, setup, n_queries, depth, batch_size, num_workers, folder, scores_path,
                        pairs_path, token_budget: int = 0, token_cache: bool = False) -> None:
    dataset = common.load_dataset(setup.queries)
    queries, qrels = common.load_queries(dataset), common.load_qrels(dataset)
    ranked = common.read_run(common.resolve_file(setup.candidates), depth)
    eligible = sorted(q for q in queries if q in ranked and any(r > 0 for r in qrels.get(q, {}).values()))
    if n_queries and n_queries < len(eligible):
        eligible = sorted(np.random.default_rng(0).choice(eligible, n_queries, replace=False).tolist())
    positives = {q: sorted(d for d, r in qrels[q].items() if r > 0) for q in eligible}
    negatives = {q: [d for d, _ in ranked[q] if qrels[q].get(d, 0) <= 0] for q in eligible}
    candidates = {q: list(dict.fromkeys([*positives[q], *negatives[q]])) for q in eligible}
    print(f"teacher {cfg.backbone} (seed {cfg.seed}) scores {sum(map(len, candidates.values()))} pairs of "
          f"{len(eligible)} training queries -> {folder}")
    model, pair_tokenizer = cross_encoder.load_trained(store.cell_dir(results, cfg) / "model", cfg.max_length,
                                                       cfg.query_max_length, device)
    if cfg.compile:
        common.extra("compiled", "--compile").compile_model(model)
    run = cross_encoder.rerank(model, pair_tokenizer, queries, candidates, common.DocumentLookup(dataset),
                               batch_size=batch_size, device=device, precision=cfg.precision, progress=True,
                               workers=num_workers, tokens_folder=store.tokens_folder(results, token_cache),
                               token_budget=token_budget, unpad=cfg.unpadded)
    common.write_teacher_pairs(pairs_path, ((run[q][p], run[q][n], q, p, n) for q in eligible
                                            for p in positives[q] for n in negatives[q]))  # atomic, shuffled
    common.write_run(scores_path, run, f"teacher-{common.slug(cfg.backbone)}-s{cfg.seed}")


def main() -> None:
    args = grid.parse_args(Args)

    # 1. Mode, device, students, teachers and collections -----------------------------------------
    mode, device, precision, seeds, collections, depth = grid.resolve_setting(args)
    default_students, default_teacher, default_queries, default_depth, default_steps = MODES[mode]
    students = args.students if "students" in args.given else default_students
    large = args.teacher if "teacher" in args.given else default_teacher
    if args.same_size_seed in seeds:
        raise common.KitError(f"--same-size-seed {args.same_size_seed} is also a student seed: the same-size "
                              f"teacher would be the infonce student itself")
    setup = paper_setup.TRAINING_SETUPS[paper_setup.RECIPES[mode]["training"]]
    n_queries = args.teacher_queries if args.teacher_queries is not None else default_queries
    teacher_depth = args.teacher_depth or default_depth or setup.candidate_depth
    results = store.open_results(args.results)
    print(f"KD vs CL ({mode}): students {students}, large teacher {large}, seeds {seeds}, {precision} on {device}")

    # 2. Teachers: InfoNCE, one large and one per student size (same backbone, another seed) --------
    def config(backbone, objective, seed, **teachers):
        return grid.make_config(mode, backbone, objective, seed, precision, steps=args.steps or default_steps,
                                learning_rate=args.learning_rate, negatives=args.demo_negatives, lists=args.paper_lists,
                                unpadded=args.unpadded, compile=args.compile, **teachers)
    teachers = {("large", None): config(large, "infonce", args.teacher_seed),
                **{("same", s): config(s, "infonce", args.same_size_seed) for s in students}}
    options = dict(num_workers=args.num_workers, checkpoint_every=args.checkpoint_every,
                   keep_checkpoint=args.keep_checkpoint)
    launching = args.plan or args.slurm  # the teachers are cells of the plan, trained by the tasks
    if not launching:
        selecting = next((c for c in teachers.values() if c.validate_every), None)  # paper: NanoBEIR selection
        validate = None
        if selecting:
            first_stage = common.extra("first_stage", "NanoBEIR validation (the paper's checkpoint selection)")
            validate = first_stage.nanobeir_validator(selecting, device, args.retriever, args.eval_batch_size,
                                                      tokens_folder=store.tokens_folder(results, args.token_cache),
                                                      token_budget=args.eval_token_budget)
        grid.train_cells(list(teachers.values()), results, device, validate=validate, **options)
        if args.figures:  # the teachers' training curves too
            for cfg in teachers.values():
                common.extra("figures", "--figures").training_curve(store.cell_dir(results, cfg))

    # 3. Teacher files: scores (kl) and pairs (margin_mse), reused when present -------------------
    files = {key: teacher_files(cfg, results, device, setup, n_queries, teacher_depth, args.eval_batch_size,
                                args.num_workers, compute=not launching, token_budget=args.eval_token_budget,
                                token_cache=args.token_cache)
             for key, cfg in teachers.items()}

    # 4. Students: CL and four KD variants per student size, trained and evaluated with the teachers ---
    names = {("large", None): f"teacher large ({large})"}
    configs = {names["large", None]: [teachers["large", None]]}
    for s in students:
        names["same", s] = f"teacher same size ({s}, seed {args.same_size_seed})"
        configs[names["same", s]] = [teachers["same", s]]
        for label, objective, source in METHODS:
            key = ("large", None) if source == "large" else ("same", s)
            extra = {} if source is None else {"teacher_scores": files[key][0]} if objective == "kl" \
                else {"teacher_pairs": files[key][1]}
            configs[f"{s} | {label}"] = [config(s, objective, seed, **extra) for seed in seeds]
    metrics, per_query = grid.train_and_evaluate(
        args, configs, collections, results, device, run_dir=args.run_dir, method=args.retriever, depth=depth,
        batch_size=args.eval_batch_size, token_budget=args.eval_token_budget, token_cache=args.token_cache,
        max_queries=30 if args.smoke else None, figures=args.figures, **options)

    # 5. Tables: one per student, every method against the student's infonce -------------------------
    out = tables.tables_folder(results, f"kd_vs_cl_{mode}_{precision}", args, mode, already_in_name=["precision"])
    summary = []
    for s in students:
        rows = {"BM25": "first stage", names["large", None]: names["large", None], names["same", s]: names["same", s],
                **{f"{s} | {label}": label for label, _, _ in METHODS}}
        student_metrics = {rows[k]: v for k, v in metrics.items() if k in rows}
        student_pq = {label: per_query[f"{s} | {label}"] for label, _, _ in METHODS}
        for measure in ("nDCG@10", "RR@10"):
            if not any(tables.measure_of(c, measure) in c.measures for c in collections):
                continue  # no collection reports this measure, in any form
            table = tables.grid_table(student_metrics, student_pq, collections, measure, baseline=METHODS[0][0],
                                      title=f"KD vs CL: student {s}, large teacher {large} ({mode}, {precision})",
                                      alpha=args.alpha)
            tables.write_table(table, out, f"kd_vs_cl_{common.slug(s)}_{measure.replace('@', '')}")
            print("\n" + table.console + "\n\n" + table.latex)
            if measure == "nDCG@10":
                summary += [dict(r, student=s) for r in table.records]

    # 6. Summary: each KD variant against CL, per student (the question of Xu et al.) -----------------
    columns = list(dict.fromkeys(r["column"] for r in summary))
    groups = [c for c in columns if c.startswith("avg ")] or columns  # one collection: no averages, show it
    cl = {(r["student"], r["column"]): r["mean"] for r in summary if r["system"] == METHODS[0][0]}
    lines, records = [], []
    for s in students:
        for label, _, _ in METHODS[1:]:
            mine = [r for r in summary if r["student"] == s and r["system"] == label]
            tested = [r for r in mine if r["significant"] is not None]
            wtl = [sum(bool(r["significant"]) and (r["mean"] > cl[s, r["column"]]) == up for r in tested)
                   for up in (True, False)]
            deltas = {g: next((r["mean"] - cl[s, g] for r in mine if r["column"] == g), None) for g in groups}
            lines.append([s, label, *(f"{d:+.4f}" if d is not None else "–" for d in deltas.values()),
                          f"{wtl[0]}/{len(tested) - sum(wtl)}/{wtl[1]}"])
            records.append({"student": s, "method": label, **deltas, "wins": wtl[0], "losses": wtl[1],
                            "ties": len(tested) - sum(wtl)})
    head = ["student", "method", *(f"Δ {g}" for g in groups), "W/T/L vs CL"]
    note = (f"Δ = nDCG@10 minus the student's infonce (means over seeds); W/T/L over collections: two-sided paired "
            f"t-test, Holm-Bonferroni per collection, alpha={args.alpha}")
    table = tables.make_table(f"KD vs CL summary ({mode}, {precision}, large teacher {large})", head, lines, note,
                              records=records, caption=f"KD vs CL summary ({mode}, {precision}). "
                                                       f"{tables.latex_escape(note)}",
                              label=f"tab:kd-vs-cl-summary-{mode}", align="ll" + "r" * (len(head) - 2))
    tables.write_table(table, out, "kd_vs_cl_summary")
    print("\n" + table.console + "\n\n" + table.latex + f"\ntables written to {out}")

    # 7. The claims this script checks (Xu et al.; their numbers are not shipped, so only these results) --
    runs = claims.runs_of(per_query, {(s, label): f"{s} | {label}" for s in students for label, _, _ in METHODS},
                          collections)
    cells = claims.settings(runs, tables.group_members(collections))
    where = claims.scale_of(mode, students, [m for m, _, _ in METHODS], collections, seeds,
                            claims.count_queries(per_query[f"{students[0]} | {METHODS[0][0]}"]))
    options = {"alpha": args.alpha, "seed_sd": args.seed_sd}
    verdicts = [claims.beats("X1", cells, [m for m, _, source in METHODS if source == "large"], METHODS[0][0], where,
                             **options),
                claims.no_better("X2", cells, [m for m, _, source in METHODS if source == "same"], METHODS[0][0],
                                 where, **options)]
    claims.save(results, out.name, verdicts)
    claims.print_verdicts(verdicts)


if __name__ == "__main__":
    grid.main_guard(main)
