"""--released, offline: local folders in the Hugging Face cache layout stand in for the authors' checkpoints on the
hub (tiny random BERTs); each is re-ranked as its objective's row, with the loss it records, and nothing trains."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import paper_setup
from extras import released

ROOT = Path(__file__).resolve().parents[1]


def test_the_naming_rule_covers_the_grid():
    ids = {released.checkpoint_id(b, o) for b in paper_setup.PAPER_BACKBONES for o in paper_setup.RELEASED_LOSSES}
    assert len(ids) == 54
    assert released.checkpoint_id("bert-base", "bce") == "xpmir/cross-encoder-bert-base-BCE"
    assert released.checkpoint_id("deberta-v3-base", "distill_ranknet") == "xpmir/cross-encoder-DeBERTav3-DistillRankNET"
    assert released.checkpoint_id("ettin-150m", "adr_mse") == "xpmir/cross-encoder-ettin-150m-ADR-MSE"
    with pytest.raises(Exception, match="no 'minilm-l6' model"):
        released.checkpoint_id("minilm-l6", "bce")


def stand_in(hub: Path, name: str, loss_yaml: str | None, card_loss: str | None) -> Path:
    """hub/models--<owner>--<name>/snapshots/<hash>/ with a tiny BERT, and refs/main naming the snapshot."""
    import cross_encoder
    folder = hub / f"models--{name.replace('/', '--')}"
    commit = hashlib.sha1(name.encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone("tiny-bert"), 3)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    if loss_yaml is not None:
        (snapshot / "config.yaml").write_text(f"model:\n  max_length: 512\n{loss_yaml}\n")
    if card_loss is not None:
        (snapshot / "README.md").write_text(f"# {name}\n\nA cross-encoder trained on Ms-Marco using loss `{card_loss}`.\n")
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = tmp_path_factory.mktemp("hub")
    stand_in(hub, "xpmir/cross-encoder-bert-base-BCE", "loss: pointwise BCE", None)
    stand_in(hub, "xpmir/cross-encoder-bert-base-infoNCE", "loss:\n  __xpmtype__: InfoNCE (in-batch)", None)
    stand_in(hub, "xpmir/cross-encoder-bert-base-Hinge", None, "PairwiseHinge")
    return hub


def run(hub, tmp_path, *flags):
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "exp_rq1_objectives.py"), "--smoke", "--released",
                           "--backbone", "bert-base", "--collections", "vaswani", "--results", str(tmp_path / "r"),
                           *flags], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_released_checkpoints_are_reranked_as_the_objectives_rows(hub, tmp_path):
    done = run(hub, tmp_path, "--objectives", "bce", "infonce", "hinge")
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("RQ1: objectives on bert-base"):done.stdout.index("\\begin{table}")]
    assert "released checkpoints: one per row, the best of the paper's 3 seeds, not a mean" in table
    assert "| bce " in table and "| infonce " in table and "| hinge " in table
    assert "infonce: xpmir/cross-encoder-bert-base-infoNCE, recorded loss: InfoNCE (in-batch)" in done.stdout
    assert "bce: xpmir/cross-encoder-bert-base-BCE, recorded loss: pointwise BCE" in done.stdout
    assert "hinge: xpmir/cross-encoder-bert-base-Hinge, recorded loss: PairwiseHinge" in done.stdout  # from the card
    assert "M1 (Morand et al. 2026)" in done.stdout and "[smoke: 1 seed, 1 collection" in done.stdout
    assert not (tmp_path / "r" / "cells").exists()  # nothing trained
    (record,) = (tmp_path / "r" / "tables").glob("*/released.json")
    assert {r["objective"] for r in json.loads(record.read_text())} == {"bce", "infonce", "hinge"}
    records = json.loads(next((tmp_path / "r" / "tables").glob("*/rq1_nDCG10.json")).read_text())
    assert any(r["system"] == "infonce" and r["pvalue"] is not None for r in records)  # tested against bce


def test_missing_ids_stop_before_any_work_unless_skipped(hub, tmp_path):
    done = run(hub, tmp_path, "--objectives", "bce", "margin_mse", "adr_mse")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "xpmir/cross-encoder-bert-base-MarginMSE" in lines[0] and "ADR-MSE" in lines[1]
    assert not (tmp_path / "r" / "models").exists()
    done = run(hub, tmp_path, "--objectives", "bce", "margin_mse", "--skip-missing")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "note: --released: xpmir/cross-encoder-bert-base-MarginMSE not found" in done.stdout
    assert "| bce " in done.stdout and "| margin_mse " not in done.stdout


def test_plan_lists_the_checkpoints_and_their_hours(hub, tmp_path):
    done = run(hub, tmp_path, "--objectives", "bce", "infonce", "--plan")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "xpmir/cross-encoder-bert-base-BCE" in done.stdout and "CPU-hours of re-ranking" in done.stdout
    assert not (tmp_path / "r" / "models").exists()


def test_rq2_released_rows_by_backbone(hub, tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "exp_rq2_backbones.py"), "--smoke", "--released", "--backbones",
                           "bert-base", "--objectives", "bce", "infonce", "--collections", "vaswani", "--results",
                           str(tmp_path / "r")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RQ2: objectives on bert-base (smoke, fp32) — released checkpoints" in done.stdout
    assert "infonce: xpmir/cross-encoder-bert-base-infoNCE, recorded loss: InfoNCE (in-batch)" in done.stdout
    assert not (tmp_path / "r" / "cells").exists()
