"""Cheaper cells: candidates tokenized once (extras/token_batches.py, --token-cache), batches by token budget, the unpadded path
(extras/unpadded.py), batches tokenized ahead of the training step, and --compile. What is checked is that none of
it changes what the kit computes, or, where it does by rounding, that the cells are kept apart.

Tiny random models on the CPU, one thread. Their weights are redrawn larger (std 0.3) where scores are
compared: at the default init a tiny model scores every pair within 1e-5 of the others, and a comparison
would pass whatever the attention did.
"""
import dataclasses
import hashlib
import json
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import cross_encoder
import grid
import store
import paper_setup
from extras import token_batches, unpadded
from extras.token_batches import PairTokens

ROOT = Path(__file__).resolve().parents[1]
VASWANI = next(c for c in paper_setup.DEMO_COLLECTIONS if c.name == "vaswani")
PACKABLE = ["bert", "roberta", "electra", "modernbert"]
# fp32: measured max |padded - unpadded| 3.3e-6 on these pairs; bf16: 1.0e-2 (the padded batch rounds differently).
# A pair attending across the packed row, positions that do not restart, or ModernBERT's window one token too
# wide each moved scores by 0.6 to 4.5 (scores spread about 0.8).
TOLERANCE = {"fp32": 2e-5, "bf16": 5e-2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs():
    """24 real (query, passage) pairs of 46 to 96+ tokens: Vaswani's BM25 top-4 of 6 queries."""
    data = common.load_eval_data(VASWANI, depth=4, max_queries=6)
    ids = [(q, d) for q in sorted(data.candidates) for d in data.candidates[q]]
    texts = data.documents.get_many({d for _, d in ids})
    return [data.queries[q] for q, _ in ids], [texts[d] for _, d in ids]


def tiny(arch: str, max_length=96, query_max_length=16, spread=True):
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(f"tiny-{arch}"), 0)
    if spread:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 2:
                    parameter.normal_(0, 0.3, generator=generator)
    return model, cross_encoder.make_pair_tokenizer(model, tokenizer, max_length, query_max_length)


def quiet(*args, **kwargs):
    pass


# ================================================================================================
# Stored ids: the tokenizer's own batches, without the tokenizer
# ================================================================================================
@pytest.mark.parametrize("arch,side", [("bert", "right"), ("roberta", "right"), ("bert", "left")])
def test_padding_stored_ids_gives_the_tokenizers_own_batches(pairs, arch, side):
    queries, passages = pairs
    _, pair_tokenizer = tiny(arch, spread=False)
    assert pair_tokenizer.use_token_types == (arch == "bert")  # tiny-roberta has one token type: none are passed
    pair_tokenizer.tokenizer.padding_side = side
    tokens = token_batches.encode_pairs(pair_tokenizer, queries, passages, chunk=5)  # several chunks, joined
    assert len(tokens) == len(queries) and len(set(tokens.lengths)) > 5
    for chosen in ([0, 1, 2, 3], [23, 5, 11], list(range(24))):
        expected = pair_tokenizer([queries[i] for i in chosen], [passages[i] for i in chosen])
        got = token_batches.pad(pair_tokenizer, tokens, chosen)
        assert list(got) == list(expected)
        for name in expected:
            assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), name


def test_token_budget_batches_hold_every_pair_once_within_the_budget():
    lengths = np.array([50, 7, 300, 64, 64, 12, 100, 99, 5, 250])
    for padded in (True, False):
        batches = token_batches.token_budget_batches(lengths, 256, padded)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
        for batch in batches:
            cost = len(batch) * lengths[batch].max() if padded else lengths[batch].sum()
            assert cost <= 256 or len(batch) == 1, (padded, batch)
            assert list(lengths[batch]) == sorted(lengths[batch], reverse=True)
    # padded: 4 x 64 = 256 fits, a fifth pair would not; unpadded: 100 + 99 + 64 = 263 does not fit
    assert [b.tolist() for b in token_batches.token_budget_batches(lengths, 256, padded=True)] == \
        [[2], [9], [6, 7], [3, 4, 0, 5], [1, 8]]
    assert [b.tolist() for b in token_batches.token_budget_batches(lengths, 256, padded=False)] == \
        [[2], [9], [6, 7], [3, 4, 0, 5, 1, 8]]


