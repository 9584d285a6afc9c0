"""A results store that checks what it reads: a finished evaluation or model that no longer matches what was
written is never shown; it gets one note, is moved aside (kept) and computed again, and RQ5 skips it."""
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--smoke", "--objectives", "bce", "--collections", "vaswani"]


def run(results: Path, *argv: str, script: str = "exp_rq1_objectives.py") -> subprocess.CompletedProcess:
    env = {**os.environ, "KIT_CACHE": str(results.parent / "cache")}
    return subprocess.run([sys.executable, script, *argv, "--results", str(results)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A smoke grid of one cell, finished, and the table it printed."""
    results = tmp_path_factory.mktemp("store") / "results"
    done = run(results, *SMOKE)
    assert done.returncode == 0, done.stderr[-3000:]
    return results, table(results)


def table(results: Path) -> str:
    return next((results / "tables").glob("rq1_smoke_tiny-bert*/rq1_nDCG10.csv")).read_text()


def copy(finished, tmp_path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(finished[0], results)
    return results


def evaluation(results: Path) -> Path:
    (folder,) = results.glob("cells/tiny-bert__bce__*/eval/vaswani__*")
    return folder


DAMAGES = {
    "a metrics.json edited": lambda f: (f / "metrics.json").write_text(
        json.dumps({**json.loads((f / "metrics.json").read_text()), "nDCG@10": 0.99})),
    "a per_query.json cut short": lambda f: (f / "per_query.json").write_text((f / "per_query.json").read_text()[:50]),
    "a run.trec.gz replaced by garbage": lambda f: (f / "run.trec.gz").write_bytes(b"not a gzip file"),
    "an old folder (no checksums) whose run.trec.gz is garbage": lambda f: (
        (f / "checksums.json").unlink(), (f / "run.trec.gz").write_bytes(b"not a gzip file")),
    "an old folder (no checksums) whose metrics.json was edited": lambda f: (
        (f / "checksums.json").unlink(), (f / "metrics.json").write_text(
            json.dumps({**json.loads((f / "metrics.json").read_text()), "nDCG@10": 0.99}))),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_evaluation_is_set_aside_and_computed_again(finished, tmp_path, damage):
    results = copy(finished, tmp_path)
    folder = evaluation(results)
    DAMAGES[damage](folder)
    if "metrics.json" in damage:  # RQ5 only reads: skipped, with the note, left in place
        summary = run(results, script="exp_rq5_summary.py")
        assert "note: " in summary.stdout and "skipped" in summary.stdout and str(folder) in summary.stdout, \
            summary.stdout[-2000:] + summary.stderr[-2000:]
    again = run(results, *SMOKE)
    assert again.returncode == 0, again.stderr[-3000:]
    notes = [line for line in again.stdout.splitlines() if line.startswith("note: ") and "moved it aside" in line]
    assert len(notes) == 1 and str(folder) in notes[0], again.stdout[-3000:]
    assert list((folder.parent.parent / "damaged").glob(f"eval-{folder.name}.*"))  # kept, never deleted
    assert (folder / "metrics.json").exists() and table(results) == finished[1]  # recomputed: the same table


def test_a_damaged_model_is_set_aside_and_the_cell_trained_again(finished, tmp_path):
    results = copy(finished, tmp_path)
    (cell,) = results.glob("cells/tiny-bert__bce__*")
    shutil.rmtree(evaluation(results))  # an evaluation to make, so the model is read
    weights = next((cell / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"damaged!")
    again = run(results, *SMOKE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"note: {weights} no longer matches the checksum recorded when the cell finished" in again.stdout
    shelf = cell / "damaged"
    assert list(shelf.glob(f"{cell.name}-model.*")) and list(shelf.glob(f"{cell.name}-DONE.*")) and (cell / "DONE").exists()
    assert table(results) == finished[1]  # retrained on the CPU: the same model, the same table


def test_a_cell_kept_without_its_model_is_not_trained_again(finished, tmp_path):
    """Shipped cells, and cells whose weights were deleted to save disk, hold DONE but no model/: reused."""
    results = copy(finished, tmp_path)
    (cell,) = results.glob("cells/tiny-bert__bce__*")
    shutil.rmtree(cell / "model")
    again = run(results, *SMOKE)
    assert again.returncode == 0 and "note:" not in again.stdout and not (cell / "damaged").exists(), again.stdout
    shutil.rmtree(evaluation(results))  # now an evaluation it cannot make: one line, nothing retrained
    again = run(results, *SMOKE)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith(
        f"error: {cell.name} has no model to re-rank vaswani with"), again.stderr[-2000:]


def test_every_finished_evaluation_records_its_checksums(finished):
    folder = evaluation(finished[0])
    sums = json.loads((folder / "checksums.json").read_text())
    assert sorted(sums) == ["metrics.json", "per_query.json", "run.trec.gz", "sizes"]
    with gzip.open(folder / "run.trec.gz", "rt") as handle:
        assert handle.readline().count(" ") == 5
