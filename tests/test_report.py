"""Unit tests for the reporting helpers: evaluation, t-test, Holm, tables, atomic writes."""
import csv
import dataclasses
import json
import math

import ir_measures
import numpy as np
import os

import pytest
import scipy.stats

import common
import tables
from common import atomic_write_text, evaluate
from significance import Comparison, compare_to_baseline, holm, paired_ttest
from tables import results_table, write_table

# ----------------------------------------------------------------------------- evaluate
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1},
    "q2": {"d5": 1, "d6": 2},
    "q3": {"d7": 1},             # judged, absent from the run
    "q4": {"d8": 2},             # judged, empty ranking
}
RUN = {
    "q1": {"d3": 3.0, "d1": 2.0, "d4": 1.0},  # grades by rank: 0, 2, 1 (d2 not retrieved)
    "q2": {"d9": 0.9, "d5": 0.8, "d6": 0.1},  # grades by rank: 0 (unjudged), 1, 2
    "q4": {},
    "qX": {"d1": 1.0},                        # not judged: must be ignored
}


def test_evaluate_matches_hand_computed_values():
    measures = ["nDCG@10", "RR@10", "RR(rel=2)@10"]
    agg, pq = evaluate(RUN, QRELS, measures)
    assert list(agg) == measures and list(pq) == measures   # keys as given, in order
    # nDCG with linear gains, discount 1/log2(rank + 1) (trec_eval ndcg_cut).
    dcg1 = 0 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    idcg1 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    dcg2 = 0 / math.log2(2) + 1 / math.log2(3) + 2 / math.log2(4)
    idcg2 = 2 / math.log2(2) + 1 / math.log2(3)
    ndcg = {"q1": dcg1 / idcg1, "q2": dcg2 / idcg2, "q3": 0.0, "q4": 0.0}
    rr = {"q1": 1 / 2, "q2": 1 / 2, "q3": 0.0, "q4": 0.0}
    rr2 = {"q1": 1 / 2, "q2": 1 / 3, "q3": 0.0, "q4": 0.0}  # rel=2: the grade-1 d5 is skipped
    for name, expected in [("nDCG@10", ndcg), ("RR@10", rr), ("RR(rel=2)@10", rr2)]:
        assert pq[name] == pytest.approx(expected), name          # same keys: all qrels queries
        assert agg[name] == pytest.approx(sum(expected.values()) / 4), name  # /4, as trec_eval -c


def test_evaluate_aliases_numpy_scalars_and_ignored_queries():
    names = ["RR@10", "nDCG@10", "RR(cutoff=10)"]
    agg, pq = evaluate(RUN, QRELS, names)
    assert list(agg) == names and list(pq) == names
    assert pq["RR@10"] == pq["RR(cutoff=10)"] and agg["RR@10"] == agg["RR(cutoff=10)"]
    assert "qX" not in pq["RR@10"]
    numpy_qrels = {q: {d: np.int64(r) for d, r in docs.items()} for q, docs in QRELS.items()}
    numpy_run = {q: {d: np.float32(s) for d, s in r.items()} for q, r in RUN.items()}
    assert evaluate(numpy_run, numpy_qrels, names) == (agg, pq)
    with pytest.raises(ValueError):
        evaluate(RUN, {}, ["RR@10"])


def test_queries_without_relevant_docs_count_zero_like_ir_measures():
    qrels = {**QRELS, "q5": {"d1": 0, "d2": 0}, "q6": {"d3": 1}}  # q5: nothing relevant
    run = {**RUN, "q3": {"d7": 1.0}, "q4": {"d8": 1.0}, "q5": {"d1": 2.0, "d2": 1.0},
           "q6": {"d3": 1.0}}                  # q6 has grade 1 only: RR(rel=2) finds nothing
    measures = ["nDCG@10", "RR(rel=2)@10", "R@100", "AP"]
    agg, pq = evaluate(run, qrels, measures)
    reference = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in measures],
                                           qrels, run)
    for m in measures:
        assert pq[m]["q5"] == 0.0 and len(pq[m]) == len(qrels)
        assert agg[m] == pytest.approx(reference[ir_measures.parse_measure(m)]), m
    assert pq["RR(rel=2)@10"]["q6"] == 0.0 and pq["nDCG@10"]["q6"] == 1.0


