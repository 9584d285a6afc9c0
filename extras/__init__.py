"""The kit's optional features, one file each. A script imports a file of this folder only inside the branch of
the flag that uses it (common.extra), so a core run never loads one, and a script copied without this folder
runs until such a flag asks for a file, which then names itself in one error line.

  scale_out.py         --plan (what a grid costs, from measured rates) and --slurm, --slurm-options (a SLURM
                       job array, one task per cell)
  token_batches.py     --token-cache (candidates' token ids kept beside the results), --eval-token-budget,
                       --num-workers for re-ranking, and the token ids --unpadded packs
  unpadded.py          --unpadded: a batch packed into one row, attention kept within each pair
  compiled.py          --compile: the encoder compiled by torch.compile
  first_stage.py       a collection with neither a shipped run nor --run-dir (the paper's setting), and the
                       paper's NanoBEIR validation: the kit's own first stage, --retriever splade or bm25
  local_collection.py  --collections my-collection.json: a test collection of your own from plain files
  released.py          --models and --released: cross-encoders trained elsewhere, the authors' checkpoints
  shipped.py           --from-shipped, --cells, and RQ5 on data/demo-results: the demo's results shipped as data
  reproduction.py      paper mode: the reproduction report (Effect Ratio, delta RI, Kendall's tau) beside the paper
  figures.py           --figures: PNG figures beside the tables, and each new cell's training curve (matplotlib)
  model_card.py        python extras/model_card.py <cell folder>: a model card for a cell's model, to share it
"""
