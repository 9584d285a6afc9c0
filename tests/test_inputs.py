"""Every input honoured or refused up front. One table: a command line (and the files it names) -> the exit
status and the first line of stderr that starts with "error:" or "note:". The README's table "When something
goes wrong" lists the same cases. Then what the table cannot show: nothing is computed before a refusal, the
user's ir_datasets home is left alone, explicit flags are honoured, local backbones are keyed by content."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
RQ1 = str(ROOT / "exp_rq1_objectives.py")
SCIFACT_PAIRS = (ROOT / "tests" / "fixtures" / "hofstaetter-teacher-pairs.tsv").read_text()


def run(*flags, env=None, script=RQ1, timeout=600):
    return subprocess.run([sys.executable, script, *flags], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def first_line(result) -> str:
    return next((line for line in result.stderr.splitlines() if line.startswith(("error:", "note:"))), "")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    (root / "bad_pairs.tsv").write_text("9.1\t1.2\t4\t123\t456\n1.0\tabc\t4\t123\t789\n")
    (root / "nan_pairs.tsv").write_text("nan\t1.2\t0\t31715818\t26071782\n")
    (root / "huge_pairs.tsv").write_text(SCIFACT_PAIRS.replace("12.5000", "1e300"))
    (root / "large_pairs.tsv").write_text(SCIFACT_PAIRS.replace("12.5000", "1e20").replace("12.2500", "1e20"))
    (root / "foreign_docs.tsv").write_text("9.1\t1.2\t0\t31715818\tnot-a-doc\n")
    (root / "foreign_queries.tsv").write_text("9.1\t1.2\tq-elsewhere\t31715818\t26071782\n")
    (root / "empty_pairs.tsv").write_text("")
    for name, lines in {"bad_run": "1 Q0 31715818 1 3.5 bm25\n1 Q0 123 2 2.5 bm25\n1 Q0 oops\n",
                        "nan_run": "1 Q0 31715818 1 nan bm25\n",
                        "foreign_run": "x1 Q0 31715818 1 3.5 other\n",
                        "foreign_docs_run": "1 Q0 31715818 1 3.5 bm25\n1 Q0 no-such-doc 2 2.5 bm25\n",
                        "empty_run": ""}.items():
        (root / name).mkdir()
        (root / name / "scifact.run").write_text(lines)
    (root / "no_run").mkdir()
    (root / "paper_runs").mkdir()
    for name in ("nfcorpus", "robust04"):
        (root / "paper_runs" / f"{name}.run").write_text("1 Q0 d1 1 3.5 bm25\n")
    partial = root / "partial_home" / "disks45" / "corpus" / "NEWS_data" / "LATIMES"  # 1 of the 2,295 files
    partial.mkdir(parents=True)
    (partial / "LA010189").write_text("<DOC>\n<DOCNO> LA010189-0001 </DOCNO>\n<TEXT>\nrain\n</TEXT>\n</DOC>\n")
    (root / "old_results").mkdir()
    (root / "old_results" / "FORMAT").write_text("1\n")
    (root / "a_file").write_text("not a folder\n")
    (root / "no_submitit" / "submitit").mkdir(parents=True)  # a Python where submitit is not installed
    (root / "no_submitit" / "submitit" / "__init__.py").write_text("raise ImportError('No module named submitit')\n")
    # a kit cache whose demo copy of the Cranfield qrels has a grade of 2.5
    qrels = root / "cache_bad_qrels" / "ir_datasets_demo" / "cranfield" / "qrels.txt"
    qrels.parent.mkdir(parents=True)
    qrels.write_text((ROOT / "data" / "ir_datasets_home" / "cranfield" / "qrels.txt").read_text()
                     .replace("1 184 2", "1 184 2.5", 1))
    for name, lines in {"twice_run": "1 Q0 31715818 1 3.5 bm25\n1 Q0 123 2 2.5 bm25\n1 Q0 31715818 3 1.5 bm25\n",
                        "same_twice_run": "1 Q0 31715818 1 3.5 bm25\n1 Q0 31715818 1 3.5 bm25\n"
                        }.items():
        (root / name).mkdir()
        (root / name / "scifact.run").write_text(lines)
    # local collections, each with one fault (and a good one, "local")
    docs = "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"passage {i}"}) + "\n" for i in range(6))
    good = {"queries.tsv": "q1\taspirin\nq2\tweather\n", "qrels.txt": "q1 0 d0 1\nq2 0 d1 1\n",
            "corpus.jsonl": docs, "run.trec": "".join(f"{q} Q0 d{i} {i + 1} {9 - i} bm25\n" for q in ("q1", "q2")
                                                       for i in range(6))}
    faults = {"local": {}, "local_twin": {},
              "qrels_twice": {"qrels.txt": "q1 0 d0 1\nq2 0 d1 1\nq1 0 d0 2\n"},
              "query_twice": {"queries.tsv": "q1\taspirin\nq2\tweather\nq1\tstroke\n"},
              "doc_twice": {"corpus.jsonl": docs + json.dumps({"_id": "d2", "text": "another text"}) + "\n"},
              "query_missing": {"queries.tsv": "q1\taspirin\n"},
              "blank_query": {"queries.tsv": "q1\taspirin\nq2\t   \n"},
              "latin1_docs": {"corpus.jsonl": docs.replace("passage 3", "caf\xe9 3")}}
    for name, changed in faults.items():
        (root / name).mkdir()
        for file, text in {**good, **changed}.items():
            (root / name / file).write_bytes(text.encode("latin-1" if name == "latin1_docs" else "utf-8"))
        spec = {"name": "mine", "queries": "queries.tsv", "qrels": "qrels.txt", "documents": "corpus.jsonl",
                "run": "run.trec"}
        (root / name / "spec.json").write_text(json.dumps(spec))
    (root / "local" / "number_spec.json").write_text(json.dumps({**spec, "queries": 42}))
    (root / "local" / "latin1_spec.json").write_bytes(json.dumps(spec).replace('"mine"', '"caf\xe9"').encode("latin-1"))
    import cross_encoder  # a bi-encoder (no classification head) and a backbone folder with a cut config.json
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone("tiny-bert"), 3)
    model.base_model.save_pretrained(root / "bi_encoder")
    tokenizer.save_pretrained(root / "bi_encoder")
    model.save_pretrained(root / "cut_backbone")
    tokenizer.save_pretrained(root / "cut_backbone")
    config = root / "cut_backbone" / "config.json"
    config.write_text(config.read_text()[:40])
    return root


SMOKE = ["--smoke", "--objectives", "bce"]
# case: (flags, extra environment, exit status, first error/note line of stderr, up to its variable part)
CASES = {
    "unknown backbone": (SMOKE + ["--backbone", "nope"], {}, 2, "error: unknown backbone 'nope'; valid: ettin-17m"),
    "unknown objective": (["--smoke", "--objectives", "bce", "nope"], {}, 2, "error: unknown objective 'nope'; valid: bce"),
    "unknown collection": (SMOKE + ["--collections", "nope"], {}, 2,
                           "error: unknown collection 'nope'; valid here: scifact"),
    "unknown flag": (SMOKE + ["--stepz", "3"], {}, 2, "error: unrecognized arguments: --stepz 3 (see --help)"),
    "flag of the wrong type": (SMOKE + ["--steps", "ten"], {}, 2, "error: argument --steps: invalid int value: 'ten'"),
    "--steps 0": (SMOKE + ["--steps", "0"], {}, 2, "error: --steps 0: expected a whole number of training steps"),
    "--steps -1": (SMOKE + ["--steps", "-1"], {}, 2, "error: --steps -1: expected a whole number of training steps"),
    "--learning-rate 0": (SMOKE + ["--learning-rate", "0"], {}, 2, "error: --learning-rate 0.0: expected a learning rate"),
    "--learning-rate nan": (SMOKE + ["--learning-rate", "nan"], {}, 2, "error: --learning-rate nan: expected"),
    "--depth -3": (SMOKE + ["--depth", "-3"], {}, 2, "error: --depth -3: expected the number of candidates"),
    "--eval-batch-size 0": (SMOKE + ["--eval-batch-size", "0"], {}, 2, "error: --eval-batch-size 0: expected pairs"),
    "--checkpoint-every 0": (SMOKE + ["--checkpoint-every", "0"], {}, 2, "error: --checkpoint-every 0: expected"),
    "--num-workers -1": (SMOKE + ["--num-workers", "-1"], {}, 2, "error: --num-workers -1: expected"),
    "--eval-token-budget -1": (SMOKE + ["--eval-token-budget", "-1"], {}, 2,
                               "error: --eval-token-budget -1: expected tokens per re-ranking batch"),
    "negative seed": (SMOKE + ["--seeds", "-1"], {}, 2, "error: --seeds -1: expected seeds, each 0 or more"),
    "duplicate seed": (SMOKE + ["--seeds", "12", "12"], {}, 2,
                       "error: --seeds 12 12: 12 is named twice; name each once (a seed repeated is not a second"),
    "duplicate objective": (["--smoke", "--objectives", "bce", "bce"], {}, 2, "error: --objectives bce bce: bce is named"),
    "--demo and --smoke": (SMOKE + ["--demo"], {}, 2, "error: --demo and --smoke together: pass one of them"),
    "--alpha 5": (SMOKE + ["--alpha", "5"], {}, 2, "error: --alpha 5.0: expected a significance level"),
    "bad precision": (SMOKE + ["--precision", "fp8"], {}, 2, "error: --precision fp8: expected auto, bf16 or fp32"),
    "no such GPU": (SMOKE + ["--gpu", "3"], {}, 2, "error: --gpu 3: this machine has 0 CUDA device(s)"),
    "paper mode without --gpu": (["--objectives", "bce"], {}, 2, "error: the paper's setting trains 200k steps per cell"),
    "incompatible results folder": (SMOKE + ["--results", "{tmp}/old_results"], {}, 2,
                                    "error: {tmp}/old_results was written by an incompatible version of the kit"),
    "results folder that cannot be written": (SMOKE + ["--results", "{tmp}/a_file/results"], {}, 2,
                                              "error: --results {tmp}/a_file/results: cannot write there"),
    "missing teacher file": (["--smoke", "--objectives", "margin_mse", "--teacher-pairs", "{tmp}/missing.tsv"], {}, 2,
                             "error: {tmp}/missing.tsv: no such file (needed by margin_mse)"),
    "malformed teacher line": (["--smoke", "--objectives", "margin_mse", "--teacher-pairs", "{tmp}/bad_pairs.tsv"], {},
                               2, "error: {tmp}/bad_pairs.tsv, line 2: malformed teacher line"),
    "NaN in a teacher file": (["--smoke", "--objectives", "margin_mse", "--teacher-pairs", "{tmp}/nan_pairs.tsv"], {}, 2,
                              "error: {tmp}/nan_pairs.tsv, line 1: malformed teacher line (score 'nan' is not a finite"),
    "empty teacher file": (["--smoke", "--objectives", "margin_mse", "--teacher-pairs", "{tmp}/empty_pairs.tsv"], {},
                           2, "error: {tmp}/empty_pairs.tsv: the teacher file is empty"),
    "teacher file of other queries": (["--smoke", "--objectives", "margin_mse", "--teacher-pairs",
                                       "{tmp}/foreign_queries.tsv"], {}, 2,
                                      "error: {tmp}/foreign_queries.tsv: none of its query ids is a training query"),
    "teacher file of other documents": (["--smoke", "--objectives", "margin_mse", "--teacher-pairs",
                                         "{tmp}/foreign_docs.tsv"], {}, 2,
                                        "error: {tmp}/foreign_docs.tsv: 1 of its document ids are not in "
                                        "beir/scifact/train, e.g. 'not-a-doc'"),
    "malformed run line": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/bad_run"], {}, 2,
                           "error: {tmp}/bad_run/scifact.run, line 3: malformed run line"),
    "NaN in a run": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/nan_run"], {}, 2,
                     "error: {tmp}/nan_run/scifact.run, line 1: malformed run line (score 'nan' is not a finite"),
    "empty run": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/empty_run"], {}, 2,
                  "error: {tmp}/empty_run/scifact.run: the run is empty"),
    "run of another collection": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/foreign_run"], {}, 2,
                                  "error: {tmp}/foreign_run/scifact.run: none of its query ids is a judged query of "
                                  "beir/scifact/test"),
    "run of other documents": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/foreign_docs_run"], {}, 2,
                               "error: {tmp}/foreign_docs_run/scifact.run: 1 of its document ids are not in "
                               "beir/scifact/test, e.g. 'no-such-doc'"),
    "missing run in run dir": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/no_run"], {}, 2,
                               "error: no candidates for scifact: expected {tmp}/no_run/scifact.run"),
    "qrels grade 2.5": (SMOKE + ["--collections", "cranfield"], {"KIT_CACHE": "{tmp}/cache_bad_qrels"}, 2,
                        "error: cranfield: its qrels (relevance grades must be whole numbers) could not be parsed"),
    "a download that fails": (["--gpu", "-1", "--backbone", "tiny-bert", "--objectives", "bce", "--collections",
                               "nfcorpus", "--run-dir", "{tmp}/paper_runs"], {"IR_DATASETS_HOME": "{tmp}/user_home"}, 2,
                              "error: beir/nfcorpus/test: its queries could not be read or downloaded (ConnectionError"),
    "the paper's grid with several things missing": (
        ["--gpu", "-1", "--objectives", "bce", "--collections", "nfcorpus", "robust04", "--run-dir", "{tmp}/no_run"],
        {"IR_DATASETS_HOME": "{tmp}/user_home"}, 2,
        "error: 4 things stand in the way of this grid; nothing was downloaded or trained:"),
    "Robust04 without its licensed documents": (
        ["--gpu", "-1", "--backbone", "tiny-bert", "--objectives", "bce", "--collections", "robust04", "--run-dir",
         "{tmp}/paper_runs"], {"IR_DATASETS_HOME": "{tmp}/user_home"}, 2,
        "error: robust04: the documents of disks45/nocr/trec-robust-2004 come from TREC disks 4 and 5"),
    "Robust04 with part of its documents": (
        ["--gpu", "-1", "--backbone", "tiny-bert", "--objectives", "bce", "--collections", "robust04", "--run-dir",
         "{tmp}/paper_runs"], {"IR_DATASETS_HOME": "{tmp}/partial_home"}, 2,
        "error: robust04: {tmp}/partial_home/disks45/corpus holds 1 of the 2295 source files ir_datasets expects"),
    "a teacher score beyond 32-bit floats": (["--smoke", "--objectives", "margin_mse", "--teacher-pairs",
                                              "{tmp}/huge_pairs.tsv"], {}, 2,
                                             "error: {tmp}/huge_pairs.tsv, line 1: malformed teacher line (score "
                                             "'1e300' is beyond the range of a 32-bit float"),
    "--demo-negatives outside the demo": (["--gpu", "-1", "--objectives", "bce", "--demo-negatives", "dense"], {}, 2,
                                          "error: --demo-negatives chooses the demo's data: pass it with --demo or --smoke"),
    "a --slurm option without --slurm": (SMOKE + ["--slurm-options", "partition=gpu"], {}, 2,
                                         "error: --slurm-options are options of --slurm: pass them with --slurm"),
    "a --slurm option it does not know": (SMOKE + ["--slurm", "--slurm-options", "gpu=2"], {}, 2,
                                          "error: --slurm-options gpu=2: expected KEY=VALUE with a key of partition, "
                                          "time-limit, gpus"),
    "a --slurm option out of range": (SMOKE + ["--slurm", "--slurm-options", "gpus=2"], {}, 2,
                                      "error: --slurm-options gpus=2: expected 1 GPU per task"),
    "--plan and --slurm": (SMOKE + ["--plan", "--slurm"], {}, 2, "error: --plan and --slurm together"),
    "--released with --slurm": (SMOKE + ["--released", "--slurm"], {}, 2,
                                "error: --released with --slurm: the released checkpoints are re-ranked on this machine"),
    "--slurm without submitit": (SMOKE + ["--slurm", "--slurm-options", "gpus=0"],
                                 {"PYTHONPATH": "{tmp}/no_submitit" + os.pathsep + os.environ.get("PYTHONPATH", "")}, 2,
                                 "error: --slurm submits through submitit, which is not installed: pip install "
                                 "submitit=="),
    "a document ranked twice with two scores": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/twice_run"],
                                                {}, 2, "error: {tmp}/twice_run/scifact.run, lines 1 and 3: document "
                                                       "'31715818' is ranked twice for query '1', with scores 3.5 and "
                                                       "1.5; keep one of the two lines"),
    "a run line repeated exactly": (SMOKE + ["--collections", "scifact", "--run-dir", "{tmp}/same_twice_run"], {}, 0,
                                    "note: {tmp}/same_twice_run/scifact.run: 1 line(s) repeat(s) an earlier one "
                                    "exactly; each is counted once"),
    "a document judged twice with two grades": (SMOKE + ["--collections", "{tmp}/qrels_twice/spec.json"], {}, 2,
                                                "error: {tmp}/qrels_twice/qrels.txt, lines 1 and 3: document 'd0' is "
                                                "judged twice for query 'q1', as 1 and 2; keep one of the two lines"),
    "a query twice with two texts": (SMOKE + ["--collections", "{tmp}/query_twice/spec.json"], {}, 2,
                                     "error: {tmp}/query_twice/queries.tsv, lines 1 and 3: query 'q1' appears twice "
                                     "with two texts; keep one of the two lines"),
    "a document twice with two texts": (SMOKE + ["--collections", "{tmp}/doc_twice/spec.json"], {}, 2,
                                        "error: {tmp}/doc_twice/corpus.jsonl, lines 3 and 7: document 'd2' appears "
                                        "twice with two texts; keep one of the two lines"),
    "judged queries missing from the queries file": (SMOKE + ["--collections", "{tmp}/query_missing/spec.json"], {},
                                                     2, "error: {tmp}/query_missing/run.trec: 1 of its judged queries "
                                                        "have no text in the queries of "
                                                        "local:{tmp}/query_missing/spec.json (e.g. 'q2', absent)"),
    "a query whose text is blank": (SMOKE + ["--collections", "{tmp}/blank_query/spec.json"], {}, 2,
                                    "error: {tmp}/blank_query/queries.tsv, line 2: malformed line (expected an id and "
                                    "a text)"),
    "a documents file that is not UTF-8": (SMOKE + ["--collections", "{tmp}/latin1_docs/spec.json"], {}, 2,
                                           "error: {tmp}/latin1_docs/corpus.jsonl: not UTF-8 text (byte 183: "
                                           "b'\\xe9'); convert it to UTF-8"),
    "a spec that is not UTF-8": (SMOKE + ["--collections", "{tmp}/local/latin1_spec.json"], {}, 2,
                                 "error: {tmp}/local/latin1_spec.json: not UTF-8 text (byte 13: b'\\xe9')"),
    "a number where a spec names a file": (SMOKE + ["--collections", "{tmp}/local/number_spec.json"], {}, 2,
                                           "error: {tmp}/local/number_spec.json: its 'queries' must be a text (a "
                                           "file name, relative to the spec), not 42"),
    "two collections with one name": (SMOKE + ["--collections", "{tmp}/local/spec.json", "{tmp}/local_twin/spec.json"],
                                      {}, 2, "error: --collections: two collections are named 'mine'"),
    "a bi-encoder in --models": (SMOKE + ["--collections", "vaswani", "--models", "{tmp}/bi_encoder"], {}, 2,
                                 "error: --models {tmp}/bi_encoder: it is a BertModel, not a cross-encoder"),
    "a backbone folder with a cut config.json": (SMOKE + ["--backbone", "{tmp}/cut_backbone"], {}, 2,
                                                 "error: backbone {tmp}/cut_backbone: {tmp}/cut_backbone/config.json "
                                                 "cannot be read (JSONDecodeError)"),
    "a seed of 2^64": (SMOKE + ["--seeds", str(2 ** 64)], {}, 2,
                       "error: --seeds 18446744073709551616: expected seeds, each 0 or more and below 2^32"),
    "a kit cache that cannot be written": (SMOKE, {"KIT_CACHE": "{tmp}/a_file/cache"}, 2,
                                           "error: the kit's cache {tmp}/a_file/cache cannot be written"),
    "--from-shipped on collections the shipped cells were not evaluated on": (
        ["--demo", "--from-shipped", "--objectives", "bce", "infonce"], {}, 2,
        "error: minilm-l6__bce__seed12__745493b7fb has no model to re-rank nfcorpus with (only the evaluations on "
        "scifact); pass --collections scifact, or another --results to train the cell"),
    "a loss that becomes infinite before any checkpoint": (
        ["--smoke", "--objectives", "margin_mse", "--teacher-pairs", "{tmp}/large_pairs.tsv", "--collections", "vaswani"],
        {}, 2, "error: the loss became non-finite at step 1 (margin_mse, lr 0.001); no checkpoint was written before "
               "it, so a rerun starts"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_bad_input_is_refused_in_one_line(case, files):
    flags, env, status, expected = CASES[case]
    flags = [f.format(tmp=files) for f in flags]
    if "--results" not in flags:
        flags += ["--results", str(files / "results" / case.replace(" ", "-"))]
    result = run(*flags, env={k: v.format(tmp=files) for k, v in env.items()})
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert first_line(result).startswith(expected.format(tmp=files)), result.stderr[-2000:]
    if status == 2:
        assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_a_refused_input_computes_nothing_and_loses_nothing(files):
    results = files / "results" / "nothing-lost"
    assert run(*SMOKE, "--collections", "vaswani", "--steps", "2", "--results", str(results)).returncode == 0
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    # a bad teacher file is found before the bce cell (new seed) or anything else trains
    failed = run("--smoke", "--objectives", "bce", "margin_mse", "--seeds", "13", "--collections", "vaswani",
                 "--steps", "2", "--teacher-pairs", str(files / "bad_pairs.tsv"), "--results", str(results))
    assert failed.returncode == 2 and "line 2: malformed teacher line" in first_line(failed)
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before


def test_a_demo_run_leaves_the_users_ir_datasets_home_byte_identical(tmp_path):
    home = tmp_path / "my-ir-datasets"
    (home / "msmarco-passage" / "trec-dl-2019").mkdir(parents=True)
    (home / "msmarco-passage" / "trec-dl-2019" / "queries.tsv").write_text("19335\tanthropological definition\n")
    (home / "notes.txt").write_text("mine\n")
    snapshot = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    result = run(*SMOKE, "--collections", "vaswani", "--results", str(tmp_path / "r"),
                 env={"IR_DATASETS_HOME": str(home), "KIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == snapshot
    assert (tmp_path / "cache" / "ir_datasets_demo" / "vaswani" / "docs.txt").exists()  # the kit's own copy


def test_a_damaged_checkpoint_is_set_aside_and_the_cell_trains_again(tmp_path):
    import grid
    import store
    cfg = grid.make_config("smoke", "tiny-bert", "bce", 12, "fp32", negatives="bm25")  # the scripts' default data
    folder = store.cell_dir(tmp_path, cfg)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    result = run(*SMOKE, "--collections", "vaswani", "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert first_line(result).startswith(f"note: {folder / 'checkpoint.pt'} could not be read")
    assert (folder / "checkpoint.pt.unreadable").read_bytes() == b"PK\x03\x04 cut short"  # kept, not deleted
    assert (folder / "DONE").exists()


def test_explicit_flags_are_honoured_in_every_mode(tmp_path):
    # --seeds in --smoke, and the paper's three seeds named in --demo-sized runs, are run as given
    result = run(*SMOKE, "--seeds", "12", "13", "--collections", "vaswani", "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "seeds [12, 13]" in result.stdout
    assert sorted(p.name.split("__")[2] for p in (tmp_path / "cells").iterdir()) == ["seed12", "seed13"]
    assert (tmp_path / "tables" / "rq1_smoke_tiny-bert__objectives-bce_seeds-12-13_collections-vaswani").is_dir()
    # a backbone named with --demo is the one trained, not replaced by the demo's default
    result = run("--demo", "--backbone", "tiny-electra", "--objectives", "bce", "--collections", "vaswani",
                 "--steps", "2", "--depth", "5", "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RQ1 (demo): tiny-electra" in result.stdout
    assert list((tmp_path / "cells").glob("tiny-electra__bce__seed12__*"))


def test_a_local_backbone_is_keyed_by_its_files_and_its_name_never_breaks_a_run_file(tmp_path):
    import cross_encoder
    import grid
    import store
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone("tiny-bert"), 0)
    path = tmp_path / "my model"  # a space in the path
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    key = store.cell_key(grid.make_config("smoke", str(path), "bce", 12, "fp32"))
    result = run(*SMOKE, "--backbone", str(path), "--collections", "vaswani", "--results", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-2000:]
    (run_file,) = (tmp_path / "r" / "cells").glob("*/eval/*/run.trec.gz")
    with gzip.open(run_file, "rt") as handle:
        assert all(len(line.split()) == 6 for line in handle)
    # the same path, another model: another key, so the old cell is not reused
    model2, _ = cross_encoder.load_backbone(cross_encoder.get_backbone("tiny-bert"), 1)
    model2.save_pretrained(path)
    assert store.cell_key(grid.make_config("smoke", str(path), "bce", 12, "fp32")) != key
    assert json.loads((run_file.parents[2] / "config.json").read_text())["backbone"] == str(path)


def test_ctrl_c_ends_in_one_line_and_the_same_command_resumes(tmp_path):
    """Ctrl-C: `interrupted: ...` and exit status 130, no traceback; the rerun finishes the grid."""
    import signal
    import time
    flags = [RQ1, *SMOKE, "--collections", "vaswani", "--results", str(tmp_path / "results")]
    process = subprocess.Popen([sys.executable, *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "results").glob("cells/*/config.json")) and time.time() < deadline:
        time.sleep(0.05)  # the first cell has started
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:  # it finished before the signal came: nothing to check
        pytest.skip("the grid finished before Ctrl-C")
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: rerun the same command to resume"
    assert "Traceback" not in stderr, stderr[-3000:]
    again = run(*flags[1:])
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_full_disk_ends_in_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    import errno
    import torch
    import common
    import cross_encoder
    import grid
    cfg = grid.make_config("smoke", "tiny-bert", "bce", 12, "fp32", steps=1)
    model, _ = cross_encoder.load_backbone(cross_encoder.get_backbone("tiny-bert"), 12)
    optimizer, scheduler = cross_encoder.make_optimizer(model, cfg)
    path = tmp_path / "checkpoint.pt"

    def full(state, handle):  # what torch.save raises on a full disk: its own kind, no file named
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(common.shutil, "disk_usage", lambda folder: SimpleNamespace(free=4096))
    with pytest.raises(OSError) as raised:
        cross_encoder.write_checkpoint(path, cfg, model, optimizer, scheduler, "cpu", {"step": 1})
    assert list(tmp_path.iterdir()) == [] and raised.value.errno == errno.ENOSPC  # no checkpoint, no temporary file

    def main():
        raise raised.value
    with pytest.raises(SystemExit) as ended:
        grid.main_guard(main)
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: no space left on {tmp_path}: free some space (or pass another "
                                               f"--results), then rerun the same command to resume")
    assert grid.format_size(3.1e6) == "3.1 MB" and grid.format_size(2.5e9) == "2.5 GB"  # never "0.0 GB"


def test_rq5_tables_are_written_whole_or_not_at_all(tmp_path):
    import tables
    folder = tmp_path / "rq5_demo_fp32"
    folder.mkdir()
    (folder / "rq5_ranks.txt").write_text("earlier\n")
    with pytest.raises(KeyboardInterrupt):
        with tables.written_whole(folder) as writing:
            (writing / "rq5_ranks.txt").write_text("half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["rq5_demo_fp32"]
    assert (folder / "rq5_ranks.txt").read_text() == "earlier\n"
    with tables.written_whole(folder) as writing:
        (writing / "rq5_ranks.txt").write_text("new\n")
    assert (folder / "rq5_ranks.txt").read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == [folder.name]