def test_every_measure_breaks_ties_as_trec_eval_does():
    # trec_eval orders equal scores by docid descending: z before a. pytrec_eval (nDCG, R) does so, and
    # ir_measures' own RR provider (docid ascending) must not put a first.
    run, qrels = {"q": {"a": 1.0, "z": 1.0}}, {"q": {"a": 1}}
    agg, _ = evaluate(run, qrels, ["nDCG@10", "RR@10", "R@1", "P@1"])
    assert agg["nDCG@10"] == pytest.approx(1 / math.log2(3))  # a at rank 2
    assert agg["RR@10"] == pytest.approx(0.5)
    assert agg["R@1"] == 0.0 and agg["P@1"] == 0.0
    # a distinct score decides as usual
    agg, _ = evaluate({"q": {"a": 1.0000001, "z": 1.0}}, qrels, ["nDCG@10", "RR@10", "R@1"])
    assert agg == {"nDCG@10": 1.0, "RR@10": 1.0, "R@1": 1.0}


def test_a_written_run_evaluates_to_the_metrics_of_its_scores(tmp_path):
    # Scores 1e-7 apart: 6 decimals would tie them and let the docid decide.
    rng = np.random.default_rng(0)
    run = {f"q{i}": {f"d{j}": float(np.float32(0.5 + 1e-7 * rng.integers(0, 50))) for j in range(30)}
           for i in range(20)}
    qrels = {q: {f"d{j}": int(rng.integers(0, 3)) for j in range(30)} for q in run}
    measures = ["nDCG@10", "RR@10", "R@5"]
    common.write_run(tmp_path / "run.trec.gz", run, "t")
    back = {q: dict(docs) for q, docs in common.read_run(tmp_path / "run.trec.gz").items()}
    assert back == run  # every score reads back exactly
    assert evaluate(back, qrels, measures) == evaluate(run, qrels, measures)


# ----------------------------------------------------------------------------- t-test
def _random_pair(n=30, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(size=n), rng.uniform(size=n)
    qids = [f"q{i}" for i in range(n)]
    # B built in reversed key order: the test must align by id, not by position.
    return dict(zip(qids, a)), dict(reversed(list(zip(qids, b)))), a, b


def test_paired_ttest_matches_scipy_and_hand_formula():
    pa, pb, a, b = _random_pair()
    res = paired_ttest(pa, pb)
    ref = scipy.stats.ttest_rel(a, b)
    assert res.statistic == pytest.approx(ref.statistic) and res.pvalue == pytest.approx(ref.pvalue)
    d = a - b
    n = len(d)
    sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / (n - 1))
    t = d.mean() / (sd / math.sqrt(n))
    assert res.statistic == pytest.approx(t)
    assert res.pvalue == pytest.approx(2 * scipy.stats.t.sf(abs(t), df=n - 1))
    assert res.mean_diff == pytest.approx(d.mean()) and res.n == n


def test_paired_ttest_averages_seeds_per_query():
    pa, pb, _, _ = _random_pair(seed=1)
    pa2, pb2, _, _ = _random_pair(seed=2)
    avg_a = {q: (pa[q] + pa2[q]) / 2 for q in pa}
    avg_b = {q: (pb[q] + pb2[q]) / 2 for q in pb}
    assert paired_ttest([pa, pa2], [pb, pb2]) == pytest.approx(paired_ttest(avg_a, avg_b))
    assert paired_ttest([pa], pb) == pytest.approx(paired_ttest(pa, pb))


def test_paired_ttest_rejects_mismatched_queries():
    pa, pb, _, _ = _random_pair()
    del pb["q7"]
    with pytest.raises(ValueError, match=r"1 query ids .*'q7'"):
        paired_ttest(pa, pb)
    with pytest.raises(ValueError, match="seed 1"):
        paired_ttest([pa, {"q0": 1.0}], pa)


def test_paired_ttest_identical_inputs_give_p_one():
    pa, _, _, _ = _random_pair()
    assert tuple(paired_ttest(pa, [dict(pa), dict(pa)])) == (0.0, 1.0, 0.0, len(pa))


# ----------------------------------------------------------------------------- Holm
def test_holm_hand_worked_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == [] and holm([0.2]) == [0.2]


def test_holm_is_monotone_capped_and_not_below_raw():
    p = np.random.default_rng(3).uniform(0, 0.3, size=12).tolist()
    adj = holm(p)
    assert all(1.0 >= q >= r for q, r in zip(adj, p))
    order = np.argsort(p)
    assert all(np.diff(np.asarray(adj)[order]) >= 0)


