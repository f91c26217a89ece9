"""Constrained node-by-node decoding of typed chains, and the representations it captures.

Node by node, the model scores every allowed value of the next type given the prompt and the
chain so far (the sum of the value's token log-probs), then commits the argmax (inference), a
tempered sample (OSIPO rollouts) or a given value (teacher forcing). The output is always a valid
chain. The KV cache is kept across nodes, so each node costs a few tokens, not a pass over the
prompt: on a CPU this is what makes rollouts affordable.

**Representations**: the last layer's hidden states mean-pooled over the chain's tokens, and over
each node's line (the same rule as ``TransformersBackend.hidden_states`` with spans), taken from
the decoding pass itself (no second forward over the prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scaletot_features.chain import KEY_SEPARATOR, NODE_SEPARATOR, chain_text
from scaletot_features.reasoning.chain_tokens import encode_prompt
from scaletot_features.llm.kv_cache import (
    cache_argument, output_cache, select_cache_rows, truncate_cache,
)
from scaletot_features.taxonomy import Taxonomy


def causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` inside a PEFT wrapper (LoRA layers stay injected), else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class Decoded:
    """Chains decoded for ``rows`` = prompts x samples (samples of one prompt are adjacent)."""

    values: list[list[str]]
    probs: np.ndarray  # (rows, S): the model's normalised probability of each chosen value
    logps: np.ndarray  # (rows, S): log p(value tokens | prompt, chain so far)
    representation: np.ndarray | None = None  # (rows, H): mean over all chain tokens
    segment_representations: np.ndarray | None = None  # (rows, S, H): mean over each line

    def texts(self, taxonomy: Taxonomy) -> list[str]:
        return [chain_text(dict(zip(taxonomy.type_names, v))) for v in self.values]


@dataclass
class _State:
    cache: Any
    mask: torch.Tensor  # (rows, past): 1 for real tokens, 0 for padding holes
    next_pos: torch.Tensor  # (rows,): position id of the next real token


class ConstrainedDecoder:
    """Decode typed chains node by node over each type's allowed values (always valid).

    Node k appends ``"\\n<type>:"`` (no newline for the first) and scores ``" <value>"`` for every
    allowed value as the sum of its token log-probs. One forward per node does both: each row's
    new tokens (the previous node's chosen value, then the header) are followed by a block holding
    every multi-token value's tokens but the last, under a custom attention mask (each value sees
    the row's context and its own earlier tokens, nothing else; positions continue from the
    header). The first value token is read off the header's last position, the others off the
    block; the block is then cut from the KV cache. The chosen value is fed at the next node.
    Rows are left-padded per step and the pads stay as masked holes in the cache, with explicit
    position ids, so each row computes exactly what it would alone: tests compare with a plain
    forward over prompt + chain, and with ``TransformersBackend.hidden_states``.

    Needs a full-attention KV cache (Llama, SmolLM2, Qwen2, ...), not a sliding-window one.
    """

    def __init__(self, model: Any, tokenizer: Any, taxonomy: Taxonomy, batch_size: int = 16):
        self.model = model
        self.lm = causal_lm(model)
        self.decoder = self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model
        self.head = self.lm.get_output_embeddings()
        self.cache_kw = cache_argument(self.decoder)
        self.tokenizer = tokenizer
        self.taxonomy = taxonomy
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id or 0)
        self.headers: list[list[int]] = []
        self.header_in_line: list[list[bool]] = []  # header tokens that overlap the node's line
        self.candidates: list[list[list[int]]] = []
        for k, t in enumerate(taxonomy.types):
            text = (NODE_SEPARATOR if k else "") + t.name + KEY_SEPARATOR.rstrip()
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            lo = len(NODE_SEPARATOR) if k else 0
            self.headers.append(list(enc["input_ids"]))
            self.header_in_line.append([e > lo for _, e in enc["offset_mapping"]])
            self.candidates.append(
                [list(tokenizer(" " + v, add_special_tokens=False).input_ids) for v in t.value_names])

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.get_text_config().hidden_size)

    @torch.no_grad()
    def decode(
        self,
        prompts: Sequence[str],
        samples: int = 1,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        forced: Sequence[Sequence[str]] | None = None,
        capture_hidden: bool = False,
    ) -> Decoded:
        """Chains for every prompt: ``samples`` per prompt (adjacent rows).

        temperature 0 commits the most probable value; > 0 samples from the value distribution
        tempered by it (``generator`` makes it reproducible); ``forced`` gives one value list per
        row and only scores it. ``probs`` are always at temperature 1.
        """
        if forced is not None and len(forced) != len(prompts) * samples:
            raise ValueError(f"forced needs one chain per row: {len(forced)} for {len(prompts) * samples}")
        parts: list[Decoded] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])
            f = None if forced is None else forced[start * samples:(start + len(chunk)) * samples]
            parts.append(self._decode_batch(chunk, samples, temperature, generator, f, capture_hidden))
        return _concat(parts, len(self.taxonomy.types), self.hidden_size)

    # -- one forward: new tokens per row, then the candidate block

    def _forward(self, rows: list[list[int]], block: list[list[int]], state: _State | None
                 ) -> tuple[torch.Tensor, torch.Tensor, _State]:
        """Run left-padded ``rows`` then the shared candidate ``block`` on top of ``state``.

        Returns the last hidden states (rows, width + block tokens, H), the row-token mask
        (rows, width) and the new state, whose cache holds the row tokens but not the block.
        """
        dev = self.device
        n, width = len(rows), max(map(len, rows))
        flat = [tok for c in block for tok in c]
        cand = torch.tensor([j for j, c in enumerate(block) for _ in c], device=dev, dtype=torch.long)
        offs = torch.tensor([o for c in block for o in range(len(c))], device=dev, dtype=torch.long)
        m = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r + flat for r in rows], device=dev)
        past = state.mask if state is not None else m.new_zeros(n, 0)
        start = state.next_pos if state is not None else m.new_zeros(n)
        pos_rows = start.unsqueeze(1) + (m.cumsum(1) - 1).clamp(min=0)
        after = (start + m.sum(1)).unsqueeze(1)
        pos = torch.cat([pos_rows, after + offs.unsqueeze(0).expand(n, -1)], dim=1)

        nb = len(flat)
        q = width + nb
        real = m.bool()
        allowed = torch.zeros(n, q, past.shape[1] + q, dtype=torch.bool, device=dev)
        allowed[:, :, :past.shape[1]] = past.bool().unsqueeze(1)  # every query sees the real past
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        allowed[:, :width, past.shape[1]:past.shape[1] + width] = causal & real.unsqueeze(1)
        diag = torch.arange(width, device=dev)  # a pad query sees itself: no empty softmax row
        allowed[:, diag, past.shape[1] + diag] |= ~real
        if nb:
            allowed[:, width:, past.shape[1]:past.shape[1] + width] = real.unsqueeze(1)
            same = (cand.unsqueeze(1) == cand.unsqueeze(0)) & (offs.unsqueeze(0) <= offs.unsqueeze(1))
            allowed[:, width:, past.shape[1] + width:] = same
        dtype = self.head.weight.dtype
        mask4d = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(
            ~allowed, torch.finfo(dtype).min).unsqueeze(1)
        kwargs = {self.cache_kw: state.cache} if state is not None else {}
        out = self.decoder(input_ids=ids, attention_mask=mask4d, position_ids=pos, use_cache=True,
                           **kwargs)
        cache = output_cache(out)
        if nb:
            truncate_cache(cache, past.shape[1] + width)
        return out.last_hidden_state, m, _State(cache, torch.cat([past, m], 1), start + m.sum(1))

    def _logprobs(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(h).float(), dim=-1)

    def _scores(self, k: int, h: torch.Tensor, width: int) -> torch.Tensor:
        """log p(" <value>" | context) of every allowed value of node k, (rows, values), from
        one forward's hidden states (header ends at column width - 1, block after it)."""
        cands = self.candidates[k]
        first = self._logprobs(h[:, width - 1])
        scores = torch.stack([first[:, c[0]] for c in cands], dim=1)
        col = width
        extra = []
        for j, c in enumerate(cands):
            if len(c) > 1:  # block columns col .. col+len-2 hold c[:-1]; they predict c[1:]
                lp = self._logprobs(h[:, col:col + len(c) - 1])
                tgt = torch.tensor(c[1:], device=h.device)
                extra.append((j, lp.gather(-1, tgt.expand(h.shape[0], -1).unsqueeze(-1)).sum((1, 2))))
                col += len(c) - 1
        for j, e in extra:
            scores[:, j] += e
        return scores

    def _block(self, k: int) -> list[list[int]]:
        return [c[:-1] for c in self.candidates[k] if len(c) > 1]

    def _decode_batch(self, prompts: list[str], samples: int, temperature: float,
                      generator: torch.Generator | None, forced: Sequence[Sequence[str]] | None,
                      capture: bool) -> Decoded:
        tax, dev = self.taxonomy, self.device
        n_seg, rows = len(tax.types), len(prompts) * samples
        hid = self.hidden_size
        whole_sum = torch.zeros(rows, hid, device=dev)
        whole_n = torch.zeros(rows, device=dev)
        seg_sum = torch.zeros(rows, n_seg, hid, device=dev)
        seg_n = torch.zeros(rows, n_seg, device=dev)

        def pool(h: torch.Tensor, labels: list[list[int]]) -> None:
            """Labels per row's tokens (left-padded to h's width): -2 prompt, -1 chain only,
            s >= 0 line s."""
            if not capture:
                return
            w = h.shape[1]
            lab = torch.tensor([[-2] * (w - len(r)) + r for r in labels], device=dev)
            chain = (lab >= -1).float()
            whole_sum.add_((h * chain.unsqueeze(-1)).sum(1))
            whole_n.add_(chain.sum(1))
            for s in range(n_seg):
                sel = (lab == s).float()
                if sel.any():
                    seg_sum[:, s].add_((h * sel.unsqueeze(-1)).sum(1))
                    seg_n[:, s].add_(sel.sum(1))

        # Prompt + first header (+ candidate block), once per prompt; then one state per sample.
        pids = [encode_prompt(self.tokenizer, p) for p in prompts]
        h, m, state = self._forward([p + self.headers[0] for p in pids], self._block(0), None)
        width = m.shape[1]
        rep = torch.arange(len(prompts), device=dev).repeat_interleave(samples)
        h = h[rep]
        state = _State(select_cache_rows(state.cache, rep), state.mask[rep], state.next_pos[rep])
        line0 = [0 if inl else -1 for inl in self.header_in_line[0]]
        pool(h[:, :width], [[-2] * len(pids[i]) + line0 for i in rep.tolist()])

        values: list[list[str]] = [[] for _ in range(rows)]
        probs = np.zeros((rows, n_seg))
        logps = np.zeros((rows, n_seg))
        ar = torch.arange(rows, device=dev)
        for k, t in enumerate(tax.types):
            scores = self._scores(k, h, width)
            dist = torch.softmax(scores, dim=-1)
            if forced is not None:
                choice = torch.tensor([t.index(f[k]) for f in forced], device=dev)
            elif temperature > 0:
                tempered = torch.softmax(scores / temperature, dim=-1)
                choice = torch.multinomial(tempered.cpu(), 1, generator=generator).squeeze(1).to(dev)
            else:
                choice = scores.argmax(dim=-1)
            probs[:, k] = dist[ar, choice].double().cpu().numpy()
            logps[:, k] = scores[ar, choice].double().cpu().numpy()
            for i, c in enumerate(choice.tolist()):
                values[i].append(t.value_names[c])
            chosen = [self.candidates[k][c] for c in choice.tolist()]
            if k + 1 < n_seg:  # the chosen value, then the next header and its candidates
                header = self.headers[k + 1]
                h, m, state = self._forward([c + header for c in chosen], self._block(k + 1), state)
                width = m.shape[1]
                hdr = [k + 1 if inl else -1 for inl in self.header_in_line[k + 1]]
                pool(h[:, :width], [[k] * len(c) + hdr for c in chosen])
            elif capture:  # the last value's own hidden states
                h, m, state = self._forward(chosen, [], state)
                pool(h, [[k] * len(c) for c in chosen])

        out = Decoded(values, probs, logps)
        if capture:
            out.representation = (whole_sum / whole_n.unsqueeze(1)).cpu().numpy().astype(np.float32)
            out.segment_representations = (seg_sum / seg_n.unsqueeze(-1)).cpu().numpy().astype(np.float32)
        return out


def _concat(parts: list[Decoded], n_seg: int, hidden: int) -> Decoded:
    if not parts:
        return Decoded([], np.zeros((0, n_seg)), np.zeros((0, n_seg)))
    out = Decoded([v for p in parts for v in p.values], np.concatenate([p.probs for p in parts]),
                  np.concatenate([p.logps for p in parts]))
    if parts[0].representation is not None:
        out.representation = np.concatenate([p.representation for p in parts])
        out.segment_representations = np.concatenate([p.segment_representations for p in parts])
    return out
