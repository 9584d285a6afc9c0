"""Cross-encoder forward passes without padding: a batch of pairs packed into one row, attention kept
within each pair.

A padded batch of pairs of 60 to 256 tokens computes every layer on 256 tokens per pair. Packed, the
batch is one row of the pairs' real tokens one after another; position ids restart at each pair, and
attention, the only layer that mixes tokens, is kept within each pair:
- on a CUDA GPU in bf16/fp16 with no attention dropout: PyTorch's flash kernel for variable-length
  sequences, `varlen_attn` (sliding windows included, for ModernBERT's local layers);
- elsewhere (a CPU, fp32, or attention dropout while training BERT-like models): the attention alone is
  padded again, (pairs, longest pair), for one masked scaled_dot_product_attention call; the
  projections and the feed-forward layers, most of the work, still run on real tokens only.
No compiled extension is needed. The attention is registered with transformers' AttentionInterface
under the name "kit_varlen" and switched on only for the packed call, so the same model object still
runs padded batches as before.

Families: BERT, RoBERTa, ELECTRA and ModernBERT (Ettin) take every layer through
transformers' attention interface and absolute or rotary positions given per token, so packing is exact
up to floating-point rounding (tests/test_batching.py compares with padded batches for each tiny model).
DeBERTa-v2/v3 computes disentangled attention (relative-position terms) in its own module, outside the
interface: a packed row would let pairs attend to each other, so it stays on the padded path
(`unsupported_reason` says so, and callers fall back).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # for the annotations only; torch is imported where it runs
    import torch


NAME = "kit_varlen"
SUPPORTED = {"bert", "roberta", "electra", "modernbert"}  # each checked against padded batches in the tests
FORCE_KERNEL: str | None = None  # "repad" or "flash" (CUDA only) whatever the device, dtype and dropout


class Packed(NamedTuple):
    """A batch of n pairs in one row of T tokens, with no padding."""
    input_ids: "torch.Tensor"            # (T,)
    position_ids: "torch.Tensor"         # (T,) position within its pair, from 0
    token_type_ids: "torch.Tensor | None"  # (T,), or None when the model takes no token types
    cu_seqlens: "torch.Tensor"           # (n + 1,) int32: pair i is tokens cu[i]:cu[i + 1]
    max_length: int                      # longest pair

    def to(self, device, non_blocking: bool = False, pin: bool = False) -> "Packed":
        move = (lambda t: None if t is None else (t.pin_memory() if pin else t).to(device, non_blocking=non_blocking))
        return Packed(move(self.input_ids), move(self.position_ids), move(self.token_type_ids),
                      move(self.cu_seqlens), self.max_length)

    @property
    def pairs(self) -> int:
        return len(self.cu_seqlens) - 1


def packed_batch(pair_tokenizer, batch) -> tuple[Packed, "torch.Tensor"]:
    """A training batch (common.Batch) packed into one row, and its targets."""
    from extras import token_batches
    queries = [q for q, docs in zip(batch.queries, batch.docs) for _ in docs]
    tokens = token_batches.encode(pair_tokenizer, queries, [d for docs in batch.docs for d in docs])
    return pack(tokens, np.arange(len(tokens))), batch.targets


def pack(tokens, chosen) -> Packed:
    """The pairs `chosen` of an extras/token_batches.PairTokens, in that order, packed into one row."""
    import torch
    chosen = np.asarray(chosen, dtype=np.int64)
    lengths = tokens.lengths[chosen]
    cu = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    where = np.repeat(tokens.offsets[chosen] - cu[:-1], lengths) + np.arange(cu[-1])
    positions = np.arange(cu[-1]) - np.repeat(cu[:-1], lengths)
    types = None if tokens.types is None else torch.from_numpy(tokens.types[where].astype(np.int64))
    return Packed(torch.from_numpy(tokens.ids[where].astype(np.int64)), torch.from_numpy(positions),
                  types, torch.from_numpy(cu.astype(np.int32)), int(lengths.max()) if len(chosen) else 0)


def unsupported_reason(model) -> str | None:
    """None when `model` can run packed batches; otherwise why it cannot (it then stays padded)."""
    config = model.config
    kind = getattr(config, "model_type", "?")
    if kind in ("deberta", "deberta-v2"):
        return (f"{kind} computes disentangled (relative-position) attention in its own module, not through "
                f"transformers' attention interface, so a packed row would attend across pairs")
    if kind not in SUPPORTED:
        return f"packing is implemented for {', '.join(sorted(SUPPORTED))}, not for {kind}"
    if not type(model).__name__.endswith("ForSequenceClassification") or \
            (kind == "bert" and getattr(model.base_model, "pooler", None) is None):
        return f"{type(model).__name__}: packing reproduces the heads of the sequence-classification models only"
    if getattr(config, "is_decoder", False):
        return "a decoder configuration (causal attention)"
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None):
        return f"position_embedding_type {config.position_embedding_type!r} (relative positions across a packed row)"
    if kind == "modernbert" and config.classifier_pooling not in ("cls", "mean"):
        return f"classifier_pooling {config.classifier_pooling!r}"
    return None


def usable(model, log=None) -> bool:
    """Whether `model` runs packed batches; when not, says why once per model and the caller stays padded."""
    reason = unsupported_reason(model)
    if reason and not getattr(model, "_kit_unpadded_note", False):
        model._kit_unpadded_note = True
        (log or (lambda text: print(text, file=sys.stderr)))(f"note: --unpadded: {reason}; this model runs padded batches")
    return reason is None


def forward_logits(model, inputs, device: str, pin: bool = False):
    """Logits of a batch, padded (a dict of tensors) or packed (Packed), moved to `device` first."""
    if isinstance(inputs, Packed):
        return packed_logits(model, inputs.to(device, non_blocking=True, pin=pin))
    inputs = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in inputs.items()}
    return model(**inputs).logits


class _PackedAttention:
    """Switches a model's attention to the packed kernel for one call, and back."""

    def __init__(self, config):
        self.config = config

    def __enter__(self):
        self.before = self.config._attn_implementation
        self.config._attn_implementation = NAME

    def __exit__(self, *exc):
        self.config._attn_implementation = self.before


