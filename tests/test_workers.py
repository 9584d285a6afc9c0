"""Many workers on one results folder (README, "Many GPUs and SLURM"): three processes started with the same
command train every cell once and write the tables one process writes, and a rerun only reads; a --slurm job
array (submitit's local executor) with a task sent SIGTERM, as a preemption does, is requeued, resumes from the
cell's checkpoint and ends with the same tables; --plan says what is done, running and left, and runs nothing.
(A killed worker's lock: tests/test_reliability.py.)"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "exp_rq1_objectives.py")
FLAGS = ["--smoke", "--objectives", "bce", "hinge", "infonce", "--collections", "scifact", "--steps", "60",
         "--checkpoint-every", "20"]
TABLES = "rq1_smoke_tiny-bert__objectives-bce-hinge-infonce_collections-scifact_steps-60"


def command(results: Path, *more: str) -> list[str]:
    return [sys.executable, SCRIPT, *FLAGS, "--results", str(results), *more]


def run(results: Path, *more: str, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(command(results, *more), cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def tables(results: Path) -> dict[str, str]:
    folder = results / "tables" / TABLES
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.suffix in (".txt", ".tex", ".csv", ".json")
            and p.name != "options.json"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The grid run by one process: what every other way of running it must print."""
    results = tmp_path_factory.mktemp("single") / "results"
    return results, run(results).stdout


def test_three_workers_train_every_cell_once_and_write_the_same_tables(single, tmp_path):
    results = tmp_path / "results"
    workers = [subprocess.Popen(command(results), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]  # a busy cell is skipped, not an error
    stdout = [out for out, _ in outputs]
    # every cell trained exactly once, by one worker or another, and each one's row printed as it landed
    assert sum(out.count("backbone tiny-bert:") for out in stdout) == 3
    assert not any("resuming from" in out for out in stdout)
    landed = [line.split("] ")[1].split(":")[0] for out in stdout for line in out.splitlines()
              if re.match(r"\[\d/3\] ", line)]
    assert sorted(landed) == [f"tiny-bert {o} seed 12" for o in ("bce", "hinge", "infonce")]
    # the tables, written by whichever finished the last cell, are the single process's
    writers = [out for out in stdout if "tables written to" in out]
    assert writers and all("in the hands of other workers" in out for out in stdout if out not in writers)
    assert tables(results) == tables(single[0])
    ndcg = single[1][single[1].index("RQ1: objectives"):single[1].index("* best per column")]
    assert ndcg in writers[0]
    # rerunning only reads
    again = run(results).stdout
    assert "backbone tiny-bert:" not in again and not re.search(r"^\[\d/3\]", again, re.M) and ndcg in again


def test_a_slurm_array_with_a_task_preempted_and_requeued_writes_the_same_tables(single, tmp_path):
    results = tmp_path / "results"
    # submitit's local executor: the tasks run on this machine, in processes that outlive the command (and hold its
    # standard output: read it from a file, not a pipe that stays open until they end)
    with open(tmp_path / "submit.out", "w") as out:
        submitting = subprocess.run(command(results, "--slurm", "--slurm-options", "gpus=0", "cpus=1", "mem=2",
                                            "time-limit=30"), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "KIT_SUBMITIT_CLUSTER": "local"}, timeout=600)
    submitted = (tmp_path / "submit.out").read_text()
    assert submitting.returncode == 0, submitted[-3000:]
    assert "submitted one job array of 3 task(s)" in submitted and "--array=0-2%3 --time=30" in submitted
    # a preemption: SIGTERM to the first task seen holding a cell, as SLURM sends it
    deadline = time.time() + 300
    holder = None
    while holder is None and time.time() < deadline:
        for lock in results.glob("cells/*/LOCK"):
            try:
                holder = json.loads(lock.read_text())["pid"]
            except (OSError, ValueError):  # released in between
                continue
        time.sleep(0.02)
    os.kill(holder, signal.SIGTERM)
    while len(list(results.glob("slurm/*_result.pkl"))) < 3 and time.time() < deadline:
        time.sleep(0.5)
    logs = "".join(p.read_text() for p in results.glob("slurm/*_log.out"))
    assert len(list(results.glob("slurm/*_result.pkl"))) == 3, logs[-3000:]
    assert "the task is requeued" in logs and "resuming from" in logs, logs[-3000:]
    assert tables(results) == tables(single[0])
    assert sum(log.read_text().count("tables written to") for log in results.glob("slurm/*_log.out")) >= 1


