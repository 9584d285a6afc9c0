"""Engine side of common.py: the training loop (loss goes down, kill-and-resume, NaN stop, bf16), the
tiny backbones of every architecture, re-ranking, and the results store.

Models are the tiny random-initialised backbones ("tiny-bert", ...) on CPU; the only pretrained weights
loaded are all-MiniLM-L6-v2's, once, to check that keep_layers cuts "minilm-l4" to 4 layers. Torch runs
on one thread here: on a small shared CPU, two threads per tiny step are many times slower than one.
"""
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import common
import cross_encoder
import grid
import losses
import paper_setup
import store
from common import KitError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CANDIDATES = FIXTURES / "scifact-train-candidates.run"  # BM25 top-8 of 4 training queries
VASWANI = next(c for c in paper_setup.DEMO_COLLECTIONS if c.name == "vaswani")
ARCHITECTURES = ["bert", "roberta", "electra", "deberta", "modernbert"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_data(monkeypatch):
    """The demo training setup with the fixture run as candidates: 4 training queries, quick to build."""
    monkeypatch.setitem(paper_setup.TRAINING_SETUPS, "demo",
                        dataclasses.replace(paper_setup.DEMO_TRAINING, candidates=str(CANDIDATES)))


def quiet(*args, **kwargs):
    pass


def smoke(backbone="tiny-bert", objective="bce", seed=0, precision="fp32", steps=2, learning_rate=None):
    return grid.make_config("smoke", backbone, objective, seed, precision, steps=steps, learning_rate=learning_rate)


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file
    files = sorted(Path(model_dir).glob("*.safetensors"))
    assert files, f"no safetensors file in {model_dir}"
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def load_trained(model_dir: Path, max_length=64, query_max_length=16):
    import transformers
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model, cross_encoder.make_pair_tokenizer(model, tokenizer, max_length, query_max_length)


# ================================================================================================
# Training: the loss goes down
# ================================================================================================
def test_tiny_model_loss_goes_down(tmp_path, small_data):
    # A random 2-layer model learns nothing general in 30 steps of one query each, so it trains on the
    # four queries of the fixture run (BM25 top-8): 30 steps at lr 1e-2 memorise their positives. Over
    # seeds 0-5 the mean of the last 5 losses ended between 0.02 and 0.55, from ln 4 = 1.386.
    cfg = grid.make_config("smoke", "tiny-bert", "infonce", 0, "fp32", steps=30, learning_rate=1e-2)
    assert (cfg.batch_queries, cfg.group_size) == (1, 4)
    cross_encoder.train(cfg, tmp_path, log_every=1, progress=False, log=quiet)
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 31))
    values = [r["loss"] for r in log]
    assert all(math.isfinite(v) for v in values)
    first, last = float(np.mean(values[:5])), float(np.mean(values[-5:]))
    assert first == pytest.approx(math.log(4), abs=0.05)  # a fresh head scores the 4 candidates alike
    assert last < 0.75 * first, values
    assert log[-1]["lr"] == 0.0  # linear decay to 0 at the last step
    assert (tmp_path / "model").is_dir() and json.loads((tmp_path / "training.json").read_text())["steps"] == 30


