"""How (query, passage) pairs become batches for cross_encoder.py: tokenized batch by batch (here or in
DataLoader workers), padded from stored token ids (token_cache.py), cut by a token budget, or packed into
one row without padding (extras/unpadded.py, --unpadded); and training batches tokenized ahead of the step in a
thread.

Each batch is (positions of its pairs, their inputs): a dict of padded tensors, or a packed row
(extras/unpadded.py).
The tokenizer is always a cross_encoder.PairTokenizer; this module does not import cross_encoder.
"""
from __future__ import annotations

import os

import numpy as np

from token_cache import PairTokens


def _pack(tokens, chosen):
    """Pairs packed into one row (--unpadded): the model's checks ran before a packed batch was asked for."""
    from extras import unpadded
    return unpadded.pack(tokens, chosen)


def reranking_batches(pair_tokenizer, queries: list[str], passages: list[str], batch_size: int, workers: int = 0,
                      tokens: PairTokens | None = None, token_budget: int = 0, unpad: bool = False):
    """The batches of cross_encoder.score_pairs (see there): by default `batch_size` pairs at a time by character
    length, longest first, tokenized batch by batch (in `workers` processes when > 0) or padded from `tokens`;
    with `token_budget` or `unpad`, by token length up to that many tokens (padding counted unless packed)."""
    if token_budget or unpad:
        if tokens is None:
            tokens = encode_pairs(pair_tokenizer, queries, passages, workers=workers)
        chosen = token_budget_batches(tokens.lengths, token_budget or batch_size * pair_tokenizer.max_length,
                                      padded=not unpad)
        return TokenBatches(pair_tokenizer, tokens, chosen, packed=unpad)
    lengths = np.fromiter((len(q) + len(p) for q, p in zip(queries, passages)), dtype=np.int64, count=len(queries))
    order = np.argsort(-lengths, kind="stable")
    chosen = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if tokens is not None:
        return TokenBatches(pair_tokenizer, tokens, chosen, packed=False)
    batches = PairBatches(pair_tokenizer, queries, passages, chosen)
    return in_workers(batches, workers) if workers else batches


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


class TokenBatches:
    """Re-ranking batches built from stored token ids, padded or packed: no tokenizer call."""

    def __init__(self, pair_tokenizer, tokens: PairTokens, batches: list, packed: bool):
        self.pair_tokenizer, self.tokens, self.batches, self.packed = pair_tokenizer, tokens, batches, packed

    def __iter__(self):
        for chosen in self.batches:
            yield chosen, (_pack(self.tokens, chosen) if self.packed else
                           self.pair_tokenizer.pad(self.tokens, chosen))


def encode_pairs(pair_tokenizer, queries: list[str], passages: list[str], workers: int = 0,
                 chunk: int = 1024) -> PairTokens:
    """`pair_tokenizer.encode` over many pairs, `chunk` at a time, in `workers` processes when > 0."""
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
        return self.pair_tokenizer.encode(self.queries[span], self.passages[span])

    def __iter__(self):
        return (self[k] for k in range(len(self)))


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
