"""The figures are optional: with matplotlib each one is a PNG; without it, one line and no file."""
import json

import pytest

from extras import figures


def test_without_matplotlib_each_figure_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(figures, "_pyplot", lambda: None)
    assert figures.paper_vs_kit(tmp_path / "a.png", [(0.5, 0.6, "x")], "t") is None
    assert "matplotlib is not installed: no figure a.png" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_every_figure_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    means = {("small", "bce"): 0.4, ("small", "infonce"): 0.45, ("big", "bce"): 0.5, ("big", "infonce"): 0.52}
    made = [
        figures.heatmap_vs_baseline(tmp_path / "heat.png", means, ["small", "big"], ["bce", "infonce"], "bce", "t"),
        figures.differences(tmp_path / "diff.png", {"infonce": {"a": (0.02, -0.01, 0.05), "b": (-0.01, -0.03, 0.01)}},
                            "bce", "t"),
        figures.paper_vs_kit(tmp_path / "scatter.png", [(0.5, 0.52, "x"), (0.6, 0.58, "y")], "t"),
        figures.size_curves(tmp_path / "size.png", {"small": {"bce": {"g": [0.4]}}, "big": {"bce": {"g": [0.5]}}},
                            {"small": 10_000_000, "big": 100_000_000}, ["bce"], ["g"], "t"),
    ]
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 9)))
    (cell / "training.json").write_text(json.dumps({"curve": [{"step": 4, "value": 0.3}, {"step": 8, "value": 0.4}]}))
    made.append(figures.training_curve(cell))
    for path in made:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
