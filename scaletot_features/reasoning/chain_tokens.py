"""Prompt and chain tokens, and the node (segment) each chain token belongs to.

A chain's text has one line per typed node; its tokens are split into one segment per node by
the characters they start at (:func:`chain_tokens`). A token belongs to the node whose line (plus
the newline that ends it) contains its first character, so every chain token is in exactly one
segment and no prompt token is in any (:func:`sequence_segments`). The student trainers
(``trainers/``) and the constrained decoder tokenise the same way.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from scaletot_features.chain import segment_spans


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt tokens with the tokenizer's own special tokens (as TRL and the backends do)."""
    return list(tokenizer(prompt).input_ids)


@dataclass(frozen=True)
class ChainTokens:
    """A chain's tokens (tokenised alone, no special tokens) and the segment of each token."""

    ids: list[int]
    segments: list[int]


def chain_tokens(tokenizer: Any, text: str) -> ChainTokens:
    """Tokenise chain text and give each token the node whose line holds its first character.

    Line s covers ``[start_s, start_{s+1})``: its text and the newline that ends it.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in segment_spans(text)]
    segs = [max(bisect.bisect_right(starts, a) - 1, 0) for a, _ in enc["offset_mapping"]]
    return ChainTokens(list(enc["input_ids"]), segs)


def sequence_segments(prompt_len: int, chain: ChainTokens) -> list[int]:
    """The segment of every token of prompt + chain: -1 on the ``prompt_len`` prompt tokens."""
    return [-1] * prompt_len + chain.segments
