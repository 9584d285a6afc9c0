"""Cross-encoders trained elsewhere, re-ranked beside the cells: any model of --models, and the authors' released
checkpoints (--released) as the cheap check of a claim: re-rank with them instead of training.

--models takes folders saved with save_pretrained or Hugging Face ids; each is evaluated under results/models/,
keyed by its files' content, on the same candidates with the same lengths, measures and arithmetic as the cells.

Morand et al. (2026) released one cross-encoder per backbone x loss on the Hugging Face hub,
`xpmir/cross-encoder-<backbone>-<loss>`, the best of their 3 seeds (not a mean). Re-ranking with them costs
GPU-hours, not the grid's GPU-months, and gives what the published table cannot: per-query values, so the kit's
paired tests and verdicts run on the authors' own models. `--released` on exp_rq1_objectives.py and
exp_rq2_backbones.py re-ranks each checkpoint as its objective's row, on the same candidates with the same
lengths and measures, and trains nothing.

Every id is looked up before the first download: in the hub's local cache first (HF_HUB_CACHE; offline mode needs
nothing else), else by a metadata call to the hub that downloads no weights. Each `-infoNCE` card may describe the
in-batch InfoNCE variant, not the paper's: the loss each checkpoint records (its config.yaml's `loss:`, or its
card's "using loss `...`") is printed beside its row.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import common
import paper_setup
import store
from common import KitError

OWNER = "xpmir"


def resolve_model(name: str) -> Path:
    """A trained cross-encoder named by --models: a local folder, or a Hugging Face id fetched into the hub's
    own cache (the authors' releases, xpmir/cross-encoder-<backbone>-<loss>, cross-encoder/ms-marco-...). Its
    config.json must describe a sequence-classification model with one output, checked before anything trains."""
    if Path(name).is_dir():
        folder = Path(name)
    elif name.count("/") != 1:
        raise KitError(f"--models {name}: neither a folder nor a Hugging Face id (owner/name)")
    else:
        try:
            from huggingface_hub import snapshot_download
            folder = Path(snapshot_download(name))
        except Exception as error:  # the hub raises many kinds: unknown id, no network, offline mode
            raise KitError(f"--models {name}: could not fetch it from the Hugging Face hub ({type(error).__name__}); "
                           f"check the id and the network, or pass a local folder") from None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise KitError(f"--models {name}: {folder / 'config.json'} cannot be read ({type(error).__name__}); pass a "
                       f"folder saved with save_pretrained") from None
    kinds = config.get("architectures") or ["no architecture"]
    outputs = config.get("num_labels", len(config.get("id2label") or {}) or None)
    if not any(str(k).endswith("ForSequenceClassification") for k in kinds) or outputs not in (1, None):
        raise KitError(f"--models {name}: it is a {kinds[0]}{f' with {outputs} outputs' if outputs not in (1, None) else ''}, not a "
                       f"cross-encoder (a sequence-classification model with one output); a bi-encoder such as a "
                       f"sentence-transformers model cannot re-rank here")
    return folder


def model_home(results: Path, name: str) -> Path:
    """The folder of results/models/ where the evaluations of a model trained elsewhere are stored, keyed by its
    files' content (`name`: a folder, or a Hugging Face id fetched by resolve_model)."""
    fingerprint = store.folder_fingerprint(resolve_model(name))
    key = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]
    return Path(results) / "models" / f"{common.slug(name)}__{key}"


def evaluate_model(name: str, results: Path, data, device: str, lengths, **speed):
    """(aggregate, per_query) of a cross-encoder trained elsewhere re-ranking `data` at the lengths, precision and
    arithmetic of `lengths` (the cells'), stored under results/models/. `speed`: see store.evaluate."""
    return store.evaluate(resolve_model(name), model_home(results, name), data, device, lengths,
                          f"model-{common.slug(name)}", results, **speed)


def checkpoint_id(backbone: str, objective: str) -> str:
    """xpmir/cross-encoder-<backbone part>-<loss part>, by the authors' naming rule."""
    if backbone not in paper_setup.RELEASED_BACKBONES:
        raise common.KitError(f"--released: the authors released no {backbone!r} model; backbones with releases: "
                              f"{', '.join(paper_setup.RELEASED_BACKBONES)}")
    if objective not in paper_setup.RELEASED_LOSSES:
        raise common.KitError(f"--released: the authors released no {objective!r} model; objectives with releases: "
                              f"{', '.join(paper_setup.RELEASED_LOSSES)}")
    return f"{OWNER}/cross-encoder-{paper_setup.RELEASED_BACKBONES[backbone]}-{paper_setup.RELEASED_LOSSES[objective]}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def locate(ids: list[str]) -> tuple[dict[str, Path | None], list[str]]:
    """({id: local snapshot folder, or None when it is on the hub but not cached yet}, [ids found nowhere]).
    Downloads no weights."""
    from huggingface_hub import model_info, snapshot_download
    found, missing = {}, []
    for name in ids:
        try:
            found[name] = Path(snapshot_download(name, local_files_only=True))
            continue
        except Exception:  # not in the local cache: ask the hub, unless offline
            pass
        if _offline():
            missing.append(name)
            continue
        try:
            model_info(name)
            found[name] = None
        except Exception:  # unknown id, no network: it cannot be re-ranked
            missing.append(name)
    return found, missing