# ================================================================================================
# Kill and resume
# ================================================================================================
def stalled_training(cfg, out_dir: Path) -> int:
    """Fork a process that trains `cfg` with checkpoint_every=2 and stalls when it asks for batch 3
    (0-based), i.e. after the checkpoint of step 2 and the log line of step 3; return its pid. A fork
    rather than a fresh interpreter: the child needs no 10 s of imports, and it dies by SIGKILL all the
    same, with no chance to clean up."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        real_batch = common.TrainingData.batch

        def stall(self, step):
            if step >= 3:
                time.sleep(600)
            return real_batch(self, step)

        common.TrainingData.batch = stall
        cross_encoder.train(cfg, out_dir, checkpoint_every=2, log_every=1, progress=False, log=quiet)
        code = 0
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)  # never return into pytest


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    cfg = grid.make_config("smoke", "tiny-bert", "infonce", 0, "fp32", steps=8, learning_rate=1e-2)
    straight, killed = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("killed")
    # The uninterrupted run first: it also builds the scifact docs store, which the child then only reads.
    cross_encoder.train(cfg, straight, log_every=1, progress=False, log=quiet)

    pid = stalled_training(cfg, killed)
    try:
        deadline = time.monotonic() + 120
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = None
                pytest.fail(f"the training process ended (status {status}) before it was killed")
            log_path = killed / "train_log.jsonl"
            logged = log_path.read_text().splitlines() if log_path.exists() else []
            if (killed / "checkpoint.pt").exists() and len(logged) >= 3:
                break
            if time.monotonic() > deadline:
                pytest.fail("the training process wrote no checkpoint within 120 s")
            time.sleep(0.02)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    state = torch.load(killed / "checkpoint.pt", map_location="cpu", weights_only=True)
    killed_at, logged_before = state["step"], [r["step"] for r in read_log(killed)]
    notes = []
    cross_encoder.train(cfg, killed, checkpoint_every=2, log_every=1, progress=False, log=notes.append)
    return SimpleNamespace(cfg=cfg, straight=straight, killed=killed, killed_at=killed_at,
                           logged_before=logged_before, notes=notes)


def test_resume_after_sigkill_continues_with_a_clean_log(resumed):
    cfg = resumed.cfg
    # killed mid-run, after the checkpoint of step 2 and the log line of step 3
    assert (resumed.killed_at, resumed.logged_before) == (2, [1, 2, 3])
    assert any(f"resuming from {resumed.killed / 'checkpoint.pt'} at step {resumed.killed_at}" in n
               for n in resumed.notes)
    log = read_log(resumed.killed)
    assert [r["step"] for r in log] == list(range(1, cfg.steps + 1))  # one line per step, no duplicates
    straight = read_log(resumed.straight)
    # up to the checkpoint the killed run did exactly what the uninterrupted one did
    assert [r["loss"] for r in log[:resumed.killed_at]] == [r["loss"] for r in straight[:resumed.killed_at]]
    assert [r["lr"] for r in log] == [r["lr"] for r in straight]
    assert json.loads((resumed.killed / "training.json").read_text())["steps"] == cfg.steps


def test_resume_after_sigkill_gives_identical_weights(resumed):
    straight, killed = weights(resumed.straight / "model"), weights(resumed.killed / "model")
    assert straight.keys() == killed.keys()
    different = [name for name in straight if not torch.equal(straight[name], killed[name])]
    assert not different, f"{len(different)} of {len(straight)} tensors differ, e.g. {different[0]}"
    # and the final checkpoints agree too, optimizer moments included
    a, b = (torch.load(f / "checkpoint.pt", map_location="cpu", weights_only=True)
            for f in (resumed.straight, resumed.killed))
    assert a["step"] == b["step"] == resumed.cfg.steps
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for index, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)


def test_resumed_model_reranks_like_the_uninterrupted_one(resumed):
    data = common.load_eval_data(VASWANI, depth=10, max_queries=20)
    results = []
    for folder in (resumed.straight, resumed.killed):
        model, pair_tokenizer = load_trained(folder / "model")
        run = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents)
        results.append((run, common.evaluate(run, data.qrels, list(VASWANI.measures))[0]))
    (run_a, metrics_a), (run_b, metrics_b) = results
    assert sum(len(d) for d in run_a.values()) == 200
    assert run_a == run_b
    assert metrics_a == metrics_b


def test_tokenizing_in_worker_processes_gives_the_same_run(resumed, monkeypatch):
    data = common.load_eval_data(VASWANI, depth=10, max_queries=20)
    model, pair_tokenizer = load_trained(resumed.straight / "model")
    in_process = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents, batch_size=8)
    loaders = []

    class RecordingLoader(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            loaders.append(kwargs["num_workers"])
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(torch.utils.data, "DataLoader", RecordingLoader)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    in_workers = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents, batch_size=8,
                               workers=2)
    assert loaders == [2]  # one chunk of 20 queries, tokenized by two worker processes
    assert sum(len(d) for d in in_workers.values()) == 200
    assert in_workers == in_process  # same batches, same order: bit-identical scores
    assert "TOKENIZERS_PARALLELISM" not in os.environ  # only the workers ran single-threaded


# ================================================================================================
# Architectures, precision, layers
# ================================================================================================
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_architecture_trains_and_scores(tmp_path, small_data, arch):
    model, _ = cross_encoder.load_backbone(cross_encoder.get_backbone(f"tiny-{arch}"), 0)
    assert model.config.num_hidden_layers == 2 and model.config.num_labels == 1
    model_dir = cross_encoder.train(smoke(f"tiny-{arch}"), tmp_path, log_every=1, progress=False, log=quiet)
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2]
    model, pair_tokenizer = load_trained(model_dir)
    queries = ["vitamin d and bone density", "does aspirin prevent stroke in adults", "sleep"]
    passages = ["a long passage " * 12, "aspirin", "a study of sleep quality in older adults"]
    scores = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=2)
    assert scores.dtype == np.float32 and scores.shape == (3,) and np.isfinite(scores).all()
    # scores come back in input order, and do not depend on what else was in the (padded) batch
    alone = [cross_encoder.score_pairs(model, pair_tokenizer, [q], [p])[0] for q, p in zip(queries, passages)]
    np.testing.assert_allclose(scores, alone, rtol=1e-4, atol=1e-5)


def test_keep_layers_cuts_minilm_to_four_layers():
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone("minilm-l4"), 0)
    assert model.config.num_hidden_layers == 4
    assert len(model.base_model.encoder.layer) == 4
    inputs = cross_encoder.make_pair_tokenizer(model, tokenizer, 32, 8)(["a query"], ["a passage"])
    with torch.inference_mode():
        assert torch.isfinite(model(**inputs).logits).all()


def test_bf16_training_gives_fp32_logits_to_the_loss(tmp_path, small_data, monkeypatch):
    seen = []
    real = losses.LOSSES["bce"]

    def spy(scores, targets, **kwargs):
        seen.append((scores.dtype, bool(torch.isfinite(scores).all())))
        return real(scores, targets, **kwargs)

    monkeypatch.setitem(losses.LOSSES, "bce", spy)
    cross_encoder.train(smoke(precision="bf16"), tmp_path, log_every=1, progress=False, log=quiet)
    assert seen == [(torch.float32, True)] * 2
    assert all(math.isfinite(r["loss"]) for r in read_log(tmp_path))


def test_bf16_scores_keep_the_order_the_model_gives():
    """On real demo pairs (the BM25 top-20 of 5 SciFact test queries, all-MiniLM-L6-v2 with its seed-0 head),
    bf16 scoring must not put candidates of a query on one score where fp32 tells them apart: a tie is
    ordered by the document id, not by the model."""
    scifact = next(c for c in paper_setup.DEMO_COLLECTIONS if c.name == "scifact")
    data = common.load_eval_data(scifact, depth=20, max_queries=5)  # few pairs: bf16 is emulated on some CPUs
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone("minilm-l6"), 0)
    pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, 128, 32)
    pairs = [(q, d) for q in sorted(data.candidates) for d in data.candidates[q]]
    texts = data.documents.get_many({d for _, d in pairs})
    queries, passages = [data.queries[q] for q, _ in pairs], [texts[d] for _, d in pairs]
    distinct = {}
    for precision in ("fp32", "bf16"):
        scores = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, precision=precision)
        per_query = defaultdict(set)
        for (q, _), score in zip(pairs, scores.tolist()):
            per_query[q].add(score)
        distinct[precision] = sum(map(len, per_query.values()))
    assert distinct["fp32"] == len(pairs) == 100
    assert distinct["bf16"] >= distinct["fp32"] - 2, distinct


@pytest.mark.parametrize("log_every", [1, 4])  # 4: the loss of step 3 is only read back at step 4
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, small_data, monkeypatch, log_every):
    calls = []
    real = losses.LOSSES["bce"]

    def poisoned(scores, targets, **kwargs):
        calls.append(1)
        loss = real(scores, targets, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setitem(losses.LOSSES, "bce", poisoned)
    cfg = smoke(steps=5)
    with pytest.raises(KitError, match=r"loss became non-finite at step 3"):
        cross_encoder.train(cfg, tmp_path, checkpoint_every=2, log_every=log_every, progress=False, log=quiet)
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2][:2 if log_every == 1 else 0]
    assert not (tmp_path / "model").exists()
    # a checkpoint of another configuration is refused, not silently mixed in
    with pytest.raises(KitError, match="another configuration"):
        cross_encoder.train(dataclasses.replace(cfg, seed=1), tmp_path, progress=False, log=quiet)


class _RunsCode:
    """Unpickling this object runs a shell command: what a planted checkpoint would do with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_is_refused_and_never_runs_code(tmp_path, small_data):
    """A results folder can be shared or sent: a checkpoint whose unpickling would run code is not loaded; the
    user gets one line naming the file, and once it is removed the cell is computed."""
    marker = tmp_path / "code-ran"
    cfg = smoke(steps=2)
    out = tmp_path / "cell"
    out.mkdir()
    torch.save({"step": 1, "config": cfg.record(), "payload": _RunsCode(marker)}, out / "checkpoint.pt")
    with pytest.raises(KitError, match=rf"{re.escape(str(out / 'checkpoint.pt'))} holds objects other than tensors"):
        cross_encoder.train(cfg, out, progress=False, log=quiet)
    assert not marker.exists() and (out / "checkpoint.pt").exists()  # not run, not deleted: the user decides
    (out / "checkpoint.pt").unlink()
    cross_encoder.train(cfg, out, progress=False, log=quiet)
    assert (out / "model").exists() and not marker.exists()


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(KitError) as error:
        cross_encoder.get_backbone("no-such-backbone")
    for name in ("tiny-bert", "minilm-l6", "minilm-l4", "bert-base", "ettin-17m"):
        assert name in str(error.value)


