"""--token-cache, --eval-token-budget, --unpadded and --num-workers: pairs' token ids kept unpadded, stored beside
the results, batches cut by a token budget or packed into one row, and pairs tokenized in worker processes.

Every cell of a grid re-ranks the same candidates of a collection, and every cell of one backbone tokenizes
them the same way: the ids depend only on the tokenizer, the length budgets and the texts. With --token-cache
they are tokenized once and stored in `<results>/tokens/<key>.npz`, the key hashing exactly those inputs (the
tokenizer by its content, not its path); later cells build their batches from the stored ids without calling
the tokenizer. The ids are the ones `cross_encoder.PairTokenizer` produces, so a batch padded from them is the
batch the tokenizer would have padded, and the scores are the same (tests/test_batching.py checks it).

PairTokens holds pairs as one flat array of ids plus offsets (no padding): a batch is then either padded
(pad_batch) or packed into one row without padding (extras/unpadded.py).

Sections, read top to bottom:
  1. PairTokens, and the pairs' ids as the pair tokenizer gives them
  2. the cache of them beside the results (--token-cache)
  3. batches cut by a token budget (--eval-token-budget) or packed (--unpadded)
  4. tokenizing in DataLoader worker processes (--num-workers)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import cross_encoder

FORMAT = 1  # bump when the stored arrays change meaning


# ================================================================================================
# 1. PairTokens
# ================================================================================================
@dataclasses.dataclass
class PairTokens:
    """Tokenized pairs, unpadded: pair i is ids[offsets[i]:offsets[i + 1]] (types likewise, when the model
    takes token types; None otherwise)."""
    ids: np.ndarray            # uint16 when the vocabulary allows it, else int32
    offsets: np.ndarray        # int64, one more than there are pairs
    types: np.ndarray | None   # uint8, aligned with ids

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, ids: list[list[int]], types: list[list[int]] | None) -> "PairTokens":
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int64, count=int(offsets[-1]))
        kind = np.uint16 if flat.size == 0 or flat.max() < 2 ** 16 else np.int32
        flat_types = None if types is None else np.fromiter((t for row in types for t in row), dtype=np.uint8,
                                                            count=int(offsets[-1]))
        return cls(flat.astype(kind), offsets, flat_types)

    @classmethod
    def concatenate(cls, parts: list["PairTokens"]) -> "PairTokens":
        if not parts:
            return cls(np.zeros(0, np.uint16), np.zeros(1, np.int64), None)
        kind = np.result_type(*(p.ids.dtype for p in parts))
        offsets = [parts[0].offsets]
        for part in parts[1:]:
            offsets.append(part.offsets[1:] + offsets[-1][-1])
        types = None if parts[0].types is None else np.concatenate([p.types for p in parts])
        return cls(np.concatenate([p.ids.astype(kind) for p in parts]), np.concatenate(offsets), types)

    def pad_batch(self, chosen, pad_id: int, pad_type: int = 0, side: str = "right") -> dict:
        """The pairs `chosen` padded to the longest of them, as the tokenizer's `padding=True` pads:
        input_ids, (token_type_ids,) attention_mask, int64 tensors."""
        import torch
        chosen = np.asarray(chosen, dtype=np.int64)
        lengths = self.lengths[chosen]
        width = int(lengths.max()) if len(chosen) else 0
        column = np.arange(width)[None, :]
        # Where row r's token j sits in the flat array; padding positions point anywhere valid and are masked.
        shift = (width - lengths)[:, None] if side == "left" else 0
        real = (column >= shift) & (column < shift + lengths[:, None]) if side == "left" else column < lengths[:, None]
        where = np.where(real, self.offsets[chosen][:, None] + column - shift, 0)
        out = {"input_ids": torch.from_numpy(np.where(real, self.ids[where], pad_id).astype(np.int64))}
        if self.types is not None:
            out["token_type_ids"] = torch.from_numpy(np.where(real, self.types[where], pad_type).astype(np.int64))
        out["attention_mask"] = torch.from_numpy(real.astype(np.int64))
        return out

    def save(self, path: Path) -> None:
        """Written to a temporary file in the same folder, then renamed: a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                arrays = {"format": np.array(FORMAT), "ids": self.ids, "offsets": self.offsets}
                if self.types is not None:
                    arrays["types"] = self.types
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, pairs: int) -> "PairTokens":
        """The stored tokens of `pairs` pairs; ValueError when the file is not that (cut short, another format)."""
        with np.load(path, allow_pickle=False) as stored:
            if int(stored["format"]) != FORMAT:
                raise ValueError(f"format {int(stored['format'])}, expected {FORMAT}")
            tokens = cls(stored["ids"], stored["offsets"], stored["types"] if "types" in stored.files else None)
        if len(tokens) != pairs or tokens.offsets[0] != 0 or tokens.offsets[-1] != len(tokens.ids) or \
                (tokens.types is not None and len(tokens.types) != len(tokens.ids)):
            raise ValueError(f"holds {len(tokens)} pairs, expected {pairs}")
        return tokens


