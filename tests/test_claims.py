"""Every claim's rule on constructed results whose verdict is known (one case at least for each verdict of each
claim), the seed-aware test where seed noise swamps a small effect, the edge cases, the reproduction report and
Friedman's test on hand-computed values."""
import math

import numpy as np
import pytest

import claims
import reproduction
import significance


def runs(effect: float, n: int = 200, noise: float = 0.05, seeds: int = 1, shift: float = 0.0, rng=None):
    """(system, baseline) per-query values, one dict per seed: baseline ~ U(0.2, 0.8), system = baseline + effect
    + noise per query; each seed of each side moved as a whole by N(0, shift)."""
    rng = rng or np.random.default_rng(7)
    base = rng.uniform(0.2, 0.8, n)
    system = [{f"q{i}": v for i, v in enumerate(base + effect + rng.normal(0, noise, n) + rng.normal(0, shift))}
              for _ in range(seeds)]
    baseline = [{f"q{i}": v for i, v in enumerate(base + rng.normal(0, shift))} for _ in range(seeds)]
    return system, baseline


def cells(spec: dict, baseline: str = "bce", n: int = 200, noise: float = 0.05) -> dict:
    """{cell: {system: effect vs the baseline}} as claims' cells: one collection and one seed per cell; each
    system = the cell's baseline + effect + its own noise per query."""
    out, rng = {}, np.random.default_rng(11)
    for cell, effects in spec.items():
        base = rng.uniform(0.2, 0.8, n)
        out[cell] = {baseline: [[{f"q{i}": v for i, v in enumerate(base)}]]}
        for system, effect in effects.items():
            out[cell][system] = [[{f"q{i}": v for i, v in enumerate(base + effect + rng.normal(0, noise, n))}]]
    return out


NOISY = 0.4  # per-query noise under which a 0.0 difference is neither significant nor shown equivalent


@pytest.mark.parametrize("spec, options, expected", [
    ({"b / in": {"infonce": 0.05, "margin_mse": 0.05}, "b / out": {"infonce": 0.04, "margin_mse": 0.06}}, {},
     "supported"),
    ({"b / in": {"infonce": 0.05, "margin_mse": 0.05}, "b / out": {"infonce": 0.04, "margin_mse": -0.05}}, {},
     "contradicted"),  # a significant loss
    ({"b / in": {"infonce": 0.05, "margin_mse": 0.0}}, {"noise": 0.02, "n": 400}, "contradicted"),  # equivalent
    ({"b / in": {"infonce": 0.002, "margin_mse": 0.002}}, {"noise": NOISY, "n": 300}, "inconclusive"),  # the review's
    ({"b / in": {"infonce": 0.05}}, {}, "partly"),  # margin_mse not run: the claim names both
], ids=["supported", "contradicted-loss", "contradicted-equivalent", "inconclusive-noise", "partly-margin-absent"])
def test_m1_rule(spec, options, expected):
    verdict = claims.beats("M1", cells(spec, **options), [s for s in claims.STRONG if s in next(iter(spec.values()))],
                           "bce", "test", named=claims.STRONG)
    assert verdict.verdict == expected, verdict.finding


def test_m1_partly_when_one_cell_is_open_and_none_against():
    spec = {"b / in": {"infonce": 0.05, "margin_mse": 0.05}, "b / out": {"infonce": 0.05, "margin_mse": 0.0}}
    found = cells(spec)
    found["b / out"] = cells({"b / out": {"infonce": 0.05, "margin_mse": 0.0}}, noise=NOISY)["b / out"]
    verdict = claims.beats("M1", found, claims.STRONG, "bce", "test", named=claims.STRONG)
    assert verdict.verdict == "partly", verdict.finding


@pytest.mark.parametrize("effect, options, expected", [
    (-0.03, {}, "supported"),            # shown below +margin (non-superiority; a significant loss too)
    (0.05, {}, "contradicted"),          # a significant win
    (0.0, {"noise": NOISY}, "inconclusive"),
], ids=["supported", "contradicted", "inconclusive"])
def test_x2_rule(effect, options, expected):
    verdict = claims.no_better("X2", cells({"s / in": {"kd": effect}}, baseline="cl", **options), ["kd"], "cl", "test")
    assert verdict.verdict == expected, verdict.finding


def test_x2_partly_and_x1_rules():
    found = {**cells({"s / in": {"kd": -0.03}}, baseline="cl"),
             **cells({"s / out": {"kd": 0.0}}, baseline="cl", noise=NOISY)}
    assert claims.no_better("X2", found, ["kd"], "cl", "test").verdict == "partly"
    assert claims.beats("X1", cells({"s / in": {"kd": 0.05}}, baseline="cl"), ["kd"], "cl", "t").verdict == "supported"
    assert claims.beats("X1", cells({"s / in": {"kd": -0.05}}, baseline="cl"), ["kd"], "cl", "t").verdict == \
        "contradicted"


