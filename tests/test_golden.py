"""What the kit computes does not change when its code moves: a --smoke grid's cell keys, per-query values,
scores, tables and verdicts, and the tables rebuilt from the shipped demo results and by RQ5, against files
written by the kit before the move (tests/golden/).

To write the fixture anew (only when a change is meant to change results, and said so in its commit):
    KIT_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
WRITE = os.environ.get("KIT_WRITE_GOLDEN") == "1"
# Scores are compared to this many decimals: training on another CPU's kernels may round the last bits apart;
# the per-query values, tables and verdicts built from them are compared exactly.
SCORE_DECIMALS = 5

RUNS = {
    "rq1_smoke": ["exp_rq1_objectives.py", "--smoke"],
    "rq1_shipped": ["exp_rq1_objectives.py", "--demo", "--from-shipped", "--precision", "fp32",
                    "--objectives", "bce", "infonce", "--collections", "scifact"],
}


def _run(argv: list[str], results: Path, tmp: Path) -> None:
    env = {**os.environ, "KIT_CACHE": str(tmp / "cache")}
    done = subprocess.run([sys.executable, *argv, "--results", str(results)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _scores(path: Path) -> list[str]:
    lines = gzip.open(path, "rt").read().splitlines()
    return [" ".join(f[:4] + [f"{float(f[4]):.{SCORE_DECIMALS}f}"] + f[5:]) for f in (line.split() for line in lines)]


def _snapshot(results: Path) -> dict[str, object]:
    """What a results folder holds that must not change: its files by path (relative), as text or values."""
    found: dict[str, object] = {}
    for path in sorted(results.rglob("*")):
        name = path.relative_to(results).as_posix()
        if not path.is_file() or name.startswith(("tokens/", "first-stage/")) and path.name != "metrics.json":
            continue
        if path.name in ("metrics.json", "per_query.json") or name.startswith("verdicts/"):
            found[name] = path.read_text()
        elif path.name == "run.trec.gz":
            found[name] = _scores(path)
        elif name.startswith(("tables/", "rq5/")) and path.name != "options.json":
            found[name] = path.read_text()
        elif name.startswith("cells/") and path.name == "config.json":
            found[name] = path.read_text()
    return found


@pytest.mark.parametrize("name", sorted(RUNS))
def test_outputs_match_the_golden_files(name, tmp_path):
    results = tmp_path / "results"
    _run(RUNS[name], results, tmp_path)
    if name == "rq1_shipped":  # and RQ5 over the same shipped results, into its own tables folder
        _run(["exp_rq5_summary.py", "--tables", str(results / "rq5")], REPO / "data" / "demo-results", tmp_path)
    found = _snapshot(results)
    if name == "rq1_shipped":  # its cells are copies of data/demo-results, compared as files elsewhere
        found = {path: value for path, value in found.items() if not path.startswith("cells/")}
    golden = GOLDEN / f"{name}.json"
    if WRITE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    expected = json.loads(golden.read_text())
    assert sorted(found) == sorted(expected), "files (cell keys, evaluation keys, tables) differ"
    changed = [path for path in expected if found[path] != expected[path]]
    if changed:
        import difflib
        old, new = (str(x[changed[0]]).replace(",", ",\n").splitlines() for x in (expected, found))
        diff = "\n".join(list(difflib.unified_diff(old, new, lineterm="", n=1))[:40])
        pytest.fail(f"{len(changed)} file(s) differ from {golden.name}, first {changed[0]}:\n{diff}")
