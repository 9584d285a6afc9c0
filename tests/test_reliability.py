"""Reliability: a killed run resumes to the same metrics; the same command twice gives the same metrics on
CPU; a cell in use is not trained twice. (Bad inputs: tests/test_inputs.py.)"""
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
