"""--compile: the encoder compiled by torch.compile for training and re-ranking.

No gain was measured on a CPU (bench/README.md); the compiled kernels round differently, so compiled cells and
evaluations are keyed apart (cross_encoder.OFF_BY_DEFAULT).
"""
from __future__ import annotations


def compile_model(model):
    """torch.compile the encoder in place (the head stays eager; save_pretrained and state_dict unchanged).
    Shapes vary from batch to batch, so it is compiled for dynamic shapes from the start."""
    model.base_model.compile(dynamic=True)
    return model