def m3_cells(llm: float, strong: float, **options) -> dict:
    effects = {"distill_ranknet": llm, "adr_mse": llm, "infonce": strong, "margin_mse": strong}
    return cells({"b / in": effects, "b / out": effects}, **options)


@pytest.mark.parametrize("llm, strong, options, expected", [
    (0.03, 0.06, {}, "supported"),         # no worse than bce, below infonce and margin_mse
    (-0.05, 0.05, {}, "contradicted"),     # significantly below bce: not competitive
    (0.10, 0.02, {}, "contradicted"),      # better than both strong objectives everywhere
    (0.0, 0.0, {"noise": NOISY}, "inconclusive"),
], ids=["supported", "contradicted-not-competitive", "contradicted-better-everywhere", "inconclusive"])
def test_m3_rule(llm, strong, options, expected):
    verdict = claims.competitive_not_better(m3_cells(llm, strong, **options), "test")
    assert verdict.verdict == expected, verdict.finding


def test_m3_partly_when_competitive_is_shown_in_one_cell_only():
    found = {"b / in": m3_cells(0.03, 0.06)["b / in"], "b / out": m3_cells(0.0, 0.0, noise=NOISY)["b / out"]}
    assert claims.competitive_not_better(found, "test").verdict == "partly"


def pair(small, large, column, verdict):
    return {"small": small, "large": f"{large} + bce", "column": column, "verdict": verdict}


@pytest.mark.parametrize("records, expected", [
    ([pair("s + infonce", "l", "in", "matches"), pair("s + infonce", "l", "out", "better"),
      pair("s + hinge", "m", "in", "worse")], "supported"),
    ([pair("s + infonce", "l", "in", "worse"), pair("s + margin_mse", "l", "out", "worse")], "contradicted"),
    ([pair("s + infonce", "l", "in", "inconclusive"), pair("s + hinge", "m", "in", "inconclusive")], "inconclusive"),
    ([pair("s + infonce", "l", "in", "matches"), pair("s + infonce", "l", "out", "inconclusive")], "inconclusive"),
], ids=["supported", "contradicted", "all-open", "one-group-open"])
def test_m4_rule(records, expected):
    assert claims.small_matches_large(records, ["in", "out"], "test").verdict == expected


def additive(backbone_effects, objective_effects, columns=("c1", "c2"), residual=0.0):
    rng = np.random.default_rng(3)
    return {(f"b{i}", f"o{j}", c): 0.5 + b + o + rng.normal(0, residual) if residual else 0.5 + b + o
            for i, b in enumerate(backbone_effects) for j, o in enumerate(objective_effects) for c in columns}


def m2(mean):
    backbones = sorted({b for b, _, _ in mean})
    objectives = sorted({o for _, o, _ in mean})
    return claims.factor_verdict(mean, backbones, objectives, sorted({c for _, _, c in mean}), "test", resamples=200)


def test_m2_rule_with_its_interval():
    exact = m2(additive([0.0, 0.02], [0.0, 0.01]))  # ratio exactly 0.5: on the bound, inside the range
    assert exact.verdict == "supported" and "ratio 0.50" in exact.finding
    assert m2(additive([0.0, 0.05, 0.1, 0.15], [0.0, 0.001, 0.002], residual=0.0001)).verdict == "contradicted"
    assert m2(additive([0.0, 0.0], [0.0, 0.0])).verdict == "inconclusive"  # 0 / 0: nothing to compare
    published = claims.factor_verdict({(b, o, c): v for (b, o), row in claims.published().items() for c, v in
                                       row.items()}, sorted({b for b, _ in claims.published()}),
                                      sorted({o for _, o in claims.published()}), ["MSM", "DL19", "DL20", "BEIR13",
                                                                                   "Lotte-S", "R04"], "published")
    low, high = published.evidence[0]["ci95"]
    assert published.verdict == "inconclusive" and low < 0.5 < high  # ratio 0.53: the interval spans the bound


def test_seed_noise_that_swamps_a_small_effect_is_counted():
    """3 seeds whose whole runs move by N(0, 0.02), a true effect of 0.003: the paired test over queries alone
    (seeds averaged per query) finds a difference most of the time; the seed-aware test keeps to about alpha."""
    rng = np.random.default_rng(0)
    query_only = seed_aware = 0
    for _ in range(100):
        a, b = runs(0.003, n=300, noise=0.05, seeds=3, shift=0.02, rng=rng)
        query_only += significance.paired_ttest(a, b).pvalue < 0.05
        seed_aware += significance.difference([(a, b)]).pvalue() < 0.05
    assert query_only > 50 and seed_aware <= 12, (query_only, seed_aware)
    a, b = runs(0.05, n=300, noise=0.05, seeds=3, shift=0.002, rng=rng)  # a real effect still shows
    d = significance.difference([(a, b)])
    assert d.pvalue() < 0.05 and d.seed_noise_known and len(d.seed_diffs) == 3


