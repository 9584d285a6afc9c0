"""Build the offline demo's teacher files: a cross-encoder ensemble's scores of SciFact training pairs.

The demo's distillation objectives need teachers that the paper downloads (Hofstätter et al.'s T2
ensemble scores for MarginMSE; RankZephyr's orderings from Rank-DistiLLM for DistillRankNet and ADR-MSE).
Offline there are none, so this script makes them from cross-encoders that the kit trains itself:
all-MiniLM-L6-v2 trained on beir/scifact/train with BCE, hinge and InfoNCE (the three objectives that
need no teacher), seed 12, the demo recipe. These are exactly the cells that
`exp_rq1_objectives.py --demo` trains, so whichever script runs first trains them and the other reuses
them from the results store. The teacher is their ensemble: each pair's score is the MEAN of the three
members' logits, as Hofstätter et al.'s T2 teacher is the mean of its members' scores (BERT-Base,
BERT-Large, ALBERT-Large). Note: the demo's listwise teacher is this cross-encoder ensemble, not an LLM
like the paper's RankZephyr, so the demo's DistillRankNet / ADR-MSE rows distil a cross-encoder's
ranking, not an LLM's. The members are trained with different objectives, so their logits have
different scales; the mean leans towards the member with the widest spread (the script prints each
member's score spread).

The teacher sees the data the paper's teachers saw: the pairs of MarginMSE pair BM25 negatives (as
Hofstätter's ensemble scored the official BM25 triples), the lists of DistillRankNet and ADR-MSE order a
dense first stage's candidates (as RankZephyr ordered ColBERTv2's), here all-MiniLM-L6-v2's top 50
(scripts/make_dense_runs.py). A second lists file orders the BM25 top 50, for the earlier demo
(--demo-negatives bm25).

Commands (from the repository root):
  # the shipped files (trains or reuses 3 demo cells, then scores 68,756 pairs with each member)
  python scripts/make_demo_teachers.py
  # a tiny random model on a handful of queries (tests); writes to <results>/smoke-teachers
  python scripts/make_demo_teachers.py --smoke --results /tmp/kit-teach-smoke

What it writes to --out-dir (default data/teachers; names from paper_setup.DEMO_TRAINING):
  scifact-train.ensemble-pairs.tsv     Hofstätter's format, `pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`,
                                       for margin_mse: every positive of every training query with a
                                       positive, paired with up to 20 negatives sampled (fixed seed) from
                                       the query's BM25 top-50, judged positives excluded; lines in a
                                       seeded shuffled order, scores in full
  scifact-train.ensemble-dense-top50.run
                                       Rank-DistiLLM's format, TREC run `qid Q0 docid rank 101-rank rank`,
                                       for distill_ranknet / adr_mse: the ensemble's ordering of each
                                       training query's dense top-50 plus its positives, top 50
  scifact-train.ensemble-top50.run     the same for the BM25 top-50 (--demo-negatives bm25)
  scifact-train.ensemble-scores.run.gz the ensemble's scores (in full, tag ensemble) of every candidate
                                       (BM25 and dense top-50 and the positives), for kl
Each member's scores are kept in its cell, results/cells/<cell>/scores/, so a rerun only rewrites the
files. Output is deterministic: a fixed shuffle, ties broken by doc id, a rerun gives identical bytes.

How long it takes: three 800-step cells (reused when they exist), then each member scores 68,756
pairs: some 4-5 hours on a 2-core CPU, a few minutes on one H100 (README.md, "The offline demo set"
and "How long it takes"). --smoke takes under a minute. An interrupted run resumes: rerun the same command.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import numpy as np  # noqa: E402

import common  # noqa: E402
import cross_encoder  # noqa: E402
import grid  # noqa: E402
import store  # noqa: E402
import paper_setup  # noqa: E402

MEMBERS = ["bce", "hinge", "infonce"]  # the objectives that need no teacher
SEED = 12                               # the first seed of the paper's (and the demo's) runs
NEGATIVES_PER_POSITIVE = 20             # pairs per positive in the Hofstätter-format file
LIST_DEPTH = 50                         # Rank-DistiLLM's teacher lists: top 50, score = 101 - rank
CANDIDATE_DEPTH = 50                    # the teacher scores each query's BM25 top-50 plus its positives
CHUNK_QUERIES = 50                      # scores are saved every 50 queries, so a killed run loses little
SAMPLE_SEED = 0                         # seed of the negative sampling (per query: [SAMPLE_SEED, crc32(qid)])
SMOKE_QUERIES = 8                       # training queries used by --smoke


@dataclasses.dataclass
class Args:
    results: str = "results"
    """results folder shared by all scripts (the members are cells there)"""
    gpu: int = -1
    """CUDA device index; -1 runs on the CPU"""
    precision: str = "auto"
    """bf16, fp32, or auto (bf16 where the hardware supports it); part of the members' cell keys"""
    out_dir: str | None = None
    """folder of the teacher files (default: data/teachers; with --smoke: <results>/smoke-teachers)"""
    smoke: bool = False
    """tiny random-initialised members for a few steps, a handful of queries (tests)"""
    steps: int | None = None
    """training steps of each member (default: the recipe's, 800 for the demo); changes the cells"""
    learning_rate: float | None = None
    """peak learning rate (default: the backbone's, from paper_setup.PAPER_BACKBONES / DEMO_BACKBONES)"""
    num_workers: int = 0
    """DataLoader workers that tokenize training and re-ranking batches (several on a GPU machine; 0 on a CPU)"""
    checkpoint_every: int = 200
    """steps between checkpoints; a rerun of the same command resumes from the last one"""
    batch_size: int = 64
    """pairs per scoring batch"""