def test_choose_device():
    assert cross_encoder.choose_device(None) == cross_encoder.choose_device(-1) == "cpu"
    if torch.cuda.is_available() and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a fourth GPU")
    with pytest.raises(KitError, match="--gpu 3"):
        cross_encoder.choose_device(3)


# ================================================================================================
# The results store
# ================================================================================================
@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    results = store.open_results(tmp_path_factory.mktemp("results"))
    cfg = smoke()
    seen = {}
    real_train = cross_encoder.train

    def watched(cfg, out_dir, *args, **kwargs):
        model_dir = real_train(cfg, out_dir, *args, **kwargs)
        seen["done_when_train_returned"] = (out_dir / "DONE").exists()
        return model_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cross_encoder, "train", watched)
        model_dir = grid.train_cell(cfg, results, "cpu", log=quiet, progress=False)
    return SimpleNamespace(results=results, cfg=cfg, model_dir=model_dir, seen=seen)


def refuse(*args, **kwargs):
    raise AssertionError("must not be called: the results are reused")


def test_train_cell_writes_done_last_and_is_reused(cell, monkeypatch):
    folder = store.cell_dir(cell.results, cell.cfg)
    assert cell.model_dir == folder / "model" and cell.model_dir.is_dir()
    assert cell.seen == {"done_when_train_returned": False}
    assert (folder / "DONE").exists()
    assert json.loads((folder / "config.json").read_text()) == dataclasses.asdict(cell.cfg)
    assert (cell.results / "FORMAT").read_text().strip() == str(store.RESULTS_FORMAT)
    monkeypatch.setattr(cross_encoder, "train", refuse)
    assert grid.train_cell(cell.cfg, cell.results, "cpu", log=quiet) == folder / "model"