def packed_logits(model, batch: Packed):
    """The model's logits (n, 1) for the packed pairs, as its padded forward would give them."""
    import torch
    register()
    kind = model.config.model_type
    base = model.base_model
    positions = batch.position_ids
    if kind == "roberta":  # RoBERTa numbers positions from padding_idx + 1
        positions = positions + base.embeddings.padding_idx + 1
    inputs = {"input_ids": batch.input_ids[None], "position_ids": positions[None]}
    if batch.token_type_ids is not None and kind != "modernbert":
        inputs["token_type_ids"] = batch.token_type_ids[None]
    with _PackedAttention(model.config):
        hidden = base(**inputs, cu_seq_lens_q=batch.cu_seqlens, cu_seq_lens_k=batch.cu_seqlens,
                      max_length_q=batch.max_length, max_length_k=batch.max_length).last_hidden_state[0]
    starts = batch.cu_seqlens[:-1].long()
    first = hidden[starts]  # each pair's first token ([CLS] / <s>)
    if kind == "bert":
        return model.classifier(model.dropout(base.pooler(first[:, None])))
    if kind in ("roberta", "electra"):
        return model.classifier(first[:, None])
    if model.config.classifier_pooling == "mean":
        lengths = batch.cu_seqlens[1:].long() - starts
        pair = torch.repeat_interleave(torch.arange(len(starts), device=hidden.device), lengths)
        first = torch.zeros_like(first).index_add_(0, pair, hidden) / lengths[:, None].to(hidden.dtype)
    return model.classifier(model.drop(model.head(first)))


def _kernel(query, dropout: float) -> str:
    import torch
    if FORCE_KERNEL:
        return FORCE_KERNEL
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0 and _has_varlen():
        return "flash"  # varlen_attn has no dropout
    return "repad"


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return callable(varlen_attn)


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, cu_seq_lens_q=None, max_length_q: int | None = None,
                     **kwargs):
    """transformers' attention-function signature on a packed row: query/key/value (1, heads, T, dim);
    returns ((1, T, heads, dim), None). `sliding_window` is the layer's flash-style bound (w + 1, with
    |i - j| <= w allowed, as transformers' ModernBERT and its padded mask define it)."""
    import torch
    import torch.nn.functional as F
    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise RuntimeError("kit_varlen attention runs on packed rows only (unpadded.packed_logits)")
    window = None if sliding_window is None else sliding_window - 1
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, heads, dim)
    if _kernel(q, dropout) == "flash":
        from torch.nn.attention.varlen import varlen_attn
        out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens_q, cu_seq_lens_q,
                          max_length_q, max_length_q, scale=scaling,
                          window_size=(-1, -1) if window is None else (window, window))
        return out[None], None
    # Elsewhere only the attention is padded again: the pairs' tokens are scattered into (pairs, longest) and
    # one batched SDPA call masks the padding keys: on the CPU the fastest of this, one SDPA call per pair and
    # nested tensors (README, "Cheaper cells"), and it takes attention dropout, which varlen_attn does not.
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).long()
    pairs, longest = len(lengths), int(max_length_q)
    pair = torch.repeat_interleave(torch.arange(pairs, device=q.device), lengths)
    position = torch.arange(q.shape[0], device=q.device) - cu_seq_lens_q[:-1].long()[pair]

    def padded(t):  # (T, heads, dim) -> (pairs, heads, longest, dim)
        out = t.new_zeros(pairs, longest, *t.shape[1:])
        out[pair, position] = t
        return out.transpose(1, 2)

    index = torch.arange(longest, device=q.device)
    real = index[None, :] < lengths[:, None]  # (pairs, keys)
    mask = real[:, None, None, :]
    if window is not None:
        band = (index[:, None] - index[None, :]).abs() <= window  # (queries, keys)
        # A padding query row keeps every real key: a row with none would be NaN, and NaN times the zero
        # gradient of a discarded row is still NaN in the backward pass.
        mask = mask & (band[None, None] | ~real[:, None, :, None])
    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=mask, dropout_p=dropout,
                                         scale=scaling)
    return out.transpose(1, 2)[pair, position][None], None


def register() -> None:
    """Make "kit_varlen" a known attention implementation (idempotent). No mask function is registered
    for it, so transformers builds no (T x T) mask for a packed row."""
    import transformers
    if NAME not in transformers.AttentionInterface._global_mapping:
        transformers.AttentionInterface.register(NAME, varlen_attention)