def encode(pair_tokenizer, queries: list[str], passages: list[str]) -> PairTokens:
    """The ids `pair_tokenizer(queries, passages)` would give, unpadded."""
    encoded = pair_tokenizer.tokenizer(pair_tokenizer.cut_queries(queries), passages, truncation="only_second",
                                       max_length=pair_tokenizer.max_length, return_attention_mask=False,
                                       return_token_type_ids=pair_tokenizer.use_token_types)
    types = encoded["token_type_ids"] if pair_tokenizer.use_token_types else None
    return PairTokens.from_lists(encoded["input_ids"], types)


def pad(pair_tokenizer, tokens: PairTokens, chosen) -> dict:
    """The pairs `chosen` of `tokens` as `pair_tokenizer(...)` would return them (padded to the longest)."""
    tokenizer = pair_tokenizer.tokenizer
    return tokens.pad_batch(chosen, tokenizer.pad_token_id, getattr(tokenizer, "pad_token_type_id", 0),
                            tokenizer.padding_side)


def encode_pairs(pair_tokenizer, queries: list[str], passages: list[str], workers: int = 0,
                 chunk: int = 1024) -> PairTokens:
    """`encode` over many pairs, `chunk` at a time, in `workers` processes when > 0."""
    pieces = _Chunks(pair_tokenizer, queries, passages, chunk)
    return PairTokens.concatenate(list(in_workers(pieces, workers) if workers else pieces))


class _Chunks:
    """Map-style dataset: item k is `encode` of the k-th `size` pairs (DataLoader workers tokenize them)."""

    def __init__(self, pair_tokenizer, queries: list[str], passages: list[str], size: int):
        self.pair_tokenizer, self.queries, self.passages, self.size = pair_tokenizer, queries, passages, size

    def __len__(self):
        return -(-len(self.queries) // self.size)

    def __getitem__(self, index):
        span = slice(index * self.size, (index + 1) * self.size)
        return encode(self.pair_tokenizer, self.queries[span], self.passages[span])

    def __iter__(self):
        return (self[k] for k in range(len(self)))



# ================================================================================================
# 2. The cache beside the results (--token-cache)
# ================================================================================================
def tokenizer_identity(tokenizer) -> str:
    """A hash of what decides the ids a tokenizer gives: its vocabulary, normalizer, pre-tokenizer and
    pair template (the serialized fast tokenizer, less its truncation and padding state, which each call
    sets), its padding conventions, and the library versions. Two copies of one tokenizer in different
    folders (every cell saves its own) have one identity."""
    import tokenizers
    import transformers
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # {"version":..,"truncation":..,"padding":..,"added_tokens":.. ...}: the first two settings are cut
        # off the text (parsing and re-serializing all of it took 0.16 s per cell).
        text = backend.to_str()
        head, mark, rest = text.partition(',"added_tokens":')
        if mark and head.startswith('{"version":') and ',"truncation":' in head:
            content = head.split(',"truncation":')[0] + mark + rest
        else:
            state = json.loads(text)
            state.pop("truncation", None)
            state.pop("padding", None)
            content = json.dumps(state, sort_keys=True)
    else:  # a tokenizer without a fast backend: the files it saves
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            content = json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                  for p in sorted(Path(folder).iterdir()) if p.is_file()}, sort_keys=True)
    conventions = [type(tokenizer).__name__, tokenizer.padding_side, tokenizer.pad_token_id,
                   getattr(tokenizer, "pad_token_type_id", 0), transformers.__version__, tokenizers.__version__]
    return hashlib.sha256((content + json.dumps(conventions)).encode()).hexdigest()


def cache_key(pair_tokenizer, queries: list[str], passages: list[str]) -> str:
    """The key of the tokens of these pairs: tokenizer identity, length budgets, token types, and the texts
    in order."""
    digest = hashlib.sha256()
    identity = getattr(pair_tokenizer, "_identity", None)
    if identity is None:
        identity = pair_tokenizer._identity = tokenizer_identity(pair_tokenizer.tokenizer)
    digest.update(json.dumps([FORMAT, identity, pair_tokenizer.max_length, pair_tokenizer.query_max_length,
                              pair_tokenizer.use_token_types, len(queries)]).encode())
    for query, passage in zip(queries, passages):
        for text in (query, passage):
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()[:20]


