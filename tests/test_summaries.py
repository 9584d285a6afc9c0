"""The tables and summaries on hand-made per-query values, against values computed by hand: grid tables and
group means, RQ3's equivalence verdicts, RQ4's win/tie/loss counts, RQ5's variance decomposition."""
import math

import numpy as np
import pytest
import scipy.stats

import claims
import common
import significance
import exp_rq3_small_vs_large as rq3
import exp_rq4_llm_distillation as rq4
import tables
from paper_setup import Collection

IN = Collection("a", "x/a", "in-domain", ("nDCG@10", "RR@10"))
DL = Collection("dl", "x/dl", "in-domain", ("nDCG@10", "RR(rel=2)@10"))
OUT = Collection("b", "x/b", "out-of-domain", ("nDCG@10", "RR@10"))
QIDS = [f"q{i}" for i in range(8)]
BASE = [0.2, 0.4, 0.6, 0.8, 0.3, 0.5, 0.7, 0.9]


def per_query(values, measure="nDCG@10"):
    return {measure: dict(zip(QIDS, values))}


def shifted(shift, noise=(0.0,) * 8):
    return [v + shift + n for v, n in zip(BASE, noise)]


def test_grid_table_values_averages_tests_and_the_untested_first_stage():
    noise = (0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0)
    runs = {"bce": {"a": [BASE], "b": [BASE]},
            "infonce": {"a": [shifted(0.1, noise)], "b": [shifted(0.0, noise)]}}
    metrics = {"BM25": {"a": [{"nDCG@10": 0.5}], "b": [{"nDCG@10": 0.25}]},
               **{s: {c: [{"nDCG@10": sum(v) / 8}] for c, (v,) in cols.items()} for s, cols in runs.items()}}
    pq = {s: {c: [per_query(v)] for c, (v,) in cols.items()} for s, cols in runs.items()}
    table = tables.grid_table(metrics, pq, [IN, OUT], "nDCG@10", "bce", "T")
    cells = {(r["system"], r["column"]): r for r in table.records}
    assert cells["infonce", "a"]["mean"] == pytest.approx(0.55 + 0.1)
    assert cells["infonce", "avg out-of-domain"]["mean"] == pytest.approx(0.55)  # group of one collection
    # the shift of 0.1 with small noise is significant; the zero-mean noise is not
    diff = [0.1 + n for n in noise]
    p = scipy.stats.ttest_1samp(diff, 0).pvalue
    assert cells["infonce", "a"]["pvalue"] == pytest.approx(p) and cells["infonce", "a"]["significant"]
    assert not cells["infonce", "b"]["significant"]
    assert cells["BM25", "a"]["pvalue"] is None and cells["bce", "a"]["pvalue"] is None
    assert "not tested (reference): BM25" in table.console and "Shown for reference, not tested: BM25" in table.latex
    assert "family of 1 system compared" in table.latex


def test_rr_tables_keep_trec_dl_with_its_own_rr():
    metrics = {"bce": {"a": [{"RR@10": 0.5}], "dl": [{"RR(rel=2)@10": 0.75}]}}
    table = tables.grid_table(metrics, {}, [IN, DL], "RR@10", "bce", "T")
    means = {r["column"]: r["mean"] for r in table.records}
    assert means == {"a": 0.5, "dl": 0.75, "avg in-domain": 0.625}
    assert "RR@10 (RR(rel=2)@10 on dl)" in table.console


def test_group_means_average_collections_per_seed():
    by_collection = {"a": [{"m": 0.2}, {"m": 0.4}], "dl": [{"m": 0.6}, {"m": 0.8}], "b": [{"m": 0.1}, {"m": 0.3}]}
    assert tables.group_means(by_collection, [IN, DL, OUT], "m") == {
        "in-domain": pytest.approx([0.4, 0.6]), "out-of-domain": pytest.approx([0.1, 0.3])}
    assert tables.group_means({"a": [{"m": 0.2}]}, [IN, DL], "m") == {}  # dl not evaluated: no group mean


