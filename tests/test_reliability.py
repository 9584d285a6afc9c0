"""Reliability: every bad input ends with one line naming the problem and the fix and exit status 2;
a killed run resumes to the same metrics; the same command twice gives the same metrics on CPU;
nothing already computed is lost."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "exp_rq1_objectives.py")


def run(*flags, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, "--smoke", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(result, expected: str):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad_pairs.tsv").write_text("9.1\t1.2\t4\t123\t456\n1.0\tabc\t4\t123\t789\n")
    runs = tmp_path / "bad_run"
    runs.mkdir()
    (runs / "scifact.run").write_text("1 Q0 31715818 1 3.5 bm25\n1 Q0 123 2 2.5 bm25\n1 Q0 oops\n")
    foreign = tmp_path / "foreign_run"
    foreign.mkdir()
    (foreign / "scifact.run").write_text("x1 Q0 31715818 1 3.5 other\n")
    (tmp_path / "empty_run").mkdir()
    old = tmp_path / "old_results"
    old.mkdir()
    (old / "FORMAT").write_text("999\n")
    return tmp_path


BAD_INPUTS = {
    "unknown backbone": (["--backbone", "nope"], "unknown backbone 'nope'; valid: ettin-17m"),
    "unknown objective": (["--objectives", "bce", "nope"], "unknown objective 'nope'; valid: bce"),
    "unknown collection": (["--collections", "nope"], "unknown collection 'nope'; valid here: scifact"),
    "missing teacher file": (["--objectives", "margin_mse", "--teacher-pairs", "{tmp}/missing.tsv"],
                             "missing.tsv: no such file"),
    "malformed teacher line": (["--objectives", "margin_mse", "--teacher-pairs", "{tmp}/bad_pairs.tsv"],
                               "bad_pairs.tsv, line 2: malformed teacher line"),
    "malformed run line": (["--collections", "scifact", "--run-dir", "{tmp}/bad_run"],
                           "scifact.run, line 3: malformed run line"),
    "run of another collection": (["--collections", "scifact", "--run-dir", "{tmp}/foreign_run"],
                                  "share no query id with the qrels"),
    "missing run in run dir": (["--collections", "scifact", "--run-dir", "{tmp}/empty_run"],
                               "no candidates for scifact"),
    "no such GPU": (["--gpu", "3"], "--gpu 3: this machine has 0 CUDA device(s)"),
    "bad precision": (["--precision", "fp8"], "--precision 'fp8'"),
    "incompatible results folder": (["--results", "{tmp}/old_results"], "incompatible version of the kit"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, bad_files):
    flags, expected = BAD_INPUTS[case]
    flags = [f.format(tmp=bad_files) for f in flags]
    if "--results" not in flags:
        flags += ["--results", str(bad_files / "results")]
    if "--objectives" not in flags:  # objectives that need no teacher file
        flags += ["--objectives", "bce"]
    assert_one_line_error(run(*flags), expected)


def test_a_failing_cell_keeps_the_finished_ones(bad_files):
    results = str(bad_files / "results")
    assert run("--objectives", "bce", "--results", results, "--steps", "2").returncode == 0
    failed = run("--objectives", "bce", "margin_mse", "--results", results, "--steps", "2",
                 "--teacher-pairs", str(bad_files / "bad_pairs.tsv"))
    assert_one_line_error(failed, "line 2: malformed teacher line")
    done = list(Path(results).glob("cells/tiny-bert__bce__*/DONE"))
    assert len(done) == 1


def metrics_of(results: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(results.glob("cells/*/eval/*/metrics.json"))}


def test_killed_run_resumes_to_the_same_metrics_and_reruns_are_identical(tmp_path):
    flags = ["--objectives", "infonce", "--steps", "24", "--checkpoint-every", "3", "--collections", "scifact"]
    for name in ("straight", "again"):
        assert run(*flags, "--results", str(tmp_path / name)).returncode == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, SCRIPT, "--smoke", *flags, "--results", str(killed)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(killed.glob("cells/*/checkpoint.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    cell = next(killed.glob("cells/*"))
    assert not (cell / "DONE").exists(), "the run finished before it could be killed; make it longer"
    resumed = run(*flags, "--results", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    straight = metrics_of(tmp_path / "straight")
    assert straight and straight == metrics_of(tmp_path / "again") == metrics_of(killed)
    logged = [json.loads(line)["step"] for line in (cell / "train_log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 24


def test_a_cell_in_use_by_another_process_is_refused(tmp_path):
    import common
    import grid
    cfg = grid.make_config("smoke", "tiny-bert", "bce", 12, "fp32")
    folder = grid.cell_dir(tmp_path, cfg)
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; h = open(sys.argv[1], 'w'); fcntl.flock(h, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(common.KitError, match="in use by another process"):
            grid.train_cell(cfg, tmp_path, "cpu", progress=False)
        assert not (folder / "DONE").exists()
    finally:
        holder.kill()
        holder.wait()
