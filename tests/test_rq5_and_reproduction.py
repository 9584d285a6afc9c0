"""RQ5's summary and the reproduction report on hand-made values: Delta RI as Breuer et al. define it, statements
that count significant wins only, KD-vs-CL teachers kept apart from the grid's cells, and Friedman's test over
the backbones."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

import claims
import exp_rq5_summary as rq5
import grid
import store
from extras import reproduction
import significance

ROOT = Path(__file__).resolve().parents[1]
QIDS = [f"q{i}" for i in range(8)]
BASE = [0.2, 0.4, 0.6, 0.8, 0.3, 0.5, 0.7, 0.9]
SMALL = (0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0)   # a shift of 0.1 over this noise is significant
WIDE = (0.3, -0.3, 0.25, -0.2, 0.1, -0.15, 0.2, -0.2)       # a shift of 0.002 over this one is not


def per_query(shift, noise=(0.0,) * 8):
    return dict(zip(QIDS, [v + shift + n for v, n in zip(BASE, noise)]))


# ------------------------------------------------------------------------------------ reproduction report
PAPER = {("b1", "bce"): {"dl19": 0.60, "dl20": 0.50}, ("b1", "infonce"): {"dl19": 0.70, "dl20": 0.55},
         ("b1", "hinge"): {"dl19": 0.605, "dl20": 0.51}}
KIT = {("b1", "bce"): {"dl19": 0.50, "dl20": 0.40}, ("b1", "infonce"): {"dl19": 0.55, "dl20": 0.45},
       ("b1", "hinge"): {"dl19": 0.48, "dl20": 0.40}}


def breuer_ri(advanced: list[float], baseline: list[float]) -> float:
    """Breuer et al.'s relative improvement: of the mean scores, not a mean of per-topic ratios."""
    return (np.mean(advanced) - np.mean(baseline)) / np.mean(baseline)


def test_delta_ri_is_the_papers_ri_minus_the_kits_on_the_mean_scores():
    row = next(r for r in reproduction.report(KIT, PAPER)["rows"] if r["objective"] == "infonce")
    # paper: bce 0.55, infonce 0.625 on average, RI 0.1364; kit: 0.45 and 0.50, RI 0.1111
    expected = breuer_ri([0.70, 0.55], [0.60, 0.50]) - breuer_ri([0.55, 0.45], [0.50, 0.40])
    assert expected == pytest.approx(0.0253, abs=5e-5)
    assert row["delta_ri"] == pytest.approx(expected)
    # the mean of the per-column differences (kit - paper) gives another number, of the other sign: -0.0208
    per_column = np.mean([0.05 / 0.5 - 0.1 / 0.6, 0.05 / 0.4 - 0.05 / 0.5])
    assert per_column == pytest.approx(-0.0208, abs=5e-5) and row["delta_ri"] != pytest.approx(per_column)


def test_delta_ri_pooled_over_backbones_uses_the_mean_of_every_cell():
    paper = {**PAPER, ("b2", "bce"): {"dl19": 0.40, "dl20": 0.30}, ("b2", "infonce"): {"dl19": 0.48, "dl20": 0.33}}
    kit = {**KIT, ("b2", "bce"): {"dl19": 0.42, "dl20": 0.30}, ("b2", "infonce"): {"dl19": 0.44, "dl20": 0.36}}
    rows = reproduction.report(kit, paper)["rows"]
    pooled = next(r for r in rows if r["pooled_over"] == "objective" and r["objective"] == "infonce")
    assert pooled["delta_ri"] == pytest.approx(breuer_ri([0.70, 0.55, 0.48, 0.33], [0.60, 0.50, 0.40, 0.30])
                                               - breuer_ri([0.55, 0.45, 0.44, 0.36], [0.50, 0.40, 0.42, 0.30]))
    b2 = next(r for r in rows if r["pooled_over"] == "cell" and r["backbone"] == "b2")
    assert b2["delta_ri"] == pytest.approx(breuer_ri([0.48, 0.33], [0.40, 0.30]) - breuer_ri([0.44, 0.36],
                                                                                              [0.42, 0.30]))


def test_reproduction_report_by_hand():
    found = reproduction.report(KIT, PAPER)
    row = next(r for r in found["rows"] if r["objective"] == "infonce" and r["backbone"] == "b1")
    assert row["effect_ratio"] == pytest.approx(0.05 / 0.075)
    assert row["delta_ri"] == pytest.approx((0.625 - 0.55) / 0.55 - (0.5 - 0.45) / 0.45)
    assert row["sign_agree"] == 2
    hinge = {c["column"]: c["effect_ratio"] for c in found["per_cell"] if c["objective"] == "hinge"}
    assert hinge["dl19"] is None and hinge["dl20"] == pytest.approx(0.0)  # paper Δ 0.005 < MIN_DELTA: no ratio
    assert next(r for r in found["rows"] if r["objective"] == "hinge")["sign_agree"] == 0  # kit Δ -0.02 and 0.0
    # order: paper infonce > hinge > bce, kit infonce > bce > hinge: 2 concordant pairs, 1 discordant
    assert found["tau"]["b1"]["tau"] == pytest.approx(1 / 3)
    assert found["rmse"] == pytest.approx(math.sqrt(0.080225 / 6))
    table = reproduction.table(found, "t")
    assert "ER" in table.console and "ΔRI = paper RI - kit RI" in table.console
    assert any(r.get("kind") == "pooled" and r["delta_ri"] == pytest.approx(row["delta_ri"]) for r in table.records)


