"""The demo's shipped results (data/demo-results): checked by their checksums, they rebuild the README's demo
tables exactly, offline and without training, and are never written to."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from extras import shipped

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- shipped: (?P<command>[^>]+) -->\n(?P<table>.*?)\n<!-- /shipped -->", re.S)


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_the_shipped_folder_is_small_and_every_checksum_holds():
    manifest = shipped.verify()
    assert manifest["cells"] and sum(f["bytes"] for f in manifest["files"].values()) < shipped.LIMIT_BYTES
    assert all(c["device"] and c["precision"] for c in manifest["cells"].values())


def test_the_readme_demo_tables_are_what_the_shipped_results_rebuild(tmp_path):
    blocks = list(BLOCK.finditer((ROOT / "README.md").read_text()))
    assert blocks, "the README marks its shipped tables with <!-- shipped: <command> -->"
    for block in blocks:
        args = block["command"].split()
        assert args[0].endswith(".py") and "--from-shipped" in args
        done = run([str(ROOT / args[0]), *args[1:], "--results", str(tmp_path / "r")], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        first = done.stdout.index("— nDCG@10")  # the first table the command prints
        printed = table_lines(done.stdout[first:].split("\n\n")[0])
        assert table_lines(block["table"]) == printed, block["command"]
        assert not list((tmp_path / "r" / "cells").glob("*/model"))  # nothing was trained


def test_a_cell_not_shipped_is_refused_before_any_work(tmp_path):
    done = run([str(ROOT / "exp_rq1_objectives.py"), "--demo", "--from-shipped", "--precision", "bf16",
                "--objectives", "bce", "distill_ranknet", "--collections", "scifact", "--results", str(tmp_path / "r")],
               tmp_path)
    assert done.returncode == 2 and done.stderr.count("error:") == 1, done.stderr[-2000:]
    assert "not measured yet" in done.stderr and "distill_ranknet seed 12" in done.stderr
    assert not (tmp_path / "r" / "cells").exists()


def test_rq5_reads_shipped_results_in_place_and_refuses_a_damaged_file(tmp_path):
    before = {p: p.stat().st_mtime_ns for p in shipped.SHIPPED.rglob("*")}
    done = run([str(ROOT / "exp_rq5_summary.py"), "--results", str(shipped.SHIPPED), "--tables", str(tmp_path / "t")],
               tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "M1 (" in done.stdout and (tmp_path / "t" / "rq5_verdicts" / "rq5_verdicts.json").exists()
    # RQ5 reads SciFact as the demo does (in domain), so its M1 judges the cells RQ1 judges, the same way
    assert "cells: 1 backbone (minilm-l6) x in-domain" in done.stdout and " x out-of-domain" not in done.stdout
    assert {p: p.stat().st_mtime_ns for p in shipped.SHIPPED.rglob("*")} == before  # nothing written there
    copy = tmp_path / "copy"
    shutil.copytree(shipped.SHIPPED, copy)
    victim = next(copy.glob("cells/*/eval/*/per_query.json"))
    victim.write_text(json.dumps({"nDCG@10": {}}))
    done = run([str(ROOT / "exp_rq5_summary.py"), "--results", str(copy), "--tables", str(tmp_path / "t2")], tmp_path)
    assert done.returncode == 2 and "error:" in done.stderr and "sha256" in done.stderr


def test_export_and_install_keep_a_users_own_cells(tmp_path):
    results = tmp_path / "results"
    shipped.install(results)
    cell = next((results / "cells").glob("*/"))
    (cell / "metrics-of-mine.txt").write_text("mine")
    (cell / "config.json").write_text("{}")
    shipped.install(results)  # the user's cell is left as it is
    assert (cell / "config.json").read_text() == "{}"
    out = tmp_path / "out"
    manifest = shipped.export(results, [c for c in (results / "cells").glob("*/") if c != cell], out)
    assert set(manifest["cells"]) == {c.name for c in (results / "cells").glob("*/")} - {cell.name}
    assert shipped.verify(out) == manifest
    # A cell shipped earlier keeps the kit's commit it was shipped with when the manifest is written again.
    first = next(iter(manifest["cells"]))
    manifest["cells"][first]["kit"] = "0123abc"
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    assert shipped.write_manifest(out)["cells"][first]["kit"] == "0123abc"
    assert shipped.write_manifest(out, shipped_now={first})["cells"][first]["kit"] == shipped.kit_commit()


def test_cells_compares_a_retrained_cell_with_its_shipped_twin(tmp_path):
    """A cell of one's own (here: the shipped bce cell with every query 0.01 higher, as if retrained) against the
    shipped twin: the difference, the paired test, and that one shipped seed leaves the seed spread unknown."""
    results = tmp_path / "r"
    shipped.install(results)
    cell = next(c for c in (results / "cells").glob("minilm-l6__bce__seed12__*")
                if json.loads((c / "config.json").read_text())["precision"] == "bf16")  # the twin of --precision bf16
    evaluation = next((cell / "eval").glob("scifact__*"))
    per_query = json.loads((evaluation / "per_query.json").read_text())
    per_query["nDCG@10"] = {q: v + 0.01 for q, v in per_query["nDCG@10"].items()}
    (evaluation / "per_query.json").write_text(json.dumps(per_query))
    metrics = json.loads((evaluation / "metrics.json").read_text())  # consistent, or the store sets it aside
    metrics["nDCG@10"] = sum(per_query["nDCG@10"].values()) / len(per_query["nDCG@10"])
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    args = ["--demo", "--precision", "bf16", "--objectives", "bce", "infonce", "--collections", "scifact",
            "--results", str(results)]
    done = run([str(ROOT / "exp_rq1_objectives.py"), *args, "--cells", "bce:12"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("bce:12 scifact"))
    assert "difference +0.0100" in line and "p = 0" in line and "seed spread unknown (one shipped seed)" in line
    done = run([str(ROOT / "exp_rq1_objectives.py"), *args, "--cells", "infonce:13"], tmp_path)
    assert done.returncode == 2 and "no shipped twin for infonce:13" in done.stderr
