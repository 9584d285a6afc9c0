"""A model card for a trained cell, written when you share its model: python extras/model_card.py <cell folder>...

Each cell's model/ folder is a Hugging Face model; this writes its README.md: how it was trained, on what, how to
score with it in plain transformers, every evaluation stored in the cell so far, and what to cite. Rerun it after
more evaluations to list them too. A grid run never writes cards (nothing to share yet).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a file: the kit's modules sit one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import cross_encoder  # noqa: E402
import losses  # noqa: E402
import paper_setup  # noqa: E402

CITATIONS = {"Morand et al. 2026": "@article{morand2026reproducing,\n  title={Reproducing and Comparing Distillation "
             "Techniques for Cross-Encoders},\n  author={Morand, Victor and Vast, Mathias and Van Cooten, Basile and "
             "Soulier, Laure and Mothe, Josiane and Piwowarski, Benjamin},\n  journal={arXiv preprint arXiv:2603.03010},"
             "\n  year={2026}\n}",
             "Xu et al. 2025": "@article{xu2025distillation,\n  title={Distillation versus Contrastive Learning: How to "
             "Train Your Rerankers},\n  author={Xu, Zhichao and Huang, Zhiqi and Zhuang, Shengyao and Srikumar, Vivek},"
             "\n  journal={arXiv preprint arXiv:2507.08336},\n  year={2025}\n}"}


def write(cfg, folder: Path) -> None:
    """The cell's model/README.md: how it was trained, on what, how to score with it, what it measured
    (every evaluation stored in the cell so far), and what to cite."""
    model_dir = folder / "model"
    if not model_dir.is_dir():
        return
    setup = paper_setup.TRAINING_SETUPS[cfg.training]
    family = losses.DATA[cfg.objective]
    data = {"pairs": f"triples {setup.triples}" if setup.triples else f"positives paired with negatives from {setup.pair_negatives}",
            "teacher-pairs": f"teacher scores of triples, {cfg.teacher_file()}",
            "groups": f"1 positive + {cfg.group_size - 1} negatives from {setup.candidates} (top {setup.candidate_depth})",
            "teacher-groups": f"teacher scores {cfg.teacher_file()} of groups from {setup.candidates}",
            "lists": f"the teacher's ordering {cfg.teacher_file()}, top {cfg.group_size}"}[family]
    rows = []
    for evaluation in sorted((folder / "eval").glob("*/metrics.json")):
        metrics = json.loads(evaluation.read_text())
        rows.append(f"| {evaluation.parent.name.split('__')[0]} | "
                    + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + " |")
    cite = "Xu et al. 2025" if cfg.objective == "kl" else "Morand et al. 2026"
    settings = "\n".join(f"| {k} | {v} |" for k, v in dataclasses.asdict(cfg).items())
    card = f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [cross-encoder, reranking, {cfg.objective}]
---
# {cfg.backbone} cross-encoder trained with {cfg.objective} (seed {cfg.seed})

A re-ranker trained by the cross-encoder reproducibility kit: one logit per (query, passage), higher is more
relevant. Training queries: `{setup.queries}`; data of {cfg.objective}: {data}; {cfg.steps} steps.

## How to score with it

The score is the raw logit (no sigmoid). The query is cut to {cfg.query_max_length} tokens first, then the pair is
tokenized with only the passage truncated, {cfg.max_length} tokens in all (both recorded in config.json under
`cross_encoder_kit`; the maximum length is the tokenizer's `model_max_length`):

```python
import torch, transformers
model = transformers.AutoModelForSequenceClassification.from_pretrained(PATH).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(PATH)
cut = tokenizer(query, add_special_tokens=False, truncation=True, max_length={cfg.query_max_length},
                return_offsets_mapping=True)["offset_mapping"]
query = query[:cut[-1][1]] if cut else query
inputs = tokenizer([query] * len(passages), passages, truncation="only_second", padding=True, return_tensors="pt")
scores = model(**inputs).logits[:, 0]
```

`sentence_transformers.CrossEncoder(PATH).predict([(query, passage), ...])` gives the same scores when the query
is shorter than {cfg.query_max_length} tokens (it reads the maximum length and the identity activation from the
saved files; it cannot give the query a budget of its own).

## Training configuration

| setting | value |
|---|---|
{settings}

## Evaluation (re-ranking; nDCG@10 and the collection's other measures)

| collection | measures |
|---|---|
{chr(10).join(rows) if rows else "| (none yet) | |"}

## Citation

```bibtex
{CITATIONS[cite]}
```
"""
    common.atomic_write_text(model_dir / "README.md", card)


def main(folders: list[str]) -> None:
    if not folders:
        raise common.KitError("name the cell folders to write cards for, e.g. results/cells/*/")
    for name in folders:
        folder = Path(name)
        if not (folder / "config.json").is_file() or not (folder / "model").is_dir():
            raise common.KitError(f"{folder}: not a finished cell (a results/cells/ folder with config.json and "
                                  f"model/); name one of those")
        fields = json.loads((folder / "config.json").read_text())
        write(cross_encoder.TrainConfig(**{k: v for k, v in fields.items()
                                           if k in cross_encoder.TrainConfig.__dataclass_fields__}), folder)
        print(f"wrote {folder / 'model' / 'README.md'}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except common.KitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