def test_rq3_verdicts_equivalence_difference_and_the_equal_weight_of_collections():
    tiny = (0.001, -0.001, 0.002, -0.002, 0.0, 0.001, -0.001, 0.0)
    wide = (0.3, -0.3, 0.25, -0.2, 0.1, -0.15, 0.2, -0.2)
    runs = {"large|bce": {"a": BASE, "b": BASE},
            "small|close": {"a": shifted(0.002, tiny), "b": shifted(-0.002, tiny)},  # within +-0.01: matches
            "small|far": {"a": shifted(-0.1, tiny), "b": shifted(-0.1, tiny)},  # clearly worse
            "small|noisy": {"a": shifted(0.0, wide), "b": shifted(0.0, wide)}}  # cannot tell
    pq = {s: {c: [per_query(v)] for c, v in cols.items()} for s, cols in runs.items()}
    pairs = [(s, "large|bce") for s in runs if s != "large|bce"]
    one_seed = rq3.compare_pairs(pq, pairs, {"a": ["a"], "both": ["a", "b"]}, "nDCG@10", 0.05, 0.01)
    assert {r["verdict"] for r in one_seed.values()} == {"inconclusive (one seed)"}  # seed noise unknown
    # A stated seed sd of 0: the query-level tests alone, as when the seeds are known not to move the runs.
    found = rq3.compare_pairs(pq, pairs, {"a": ["a"], "both": ["a", "b"]}, "nDCG@10", 0.05, 0.01, seed_sd=0.0)
    verdicts = {(p[0], c): r["verdict"] for (p, c), r in found.items()}
    assert verdicts == {("small|close", "a"): "matches", ("small|close", "both"): "matches",
                        ("small|far", "a"): "worse", ("small|far", "both"): "worse",
                        ("small|noisy", "a"): "inconclusive", ("small|noisy", "both"): "inconclusive"}
    # the group's difference: the mean of the collections' mean differences, its standard error from theirs
    d_a, d_b = [0.002 + t for t in tiny], [-0.002 + t for t in tiny]
    close = found[("small|close", "large|bce"), "both"]
    var = (scipy.stats.tvar(d_a) / 8 + scipy.stats.tvar(d_b) / 8) / 4
    assert close["delta"] == pytest.approx((sum(d_a) / 8 + sum(d_b) / 8) / 2, abs=1e-12)
    half = scipy.stats.t.ppf(0.975, 14) * math.sqrt(var)  # equal variances: Welch-Satterthwaite df = 7 + 7
    assert (close["ci95_low"], close["ci95_high"]) == pytest.approx((close["delta"] - half, close["delta"] + half))
    # one collection: the paired t-test
    far = found[("small|far", "large|bce"), "a"]
    assert far["pvalue"] == pytest.approx(scipy.stats.ttest_rel(shifted(-0.1, tiny), BASE).pvalue)


def test_rq4_win_tie_loss_counts():
    noise = (0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0)
    runs = {"bb/distill_ranknet": BASE, "bb/bce": shifted(-0.1, noise), "bb/infonce": shifted(0.1, noise),
            "bb/hinge": shifted(0.0, (0.3, -0.3, 0.25, -0.2, 0.1, -0.15, 0.2, -0.2))}
    pq = {s: {"a": [per_query(v)]} for s, v in runs.items()}
    tests = rq4.llm_tests(pq, ["bb"], [IN], ["distill_ranknet"], ["bce", "infonce", "hinge"], "nDCG@10", 0.05)
    assert {t["other"]: t["outcome"] for t in tests} == {"bce": "win", "infonce": "loss", "hinge": "tie"}
    p = [scipy.stats.ttest_rel(BASE, runs[f"bb/{o}"]).pvalue for o in ("bce", "infonce", "hinge")]
    assert [t["pvalue_holm"] for t in tests] == pytest.approx(significance.holm(p))
    totals = {r["other"]: (r["win"], r["tie"], r["loss"], r["cells"]) for r in
              rq4.outcome_table(tests, None, [], "T", "n").records}
    assert totals == {"bce": (1, 0, 0, 1), "infonce": (0, 0, 1, 1), "hinge": (0, 1, 0, 1)}
    counts = rq4.outcome_table(tests, "backbone", ["bb"], "T", "n")
    assert "| distill_ranknet vs bce     | 1/0/0" in counts.console
    assert "| distill_ranknet vs infonce | 0/0/1" in counts.console
    assert "| distill_ranknet vs hinge   | 0/1/0" in counts.console