def test_cell_without_done_is_trained_again(tmp_path, monkeypatch):
    cfg = smoke(seed=7)
    folder = store.cell_dir(tmp_path, cfg)
    (folder / "model").mkdir(parents=True)  # an interrupted cell: a model folder, but no DONE
    calls = []

    def fake_train(cfg, out_dir, device="cpu", **kwargs):
        calls.append(out_dir)
        assert not (out_dir / "DONE").exists()
        return out_dir / "model"

    monkeypatch.setattr(cross_encoder, "train", fake_train)
    assert grid.train_cell(cfg, tmp_path, "cpu", log=quiet) == folder / "model"
    assert calls == [folder] and (folder / "DONE").exists()


def test_cell_key_follows_the_teacher_file_content_not_its_folder(tmp_path):
    # A moved results store (or --results spelled another way) keeps its distilled cells; a rebuilt
    # teacher file with other scores does not reuse them.
    here, moved = tmp_path / "results/teachers/t", tmp_path / "elsewhere/results/teachers/t"
    for folder in (here, moved):
        folder.mkdir(parents=True)
        (folder / "scores.run").write_text("q1 Q0 d1 1 3.5 t\nq1 Q0 d2 2 1.0 t\n")
    keyed = lambda path: store.cell_key(dataclasses.replace(smoke(objective="kl"), teacher_scores=str(path)))
    assert keyed(here / "scores.run") == keyed(moved / "scores.run")
    (moved / "scores.run").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 1.0 t\n")
    assert keyed(here / "scores.run") != keyed(moved / "scores.run")