def main() -> None:
    args = grid.parse_args(Args)
    started = time.time()

    # 1. Mode, device, members -----------------------------------------------------------------
    mode = "smoke" if args.smoke else "demo"
    device = cross_encoder.choose_device(args.gpu)
    common.choose_ir_datasets_home(demo=True)
    cross_encoder.setup_speed(device, threads=1 if args.smoke else None)
    # As exp_rq1_objectives.py: smoke runs in fp32 unless told otherwise, so both scripts share the smoke cells.
    precision = cross_encoder.resolve_precision("fp32" if args.smoke and args.precision == "auto" else args.precision, device)
    backbone = "tiny-bert" if args.smoke else "minilm-l6"
    results = store.open_results(Path(args.results))
    out_dir = Path(args.out_dir) if args.out_dir else \
        results / "smoke-teachers" if args.smoke else common.REPO / "data" / "teachers"
    setup = paper_setup.DEMO_TRAINING
    members = [grid.make_config(mode, backbone, objective, SEED, precision, steps=args.steps,
                                learning_rate=args.learning_rate)
               for objective in MEMBERS]
    print(f"teachers ({mode}): ensemble of {backbone} x {MEMBERS}, seed {SEED}, {precision} on {device} "
          f"-> {out_dir}")

    # 2. Training queries, positives and candidates (BM25 and dense top-50 + positives) -----------
    dataset = common.load_dataset(setup.queries)
    queries, qrels = common.load_queries(dataset), common.load_qrels(dataset)
    documents = common.DocumentLookup(dataset)
    positives = {qid: sorted(d for d, rel in docs.items() if rel > 0) for qid, docs in qrels.items()}
    bm25 = common.read_run(common.resolve_file(setup.pair_negatives), CANDIDATE_DEPTH)
    dense = common.read_run(common.resolve_file(setup.candidates), CANDIDATE_DEPTH)
    qids = sorted(qid for qid in bm25 if qid in queries and qid in dense)
    if args.smoke:
        qids = [qid for qid in qids if positives.get(qid)][:SMOKE_QUERIES]
    if not qids:
        raise common.KitError(f"{setup.pair_negatives} shares no query id with {setup.queries}")
    candidates = {qid: sorted({d for d, _ in bm25[qid]} | {d for d, _ in dense[qid]} | set(positives.get(qid, [])))
                  for qid in qids}
    n_pairs = sum(map(len, candidates.values()))
    print(f"{len(qids)} training queries ({sum(bool(positives.get(q)) for q in qids)} with a positive), "
          f"{n_pairs} (query, passage) pairs to score per member")
    # Key of this candidate set: a member's cached scores are reused only for the very same pairs.
    pairs_key = hashlib.sha1(json.dumps([setup.queries, CANDIDATE_DEPTH, candidates],
                                        sort_keys=True).encode()).hexdigest()[:10]

    # 3. Train (or reuse) each member, then score every candidate with it ----------------------
    member_runs = []
    grid.train_cells(members, results, device, num_workers=args.num_workers, checkpoint_every=args.checkpoint_every)
    for cfg in members:
        model_dir = grid.train_cell(cfg, results, device, num_workers=args.num_workers,
                                    checkpoint_every=args.checkpoint_every)
        cache = store.cell_dir(results, cfg) / "scores" / f"scifact-train__{pairs_key}.run.gz"
        if not cache.exists():
            t0 = time.time()
            model, pair_tokenizer = cross_encoder.load_trained(model_dir, cfg.max_length, cfg.query_max_length, device)
            # Score CHUNK_QUERIES queries at a time into parts/, so that a rerun after a kill resumes.
            parts, run = cache.parent / f"{cache.name}.parts", {}
            for start in range(0, len(qids), CHUNK_QUERIES):
                part = parts / f"{start:06d}.run.gz"
                chunk = qids[start:start + CHUNK_QUERIES]
                if not part.exists():
                    scored = cross_encoder.rerank(model, pair_tokenizer, queries, {q: candidates[q] for q in chunk},
                                                  documents, batch_size=args.batch_size, device=device,
                                                  precision=cfg.precision, progress=True, workers=args.num_workers)
                    common.write_run(part, scored, f"{cfg.backbone}-{cfg.objective}-s{cfg.seed}")
                    print(f"{cfg.objective}: queries {start + len(chunk)}/{len(qids)} scored "
                          f"({time.time() - t0:.0f} s)", flush=True)
                run.update({q: dict(docs) for q, docs in common.read_run(part).items()})
            common.write_run(cache, run, f"{cfg.backbone}-{cfg.objective}-s{cfg.seed}")
            shutil.rmtree(parts)
            print(f"{cfg.objective}: scored {n_pairs} pairs in {time.time() - t0:.0f} s")
            del model
        # Always read the scores back from the file (written in full): a rerun computes the same mean.
        run = {qid: dict(docs) for qid, docs in common.read_run(cache).items()}
        values = np.array([s for docs in run.values() for s in docs.values()])
        print(f"{cfg.objective}: scores mean {values.mean():.4g}, std {values.std():.4g} ({cache})")
        member_runs.append(run)

    # 4. The ensemble: mean of the members' logits ---------------------------------------------
    # Scores are written in full, so the three files agree on every score and every tie.
    ensemble = {qid: {d: float(np.mean([run[qid][d] for run in member_runs])) for d in candidates[qid]}
                for qid in qids}

    # 5. Hofstätter-format pairs: each positive with up to 20 sampled BM25 negatives ------------
    pair_rows = []
    for qid in qids:
        judged = qrels.get(qid, {})
        negatives = [d for d, _ in bm25[qid] if judged.get(d, 0) <= 0]  # BM25 order
        if not positives.get(qid) or not negatives:
            continue
        rng = np.random.default_rng([SAMPLE_SEED, zlib.crc32(qid.encode())])  # per query: stable under subsets
        for pos in positives[qid]:
            chosen = sorted(rng.choice(len(negatives), min(NEGATIVES_PER_POSITIVE, len(negatives)), replace=False))
            pair_rows += [(ensemble[qid][pos], ensemble[qid][negatives[i]], qid, pos, negatives[i]) for i in chosen]

    # 6. Rank-DistiLLM-format lists: the ensemble's ordering of a first stage's top 50 and the positives,
    #    top 50, score = 101 - rank (the dense first stage, as the paper's; BM25 for the earlier demo)
    def list_lines(first_stage):
        lines = []
        for qid in qids:
            pool = {d for d, _ in first_stage[qid]} | set(positives.get(qid, []))
            ranked = common.trec_order((d, ensemble[qid][d]) for d in pool)[:LIST_DEPTH]
            lines += [f"{qid} Q0 {docid} {rank} {101 - rank} rank\n" for rank, (docid, _) in enumerate(ranked, 1)]
        return lines

    # 7. Write the files atomically ---------------------------------------------------------------
    lists = {"dense lists": list_lines(dense), "bm25 lists": list_lines(bm25)}
    paths = {"pairs": out_dir / Path(setup.teacher_pairs).name,
             "dense lists": out_dir / Path(setup.teacher_lists).name,
             "bm25 lists": out_dir / Path(paper_setup.DEMO_BM25_TRAINING.teacher_lists).name,
             "scores": out_dir / "scifact-train.ensemble-scores.run.gz"}
    common.write_teacher_pairs(paths["pairs"], pair_rows)  # shuffled, scores in full
    for name in lists:
        common.atomic_write_text(paths[name], "".join(lists[name]))
    common.write_run(paths["scores"], ensemble, "ensemble")
    counts = {"pairs": len(pair_rows), **{name: len(lines) for name, lines in lists.items()}, "scores": n_pairs}
    for name, path in paths.items():
        print(f"{path}: {counts[name]} lines")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    grid.main_guard(main)
