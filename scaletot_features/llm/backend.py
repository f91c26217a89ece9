"""The one protocol every LLM backend implements, and the small types it shares.

The teacher (entropy-guided ToT), the student and the encoder distillation talk to a language
model only through :class:`LLMBackend`, so the transformers (CPU) and vLLM (GPU) backends are
interchangeable and a test can swap in the tiny random model.

Tokenisation boundary (both backends): a continuation is scored as the tokens of
``tokenize(prefix) + tokenize(continuation)``, each tokenised on its own. Byte-level BPE
tokenisers (SmolLM2, Llama, GPT-2 style) start a new token at a space or newline, so when a
continuation starts with one (" Paris", "\\nlife_stage: ...") these ids are exactly the ids of
the joined text; a continuation that starts mid-word ("aris" after "P") is scored as if a token
boundary fell there. Callers should therefore start continuations with a space or a newline.
The alternative (tokenize the joined text and subtract the prefix tokens) silently moves the
boundary when the tokenizer merges across it, which makes candidates incomparable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class BackendUsage:
    """Running cost counters of one backend, so the teacher can record LLM cost per user.

    ``prompt_tokens`` counts the non-padding tokens run through the model: a shared prefix
    counts once however many continuations reuse its KV cache.
    """

    scoring_calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def reset(self) -> None:
        """Zero every counter (e.g. before a new user)."""
        self.scoring_calls = self.prompt_tokens = self.generated_tokens = 0

    def snapshot(self) -> BackendUsage:
        """A frozen-in-time copy; ``usage.snapshot() - before`` gives the cost of a step."""
        return dataclasses.replace(self)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def __sub__(self, other: BackendUsage) -> BackendUsage:
        return BackendUsage(
            scoring_calls=self.scoring_calls - other.scoring_calls,
            prompt_tokens=self.prompt_tokens - other.prompt_tokens,
            generated_tokens=self.generated_tokens - other.generated_tokens,
        )


@runtime_checkable
class LLMBackend(Protocol):
    """Score continuations, generate text and read hidden states from one causal LM."""

    model_id: str
    """Which model this is, written into chain provenance."""

    usage: BackendUsage

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> np.ndarray:
        """Sum of token log-probs of each continuation after one shared prefix, shape (n,).

        The prefix is run once and its KV cache shared by all candidates; one scoring call.
        """
        ...

    def score_pairs(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """log p(continuation_i | prefix_i) for unrelated pairs (noisy-channel mode), shape (n,)."""
        ...

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The model's own chat template applied to ``messages``, ending where the assistant's
        answer starts; refused (ValueError) for a model without a chat template."""
        ...

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """Continue each prompt; temperature 0 is greedy and deterministic."""
        ...

    def hidden_states(
        self, texts: Sequence[str], spans: Sequence[tuple[int, int]] | None = None
    ) -> np.ndarray:
        """Last-layer hidden states mean-pooled over the tokens that overlap the character span
        [start, end) of each text (whole text when ``spans`` is None); float32 (n, hidden)."""
        ...


def score_continuations_many(backend: LLMBackend,
                             requests: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
    """Each (prefix, candidates) request scored, one scoring call each: batched where the backend
    can (the transformers backend's ``score_continuations_many``), else one at a time."""
    many = getattr(backend, "score_continuations_many", None)
    if many is not None:
        return list(many(requests))
    return [backend.score_continuations(p, c) for p, c in requests]


def encode_prefix(tokenizer: Any, text: str, start_id: int) -> list[int]:
    """Prefix tokens with the tokenizer's own special tokens (BOS where the model wants one);
    ``[start_id]`` for an empty prefix, because the first continuation token needs context."""
    return list(tokenizer(text).input_ids) or [start_id]


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Continuation tokens, tokenised alone and without special tokens (see the module doc)."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]], model_id: str = "") -> str:
    """Chat-template text that ends with the assistant header, so the next token is the answer.

    The template's own leading BOS is dropped when the tokenizer adds one anyway (Gemma), so a
    rendered prompt never carries two.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {model_id or '?'} has no chat template: use another scoring mode "
                         "(calibrated, channel) or an instruction-tuned model")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def start_token_id(tokenizer: Any) -> int:
    """BOS, else EOS, else 0: what an empty prefix is conditioned on."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def check_pairs(prefixes: Sequence[str], continuations: Sequence[str]) -> None:
    """Refuse mismatched pair lists early, with both lengths in the message."""
    if len(prefixes) != len(continuations):
        raise ValueError(
            f"score_pairs needs one continuation per prefix: got {len(prefixes)} prefixes and "
            f"{len(continuations)} continuations"
        )