# ---------------------------------------------------------------------------------- RQ5: the statements
def summarise(cells):
    args = rq5.Args()
    return rq5.summarise(cells, {}, args, "demo-bm25, fp32")


def grid_cells(shifts: dict, backbones=("b1", "b2"), columns=("scifact__h1", "nfcorpus__h1")):
    """{(backbone, objective, column): {seed 12: (mean, per-query)}} from {objective: (shift, noise)}."""
    cells = {}
    for b in backbones:
        for o, (shift, noise) in shifts.items():
            for i, c in enumerate(columns):
                values = per_query(shift + 0.01 * i + (0.02 if b == "b2" else 0.0), noise)
                cells[b, o, c] = {12: (float(np.mean(list(values.values()))), values)}
    return cells


def test_rq5_statements_count_significant_wins_not_means_above_the_baseline():
    cells = grid_cells({"bce": (0.0, (0.0,) * 8), "infonce": (0.1, SMALL), "hinge": (0.002, WIDE),
                        "margin_mse": (0.08, SMALL)})
    made, statements, _ = summarise(cells)
    hinge = next(s for s in statements if s.startswith("hinge "))
    # hinge's mean is above bce's in all 4 cells, but no test shows it: no "holds everywhere"
    assert "holds everywhere" not in hinge and ">=" not in hinge
    assert hinge.startswith("hinge significantly better than bce in 0 of 4 backbone x collection cells")
    assert "Holm within each cell" in hinge
    infonce = next(s for s in statements if s.startswith("infonce "))
    assert infonce.startswith("infonce significantly better than bce in 4 of 4 backbone x collection cells")
    records = {r["system"]: r for r in made["rq5_objectives"].records}
    assert (records["hinge"]["significant_wins"], records["hinge"]["compared"]) == (0, 4)
    assert records["hinge"]["everywhere"] is False and records["infonce"]["everywhere"] is True
    assert "at_least_baseline" not in records["hinge"]
    console = made["rq5_objectives"].console
    assert ">= bce" not in console
    row = next(line for line in console.splitlines() if line.startswith("| hinge "))
    assert "| no " in row and "0/4" in row
    assert all(key in records["hinge"] for key in ("mean_rank", "wins", "ties", "losses"))


# ---------------------------------------------------------------------------------- RQ5: KD-vs-CL cells
def write_cell(results: Path, cfg, shift: float, collection="scifact") -> Path:
    folder = store.cell_dir(results, cfg)
    (folder / "eval" / f"{collection}__e1").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    (folder / "DONE").write_text("test\n")
    values = per_query(shift)
    (folder / "eval" / f"{collection}__e1" / "metrics.json").write_text(json.dumps({"nDCG@10": np.mean(BASE) + shift}))
    (folder / "eval" / f"{collection}__e1" / "per_query.json").write_text(json.dumps({"nDCG@10": values}))
    return folder


def labels_and_seeds(results: Path) -> dict:
    groups, _, _ = rq5.scan(results, "nDCG@10")
    (cells,) = groups.values()
    return {(b, label): sorted(seeds) for (b, label, _), seeds in cells.items()}


@pytest.mark.parametrize("teachers_folder", [True, False], ids=["teachers-folder", "named-by-a-student"])
def test_kd_vs_cl_same_size_teacher_is_not_an_extra_seed_of_the_students_infonce(tmp_path, teachers_folder):
    # exp_kd_vs_cl.py --demo: every cell 1,600 steps; the CL student is infonce under seed 12, the same-size
    # teacher the same recipe under seed 112. Nothing else in their configs differs.
    def config(objective, seed, **teacher):
        return grid.make_config("demo", "minilm-l4", objective, seed, "fp32", steps=1600, negatives="bm25",
                                **teacher)
    results = tmp_path / "results"
    write_cell(results, config("infonce", 12), 0.0)
    teacher = write_cell(results, config("infonce", 112), 0.05)
    scores = f"results/teachers/{teacher.name}/scores_qall_d50.run.gz"
    if teachers_folder:
        (results / "teachers" / teacher.name).mkdir(parents=True)
    else:  # a store whose teachers/ was not kept: the KD student's config names the teacher's cell
        write_cell(results, config("kl", 12, teacher_scores=scores), 0.01)
    found = labels_and_seeds(results)
    assert found[("minilm-l4", "infonce[steps=1600]")] == [12]
    assert found[("minilm-l4", "infonce[steps=1600,kd-vs-cl teacher,seed=112]")] == [112]