def test_compare_to_baseline_applies_holm_per_column():
    pa, pb, _, _ = _random_pair(seed=4)
    pc, _, _, _ = _random_pair(seed=5)
    per_query = {"base": {"dl19": [pa], "dl20": [pa]}, "x": {"dl19": [pb], "dl20": [pb]},
                 "y": {"dl19": [pc]}}
    comps = compare_to_baseline(per_query, "base")
    assert set(comps) == {"x", "y"} and set(comps["y"]) == {"dl19"}
    raw = [paired_ttest(pb, pa).pvalue, paired_ttest(pc, pa).pvalue]
    adjusted = [comps["x"]["dl19"].pvalue_holm, comps["y"]["dl19"].pvalue_holm]
    assert adjusted == pytest.approx(holm(raw))
    assert comps["x"]["dl20"].pvalue_holm == pytest.approx(raw[0])   # family of one
    assert comps["x"]["dl19"].mean_diff == pytest.approx(np.mean([pb[q] - pa[q] for q in pa]))


# ----------------------------------------------------------------------------- tables
VALUES = {
    "pointwise": {"TREC-DL'19": [0.60, 0.62], "dev_small": [0.30, 0.32]},
    "list_wise": {"TREC-DL'19": [0.70, 0.66], "dev_small": [0.31, 0.33]},
    "rank%net": {"TREC-DL'19": [0.64, 0.66]},
}
COMPS = {
    "list_wise": {"TREC-DL'19": Comparison(0.001, 0.002, 0.07, True),
                  "dev_small": Comparison(0.2, 0.2, 0.01, False)},
    "rank%net": {"TREC-DL'19": Comparison(0.03, 0.06, 0.04, False)},
}
EXPECTED_LATEX = r"""\begin{table}[t]
\centering
\caption{Main results: re-ranking\_BM25. nDCG@10, mean{\scriptsize$\pm$}std over 2 seeds. Best value per column in bold. $^\dagger$: significant difference from the baseline pointwise by a two-sided paired t-test over queries (per-query values averaged over seeds; with 2 or more seeds its standard error adds the variance of each system's per-seed means) at $\alpha=0.05$ after Holm--Bonferroni correction within each column (family of 1--2 systems compared with the baseline).}
\label{tab:main-results-re-ranking-bm25-ndcg-10}
\begin{tabular}{lrr}
\toprule
System & TREC-DL'19 & dev\_small \\
\midrule
pointwise & 0.6100{\scriptsize$\pm$0.0141}\hphantom{$^\dagger$} & 0.3100{\scriptsize$\pm$0.0141} \\
list\_wise & \textbf{0.6800}{\scriptsize$\pm$0.0283}$^\dagger$ & \textbf{0.3200}{\scriptsize$\pm$0.0141} \\
rank\%net & 0.6500{\scriptsize$\pm$0.0141}\hphantom{$^\dagger$} & -- \\
\bottomrule
\end{tabular}
\end{table}
"""


def _table(**kw):
    return results_table(VALUES, COMPS, baseline="pointwise", measure="nDCG@10",
                         title="Main results: re-ranking_BM25", **kw)


def test_results_table_latex_golden():
    assert _table().latex == EXPECTED_LATEX


def test_results_table_console_marks_best_and_significance():
    lines = {line.split("|")[1].strip(): line for line in _table().console.splitlines()
             if line.startswith("| ") and "system" not in line}
    assert "0.6800 ± 0.0283†*" in lines["list_wise"]
    assert "0.3200 ± 0.0141*" in lines["list_wise"]
    assert "†" not in lines["pointwise"] and "*" not in lines["pointwise"]
    assert "0.6500 ± 0.0141 " in lines["rank%net"] and "–" in lines["rank%net"]
    # The table's alpha decides the dagger; lower-is-better moves the best marks.
    relaxed = _table(alpha=0.1, higher_is_better=False).console
    assert "0.6500 ± 0.0141†" in relaxed and "0.6100 ± 0.0141*" in relaxed
    single = results_table({"a": {"c": [0.5]}}, {}, baseline="a", measure="AP", title="t")
    assert "0.5000*" in single.console and "±" not in single.console
    assert "dagger" not in single.latex   # no comparisons: no dagger sentence in the caption