def recorded_loss(folder: Path | None) -> str | None:
    """The loss a checkpoint says it was trained with: `loss:` in its config.yaml (the first one, at any depth;
    a mapping's `__xpmtype__`/`type` inside it when the value is on the next lines), else its card's
    "using loss `X`"."""
    if folder is None:
        return None
    config = folder / "config.yaml"
    if config.exists():
        lines = config.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"^(\s*)loss:\s*(.*?)\s*$", line)
            if match:
                if match[2]:
                    return match[2].strip("'\"")
                for inner in lines[i + 1:i + 6]:  # loss: followed by a mapping: name its type
                    typed = re.match(r"^\s+(?:__xpmtype__|type|class|name):\s*(.+?)\s*$", inner)
                    if typed:
                        return typed[1].strip("'\"")
    card = folder / "README.md"
    if card.exists():
        match = re.search(r"using loss\s+`([^`]+)`", card.read_text(encoding="utf-8", errors="replace"))
        if match:
            return match[1]
    return None


def resolve(grid_cells: list[tuple[str, str]], skip_missing: bool) -> dict[tuple[str, str], str]:
    """{(backbone, objective): id} of the cells whose checkpoint exists. Missing ids: one `error:` line each and
    exit 2 before any download, unless `skip_missing` (then one `note:` line each, and the rest goes on)."""
    ids = {cell: checkpoint_id(*cell) for cell in grid_cells}
    _, missing = locate(list(dict.fromkeys(ids.values())))
    if missing and not skip_missing:
        raise common.KitError("\nerror: ".join(f"--released: {name} is not on the Hugging Face hub (nor in its local "
                                               f"cache); pass --skip-missing to go on without it" for name in missing))
    for name in missing:
        print(f"note: --released: {name} not found; its row is left out (--skip-missing)")
    kept = {cell: name for cell, name in ids.items() if name not in missing}
    if not kept:
        raise common.KitError("--released: none of the checkpoints of this grid could be found")
    return kept


def rerank(args, configs, collections, results: Path, device: str, *, cells: dict[tuple[str, str], str],
           labels: dict[str, str], lengths, depth: int = 1000, **options):
    """grid.train_and_evaluate for --released: re-rank every checkpoint of `cells` as its row `labels[id]`
    (grid.train_and_evaluate with no cell to train: `configs` is empty), or with --plan list them with the
    re-ranking time of this machine. Returns (metrics, per_query)."""
    import grid
    if getattr(args, "plan", False):
        from extras import scale_out
        queries = {c.name: scale_out.collection_queries(c, options.get("max_queries")) for c in collections}
        pairs = sum((n or 0) * depth for n in queries.values())
        unit = "GPU" if scale_out.kind_of(device) == "cuda" else "CPU"
        print(f"Plan (--released): {len(cells)} checkpoint(s) re-ranked, nothing trained; {pairs:,} pairs each "
              f"on {len(collections)} collection(s), {lengths.precision} on {scale_out.describe_device(device)}.")
        hours = 0.0
        for (backbone, objective), name in cells.items():
            rate = scale_out.rates(backbone, device, lengths.precision, lengths.max_length)
            hours += pairs / rate.rerank / 3600
            print(f"  {name:<48} as {objective:<16} ~{grid.format_duration(pairs / rate.rerank)} {unit} "
                  f"({rate.rerank:,.0f} pairs/s, {rate.source})")
        print(f"Left to do: {hours:.1f} {unit}-hours of re-ranking (rates: extras/scale_out.RATES, scaled as the training plan does)")
        raise common.EarlyExit("note: --plan ran nothing")
    return grid.train_and_evaluate(None, configs, collections, results, device, depth=depth, models=list(cells.values()),
                                   labels=labels, lengths=lengths, **options)


def describe(cells: dict[tuple[str, str], str], out: Path) -> list[str]:
    """One line per row: the checkpoint and the loss it records; the same saved as released.json in `out`."""
    records, lines = [], []
    found, _ = locate(list(cells.values()))
    for (backbone, objective), name in cells.items():
        loss = recorded_loss(found.get(name))
        records.append({"backbone": backbone, "objective": objective, "id": name,
                        "folder": str(found.get(name) or ""), "recorded_loss": loss})
        lines.append(f"{objective}: {name}, recorded loss: {loss or 'not recorded (no config.yaml or card)'}")
    common.atomic_write_json(Path(out) / "released.json", records)
    return lines


NOTE = "released checkpoints: one per row, the best of the paper's 3 seeds, not a mean"