def test_kd_vs_cl_teachers_in_the_papers_recipe(tmp_path):
    # paper mode: KD vs CL trains its students and large teacher with the grid's own recipe, so the large
    # teacher (seed 12) and the CL students are the RQ cells themselves (same folder); the same-size teacher
    # (seed 112) is a model no RQ script trains, and is labelled apart.
    results = tmp_path / "results"
    for seed in (12, 13, 14):
        write_cell(results, grid.make_config("paper", "ettin-17m", "infonce", seed, "bf16"), 0.001 * seed)
    large = write_cell(results, grid.make_config("paper", "ettin-150m", "infonce", 12, "bf16"), 0.1)
    same = write_cell(results, grid.make_config("paper", "ettin-17m", "infonce", 112, "bf16"), 0.3)
    for folder in (large, same):
        (results / "teachers" / folder.name).mkdir(parents=True)
    found = labels_and_seeds(results)
    assert found[("ettin-17m", "infonce")] == [12, 13, 14] and found[("ettin-150m", "infonce")] == [12]
    assert found[("ettin-17m", "infonce[kd-vs-cl teacher,seed=112]")] == [112]


# ------------------------------------------------------------------------ RQ5: Friedman over the backbones
def test_friedman_over_the_published_backbones():
    table = claims.published()
    blocks = rq5.backbone_blocks({(b, o, c): v for (b, o), row in table.items() for c, v in row.items()})
    assert len(blocks) == 9
    assert blocks[0]["bce"] == pytest.approx(np.mean(list(table["ettin-17m", "bce"].values())))
    ranks = rq5.rank_table(blocks, 0.05, "t", "published")
    summary = ranks.records[-1]
    assert summary["blocks"] == 9 and summary["friedman_chi2"] == pytest.approx(36.49, abs=0.01)
    assert summary["critical_difference"] == pytest.approx(2.513, abs=1e-3)
    differ = {(r["better"], r["worse"]) for r in ranks.records if "better" in r}
    assert differ == {("infonce", "bce"), ("margin_mse", "bce"), ("infonce", "hinge"), ("margin_mse", "hinge")}
    assert "9 backbones" in ranks.console and "read p as a guide" not in ranks.console


def test_rq5_paper_prints_the_ranks_over_the_nine_backbones():
    out = subprocess.run([sys.executable, "exp_rq5_summary.py", "--paper"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300).stdout
    assert "Friedman chi2 = 36.49, p = 7.6e-07 over 9 backbones" in out
    assert "Nemenyi critical difference 2.51 " in out


def test_rq5_ranks_the_objectives_over_backbones_not_backbone_x_collection_cells():
    objectives = {"bce": (0.0, (0.0,) * 8), "hinge": (0.01, SMALL), "infonce": (0.1, SMALL),
                  "margin_mse": (0.08, SMALL)}
    cells = grid_cells(objectives, backbones=("b1", "b2", "b3"), columns=("scifact__h1", "nfcorpus__h1", "x__h1"))
    made, _, _ = summarise(cells)
    summary = made["rq5_ranks"].records[-1]
    assert summary["blocks"] == 3
    means = {(b, o): np.mean([cells[b, o, c][12][0] for c in ("scifact__h1", "nfcorpus__h1", "x__h1")])
             for b in ("b1", "b2", "b3") for o in objectives}
    expected = scipy.stats.friedmanchisquare(*[[means[b, o] for b in ("b1", "b2", "b3")] for o in sorted(objectives)])
    assert summary["friedman_chi2"] == pytest.approx(expected.statistic)


def test_rq5_one_backbone_does_not_test_the_ranks():
    cells = grid_cells({"bce": (0.0, (0.0,) * 8), "hinge": (0.01, SMALL), "infonce": (0.1, SMALL)},
                       backbones=("b1",), columns=("scifact__h1", "nfcorpus__h1", "x__h1", "y__h1"))
    made, statements, _ = summarise(cells)
    assert "rq5_ranks" not in made  # four collections of one backbone's models are not four blocks
    assert any("not tested" in s and "backbone" in s for s in statements)


def test_friedman_and_nemenyi_by_hand():
    blocks = [{"a": 3.0, "b": 2.0, "c": 1.0} for _ in range(10)]
    ranks = significance.friedman_nemenyi(blocks)
    assert ranks.mean_rank == {"a": 1.0, "b": 2.0, "c": 3.0} and ranks.statistic == pytest.approx(20.0)
    assert ranks.critical_difference == pytest.approx(3.314 / math.sqrt(2) * math.sqrt(12 / 60), abs=1e-3)
    assert [(x, y) for x, y, _ in ranks.differ] == [("a", "c")]
