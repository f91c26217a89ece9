"""The model's KV cache, handled the same on transformers 5.20 and 5.24.

The transformers backend reuses a prompt prefix's cache across requests; the student's
constrained decoder keeps one cache across a chain's nodes: it gives it back to the model, copies
rows of it (one per sample of a prompt) and cuts the scored candidate block off it.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch


def cache_argument(module: Any) -> str:
    """transformers 5.24 calls the KV cache ``cache``; 5.20 (the GPU pins) ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned, under either name."""
    return out.get("cache") if out.get("cache") is not None else out.get("past_key_values")


def select_cache_rows(cache: Any, index: torch.Tensor) -> Any:
    """A new cache holding rows ``index`` of ``cache`` (which is left as it was)."""
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        if getattr(layer, "is_initialized", True) and getattr(layer, "keys", None) is not None:
            lay.keys = layer.keys.index_select(0, index)
            lay.values = layer.values.index_select(0, index)
        new.layers.append(lay)
    return new


def truncate_cache(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of every layer of a full-attention cache."""
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False):
            raise NotImplementedError("constrained decoding needs a full-attention KV cache; this "
                                      "model uses a sliding-window one")
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def cache_nbytes(cache: Any) -> int:
    """Bytes the cache's key and value tensors hold."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def stack_caches(parts: list[tuple[Any, int]], width: int) -> Any:
    """One cache of ``len(parts)`` rows and ``width`` positions from single-row caches: row r holds
    the first n_r positions of cache r (``None`` when n_r is 0), zeros after them (the caller
    masks those positions out). The inputs are left as they were."""
    template = next(c for c, n in parts if c is not None and n > 0)
    new = copy.copy(template)
    new.layers = []
    for i, layer in enumerate(template.layers):
        lay = copy.copy(layer)
        for name in ("keys", "values"):
            like = getattr(layer, name)
            stacked = like.new_zeros((len(parts), *like.shape[1:-2], width, like.shape[-1]))
            for r, (cache, n) in enumerate(parts):
                if n:
                    stacked[r, ..., :n, :] = getattr(cache.layers[i], name)[0, ..., :n, :]
            setattr(lay, name, stacked)
        new.layers.append(lay)
    return new


def cache_row(cache: Any, row: int, positions: torch.Tensor) -> Any:
    """A new one-row cache holding ``positions`` (in order) of row ``row`` of ``cache``."""
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        lay.keys = layer.keys[row: row + 1].index_select(-2, positions)
        lay.values = layer.values[row: row + 1].index_select(-2, positions)
        new.layers.append(lay)
    return new
