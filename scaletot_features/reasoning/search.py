"""Bounded Tree-of-Thought over typed chains: entropy-guided, greedy and fixed beam.

All three are one algorithm with one budget accounting (DESIGN.md 4.4). Depth t scores node t
of every live partial chain (one scoring call each). A node whose normalised entropy H_t is at
most ``tau`` commits its argmax; above ``tau`` it branches on its top values (at most
``width``). Live chains are ranked by cumulative log-prob and cut to ``width``, and further to
what the remaining budget can finish, so no user ever exceeds ``max_expansions`` calls:

- greedy  = never branch (tau >= 1, or width 1);
- beam    = always branch (entropy ignored);
- entropy = branch only where the teacher is uncertain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

from scaletot_features.chain import Chain, ChainNode
from scaletot_features.reasoning.scoring import TIE_DECIMALS, NodeDistribution, ranked
from scaletot_features.taxonomy import Taxonomy

Strategy = Literal["entropy", "greedy", "beam"]
STRATEGIES: tuple[str, ...] = ("entropy", "greedy", "beam")


class Scorer(Protocol):
    def score_many(self, requests: list[tuple[str, list[str]]]) -> list[NodeDistribution]:
        """One distribution per (profile text, values so far); each request is one scoring call."""
        ...


@dataclass(frozen=True)
class SearchConfig:
    strategy: Strategy = "entropy"
    tau: float = 0.7
    width: int = 2
    max_expansions: int = 12

    def check(self, taxonomy: Taxonomy) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"search strategy {self.strategy!r} not in {STRATEGIES}")
        if self.width < 1:
            raise ValueError("width must be >= 1")
        if self.max_expansions < len(taxonomy.types):
            raise ValueError(
                f"max_expansions={self.max_expansions} cannot finish one chain of "
                f"{len(taxonomy.types)} nodes; raise it to at least {len(taxonomy.types)}"
            )


@dataclass
class _Partial:
    values: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    dists: list[tuple[float, ...]] = field(default_factory=list)
    logp: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    chain: Chain
    logp: float
    expansions: int  # scoring calls spent on this user
    branched_nodes: int  # nodes where the search branched
    max_live: int  # most live partial chains at any depth


def _branch_here(cfg: SearchConfig, dist: NodeDistribution) -> bool:
    if cfg.strategy == "greedy" or cfg.width == 1:
        return False
    if cfg.strategy == "beam":
        return True
    return dist.entropy > cfg.tau


def search_chains(
    profile_texts: list[str],
    scorer: Scorer,
    taxonomy: Taxonomy,
    cfg: SearchConfig,
    evidence: list[tuple[str, ...]] | None = None,
    model_id: str = "",
) -> list[SearchResult]:
    """The best finished chain for each profile, each within its own budget.

    Users advance depth by depth together so that the scorer can batch every live partial
    chain of every user into one backend call; the budget is still counted per user.
    """
    cfg.check(taxonomy)
    n = len(profile_texts)
    evidence = evidence or [()] * n
    depth_total = len(taxonomy.types)
    live: list[list[_Partial]] = [[_Partial()] for _ in range(n)]
    expansions = [0] * n
    branched = [0] * n
    max_live = [1] * n
    for depth, state in enumerate(taxonomy.types):
        remaining_depths = depth_total - depth
        requests: list[tuple[str, list[str]]] = []
        owners: list[tuple[int, _Partial]] = []
        for u in range(n):
            affordable = (cfg.max_expansions - expansions[u]) // remaining_depths
            live[u] = live[u][: max(1, min(cfg.width, affordable))]
            max_live[u] = max(max_live[u], len(live[u]))
            for part in live[u]:
                requests.append((profile_texts[u], part.values))
                owners.append((u, part))
        dists = scorer.score_many(requests)
        children: list[list[_Partial]] = [[] for _ in range(n)]
        for (u, part), dist in zip(owners, dists):
            expansions[u] += 1
            order = ranked(dist.probs)
            take = order[: cfg.width] if _branch_here(cfg, dist) else order[:1]
            branched[u] += len(take) > 1
            for i in take:
                p = float(dist.probs[i])
                children[u].append(_Partial(
                    values=part.values + [state.value_names[i]],
                    probs=part.probs + [p],
                    entropies=part.entropies + [dist.entropy],
                    dists=part.dists + [tuple(float(x) for x in dist.probs)],
                    logp=part.logp + math.log(max(p, 1e-300)),
                ))
        # Stable sort: equal log-probs (to TIE_DECIMALS) keep parent order, then value order.
        live = [sorted(c, key=lambda x: -round(x.logp, TIE_DECIMALS)) for c in children]
    results = []
    for u in range(n):
        best = live[u][0]
        nodes = tuple(
            ChainNode(type=t.name, value=v, prob=p, entropy=h, evidence=evidence[u], probs=d)
            for t, v, p, h, d in zip(taxonomy.types, best.values, best.probs, best.entropies,
                                     best.dists)
        )
        results.append(SearchResult(
            chain=Chain(nodes, provenance="teacher", model_id=model_id), logp=best.logp,
            expansions=expansions[u], branched_nodes=branched[u], max_live=max_live[u],
        ))
    return results


def search_chain(profile_text: str, scorer: Scorer, taxonomy: Taxonomy, cfg: SearchConfig,
                 evidence: tuple[str, ...] = (), model_id: str = "") -> SearchResult:
    """The best finished chain for one profile, within the budget."""
    return search_chains([profile_text], scorer, taxonomy, cfg, [evidence], model_id)[0]
