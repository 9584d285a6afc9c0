"""scripts/gpu_run.py, the prepared GPU run, through its dry run on the CPU (--smoke): every step runs and says
so in run.log, its outputs land in the output folder, a second run skips what the first returned (and reuses
its cells), a teacher archive that fails its checksum is rebuilt, and a step past the deadline is killed while
the steps that cannot fit are skipped. The first dry run takes about 1.5-2 minutes on a loaded 2-core CPU."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["nvidia-smi", "install", "teachers", "rq1-seed12", "rq1-seeds12-13", "rq1-seeds12-13-14",
         "bench-bert-base", "bench-ettin-150m"]
OUTPUTS = {"run.log", "console.txt", "nvidia-smi.txt", "manifest.json", "teachers.tar.gz", "results.tar.gz",
           "bench.json"}
TEACHERS = ["scifact-train.ensemble-pairs.tsv", "scifact-train.ensemble-dense-top50.run",
            "scifact-train.ensemble-top50.run", "scifact-train.ensemble-scores.run.gz"]
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +\d+\.\ds  \S+ +\S")  # UTC time, seconds since start, step


def dry_run(out: Path, results: Path, *extra: str, timeout: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/gpu_run.py", "--smoke", "--out", str(out), "--results",
                           str(results), *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def summary(out: Path) -> dict[str, str]:
    """{step: outcome} from the SUMMARY lines of run.log (the last run's, as the log holds earlier runs too)."""
    found = {}
    for line in (out / "run.log").read_text().splitlines():
        match = re.search(r" SUMMARY +(\S+): (.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def console_section(out: Path, step: str) -> str:
    """What the step's commands printed, from its banners in console.txt to the next step's."""
    text = (out / "console.txt").read_text()
    parts = re.split(r"^===== (\S+): .*=====$", text, flags=re.M)
    return "".join(body for name, body in zip(parts[1::2], parts[2::2]) if name == step)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One full dry run: (output folder, results folder, the finished process)."""
    base = tmp_path_factory.mktemp("gpu-run")
    out, results = base / "out", base / "results"
    process = dry_run(out, results)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return out, results, process


def test_dry_run_runs_every_step_and_leaves_its_outputs(first):
    out, results, _ = first
    outcomes = summary(out)
    assert list(outcomes) == STEPS
    assert all(o.startswith("ok") for o in outcomes.values()), outcomes
    log = (out / "run.log").read_text().splitlines()
    assert all(LINE.match(line) for line in log), [line for line in log if not LINE.match(line)][:3]
    for step in STEPS[2:]:  # each command step logged its start and its command
        assert any(re.search(rf"  {re.escape(step)} +run: .*\.py", line) for line in log), step
    # Seven plain files, no folders: few, flat outputs, easy to copy back from a remote machine.
    assert {p.name for p in out.iterdir()} == OUTPUTS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "smoke" and all(manifest["steps"][s]["status"] == "ok" for s in STEPS[2:])

    with tarfile.open(out / "teachers.tar.gz") as tar:
        names = tar.getnames()
        assert sorted(names) == sorted(TEACHERS)
        for name in names:  # the archive holds the files as built, and the manifest their checksums
            data = tar.extractfile(name).read()
            assert data == (results / "smoke-teachers" / name).read_bytes()
            assert sha256(data) == manifest["teachers"]["files"][name]

    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    cells = {n.split("/")[1] for n in names if n.startswith("cells/")}
    assert len(cells) == 18 == len(manifest["results"]["complete_cells"])  # 6 objectives x seeds 12, 13, 14
    for cell in cells:
        assert f"cells/{cell}/DONE" in names
        assert sum(n.startswith(f"cells/{cell}/eval/") and n.endswith("/metrics.json") for n in names) == 4
        assert sum(n.startswith(f"cells/{cell}/eval/") and n.endswith("/per_query.json") for n in names) == 4
    assert not [n for n in names if "/model/" in n or n.endswith("checkpoint.pt")]  # no weights
    assert any(n.startswith("tables/rq1_smoke_") and n.endswith("rq1_nDCG10.json") for n in names)

    bench = json.loads((out / "bench.json").read_text())
    for model in ("bert-base", "ettin-150m"):
        rows = bench["models"][model]["rows"]
        assert bench["models"][model]["finished"]
        whats = {r["what"] for r in rows}
        assert {"re-rank: stored ids, pair count", "re-rank: stored ids, token budget",
                "re-rank: stored ids, unpadded", "train: kit loop body, padded",
                "train: kit loop body, unpadded"} <= whats
        assert all(r["mfu_percent"] is not None for r in rows if r["what"].startswith(("re-rank", "train")))
    assert (out / "nvidia-smi.txt").read_text()


def test_second_run_skips_what_the_first_returned_and_reuses_its_cells(first, tmp_path):
    out, results, _ = first
    previous = tmp_path / "previous"
    shutil.copytree(out, previous)
    # As if the first run had been cut off during its last RQ1 step: that step must run again, on restored cells.
    manifest = json.loads((previous / "manifest.json").read_text())
    manifest["steps"]["rq1-seeds12-13-14"]["status"] = "killed: past the deadline"
    (previous / "manifest.json").write_text(json.dumps(manifest))
    out2, results2 = tmp_path / "out", tmp_path / "results"

    process = dry_run(out2, results2, "--resume-from", str(previous))
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    outcomes = summary(out2)
    for step in ["teachers", "rq1-seed12", "rq1-seeds12-13", "bench-bert-base", "bench-ettin-150m"]:
        assert outcomes[step].startswith("skipped: already done"), (step, outcomes[step])
    assert outcomes["rq1-seeds12-13-14"] == "ok"
    section = console_section(out2, "rq1-seeds12-13-14")
    assert "RQ1: objectives on tiny-bert" in section
    assert "cell(s) to do" not in section  # all 18 cells came back finished: nothing trained or re-ranked
    for name in TEACHERS:  # restored byte for byte (the cells' keys hold their md5)
        assert (results2 / "smoke-teachers" / name).read_bytes() == (results / "smoke-teachers" / name).read_bytes()
    # The second run's folder holds everything again, and its log both runs.
    assert {p.name for p in out2.iterdir()} == OUTPUTS
    assert len(json.loads((out2 / "manifest.json").read_text())["results"]["complete_cells"]) == 18
    assert (out2 / "run.log").read_text().startswith((out / "run.log").read_text())
    assert json.loads((out2 / "bench.json").read_text()) == json.loads((out / "bench.json").read_text())


def test_teacher_files_that_fail_their_checksum_are_rebuilt(first, tmp_path):
    out, _, _ = first
    previous = tmp_path / "previous"
    shutil.copytree(out, previous)
    manifest = json.loads((previous / "manifest.json").read_text())
    manifest["teachers"]["files"][TEACHERS[1]] = "0" * 64  # as if the archive had changed on the way
    (previous / "manifest.json").write_text(json.dumps(manifest))
    out2 = tmp_path / "out"
    process = dry_run(out2, tmp_path / "results", "--resume-from", str(previous), "--skip", *STEPS[3:])
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "do not match their sha256" in (out2 / "run.log").read_text()
    assert summary(out2)["teachers"] == "ok"  # built again, not restored
    assert re.search(r"  teachers +run: .*make_demo_teachers\.py", (out2 / "run.log").read_text())
    assert "teachers (smoke): ensemble of" in console_section(out2, "teachers")  # and they were built


def test_a_step_past_the_deadline_is_killed_and_steps_that_cannot_fit_are_skipped(tmp_path):
    out = tmp_path / "out"
    # 5 s in all, less the reserve for stopping and packing: the teachers start (estimate 0) and are killed.
    process = dry_run(out, tmp_path / "results", "--budget", "5", "--estimate", "nvidia-smi=0",
                      "--estimate", "install=0", "--estimate", "teachers=0", timeout=120)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    outcomes = summary(out)
    assert list(outcomes) == STEPS
    assert outcomes["teachers"] == "killed: past the deadline"
    for step in ["rq1-seed12", "rq1-seeds12-13", "rq1-seeds12-13-14"]:
        assert outcomes[step] == "skipped: needs teachers, which did not end ok"
    for step in ["bench-bert-base", "bench-ettin-150m"]:
        assert outcomes[step].startswith("skipped: deadline (needs ~20 s"), outcomes[step]
    log = (out / "run.log").read_text()
    pid = int(re.search(r"killed at the deadline \(pid (\d+)", log).group(1))
    with pytest.raises(ProcessLookupError):  # the killed step's process is gone, not left running
        os.kill(pid, 0)
    assert json.loads((out / "manifest.json").read_text())["steps"]["teachers"]["status"] == "killed: past the deadline"
    assert re.search(r"  teachers +run: .*make_demo_teachers\.py", log)
    assert re.search(r"^===== teachers: .*make_demo_teachers\.py", (out / "console.txt").read_text(), re.M)
    assert not (out / "teachers.tar.gz").exists()
