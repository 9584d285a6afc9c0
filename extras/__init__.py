"""The kit's optional features, one file each. A script imports a file of this folder only inside the branch of
the flag that uses it (common.extra), so a core run never loads one, and a script copied without this folder
runs until such a flag asks for a file, which then names itself in one error line.

  reproduction.py   paper mode: the reproduction report (Effect Ratio, delta RI, Kendall's tau) beside the paper
  shipped.py        --from-shipped, --cells, and RQ5 on data/demo-results: the demo's results shipped as data
  released.py       --released: the authors' published checkpoints re-ranked as the objectives' rows
  first_stage.py    a collection with neither a shipped run nor --run-dir (the paper's setting, NanoBEIR
                    validation): the kit's own first stage, --retriever splade or bm25
  local_collection.py  --collections my-collection.json: a test collection of your own from plain files
  scale_out.py      --plan (what a grid costs) and --slurm (a SLURM job array, one task per cell)
  unpadded.py       --unpadded: a batch packed into one row, attention kept within each pair
"""