def test_open_results_refuses_another_format(tmp_path):
    (tmp_path / "FORMAT").write_text(f"{store.RESULTS_FORMAT + 1}\n")
    with pytest.raises(KitError, match="incompatible version"):
        store.open_results(tmp_path)
    fresh = tmp_path / "fresh"
    assert store.open_results(fresh) == fresh
    assert (fresh / "FORMAT").read_text() == f"{store.RESULTS_FORMAT}\n"
    assert store.open_results(fresh) == fresh  # its own format is accepted


def test_evaluate_cell_results_are_reused(cell, monkeypatch):
    data = common.load_eval_data(VASWANI, depth=5, max_queries=10)
    calls = []
    real_rerank = cross_encoder.rerank

    def counted(*args, **kwargs):
        calls.append(1)
        return real_rerank(*args, **kwargs)

    monkeypatch.setattr(cross_encoder, "rerank", counted)
    first = store.evaluate_cell(cell.cfg, cell.results, data, "cpu", progress=False)
    assert len(calls) == 1
    aggregate, per_query = first
    assert set(aggregate) == set(VASWANI.measures) and all(math.isfinite(v) for v in aggregate.values())
    assert set(per_query["nDCG@10"]) == set(data.qrels)
    folder = next((store.cell_dir(cell.results, cell.cfg) / "eval").iterdir())
    assert {p.name for p in folder.iterdir()} >= {"run.trec.gz", "per_query.json", "metrics.json"}
    assert len(common.read_run(folder / "run.trec.gz")) == 10
    monkeypatch.setattr(cross_encoder, "rerank", refuse)
    assert store.evaluate_cell(cell.cfg, cell.results, data, "cpu", progress=False) == first


def test_an_exported_cell_ranks_the_same_in_transformers_and_sentence_transformers(cell):
    """The saved model records its lengths and raw-logit score: the model card's plain-transformers recipe
    (extras/model_card.py, written on demand) and sentence-transformers' CrossEncoder give the kit's scores
    (queries within their budget)."""
    import transformers
    model_dir = cell.model_dir
    assert not (model_dir / "README.md").exists()  # a grid run writes no card
    folder = store.cell_dir(cell.results, cell.cfg)
    written = subprocess.run([sys.executable, str(ROOT / "extras" / "model_card.py"), str(folder)],
                             capture_output=True, text=True, timeout=120)
    assert written.returncode == 0 and "wrote" in written.stdout, written.stderr
    card = (model_dir / "README.md").read_text()
    assert "## How to score with it" in card and "raw logit" in card and f"{cell.cfg.objective}" in card
    config = json.loads((model_dir / "config.json").read_text())
    assert config["cross_encoder_kit"]["max_length"] == cell.cfg.max_length == 64
    assert config["cross_encoder_kit"]["query_max_length"] == cell.cfg.query_max_length
    data = common.load_eval_data(VASWANI, depth=10, max_queries=6)
    pairs = [(data.queries[q], d) for q in sorted(data.candidates) for d in data.candidates[q]]
    texts = data.documents.get_many({d for _, d in pairs})
    queries, passages = [q for q, _ in pairs], [texts[d] for _, d in pairs]
    model, pair_tokenizer = cross_encoder.load_trained(model_dir, cell.cfg.max_length, cell.cfg.query_max_length)
    kit = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages)
    # plain transformers, as the card says
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    scores = []
    with torch.inference_mode():
        for query, passage in zip(queries, passages):
            cut = tokenizer(query, add_special_tokens=False, truncation=True, max_length=16,
                            return_offsets_mapping=True)["offset_mapping"]
            query = query[:cut[-1][1]] if cut else query
            inputs = tokenizer([query], [passage], truncation="only_second", padding=True, return_tensors="pt")
            scores.append(float(plain(**inputs).logits[0, 0]))
    np.testing.assert_allclose(scores, kit, rtol=1e-4, atol=1e-5)
    assert list(np.argsort(-np.array(scores), kind="stable")) == list(np.argsort(-kit, kind="stable"))
    sentence_transformers = pytest.importorskip("sentence_transformers")
    short = [i for i, q in enumerate(queries) if len(tokenizer(q, add_special_tokens=False)["input_ids"]) <= 16]
    assert len(short) >= 20
    st = sentence_transformers.CrossEncoder(str(model_dir), device="cpu")
    predicted = st.predict([(queries[i], passages[i]) for i in short], batch_size=8, convert_to_numpy=True)
    np.testing.assert_allclose(predicted, kit[short], rtol=1e-4, atol=1e-5)
