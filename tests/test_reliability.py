"""Reliability: a killed run resumes to the same metrics; the same command twice gives the same metrics on
CPU; a cell in use is skipped, and a dead worker's lock taken over. (Bad inputs: tests/test_inputs.py.)"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


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


def test_a_cell_in_use_is_skipped_and_a_killed_workers_lock_taken_over(tmp_path):
    import grid
    import store
    cfg = grid.make_config("smoke", "tiny-bert", "bce", 12, "fp32")
    folder = store.cell_dir(tmp_path, cfg)
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; import store; assert store.CellLock(Path(sys.argv[1])).try_acquire(); "
        "print('locked', flush=True); time.sleep(120)"), str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert grid.train_cell(cfg, tmp_path, "cpu", wait=False, progress=False) is None  # busy: skipped, no error
        assert not (folder / "DONE").exists()
    finally:
        holder.kill()  # as kill -9: the lock stays behind, with its holder's pid
        holder.wait()
    assert json.loads((folder / "LOCK").read_text())["pid"] == holder.pid
    notes = []
    assert grid.train_cell(cfg, tmp_path, "cpu", log=notes.append, wait=False, progress=False) == folder / "model"
    assert (folder / "DONE").exists() and not (folder / "LOCK").exists()
    assert any(f"took over {folder / 'LOCK'}" in n and f"its process {holder.pid} has ended" in n for n in notes)


def test_a_lock_of_another_machine_is_taken_over_once_its_heartbeat_is_stale(tmp_path, monkeypatch):
    import common
    import store
    lock_file = tmp_path / "LOCK"
    lock_file.write_text(json.dumps({"host": "node7", "machine": "node7/0/0", "pid": 4242, "token": "theirs"}))
    assert not store.CellLock(tmp_path).try_acquire()  # beating: busy, whatever its pid means here
    old = time.time() - store.STALE_AFTER_S - 60
    os.utime(lock_file, (old, old))
    monkeypatch.setattr(store, "HEARTBEAT_S", 0.05)
    notes = []
    mine = store.CellLock(tmp_path, log=notes.append)
    assert mine.try_acquire()
    try:
        assert json.loads(lock_file.read_text())["token"] == mine.me["token"]
        assert "from node7:4242 (no heartbeat for" in notes[0]
        os.utime(lock_file, (old, old))
        time.sleep(0.5)
        assert time.time() - lock_file.stat().st_mtime < 5  # the holder's heartbeat
        # its lock taken over in turn (it had not beaten): the holder is asked to stop at its next step
        lock_file.write_text(json.dumps({"host": "node8", "pid": 1, "token": "another"}))
        deadline = time.time() + 10
        while not common.stop_requested() and time.time() < deadline:
            time.sleep(0.05)
        assert "was taken over by node8:1" in (common.stop_requested() or "")
    finally:
        common._STOP.clear()
        mine.release()
    assert lock_file.exists()  # release never removes a lock that is no longer its own
