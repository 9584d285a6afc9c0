"""The paper's setup, pinned: every value below is written out from the authors' public configs and results
notebook (github.com/xpmir/cross-encoders: core_mini.yaml, core_base_paper.yaml, training_utils.py,
CrossEncoderResults.ipynb at aa4fdf5b), not read from the kit, so that a change to paper_setup.py that
drifts from the paper fails here."""
import dataclasses

import paper_setup
import grid

# (name in the kit, HF checkpoint, learning rate, size class) of the nine backbones, smallest first.
BACKBONES = [
    ("ettin-17m", "jhu-clsp/ettin-encoder-17m", 7e-6, "mini"),
    ("ettin-32m", "jhu-clsp/ettin-encoder-32m", 7e-6, "mini"),
    ("minilm-l12", "microsoft/MiniLM-L12-H384-uncased", 7e-6, "mini"),
    ("ettin-68m", "jhu-clsp/ettin-encoder-68m", 7e-6, "mini"),
    ("bert-base", "bert-base-uncased", 1e-5, "base"),
    ("electra-base", "google/electra-base-discriminator", 1e-5, "base"),
    ("roberta-base", "FacebookAI/roberta-base", 1e-5, "base"),
    ("ettin-150m", "jhu-clsp/ettin-encoder-150m", 1e-5, "base"),
    ("deberta-v3-base", "microsoft/deberta-v3-base", 1e-5, "base"),
]
# The columns of the paper's table: MS MARCO dev, TREC DL 19/20 (judged), the 13 BEIR test sets, the 5 LoTTE
# search test sets, Robust04.
TEST_COLLECTIONS = [
    "msmarco-passage/dev/small", "msmarco-passage/trec-dl-2019/judged", "msmarco-passage/trec-dl-2020/judged",
    "beir/arguana", "beir/climate-fever", "beir/dbpedia-entity/test", "beir/fever/test", "beir/fiqa/test",
    "beir/hotpotqa/test", "beir/nfcorpus/test", "beir/nq", "beir/quora/test", "beir/scidocs", "beir/scifact/test",
    "beir/trec-covid", "beir/webis-touche2020/v2",
    *[f"lotte/{domain}/test/search" for domain in ("writing", "recreation", "science", "technology", "lifestyle")],
    "disks45/nocr/trec-robust-2004",
]


def test_the_nine_backbones_with_their_checkpoints_and_learning_rates():
    found = [(b.name, b.checkpoint, b.learning_rate, b.size) for b in paper_setup.PAPER_BACKBONES.values()]
    assert found == BACKBONES


def test_the_batch_of_each_objective():
    # Batch 32 (base) / 64 (mini): triples for bce, hinge and margin_mse; 1 positive + 7 negatives for
    # InfoNCE with 8 passages a query (normalize_docs_per_batch: 32 // 8 = 4 queries); 1 query x 50 passages
    # (RankZephyr's list) for distill_ranknet and adr_mse.
    expected = {"base": {"pairs": (32, 2), "groups": (4, 8), "lists": (1, 50)},
                "mini": {"pairs": (64, 2), "groups": (8, 8), "lists": (1, 50)}}
    family = {"bce": "pairs", "hinge": "pairs", "margin_mse": "pairs", "infonce": "groups",
              "distill_ranknet": "lists", "adr_mse": "lists"}
    for backbone, size in (("bert-base", "base"), ("ettin-17m", "mini")):
        for objective, kind in family.items():
            cfg = grid.make_config("paper", backbone, objective, 12, "bf16")
            assert (cfg.batch_queries, cfg.group_size) == expected[size][kind], (backbone, objective)


def test_steps_warmup_seeds_lengths_optimizer_and_depth():
    cfg = grid.make_config("paper", "bert-base", "infonce", 12, "bf16")
    assert (cfg.steps, cfg.warmup_steps) == (200_000, 5_000)  # 2000 epochs of 100 steps; linear warm-up 5k
    assert cfg.learning_rate == 1e-5 and cfg.weight_decay == 0.0 and cfg.max_grad_norm == 1.0
    assert cfg.max_length == 512  # max_length None: the backbone's own maximum
    assert paper_setup.PAPER_SEEDS == [12, 13, 14]  # nb_repetitions 3 from seed 12
    assert paper_setup.RECIPES["paper"]["rerank_depth"] == 1000  # SPLADE-v3-DistilBERT top-1000
    assert paper_setup.PAPER_TRAINING.candidate_depth == 500  # InfoNCE negatives: ColBERTv2 top-500
    # each triple once: the first steps x batch triples of the shuffled published file
    assert dataclasses.asdict(grid.make_config("paper", "bert-base", "bce", 12, "bf16"))["max_examples"] == 32 * 200_000


def test_the_test_collections_are_the_papers_columns():
    assert sorted(c.dataset_id for c in paper_setup.PAPER_COLLECTIONS) == sorted(TEST_COLLECTIONS)
    groups = {c.dataset_id: c.group for c in paper_setup.PAPER_COLLECTIONS}
    assert [d for d, g in groups.items() if g == "in-domain"] == TEST_COLLECTIONS[1:3] + TEST_COLLECTIONS[:1]
    assert sum(g == "BEIR" for g in groups.values()) == 13 and sum(g == "LoTTE" for g in groups.values()) == 5


def test_the_published_teacher_files_and_their_checksums():
    files = paper_setup.EXTERNAL_FILES
    assert files["bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv"].md5 == "4d99696386f96a7f1631076bcc53ac3c"
    assert files["__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run"].md5 == \
        "49f8dbf2c1ee7a2ca1fe517eda528af6"
    assert "12528410" in files["__colbert__msmarco-passage-train-judged.run"].url
