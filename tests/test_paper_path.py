"""The paper's setting, end to end and offline, on a miniature of every file it reads (tests/paper_miniature.py):
download (over a local server) -> md5 check -> the kit's own first stage (SPLADE, a tiny masked LM standing for
SPLADE-v3-DistilBERT) -> training with NanoBEIR model selection -> re-ranking -> tables and verdicts, for every
script, on tiny backbones, one seed and 4 steps, network blocked."""
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import paper_miniature

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "paper_path_runner.py"
COLLECTIONS = ["dl19", "dl20", "msmarco-dev", "arguana", "lotte-writing-search", "robust04"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    md5s = paper_miniature.build(root / "ir_datasets", root / "served")
    splade = paper_miniature.tiny_masked_lm(root / "tiny-splade")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root / "served"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "IR_DATASETS_HOME": str(root / "ir_datasets"), "KIT_CACHE": str(root / "cache"),
           "KIT_TEST_PAPER_WORLD": json.dumps({"files": {name: [f"{address}/{name}", md5] for name, md5 in md5s.items()},
                                               "splade": str(splade)})}
    yield root, env
    server.shutdown()


def run(world, script, *flags):
    root, env = world
    result = subprocess.run([sys.executable, str(RUNNER), str(ROOT / script), *flags, "--results", str(root / "results")],
                            cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{script}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


PAPER = ["--gpu", "-1", "--seeds", "12", "--steps", "4", "--depth", "20", "--collections", *COLLECTIONS]


def test_rq2_in_the_papers_setting_downloads_checks_retrieves_trains_selects_and_tabulates(world):
    root, _ = world
    out = run(world, "exp_rq2_backbones.py", *PAPER, "--backbones", "tiny-bert")
    # the published files: downloaded over HTTP into the kit's cache and md5-checked (ColBERTv2's recorded)
    published = root / "cache" / "published"
    assert sorted(p.name for p in published.iterdir() if not p.name.endswith(".md5")) == sorted(
        json.loads(world[1]["KIT_TEST_PAPER_WORLD"])["files"])
    assert (published / "__colbert__msmarco-passage-train-judged.run.md5").exists()
    # the first stage: SPLADE runs made by the kit, cached with their md5; MS MARCO's passages encoded once
    runs = list((root / "cache" / "first-stage" / "splade").glob("*.run.gz"))
    assert len(runs) == len(COLLECTIONS) + 13  # the test collections and the 13 NanoBEIR sets
    assert all(Path(str(r) + ".md5").exists() for r in runs)
    assert len(list((root / "cache" / "first-stage" / "splade").glob("msmarco__*.npz"))) == 1
    # model selection on NanoBEIR: a curve at steps 2 and 4 in every cell, and the best step kept
    cells = list((root / "results" / "cells").glob("*/training.json"))
    assert len(cells) == 6
    for path in cells:
        training = json.loads(path.read_text())
        assert [point["step"] for point in training["curve"]] == [2, 4]
        assert training["best"]["step"] in (2, 4)
        assert not (path.parent / "checkpoint.pt").exists()  # a finished cell drops its optimizer state
    # the tables say which first stage they re-ranked
    assert "| SPLADE-v3-DistilBERT top-20" in out
    for name in COLLECTIONS:
        assert name in out
    assert "[paper subset: 1 seed, 6 collections, " in out


def test_every_other_script_in_the_papers_setting(world):
    root, _ = world
    out = run(world, "exp_rq1_objectives.py", *PAPER, "--backbone", "bert-base")  # a tiny stand-in (the runner)
    assert "M1 (Morand et al. 2026)" in out and "[paper subset: 1 seed, 6 collections, " in out
    report = out[out.index("RQ1: the kit against the paper (bert-base)"):]
    assert "| backbone   | objective" in report and "Kendall's tau" in report and "RMSE of kit - paper" in report
    assert "| bert-base  | infonce" in report
    assert list((root / "results" / "tables").glob("rq1_paper_bert-base*/rq1_reproduction.json"))
    out = run(world, "exp_rq3_small_vs_large.py", *PAPER, "--backbones", "tiny-bert", "tiny-electra",
              "--objectives", "bce", "infonce")
    assert "RQ3: small backbone + objective vs larger backbone" in out
    out = run(world, "exp_rq4_llm_distillation.py", *PAPER, "--backbones", "tiny-bert")
    assert "distill_ranknet vs bce" in out
    out = run(world, "exp_kd_vs_cl.py", *PAPER, "--students", "tiny-bert", "--teacher", "tiny-electra")
    assert "KD vs CL summary (paper" in out
    out = run(world, "exp_rq5_summary.py")
    assert "[paper" in out and "every cell in the store: " in out and " queries]" in out
    assert list((root / "results" / "tables").glob("rq5_paper_*/*.tex"))