def test_the_plan_says_what_is_done_running_and_left_and_runs_nothing(tmp_path, monkeypatch):
    import grid
    import store
    import common
    import paper_setup
    from extras import scale_out
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the CPU the demo's rates were measured on
    configs = {o: [grid.make_config("demo", "minilm-l6", o, 12, "fp32")] for o in ("bce", "hinge", "infonce")}
    results = store.open_results(tmp_path / "results")
    running, stale, _ = (store.cell_dir(results, c[0]) for c in configs.values())
    running.mkdir(parents=True)
    (running / "train_log.jsonl").write_text('{"step": 200, "loss": 0.5, "lr": 0.0001, "pairs_per_s": 8.0}\n')
    held = store.CellLock(running)
    assert held.try_acquire()
    stale.mkdir(parents=True)
    (stale / "LOCK").write_text(json.dumps({"host": "node7", "machine": "node7/0/0", "pid": 4242, "token": "x"}))
    os.utime(stale / "LOCK", (0, 0))
    args = SimpleNamespace(slurm_options=["time-limit=1:00:00", "partition=gpu"])
    try:
        text = scale_out.plan_text("exp_rq1_objectives.py", "demo", configs, paper_setup.DEMO_COLLECTIONS, results, "cpu",
                                50, None, args)
    finally:
        held.release()
    assert "Cells: 0 done, 1 running, 2 to do" in text
    assert re.search(r"minilm-l6 bce seed 12\s+running \(\S+, step 200\)", text)
    assert "stale lock of node7:4242" in text
    # a demo cell on a 2-core CPU in fp32: 800 steps x 16 pairs at 8.5 pairs/s, 47,050 pairs at 37.5 (README)
    assert "top 50 of 941 queries = 47,050 pairs" in text and "minilm-l6 infonce seed 12  to do" in text
    assert re.search(r"minilm-l6 infonce seed 12\s+to do\s+~46 min CPU", text)
    assert "--array=0-1%2 --time=1:00:00 --gpus-per-node=1" in text and "--partition=gpu" in text
    assert not list(results.glob("cells/*/DONE")) and not list(results.glob("cells/*/*.pt"))
    # disk: a finished cell drops its checkpoint, so only the cells training at once hold one, unless kept
    one = scale_out.TOTAL["minilm-l6"] * scale_out.BYTES_PER_PARAMETER["checkpoint"]
    assert f"checkpoints of the 2 cells training at once {grid.format_size(2 * one)}" in text
    args.keep_checkpoint, args.slurm_options = True, args.slurm_options + ["array-parallelism=1"]  # 3 to do, all kept
    kept = scale_out.plan_text("exp_rq1_objectives.py", "demo", configs, paper_setup.DEMO_COLLECTIONS, results, "cpu",
                            50, None, args)
    assert f"last checkpoints, kept {grid.format_size(3 * one)}" in kept


def test_slurm_submits_one_array_with_the_options_given(tmp_path):
    """On a cluster: what reaches sbatch (a stand-in that keeps the script and answers with a job id)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    result = run(tmp_path / "results", "--slurm", "--slurm-options", "partition=gpu-a100", "account=lab",
                 "time-limit=2-00:00:00", "cpus=6", "mem=48", "array-parallelism=2",
                 env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert "note: submitted job array 4242 (4242_0, 4242_1, 4242_2)" in result.stdout
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu-a100", "#SBATCH --account=lab",
                 "#SBATCH --time=2880", "#SBATCH --cpus-per-task=6", "#SBATCH --mem=48GB", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --signal=USR2@90", f"export PYTHONPATH={ROOT}:$PYTHONPATH"):
        assert line in script, script
    assert not list((tmp_path / "results").glob("cells/*/DONE"))  # nothing ran here