def test_rerank_reads_stored_tokens_without_the_tokenizer_and_scores_bit_identically(tmp_path, monkeypatch):
    data = common.load_eval_data(VASWANI, depth=10, max_queries=20)
    model, pair_tokenizer = tiny("bert")
    on_the_fly = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents,
                                      batch_size=8, queries_per_chunk=8)
    folder = tmp_path / "tokens"
    first = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents,
                                 batch_size=8, tokens_folder=folder, queries_per_chunk=8)
    assert len(list(folder.glob("*.npz"))) == 3  # one file per chunk of 8 queries
    assert first == on_the_fly

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer must not be called: the tokens are stored")
    monkeypatch.setattr(cross_encoder.PairTokenizer, "__call__", refuse)
    monkeypatch.setattr(token_batches, "encode", refuse)
    again = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents,
                                 batch_size=8, tokens_folder=folder, queries_per_chunk=8)
    assert again == on_the_fly  # same batches, padded from the stored ids: bit-identical scores


def test_token_cache_key_follows_tokenizer_content_lengths_and_texts(tmp_path, pairs, capsys):
    queries, passages = pairs
    model, pair_tokenizer = tiny("bert", spread=False)
    # Every cell saves its own copy of the tokenizer: copies in other folders share their tokens.
    for name in ("a", "b"):
        pair_tokenizer.tokenizer.save_pretrained(tmp_path / name)
    copies = [cross_encoder.make_pair_tokenizer(model, __import__("transformers").AutoTokenizer.from_pretrained(
        tmp_path / name), 96, 16) for name in ("a", "b")]
    key = token_batches.cache_key(copies[0], queries, passages)
    copies[1]([queries[0]], [passages[0]])  # a call sets the backend's truncation state: not part of the key
    assert token_batches.cache_key(copies[1], queries, passages) == key
    assert token_batches.cache_key(cross_encoder.make_pair_tokenizer(model, copies[0].tokenizer, 64, 16),
                                 queries, passages) != key
    assert token_batches.cache_key(cross_encoder.make_pair_tokenizer(model, copies[0].tokenizer, 96, 8),
                                 queries, passages) != key
    assert token_batches.cache_key(copies[0], queries, passages[:-1] + [passages[-1] + " more"]) != key
    assert token_batches.cache_key(copies[0], queries[1:] + queries[:1], passages[1:] + passages[:1]) != key
    # A stored file cut short is tokenized again and rewritten, with a note.
    folder = tmp_path / "tokens"
    stored = token_batches.cached_tokens(folder, copies[0], queries, passages)
    path = folder / f"{key}.npz"
    path.write_bytes(path.read_bytes()[:100])
    again = token_batches.cached_tokens(folder, copies[0], queries, passages)
    assert "could not be read" in capsys.readouterr().err
    assert np.array_equal(again.ids, stored.ids) and np.array_equal(again.offsets, stored.offsets)
    assert np.array_equal(PairTokens.load(path, len(queries)).ids, stored.ids)


def test_with_token_cache_a_collection_is_tokenized_once_for_all_cells(tmp_path, monkeypatch):
    results = store.open_results(tmp_path / "results")
    data = common.load_eval_data(VASWANI, depth=5, max_queries=10)
    configs = [grid.make_config("smoke", "tiny-bert", "bce", seed, "fp32", steps=1) for seed in (0, 1)]
    for cfg in configs:
        grid.train_cell(cfg, results, "cpu", log=quiet, progress=False)
    calls = []
    real_encode = token_batches.encode

    def counted(pair_tokenizer, queries, passages):
        calls.append(len(queries))
        return real_encode(pair_tokenizer, queries, passages)
    monkeypatch.setattr(token_batches, "encode", counted)
    monkeypatch.setattr(cross_encoder.PairTokenizer, "__call__", lambda *a: pytest.fail("tokenized per batch"))
    runs = []
    for cfg in configs:
        store.evaluate_cell(cfg, results, data, "cpu", progress=False, token_cache=True)
        runs.append(common.read_run(next((store.cell_dir(results, cfg) / "eval").glob("*/run.trec.gz"))))
    assert sum(calls) == 50  # the 50 pairs, tokenized for the first cell only
    assert len(list((results / "tokens").glob("*.npz"))) == 1
    assert runs[0] != runs[1]  # two models, two runs, one tokenization


