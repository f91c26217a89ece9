"""The vLLM backend: the same protocol on a CUDA GPU, for teachers larger than the CPU default.

vLLM is an optional extra with its own pins (``make setup-gpu`` builds ``.venv-gpu``); it is
imported only when a :class:`VLLMBackend` is built, so this module imports anywhere.

Scoring reads prompt log-probs: each (prefix + continuation) token sequence goes to vLLM with
``SamplingParams(prompt_logprobs=0, max_tokens=1)`` and the log-probs at the continuation
positions are summed. Tokenisation is exactly the transformers backend's (prefix and
continuation tokenised apart, see backend.py), so scores are comparable across backends.
Prefix caching is enabled and serves generation; note that vLLM's V1 engine does not READ the
prefix cache for requests that ask for prompt log-probs (it recomputes their prefill so every
prompt position gets a log-prob), so scoring gains from batching, not from the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scaletot_features.llm.backend import (
    BackendUsage,
    check_pairs,
    encode_continuation,
    encode_prefix,
    render_chat,
    start_token_id,
)
from scaletot_features.llm.packaged import model_id_for, resolve_model, set_offline_env

GPU_HINT = (
    "the vLLM backend needs a CUDA GPU and the vllm package: on a GPU machine run "
    "`make setup-gpu` and use .venv-gpu (or use the transformers backend on CPU)"
)


class VLLMBackend:
    """:class:`~scaletot_features.llm.backend.LLMBackend` on vLLM.

    ``hidden_states`` falls back to a :class:`~scaletot_features.llm.hf.TransformersBackend`
    on the same model folder (vLLM's generate API exposes no hidden states); it is loaded on
    first use, on the GPU, and shares this backend's usage counters. Keep
    ``gpu_memory_utilization`` low enough to leave room for it.
    """

    def __init__(
        self,
        model: str | Path = "packaged",
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_length: int = 1024,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"no CUDA device is visible: {GPU_HINT}")
        try:
            import vllm
        except ImportError as err:
            raise RuntimeError(f"vllm is not importable ({err}): {GPU_HINT}") from err

        set_offline_env()
        self.path = resolve_model(model)
        self.model_id = model_id_for(model)
        self.max_length = max_length
        self.usage = BackendUsage()
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=str(self.path),
            tokenizer=str(self.path),
            dtype=dtype,
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_length,
            seed=seed,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.start_id = start_token_id(self.tokenizer)
        self._hf: Any = None

    def __repr__(self) -> str:
        return f"VLLMBackend({self.model_id!r})"

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return render_chat(self.tokenizer, messages, self.model_id)

    # --- scoring -----------------------------------------------------------------------------

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> np.ndarray:
        """log p(continuation | prefix) for each candidate; one batched vLLM call."""
        self.usage.scoring_calls += 1
        pids = encode_prefix(self.tokenizer, prefix, self.start_id)
        return self._score([(pids, encode_continuation(self.tokenizer, c)) for c in continuations])

    def score_continuations_many(
        self, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[np.ndarray]:
        """Every request's candidates in one vLLM call (it schedules and caches the prefixes);
        one scoring call per request."""
        self.usage.scoring_calls += len(requests)
        pairs: list[tuple[list[int], list[int]]] = []
        for prefix, conts in requests:
            pids = encode_prefix(self.tokenizer, prefix, self.start_id)
            pairs += [(pids, encode_continuation(self.tokenizer, c)) for c in conts]
        flat = self._score(pairs)
        return list(np.split(flat, np.cumsum([len(c) for _, c in requests])[:-1]))

    def score_pairs(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """log p(continuation_i | prefix_i); vLLM schedules the batch itself."""
        check_pairs(prefixes, continuations)
        self.usage.scoring_calls += 1
        return self._score(
            [
                (encode_prefix(self.tokenizer, p, self.start_id), encode_continuation(self.tokenizer, c))
                for p, c in zip(prefixes, continuations)
            ]
        )

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> np.ndarray:
        scores = np.zeros(len(pairs), dtype=np.float64)
        todo = [i for i, (_, c) in enumerate(pairs) if c]  # an empty continuation has log-prob 0
        if not todo:
            return scores
        fitted: dict[int, list[int]] = {}
        for i in todo:
            prefix, cont = pairs[i]
            room = self.max_length - len(cont)
            if room < 1:
                raise ValueError(f"a continuation of {len(cont)} tokens leaves no room under max_length={self.max_length}")
            fitted[i] = prefix[-room:]
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        requests = [{"prompt_token_ids": fitted[i] + pairs[i][1]} for i in todo]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        for i, out in zip(todo, outputs):
            start, cont = len(fitted[i]), pairs[i][1]
            scores[i] = sum(out.prompt_logprobs[start + j][tok].logprob for j, tok in enumerate(cont))
            self.usage.prompt_tokens += start + len(cont)
        return scores

    # --- generation --------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """Greedy at temperature 0; otherwise plain tempered sampling, seeded per request."""
        params = self._vllm.SamplingParams(
            max_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=-1, seed=seed
        )
        room = max(self.max_length - max_new_tokens, 1)
        requests = [
            {"prompt_token_ids": encode_prefix(self.tokenizer, p, self.start_id)[-room:]} for p in prompts
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        texts = []
        for out in outputs:
            completion = out.outputs[0]
            self.usage.prompt_tokens += len(out.prompt_token_ids)
            self.usage.generated_tokens += len(completion.token_ids)
            texts.append(self.tokenizer.decode(completion.token_ids, skip_special_tokens=True))
        return texts

    # --- hidden states (transformers fallback) -----------------------------------------------

    def hidden_states(
        self, texts: Sequence[str], spans: Sequence[tuple[int, int]] | None = None
    ) -> np.ndarray:
        """Span-pooled last-layer states, computed by a TransformersBackend on the same folder."""
        if self._hf is None:
            from scaletot_features.llm.hf import TransformersBackend

            self._hf = TransformersBackend(str(self.path), device="cuda", max_length=self.max_length)
            self._hf.usage = self.usage
        return self._hf.hidden_states(texts, spans)