def cached_tokens(folder: Path | None, pair_tokenizer, queries: list[str], passages: list[str],
                  workers: int = 0) -> PairTokens:
    """The tokens of the pairs: read from `folder` when stored there, else tokenized (in `workers` processes
    when > 0) and stored. With folder None, tokenized and not stored."""
    if folder is None:
        return encode_pairs(pair_tokenizer, queries, passages, workers=workers)
    path = Path(folder) / f"{cache_key(pair_tokenizer, queries, passages)}.npz"
    if path.exists():
        try:
            return PairTokens.load(path, len(queries))
        except Exception as error:  # a file cut short (numpy and zipfile raise many kinds): tokenize, write anew
            print(f"note: {path} could not be read ({type(error).__name__}: {str(error).splitlines()[0][:100]}); "
                  f"tokenizing again", file=sys.stderr)
    tokens = encode_pairs(pair_tokenizer, queries, passages, workers=workers)
    try:
        tokens.save(path)
    except OSError as error:  # a full disk costs the next cell a tokenization, not this one its scores
        print(f"note: could not store tokens in {path} ({error.strerror}); the next cell tokenizes again",
              file=sys.stderr)
    return tokens


# ================================================================================================
# 3. Batches by token budget, or packed
# ================================================================================================
def batches(pair_tokenizer, queries: list[str], passages: list[str], batch_size: int, workers: int = 0,
            tokens: PairTokens | None = None, token_budget: int = 0, unpad: bool = False):
    """The batches of cross_encoder.score_pairs from token ids: with `token_budget` or `unpad`, pairs of similar
    token length up to that many tokens (padding counted unless packed); otherwise the default batches (by
    character length, cross_encoder.length_order) padded from the stored `tokens`."""
    if token_budget or unpad:
        if tokens is None:
            tokens = encode_pairs(pair_tokenizer, queries, passages, workers=workers)
        chosen = token_budget_batches(tokens.lengths, token_budget or batch_size * pair_tokenizer.max_length,
                                      padded=not unpad)
        return TokenBatches(pair_tokenizer, tokens, chosen, packed=unpad)
    return TokenBatches(pair_tokenizer, tokens, cross_encoder.length_order(queries, passages, batch_size), packed=False)


def _pack(tokens, chosen):
    """Pairs packed into one row (--unpadded): the model's checks ran before a packed batch was asked for."""
    from extras import unpadded
    return unpadded.pack(tokens, chosen)


def token_budget_batches(lengths: np.ndarray, budget: int, padded: bool) -> list[np.ndarray]:
    """Pairs longest first, cut into batches of at most `budget` tokens: padded, a batch costs its pair count
    times its longest pair; unpadded, the sum of its lengths. A pair longer than the budget is a batch alone.
    Similar lengths end up together, so a padded batch pads little."""
    order = np.argsort(-lengths, kind="stable")
    batches, start, total = [], 0, 0
    for end, index in enumerate(order):
        cost = (end - start + 1) * lengths[order[start]] if padded else total + lengths[index]
        if end > start and cost > budget:
            batches.append(order[start:end])
            start, total = end, 0
        total += lengths[index]
    if len(order):
        batches.append(order[start:])
    return batches


class TokenBatches:
    """Re-ranking batches built from stored token ids, padded or packed: no tokenizer call."""

    def __init__(self, pair_tokenizer, tokens: PairTokens, batches: list, packed: bool):
        self.pair_tokenizer, self.tokens, self.batches, self.packed = pair_tokenizer, tokens, batches, packed

    def __iter__(self):
        for chosen in self.batches:
            yield chosen, (_pack(self.tokens, chosen) if self.packed else pad(self.pair_tokenizer, self.tokens, chosen))


# ================================================================================================
# 4. Tokenizing in worker processes
# ================================================================================================
def _unchanged(item):
    return item


def in_workers(dataset, workers: int):
    """Iterate a map-style dataset through `workers` DataLoader worker processes, in order."""
    import torch
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=False,
                                         prefetch_factor=4, collate_fn=_unchanged)
    # The workers fork inside iter(): they inherit TOKENIZERS_PARALLELISM=false (one tokenizer thread each,
    # no fork-safety warning), and this process gets its own setting back at once.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return iter(loader)
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