def test_results_table_records():
    recs = {(r["system"], r["column"]): r for r in _table().records}
    assert len(recs) == 5 and ("rank%net", "dev_small") not in recs   # missing cell: no record
    base = recs["pointwise", "TREC-DL'19"]
    assert base["mean"] == pytest.approx(0.61) and base["std"] == pytest.approx(0.02 / math.sqrt(2))
    assert base["n_seeds"] == 2 and base["pvalue"] is None and base["significant"] is None
    assert recs["list_wise", "TREC-DL'19"]["significant"] is True
    assert recs["rank%net", "TREC-DL'19"]["pvalue_holm"] == 0.06
    assert recs["rank%net", "TREC-DL'19"]["significant"] is False


def test_write_table_writes_four_files_atomically(tmp_path):
    table = _table()
    out = tmp_path / "tables"
    write_table(table, out, "rq1")
    assert sorted(p.name for p in out.iterdir()) == ["rq1.csv", "rq1.json", "rq1.tex", "rq1.txt"]
    assert (out / "rq1.tex").read_text(encoding="utf-8") == EXPECTED_LATEX
    assert (out / "rq1.txt").read_text(encoding="utf-8") == table.console + "\n"
    assert json.loads((out / "rq1.json").read_text(encoding="utf-8")) == table.records
    with open(out / "rq1.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[0]["system"] == "pointwise" and rows[0]["pvalue"] == ""


@dataclasses.dataclass
class _GridArgs:
    seeds: list[int] = dataclasses.field(default_factory=lambda: [12, 13, 14])
    collections: list[str] = dataclasses.field(default_factory=list)
    steps: int | None = None
    precision: str = "auto"
    gpu: int | None = None
    num_workers: int = 0
    eval_token_budget: int = 0
    unpadded: bool = False


def given(**flags):
    """_GridArgs as parse_args makes them from a command line naming `flags`."""
    args = _GridArgs(**flags)
    args.given = frozenset(flags)
    return args


def test_tables_folder_tags_options_that_change_the_grid(tmp_path):
    full = tables.tables_folder(tmp_path, "rq2_demo", given(gpu=0, num_workers=4, eval_token_budget=8192), "demo")
    assert full == tmp_path / "tables" / "rq2_demo"   # how to run is not part of the name
    # ... but how the arithmetic runs is: unpadded scores differ from padded ones by rounding.
    assert tables.tables_folder(tmp_path, "rq2_demo", given(unpadded=True), "demo").name == "rq2_demo__unpadded-True"
    assert json.loads((full / "options.json").read_text())["changed_options"] == {}
    partial = tables.tables_folder(tmp_path, "rq2_demo", given(seeds=[12, 13], collections=["scifact"]), "demo")
    assert partial.name == "rq2_demo__seeds-12-13_collections-scifact"
    assert json.loads((partial / "options.json").read_text())["changed_options"] == {
        "seeds": [12, 13], "collections": ["scifact"]}
    # Seeds are compared with the mode's own: the demo runs seed 12, the paper 12, 13 and 14.
    assert tables.tables_folder(tmp_path, "rq2_demo", given(seeds=[12]), "demo").name == "rq2_demo"
    assert tables.tables_folder(tmp_path, "rq2_demo", given(seeds=[12, 13, 14]), "demo").name == \
        "rq2_demo__seeds-12-13-14"
    assert tables.tables_folder(tmp_path, "rq2_paper", given(seeds=[12, 13, 14]), "paper").name == "rq2_paper"
    # A name that already says the precision does not repeat it.
    assert tables.tables_folder(tmp_path, "rq4_demo_fp32", given(precision="fp32"), "demo",
                                already_in_name=["precision"]).name == "rq4_demo_fp32"
    many = given(collections=["scifact", "nfcorpus", "vaswani", "cranfield", "trec-dl-2019"], steps=1600)
    long = tables.tables_folder(tmp_path, "rq2_demo", many, "demo")
    assert long.name.startswith("rq2_demo__opts-") and len(long.name) == len("rq2_demo__opts-") + 8
    assert tables.tables_folder(tmp_path, "rq2_demo", many, "demo") == long   # stable: a rerun finds its tables
    assert tables.tables_folder(tmp_path, "rq2_demo", given(collections=["scifact", "nfcorpus", "vaswani",
                                "cranfield", "trec-dl-2020"], steps=1600), "demo") != long


def test_atomic_write_cleans_up_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def disk_full(fd):  # fails after the temp file exists and holds data
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