# ================================================================================================
# The unpadded path
# ================================================================================================
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", PACKABLE)
def test_unpadded_scores_equal_padded_scores(pairs, arch, precision):
    queries, passages = pairs
    model, pair_tokenizer = tiny(arch)
    assert unpadded.unsupported_reason(model) is None
    padded = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=8, precision=precision)
    lengths = token_batches.encode_pairs(pair_tokenizer, queries, passages).lengths
    batches = token_batches.token_budget_batches(lengths, 400, False)
    assert max(map(len, batches)) >= 4  # pairs really share a packed row
    packed = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, precision=precision, unpad=True,
                                       token_budget=400)
    assert packed.dtype == np.float32 and packed.std() > 0.3
    np.testing.assert_allclose(packed, padded, rtol=0, atol=TOLERANCE[precision])


def test_padded_token_budget_batches_score_like_pair_count_batches(pairs):
    queries, passages = pairs
    model, pair_tokenizer = tiny("bert")
    by_count = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=8)
    by_tokens = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, token_budget=300)
    np.testing.assert_allclose(by_tokens, by_count, rtol=0, atol=TOLERANCE["fp32"])


def test_deberta_cannot_be_packed_and_runs_padded_with_a_note(pairs, capsys):
    queries, passages = pairs
    model, pair_tokenizer = tiny("deberta")
    assert "disentangled" in unpadded.unsupported_reason(model)
    budget = 64 * pair_tokenizer.max_length  # what --unpadded batches by when no budget is given: 64 full pairs
    padded = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, token_budget=budget)
    asked = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, unpad=True)
    assert np.array_equal(asked, padded)  # the same padded batches: never a packed row
    err = capsys.readouterr().err
    assert err.count("note: --unpadded: deberta-v2 computes disentangled") == 1


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_unpadded_training_gives_the_padded_loss_and_gradients(arch):
    model, pair_tokenizer = tiny(arch, max_length=64)
    model.eval()  # no dropout: the two paths must then compute the same function
    batch = common.Batch(queries=["vitamin d and bone density", "does aspirin prevent stroke"],
                         docs=[["a long passage about bones " * 12, "vitamin"], ["aspirin " * 40, "stroke risk"]],
                         targets=torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    results = []
    for inputs, targets in (pair_tokenizer.batch(batch), unpadded.packed_batch(pair_tokenizer, batch)):
        model.zero_grad()
        logits = unpadded.forward_logits(model, inputs, "cpu")
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float().view(targets.shape), targets)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results
    assert packed_loss == pytest.approx(padded_loss, abs=1e-5)
    assert padded_grads.keys() == packed_grads.keys()
    for name, grad in padded_grads.items():
        scale = grad.abs().max().item() + 1e-12
        assert (packed_grads[name] - grad).abs().max().item() <= 1e-4 * scale + 1e-7, name


def test_unpadded_training_runs_and_is_keyed_apart(tmp_path, monkeypatch):
    monkeypatch.setitem(paper_setup.TRAINING_SETUPS, "demo", dataclasses.replace(
        paper_setup.DEMO_TRAINING, candidates=str(Path(__file__).parent / "fixtures" / "scifact-train-candidates.run")))
    cfg = grid.make_config("smoke", "tiny-modernbert", "infonce", 0, "fp32", steps=3, unpadded=True)
    packed_forwards = []
    real = unpadded.packed_logits
    monkeypatch.setattr(unpadded, "packed_logits", lambda *a: packed_forwards.append(1) or real(*a))
    cross_encoder.train(cfg, tmp_path, log_every=1, progress=False, log=quiet)
    assert len(packed_forwards) == 3
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))


