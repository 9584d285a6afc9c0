"""The kit's own first stage: BM25 through bm25s reproduces the shipped BM25 runs' effectiveness; the SPLADE
path (a tiny random masked-LM model here) gives the top-k of a brute-force dot product; runs are cached and
checked."""
import numpy as np
import pytest
import torch

import common
from extras import first_stage
import paper_setup

DEMO = {c.name: c for c in paper_setup.DEMO_COLLECTIONS}


@pytest.mark.parametrize("name", ["scifact", "nfcorpus", "vaswani", "cranfield"])
def test_bm25_reproduces_the_shipped_runs_effectiveness(name):
    collection = DEMO[name]
    qrels = common.load_qrels(common.load_dataset(collection.dataset_id), collection.relevance)
    made = {q: dict(d) for q, d in common.read_run(first_stage.cached_run(collection, "bm25", 100)).items()}
    shipped = {q: dict(d) for q, d in common.read_run(common.REPO / collection.run).items()}
    ours, theirs = (common.evaluate(run, qrels, ["nDCG@10"])[0]["nDCG@10"] for run in (made, shipped))
    assert abs(ours - theirs) < 0.01, (ours, theirs)  # measured: within 0.0071 on all four


def test_a_cached_run_is_reused_and_a_damaged_one_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))
    path = first_stage.cached_run(DEMO["cranfield"], "bm25", 20)
    first = path.read_bytes()
    calls = []
    monkeypatch.setattr(first_stage, "bm25_run", lambda *a: calls.append(1) or {})
    assert first_stage.cached_run(DEMO["cranfield"], "bm25", 20) == path and not calls  # read, md5 checked
    path.write_bytes(first[:-10])  # damaged
    notes = []
    first_stage.cached_run(DEMO["cranfield"], "bm25", 20, log=notes.append)
    assert calls == [1] and "does not match its recorded md5" in notes[0]


def test_splade_retrieves_the_top_k_of_a_brute_force_dot_product(tmp_path, monkeypatch):
    import transformers
    import cross_encoder
    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "cache"))
    # short texts keep it quick: the vocabulary-sized output of every token is what costs
    monkeypatch.setattr(first_stage, "SPLADE_LENGTHS", {"documents": 24, "queries": 12})
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)
    model = transformers.BertForMaskedLM(config).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(cross_encoder.minilm_path())
    model.save_pretrained(tmp_path / "tiny-splade")
    tokenizer.save_pretrained(tmp_path / "tiny-splade")
    collection = DEMO["cranfield"]
    dataset = common.load_dataset(collection.dataset_id)
    queries = dict(list(common.load_queries(dataset).items())[:20])
    run = first_stage.splade_run(dataset, queries, 10, "cpu", str(tmp_path / "tiny-splade"), 32)
    # brute force: every text's dense vector, every query against every document
    docs = sorted((d.doc_id, common.doc_text(d)) for d in dataset.docs_iter())

    def dense(texts, max_length):  # dense vectors, masked max over the tokens, 50 texts at a time
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), 50):
                inputs = tokenizer(texts[start:start + 50], truncation=True, max_length=max_length, padding=True,
                                   return_tensors="pt")
                weights = torch.log1p(torch.relu(model(**inputs).logits)) * inputs["attention_mask"][..., None]
                out.append(weights.amax(dim=1).numpy())
        return np.concatenate(out)

    doc_vectors = dense([t for _, t in docs], first_stage.SPLADE_LENGTHS["documents"])
    for qid, query in queries.items():
        scores = doc_vectors @ dense([query], first_stage.SPLADE_LENGTHS["queries"])[0]
        best = np.argsort(-scores, kind="stable")[:10]
        assert set(run[qid]) == {docs[i][0] for i in best} or np.isclose(scores[best[-1]], sorted(run[qid].values())[0])
        for i in best[:5]:
            assert run[qid][docs[i][0]] == pytest.approx(float(scores[i]), rel=1e-4)
    # the encoded documents are kept: a second collection of the same documents does not encode them again
    assert list((tmp_path / "cache" / "first-stage" / "splade").glob("*.npz"))
