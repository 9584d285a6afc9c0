"""Run an experiment script in the paper's setting against the miniature of tests/paper_miniature.py: the published
files' addresses and md5s point to the test's local server, the first stage's model is a tiny masked LM, and
NanoBEIR model selection runs every 2 steps. Everything else is the script as users run it.

    python tests/paper_path_runner.py exp_rq2_backbones.py --gpu -1 ...   (KIT_TEST_PAPER_WORLD holds the JSON)
"""
import dataclasses
import json
import os
import runpy
import sys

from extras import first_stage
import paper_setup

world = json.loads(os.environ["KIT_TEST_PAPER_WORLD"])
for name, (url, md5) in world["files"].items():
    spec = paper_setup.EXTERNAL_FILES[name]
    paper_setup.EXTERNAL_FILES[name] = dataclasses.replace(spec, url=url, md5=md5 if spec.md5 else None)
first_stage.SPLADE = world["splade"]
paper_setup.RECIPES["paper"]["validate_every"] = 2
# "bert-base" is a tiny random BERT here: a cell of a backbone the paper reports, so that the kit's numbers stand
# beside the paper's means (and the reproduction report is printed), without downloading BERT.
paper_setup.PAPER_BACKBONES["bert-base"] = paper_setup.NAMED_BACKBONES["bert-base"] = dataclasses.replace(
    paper_setup.TINY_BACKBONES["tiny-bert"], name="bert-base")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