# ================================================================================================
# Keys: what changes scores is keyed, what does not is not
# ================================================================================================
def test_cells_and_evaluations_are_keyed_by_unpadded_and_compile_only_when_on(monkeypatch):
    for mode in ("smoke", "paper"):  # paper: validate_every is set, and stays keyed
        cfg = grid.make_config(mode, "tiny-bert", "bce", 0, "fp32", steps=2)
        # The key of a default cell is the one it had before these options existed: its fields without them.
        before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("unpadded", "compile")}
        with monkeypatch.context() as patched:
            patched.setattr(cross_encoder.TrainConfig, "record", lambda self: dict(before))
            old_key = store.cell_key(cfg)
        assert store.cell_key(cfg) == old_key
    keys = {store.cell_key(dataclasses.replace(cfg, **flags)) for flags in
            ({}, {"unpadded": True}, {"compile": True}, {"unpadded": True, "compile": True})}
    assert len(keys) == 4
    # A checkpoint written before these options existed resumes (its config has no such fields).
    assert cross_encoder.config_record(before) == cfg.record()
    assert cross_encoder.config_record({**before, "unpadded": True}) != cfg.record()
    # An evaluation's folder likewise: the default one keeps the key it had before, the others differ.
    data = types.SimpleNamespace(collection=VASWANI, candidates_name="bm25")
    folders = [store.eval_folder(Path("cell"), data, 96, 16, "fp32", **flags).name for flags in
               ({}, {"unpadded": True}, {"compile": True})]
    old_key = hashlib.sha1(json.dumps([VASWANI.dataset_id, VASWANI.relevance, "bm25", VASWANI.measures, 96, 16,
                                       "fp32"]).encode()).hexdigest()[:10]
    assert folders[0] == f"vaswani__{old_key}" and len(set(folders)) == 3


def test_training_batches_are_tokenized_ahead_in_a_thread(tmp_path, monkeypatch):
    monkeypatch.setitem(paper_setup.TRAINING_SETUPS, "demo", dataclasses.replace(
        paper_setup.DEMO_TRAINING, candidates=str(Path(__file__).parent / "fixtures" / "scifact-train-candidates.run")))
    threads = []
    real_batch = cross_encoder.PairTokenizer.batch

    def batch(self, b):
        threads.append(threading.current_thread().name)
        return real_batch(self, b)
    monkeypatch.setattr(cross_encoder.PairTokenizer, "batch", batch)
    cross_encoder.train(grid.make_config("smoke", "tiny-bert", "bce", 0, "fp32", steps=4), tmp_path,
                        log_every=1, progress=False, log=quiet)
    assert threads == ["kit-batches-ahead"] * 4  # not the training loop's own thread
    # with validation (which may call the same tokenizer) the batches are tokenized in the loop itself
    threads.clear()
    cross_encoder.train(grid.make_config("smoke", "tiny-bert", "bce", 0, "fp32", steps=2), tmp_path / "v",
                        validate=lambda model, pair_tokenizer: 0.0, validate_every=1, progress=False, log=quiet)
    assert threads == [threading.current_thread().name] * 2


def test_compile_option_compiles_the_encoder(tmp_path, monkeypatch):
    monkeypatch.setitem(paper_setup.TRAINING_SETUPS, "demo", dataclasses.replace(
        paper_setup.DEMO_TRAINING, candidates=str(Path(__file__).parent / "fixtures" / "scifact-train-candidates.run")))
    compiled = []

    def fake_compile(fn, **kwargs):  # records the call, runs eagerly (a real compile takes minutes on this CPU)
        compiled.append(kwargs)
        return fn
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = grid.make_config("smoke", "tiny-bert", "bce", 0, "fp32", steps=1, compile=True)
    cross_encoder.train(cfg, tmp_path, progress=False, log=quiet)
    assert compiled == [{"dynamic": True}]


def test_smoke_run_with_unpadded_a_token_budget_and_the_token_cache(tmp_path):
    command = [sys.executable, str(ROOT / "exp_rq1_objectives.py"), "--smoke", "--objectives", "bce",
               "--collections", "vaswani", "--results", str(tmp_path), "--unpadded", "--eval-token-budget", "512",
               "--token-cache"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (cell,) = (tmp_path / "cells").glob("tiny-bert__bce__*")
    assert json.loads((cell / "config.json").read_text())["unpadded"] is True
    assert (cell / "eval").is_dir() and list((tmp_path / "tokens").glob("*.npz"))
    # the token budget and the cache are how to run; --unpadded changes scores by rounding, so it tags the tables
    tables = tmp_path / "tables" / "rq1_smoke_tiny-bert__objectives-bce_collections-vaswani_unpadded-True"
    assert (tables / "rq1_nDCG10.tex").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the flash varlen kernel)")
@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_flash_varlen_scores_equal_padded_scores_on_a_gpu(pairs, arch):
    queries, passages = pairs
    model, pair_tokenizer = tiny(arch)
    model.to("cuda")
    padded = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=8, device="cuda",
                                       precision="bf16")
    packed = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, device="cuda", precision="bf16",
                                       unpad=True, token_budget=400)
    np.testing.assert_allclose(packed, padded, rtol=0, atol=TOLERANCE["bf16"])