def test_rq5_variance_components_of_an_additive_grid():
    # m[b, o] = backbone effect + objective effect, no interaction: the residual is 0, the objective's
    # component is the variance of its effects (-0.1, 0, 0.1) = 0.01, the backbone's of (+0.1, -0.1) = 0.02.
    grid = {("big", "o1"): 0.5, ("big", "o2"): 0.6, ("big", "o3"): 0.7,
            ("small", "o1"): 0.3, ("small", "o2"): 0.4, ("small", "o3"): 0.5}
    mean = {(b, o, c): v + shift for (b, o), v in grid.items() for c, shift in (("c1", 0.0), ("c2", 0.05))}
    shares = claims.factor_shares(mean, ["big", "small"], ["o1", "o2", "o3"], ["c1", "c2"])
    assert shares["collections"] == 2
    assert shares["objective"]["component"] == pytest.approx(0.01)
    assert shares["backbone"]["component"] == pytest.approx(0.02)
    assert shares["residual"]["component"] == pytest.approx(0.0, abs=1e-15)
    assert shares["objective"]["share"] == pytest.approx(1 / 3) and shares["backbone"]["share"] == pytest.approx(2 / 3)
    assert shares["objective"]["gap"] == pytest.approx((0.1 + 0.2 + 0.1) / 3)  # pairs of objectives of a backbone
    assert shares["backbone"]["gap"] == pytest.approx(0.2)


def test_rq5_components_do_not_grow_with_the_number_of_objectives():
    # Objective effects drawn from one distribution (sd 0.05), 3 backbones, a little noise: the objective's
    # component estimates 0.05^2 whether 3 or 12 objectives are compared, while max - min over objectives
    # (what RQ5 reported before) grows with their number.
    rng = np.random.default_rng(0)

    def simulate(n_objectives):
        components, ranges = [], []
        for _ in range(200):
            effects, levels = rng.normal(0, 0.05, n_objectives), rng.normal(0.5, 0.1, 3)
            mean = {(f"b{i}", f"o{j}", "c"): levels[i] + effects[j] + rng.normal(0, 0.01)
                    for i in range(3) for j in range(n_objectives)}
            shares = claims.factor_shares(mean, ["b0", "b1", "b2"], [f"o{j}" for j in range(n_objectives)], ["c"])
            components.append(shares["objective"]["component"])
            ranges.append(np.mean([np.ptp([mean[f"b{i}", f"o{j}", "c"] for j in range(n_objectives)])
                                   for i in range(3)]))
        return np.mean(components), np.mean(ranges)

    (few, few_range), (many, many_range) = simulate(3), simulate(12)
    assert few == pytest.approx(0.0025, rel=0.25) and many == pytest.approx(0.0025, rel=0.25)
    assert many_range > 1.5 * few_range


# ------------------------------------------------------------------------------------------------ claims
def test_the_published_table_and_its_verdicts():
    table = claims.published()
    assert len(table) == 54 and table["bert-base", "infonce"]["DL19"] == 0.759233
    columns = claims.published_in_kit_columns(table)["ettin-17m", "bce"]
    assert columns["dl19"] == 0.467467 and columns["avg BEIR"] == 0.319303
    assert columns["avg in-domain"] == pytest.approx((0.264800 + 0.467467 + 0.463867) / 3)
    assert columns["avg out-of-domain"] == pytest.approx((13 * 0.319303 + 5 * 0.322553 + 0.224533) / 19)
    verdicts = {v.claim: v for v in claims.published_verdicts(table)}
    # by the backbone as the unit: infonce - bce in domain, over the 9 backbones
    assert "infonce beats bce: shown in all 2 settings, each over its backbones (Δ +0.0722 to +0.0850" in \
        verdicts["M1"].finding
    assert verdicts["M1"].verdict == "supported" and verdicts["X1"].verdict == "inconclusive"


def test_results_tables_show_the_papers_mean_beside_the_kits():
    metrics = {"BM25": {"a": [{"nDCG@10": 0.9}]}, "bce": {"a": [{"nDCG@10": 0.5}]},
               "infonce": {"a": [{"nDCG@10": 0.6}, {"nDCG@10": 0.7}]}}
    table = tables.grid_table(metrics, {}, [IN], "nDCG@10", "bce", "T", published={"infonce": {"a": 0.6123}})
    lines = table.console.splitlines()
    assert any(line.startswith("| infonce (paper)") and "0.6123" in line for line in lines)
    assert any(line.startswith("| infonce (kit - paper)") and "+0.0377" in line for line in lines)
    assert {r["system"]: r["paper_mean"] for r in table.records} == {"BM25": None, "bce": None, "infonce": 0.6123}
    assert r"\textbf{0.6123}" not in table.latex  # the paper's row is a reference, never the best