def test_one_seed_says_seed_noise_is_unknown_and_is_never_contradicted_without_a_test():
    verdict = claims.beats("M1", cells({"b / in": {"infonce": -0.003, "margin_mse": -0.003}}, noise=NOISY),
                           claims.STRONG, "bce", "test", named=claims.STRONG)
    assert verdict.verdict == "inconclusive" and "seed noise unknown" in verdict.finding


def test_one_query_and_nan_p_values():
    one = [{"q1": 0.5}], [{"q1": 0.4}]
    d = significance.difference([one])
    assert not d.testable and math.isnan(d.pvalue())
    with pytest.raises(ValueError):
        significance.paired_ttest(*one)
    verdict = claims.beats("M1", {"b / in": {"infonce": [one[0]], "margin_mse": [one[0]], "bce": [one[1]]}},
                           claims.STRONG, "bce", "test", named=claims.STRONG)
    assert verdict.verdict == "inconclusive" and "untestable" in verdict.finding
    adjusted = significance.holm([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_reproduction_report_by_hand():
    paper = {("b1", "bce"): {"dl19": 0.60, "dl20": 0.50}, ("b1", "infonce"): {"dl19": 0.70, "dl20": 0.55},
             ("b1", "hinge"): {"dl19": 0.605, "dl20": 0.51}}
    kit = {("b1", "bce"): {"dl19": 0.50, "dl20": 0.40}, ("b1", "infonce"): {"dl19": 0.55, "dl20": 0.45},
           ("b1", "hinge"): {"dl19": 0.48, "dl20": 0.40}}
    found = reproduction.report(kit, paper)
    row = next(r for r in found["rows"] if r["objective"] == "infonce" and r["backbone"] == "b1")
    assert row["effect_ratio"] == pytest.approx(0.05 / 0.075)
    assert row["delta_ri"] == pytest.approx(((0.1 - 0.1 / 0.6) + (0.125 - 0.1)) / 2)
    assert row["sign_agree"] == 2
    hinge = {c["column"]: c["effect_ratio"] for c in found["per_cell"] if c["objective"] == "hinge"}
    assert hinge["dl19"] is None and hinge["dl20"] == pytest.approx(0.0)  # paper Δ 0.005 < MIN_DELTA: no ratio
    assert next(r for r in found["rows"] if r["objective"] == "hinge")["sign_agree"] == 0  # kit Δ -0.02 and 0.0
    # order: paper infonce > hinge > bce, kit infonce > bce > hinge: 2 concordant pairs, 1 discordant
    assert found["tau"]["b1"]["tau"] == pytest.approx(1 / 3)
    assert found["rmse"] == pytest.approx(math.sqrt(0.080225 / 6))
    assert "ER" in reproduction.table(found, "t").console


def test_friedman_and_nemenyi_by_hand():
    blocks = [{"a": 3.0, "b": 2.0, "c": 1.0} for _ in range(10)]
    ranks = significance.friedman_nemenyi(blocks)
    assert ranks.mean_rank == {"a": 1.0, "b": 2.0, "c": 3.0} and ranks.statistic == pytest.approx(20.0)
    assert ranks.critical_difference == pytest.approx(3.314 / math.sqrt(2) * math.sqrt(12 / 60), abs=1e-3)
    assert [(x, y) for x, y, _ in ranks.differ] == [("a", "c")]


def test_published_verdicts_use_the_three_values():
    found = {v.claim: v for v in claims.published_verdicts()}
    assert found["M1"].verdict == "supported" and found["M2"].verdict == "inconclusive"
    assert found["X1"].verdict == "inconclusive"
    assert all(v.verdict in claims.VERDICTS for v in found.values())


def test_the_readme_shows_what_rq5_paper_prints():
    """The README's claim table and mean ranks are the output of `exp_rq5_summary.py --paper`, not a copy that
    can drift from it."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = re.search(r"<!-- published: exp_rq5_summary.py --paper -->\n(.*?)\n<!-- /published -->", readme, re.S)
    assert block, "the README marks the published table's verdicts with <!-- published: ... -->"
    out = subprocess.run([sys.executable, "exp_rq5_summary.py", "--paper"], cwd=root, capture_output=True,
                         text=True, timeout=300).stdout
    printed = ["\n".join(line for line in chunk.splitlines() if line.startswith("|"))
               for chunk in out.split("\n\n")]
    for table in block[1].split("\n\n"):
        assert table in printed, table.splitlines()[0]
    after = readme[block.end():].strip().split("\n\n")[0]  # the paragraph under it quotes the Friedman line's figures
    chi2, p, cd = re.search(r"χ² = ([\d.]+), p = ([\d.e-]+); Nemenyi's critical\s+difference is ([\d.]+)", after).groups()
    assert f"Friedman chi2 = {chi2}, p = {p}" in out and f"critical difference {cd} " in out
