"""The synthetic low-activity population (DESIGN.md 4.2): latent states -> sparse profile -> outcomes.

Per user, latent states of the default taxonomy are drawn from a small Bayesian network::

    life_stage -> spending_power            life_stage -> primary_interest -> engagement_intent
    (spending_power, engagement_intent) -> monetization_propensity
    (spending_power, primary_interest, engagement_intent) -> acquisition_channel (observed)
    (primary_interest, engagement_intent, acquisition_channel) -> retention_outlook

The observed profile is generated FROM those states with heavy missingness (most users show at
most two of the six optional fields), its free-text fields drawn from the long-tail vocabularies of
``vocab.py`` with a Zipf skew and off-group noise, so a profile is evidence, never a label.
Outcomes (one event per active day, purchase events with a value) follow from the states over
``horizon_days + 10`` days, and labels come from ``data.labels.derive_labels``.

Generation is chunked: each chunk of ``chunk_size`` users is drawn with its own generator seeded
from ``(seed, chunk index)``, fully vectorised, written as one parquet part per table, and
dropped, so memory is bounded by the chunk size, not the population. Nothing reads a clock:
the same arguments give byte-identical files.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scaletot_features.data.io import atomic_dir, write_json_atomic
from scaletot_features.data.io import write_parquet_atomic
from scaletot_features.data.labels import derive_labels, label_names, label_schema
from scaletot_features.dataset import EVENTS_SCHEMA, SCHEMA_VERSION, DatasetLayout, part_file
from scaletot_features.dataset import latent_schema as _latent_schema
from scaletot_features.data.vocab import (
    DEVICE_MODELS,
    INTEREST_TAGS,
    OCCUPATIONS,
    check_vocabularies,
    popularity_rank,
)
from scaletot_features.profile import (
    CHANNELS,
    CITY_TIERS,
    DEFAULT_PROFILE_SCHEMA,
    GENDERS,
    ID_COLUMN,
    TIMESTAMP_TYPE,
    FieldKind,
)
from scaletot_features.taxonomy import DEFAULT_TAXONOMY, Taxonomy

GENERATOR_VERSION = 1
DAY_US = 86_400 * 1_000_000
# Events are simulated past the label horizon so that the horizon, not the data, cuts the label.
EXTRA_OBSERVED_DAYS = 10
# Fixed parquet writer settings: part of "same seed => same bytes".
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "row_group_size": 1 << 20,
    "version": "2.6",
}

# --------------------------------------------------------------------------------------------
# Observed-profile missingness. Presence = probability that an optional field has a value; the
# manifest's reference_null_rates are 1 - presence. Presence is tilted by retention (engaged users
# fill in more), with factors normalised so the marginal presence is exactly these constants.
# --------------------------------------------------------------------------------------------
PRESENCE_AGE = 0.35
PRESENCE_GENDER = 0.40
PRESENCE_CITY_TIER = 0.30
PRESENCE_DEVICE_MODEL = 0.45
PRESENCE_OCCUPATION = 0.20
PRESENCE_INTERESTS = 0.25
PRESENCE: dict[str, float] = {
    "age": PRESENCE_AGE,
    "gender": PRESENCE_GENDER,
    "city_tier": PRESENCE_CITY_TIER,
    "device_model": PRESENCE_DEVICE_MODEL,
    "occupation": PRESENCE_OCCUPATION,
    "interests": PRESENCE_INTERESTS,
}
PRESENCE_TILT_BY_RETENTION: dict[str, float] = {"churn_risk": 0.8, "casual": 1.0, "habitual": 1.35}

# Vocabulary draws: Zipf exponent within a latent group, and the share drawn off-group (noise).
ZIPF_EXPONENT = 1.1
OCCUPATION_NOISE = 0.12
DEVICE_NOISE = 0.15
TAG_NOISE = 0.25
TAG_COUNT_PROBS = (0.40, 0.30, 0.20, 0.10)  # 1, 2, 3 or 4 interest tags

# --------------------------------------------------------------------------------------------
# Latent network: conditional tables keyed by value names (checked against the taxonomy).
# --------------------------------------------------------------------------------------------
LIFE_STAGE_PRIOR = {"student": 0.22, "early_career": 0.28, "family": 0.22, "established": 0.18,
                    "retired": 0.10}
SPENDING_GIVEN_LIFE = {  # low, medium, high
    "student": (0.65, 0.30, 0.05),
    "early_career": (0.35, 0.50, 0.15),
    "family": (0.30, 0.50, 0.20),
    "established": (0.12, 0.48, 0.40),
    "retired": (0.35, 0.45, 0.20),
}
INTEREST_GIVEN_LIFE = {  # gaming, shopping, finance, entertainment, social, fitness_health, news_learning
    "student": (0.30, 0.12, 0.03, 0.22, 0.20, 0.08, 0.05),
    "early_career": (0.18, 0.18, 0.10, 0.18, 0.14, 0.14, 0.08),
    "family": (0.06, 0.30, 0.10, 0.16, 0.12, 0.12, 0.14),
    "established": (0.06, 0.14, 0.28, 0.12, 0.08, 0.14, 0.18),
    "retired": (0.02, 0.12, 0.16, 0.18, 0.14, 0.12, 0.26),
}
INTENT_GIVEN_INTEREST = {  # casual_browse, deal_seeking, social_connect, goal_directed
    "gaming": (0.50, 0.15, 0.25, 0.10),
    "shopping": (0.25, 0.55, 0.05, 0.15),
    "finance": (0.15, 0.15, 0.05, 0.65),
    "entertainment": (0.60, 0.10, 0.20, 0.10),
    "social": (0.20, 0.05, 0.70, 0.05),
    "fitness_health": (0.20, 0.10, 0.15, 0.55),
    "news_learning": (0.40, 0.05, 0.10, 0.45),
}
MONETIZATION_GIVEN_SPENDING = {  # none, occasional, frequent
    "low": (0.85, 0.13, 0.02),
    "medium": (0.65, 0.28, 0.07),
    "high": (0.45, 0.35, 0.20),
}
MONETIZATION_TILT_BY_INTENT = {
    "casual_browse": (1.1, 0.9, 0.8),
    "deal_seeking": (0.9, 1.3, 0.9),
    "social_connect": (1.05, 0.9, 1.0),
    "goal_directed": (0.9, 1.1, 1.4),
}
CHANNEL_BASE = {"organic_search": 0.16, "app_store": 0.18, "paid_social": 0.18, "search_ads": 0.10,
                "referral": 0.10, "influencer": 0.08, "preinstall": 0.10, "rewards_offer": 0.10}
CHANNEL_TILT_BY_INTEREST: dict[str, dict[str, float]] = {
    "gaming": {"influencer": 3.0, "paid_social": 1.3},
    "entertainment": {"influencer": 2.5, "paid_social": 1.4},
    "shopping": {"paid_social": 1.6, "influencer": 1.5, "rewards_offer": 1.5},
    "finance": {"search_ads": 2.0, "organic_search": 1.5},
    "social": {"referral": 3.0},
    "fitness_health": {"app_store": 1.4, "influencer": 1.3},
    "news_learning": {"organic_search": 2.0, "preinstall": 1.3},
}
CHANNEL_TILT_BY_INTENT: dict[str, dict[str, float]] = {
    "casual_browse": {"preinstall": 1.3, "paid_social": 1.2},
    "deal_seeking": {"rewards_offer": 4.0},
    "social_connect": {"referral": 2.0},
    "goal_directed": {"search_ads": 1.8, "organic_search": 1.5},
}
CHANNEL_TILT_BY_SPENDING: dict[str, dict[str, float]] = {
    "low": {"preinstall": 1.8, "rewards_offer": 1.5},
    "medium": {},
    "high": {"preinstall": 0.4, "app_store": 1.3, "search_ads": 1.3},
}
RETENTION_GIVEN_INTENT = {  # churn_risk, casual, habitual
    "casual_browse": (0.50, 0.35, 0.15),
    "deal_seeking": (0.60, 0.30, 0.10),
    "social_connect": (0.35, 0.35, 0.30),
    "goal_directed": (0.40, 0.40, 0.20),
}
RETENTION_TILT_BY_INTEREST = {
    "gaming": (0.9, 1.0, 1.3),
    "shopping": (1.1, 1.0, 0.9),
    "finance": (1.0, 1.1, 1.1),
    "entertainment": (1.0, 1.1, 0.9),
    "social": (0.9, 1.0, 1.3),
    "fitness_health": (1.0, 1.0, 1.1),
    "news_learning": (1.0, 1.0, 1.2),
}
RETENTION_TILT_BY_CHANNEL = {
    "organic_search": (0.9, 1.0, 1.2),
    "app_store": (1.0, 1.0, 1.0),
    "paid_social": (1.1, 1.0, 0.9),
    "search_ads": (1.0, 1.0, 1.05),
    "referral": (0.7, 1.0, 1.6),
    "influencer": (1.1, 1.0, 0.9),
    "preinstall": (1.3, 1.0, 0.7),
    "rewards_offer": (1.5, 0.9, 0.6),
}

# --------------------------------------------------------------------------------------------
# Observed fields from latent states.
# --------------------------------------------------------------------------------------------
AGE_GIVEN_LIFE = {  # mean, sd, min, max
    "student": (19.5, 2.5, 13, 30),
    "early_career": (27.0, 3.0, 21, 38),
    "family": (38.0, 6.0, 24, 58),
    "established": (47.0, 7.0, 30, 66),
    "retired": (70.0, 6.0, 57, 95),
}
GENDER_PROBS = (0.48, 0.49, 0.03)  # independent of the latent states: an uninformative field
CITY_TIER_GIVEN_SPENDING = {  # tier1, tier2, tier3, tier4, rural
    "low": (0.08, 0.17, 0.30, 0.25, 0.20),
    "medium": (0.20, 0.30, 0.25, 0.15, 0.10),
    "high": (0.45, 0.30, 0.15, 0.07, 0.03),
}
FIRST_DAY_ZERO_GIVEN_RETENTION = {"churn_risk": 0.50, "casual": 0.30, "habitual": 0.12}
FIRST_DAY_EXTRA_MEAN_GIVEN_RETENTION = {"churn_risk": 0.4, "casual": 0.8, "habitual": 1.8}

# --------------------------------------------------------------------------------------------
# Outcomes. Day d >= 1 is active with p = frailty * intent_factor * (a * exp(-d / tau) + b);
# day 0 is active exactly when first_day_sessions > 0.
# --------------------------------------------------------------------------------------------
ACTIVITY_GIVEN_RETENTION = {  # a, tau (days), b
    "churn_risk": (0.15, 2.0, 0.003),
    "casual": (0.25, 5.0, 0.02),
    "habitual": (0.50, 15.0, 0.15),
}
ACTIVITY_FACTOR_BY_INTENT = {"casual_browse": 0.9, "deal_seeking": 0.9, "social_connect": 1.2,
                             "goal_directed": 1.0}
FRAILTY_SHAPE = 4.0  # per-user gamma(shape, 1/shape) multiplier: mean 1, users differ
PURCHASE_PROB_PER_ACTIVE_DAY = {"none": 0.0, "occasional": 0.05, "frequent": 0.22}
PURCHASE_LOG_MEAN_BY_SPENDING = {"low": float(np.log(2.0)), "medium": float(np.log(6.0)),
                                 "high": float(np.log(18.0))}
PURCHASE_LOG_SD = 0.9
# Amounts are whole quarters: dyadic values add up exactly in float64, so revenue sums are the
# same whatever order DuckDB's parallel aggregate adds them in (same seed => same bytes).
PURCHASE_AMOUNT_STEP = 0.25


def events_schema() -> pa.Schema:
    """The events table of a dataset directory (one definition: dataset.EVENTS_SCHEMA)."""
    return EVENTS_SCHEMA


def latent_schema(taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> pa.Schema:
    """Latent truth: user_id + one string column per state type (evaluation only)."""
    return _latent_schema(taxonomy)


def reference_null_rates() -> dict[str, float]:
    """The design null rate of every profile field (required fields: 0)."""
    return {f.name: (0.0 if f.required else round(1.0 - PRESENCE[f.name], 10))
            for f in DEFAULT_PROFILE_SCHEMA.fields}


def reference_domains() -> dict[str, list[str]]:
    return {f.name: list(f.domain or ()) for f in DEFAULT_PROFILE_SCHEMA.of_kind(FieldKind.categorical)}


# --------------------------------------------------------------------------------------------
# Tables as arrays, in taxonomy order.
# --------------------------------------------------------------------------------------------
def _values(taxonomy: Taxonomy, type_name: str) -> list[str]:
    return taxonomy[type_name].value_names


def _rows(table: Mapping[str, tuple[float, ...]], parents: list[str], width: int, name: str) -> np.ndarray:
    if set(table) != set(parents):
        raise ValueError(f"{name}: keys {sorted(table)} do not match taxonomy values {sorted(parents)}")
    out = np.array([table[p] for p in parents], dtype=np.float64)
    if out.shape[1] != width:
        raise ValueError(f"{name}: rows have {out.shape[1]} entries, expected {width}")
    return out / out.sum(axis=1, keepdims=True)


def _tilts(table: Mapping[str, Mapping[str, float]], parents: list[str], children: list[str],
           name: str) -> np.ndarray:
    if set(table) != set(parents):
        raise ValueError(f"{name}: keys {sorted(table)} do not match {sorted(parents)}")
    out = np.ones((len(parents), len(children)))
    for i, p in enumerate(parents):
        for child, factor in table[p].items():
            out[i, children.index(child)] = factor
    return out


class _Network:
    """The latent network's conditional tables as arrays, built once per taxonomy."""

    def __init__(self, taxonomy: Taxonomy):
        required = ["life_stage", "spending_power", "primary_interest", "engagement_intent",
                    "monetization_propensity", "retention_outlook"]
        if taxonomy.type_names != required:
            raise ValueError(
                f"the synthetic generator models the default taxonomy {required}; "
                f"got {taxonomy.type_names}"
            )
        check_vocabularies(taxonomy)
        self.taxonomy = taxonomy
        ls, sp, pi, ei, mp, ro = (_values(taxonomy, t) for t in required)
        self.names = {"life_stage": ls, "spending_power": sp, "primary_interest": pi,
                      "engagement_intent": ei, "monetization_propensity": mp,
                      "retention_outlook": ro, "acquisition_channel": list(CHANNELS)}
        ch = list(CHANNELS)
        if set(LIFE_STAGE_PRIOR) != set(ls):
            raise ValueError(f"LIFE_STAGE_PRIOR keys {sorted(LIFE_STAGE_PRIOR)} do not match {ls}")
        self.life = _lookup(LIFE_STAGE_PRIOR, ls) / sum(LIFE_STAGE_PRIOR.values())
        self.spend = _rows(SPENDING_GIVEN_LIFE, ls, len(sp), "SPENDING_GIVEN_LIFE")  # [l, s]
        self.interest = _rows(INTEREST_GIVEN_LIFE, ls, len(pi), "INTEREST_GIVEN_LIFE")  # [l, i]
        self.intent = _rows(INTENT_GIVEN_INTEREST, pi, len(ei), "INTENT_GIVEN_INTEREST")  # [i, e]
        base = _rows(MONETIZATION_GIVEN_SPENDING, sp, len(mp), "MONETIZATION_GIVEN_SPENDING")
        tilt = _rows(MONETIZATION_TILT_BY_INTENT, ei, len(mp), "MONETIZATION_TILT_BY_INTENT")
        m = base[:, None, :] * tilt[None, :, :]
        self.monet = m / m.sum(-1, keepdims=True)  # [s, e, m]
        cb = np.array([CHANNEL_BASE[c] for c in ch])
        c = (cb[None, None, None, :]
             * _tilts(CHANNEL_TILT_BY_SPENDING, sp, ch, "CHANNEL_TILT_BY_SPENDING")[:, None, None, :]
             * _tilts(CHANNEL_TILT_BY_INTEREST, pi, ch, "CHANNEL_TILT_BY_INTEREST")[None, :, None, :]
             * _tilts(CHANNEL_TILT_BY_INTENT, ei, ch, "CHANNEL_TILT_BY_INTENT")[None, None, :, :])
        self.channel = c / c.sum(-1, keepdims=True)  # [s, i, e, c]
        rb = _rows(RETENTION_GIVEN_INTENT, ei, len(ro), "RETENTION_GIVEN_INTENT")
        ri = np.array([RETENTION_TILT_BY_INTEREST[v] for v in pi])
        rc = np.array([RETENTION_TILT_BY_CHANNEL[v] for v in ch])
        r = rb[None, :, None, :] * ri[:, None, None, :] * rc[None, None, :, :]
        self.retention = r / r.sum(-1, keepdims=True)  # [i, e, c, r]
        # Exact marginals by enumerating the joint (5*3*7*4*3*8*3 cells: tiny).
        joint = np.einsum("l,ls,li,ie,sem,siec,iecr->lsiemcr", self.life, self.spend,
                          self.interest, self.intent, self.monet, self.channel, self.retention)
        axes = {"life_stage": 0, "spending_power": 1, "primary_interest": 2,
                "engagement_intent": 3, "monetization_propensity": 4,
                "acquisition_channel": 5, "retention_outlook": 6}
        self.marginals = {
            t: dict(zip(self.names[t], joint.sum(axis=tuple(a for a in range(7) if a != ax)).tolist()))
            for t, ax in axes.items()
        }
        p_r = np.array([self.marginals["retention_outlook"][v] for v in ro])
        tilt_r = np.array([PRESENCE_TILT_BY_RETENTION[v] for v in ro])
        self.presence_tilt = tilt_r / float(p_r @ tilt_r)  # E[tilt] = 1: marginal presence exact
        for f, p in PRESENCE.items():
            if p * self.presence_tilt.max() > 1:
                raise ValueError(f"presence of {f} times the retention tilt exceeds 1")
        self.vocab = _VocabSampler(ls, sp, pi)
        city = _rows(CITY_TIER_GIVEN_SPENDING, sp, len(CITY_TIERS), "CITY_TIER_GIVEN_SPENDING")
        if len(GENDER_PROBS) != len(GENDERS):
            raise ValueError(f"GENDER_PROBS needs one entry per gender {GENDERS}")
        self.cdf = {name: _cdf(np.asarray(t, dtype=np.float64) / np.sum(t, axis=-1, keepdims=True))
                    for name, t in (("life", self.life), ("spend", self.spend),
                                    ("interest", self.interest), ("intent", self.intent),
                                    ("monet", self.monet), ("channel", self.channel),
                                    ("retention", self.retention), ("gender", GENDER_PROBS),
                                    ("city", city), ("tag_count", TAG_COUNT_PROBS))}


class _GroupedVocab:
    """Draw vocabulary entries within a latent group, Zipf-skewed by a fixed popularity rank."""

    def __init__(self, texts: list[str], groups: np.ndarray, n_groups: int):
        self.values = pa.array(texts, type=pa.string())
        self.members: list[np.ndarray] = []
        self.cdfs: list[np.ndarray] = []
        for g in range(n_groups):
            idx = np.flatnonzero(groups == g)
            idx = idx[np.argsort([popularity_rank(texts[i]) for i in idx], kind="stable")]
            w = 1.0 / np.arange(1, len(idx) + 1) ** ZIPF_EXPONENT
            cdf = np.cumsum(w / w.sum())
            cdf[-1] = 1.0
            self.members.append(idx)
            self.cdfs.append(cdf)
        self.n_groups = n_groups

    def draw(self, rng: np.random.Generator, group: np.ndarray, noise: float) -> np.ndarray:
        """Entry indices: in the user's group, or (with prob ``noise``) a uniformly other group."""
        n = len(group)
        group = group.copy()
        off = rng.random(size=n) < noise
        if self.n_groups > 1:
            shift = rng.integers(1, self.n_groups, size=n)
            group[off] = (group[off] + shift[off]) % self.n_groups
        u = rng.random(size=n)
        out = np.empty(n, dtype=np.int64)
        for g in range(self.n_groups):
            sel = group == g
            if sel.any():
                pos = np.searchsorted(self.cdfs[g], u[sel], side="right")
                out[sel] = self.members[g][np.minimum(pos, len(self.members[g]) - 1)]
        return out


class _VocabSampler:
    def __init__(self, ls: list[str], sp: list[str], pi: list[str]):
        self.n_sp = len(sp)
        occ_group = np.array([ls.index(o.life_stage) * len(sp) + sp.index(o.spending_power)
                              for o in OCCUPATIONS])
        self.occupation = _GroupedVocab([o.text for o in OCCUPATIONS], occ_group, len(ls) * len(sp))
        dev_group = np.array([sp.index(d.spending_power) for d in DEVICE_MODELS])
        self.device = _GroupedVocab([d.text for d in DEVICE_MODELS], dev_group, len(sp))
        tag_group = np.array([pi.index(t.primary_interest) for t in INTEREST_TAGS])
        self.tags = _GroupedVocab([t.text for t in INTEREST_TAGS], tag_group, len(pi))


_NETWORKS: dict[str, _Network] = {}


def _network(taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> _Network:
    key = taxonomy.fingerprint()
    if key not in _NETWORKS:
        _NETWORKS[key] = _Network(taxonomy)
    return _NETWORKS[key]


def latent_marginals() -> dict[str, dict[str, float]]:
    """Exact marginal distribution of each latent type (and the channel) under the network."""
    return {t: dict(v) for t, v in _network().marginals.items()}


# --------------------------------------------------------------------------------------------
# One chunk.
# --------------------------------------------------------------------------------------------
def _cdf(probs: np.ndarray) -> np.ndarray:
    """Cumulative probabilities along the last axis (computed once per table, not per user)."""
    cdf = np.cumsum(probs, axis=-1)
    cdf[..., -1] = 1.0
    return cdf


def _categorical(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """One draw per user by inverse CDF, vectorised. ``cdf``: one row (a prior) or n rows."""
    u: np.ndarray = rng.random(size=n)
    if cdf.ndim == 1:
        return np.minimum(np.searchsorted(cdf, u, side="left"), cdf.size - 1)
    return np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)


def chunk_rng(seed: int, chunk_index: int) -> list[np.random.Generator]:
    """Three independent generators (latent, profile, outcomes) for one chunk.

    Seeded from (seed, chunk index) only, so a chunk does not depend on any other chunk, and a
    change to how profiles are drawn does not move the latent states.
    """
    ss = np.random.SeedSequence([int(seed), int(chunk_index), GENERATOR_VERSION])
    return [np.random.Generator(np.random.PCG64(s)) for s in ss.spawn(3)]


def _draw_latent(net: _Network, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    c = net.cdf
    life = _categorical(rng, c["life"], n)
    spend = _categorical(rng, c["spend"][life], n)
    interest = _categorical(rng, c["interest"][life], n)
    intent = _categorical(rng, c["intent"][interest], n)
    monet = _categorical(rng, c["monet"][spend, intent], n)
    channel = _categorical(rng, c["channel"][spend, interest, intent], n)
    retention = _categorical(rng, c["retention"][interest, intent, channel], n)
    return {"life_stage": life, "spending_power": spend, "primary_interest": interest,
            "engagement_intent": intent, "monetization_propensity": monet,
            "retention_outlook": retention, "acquisition_channel": channel}


def _lookup(table: Mapping[str, Any], names: list[str]) -> np.ndarray:
    return np.array([table[v] for v in names], dtype=np.float64)


def _draw_profile(net: _Network, rng: np.random.Generator, lat: dict[str, np.ndarray],
                  user_ids: np.ndarray, signup_us: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The observed profile table, and first-day sessions (day 0's activity follows them)."""
    n = user_ids.shape[0]
    names = net.names
    tilt = net.presence_tilt[lat["retention_outlook"]]
    present = {f: rng.random(size=n) < p * tilt for f, p in PRESENCE.items()}

    ret = lat["retention_outlook"]
    p_zero = _lookup(FIRST_DAY_ZERO_GIVEN_RETENTION, names["retention_outlook"])[ret]
    extra = _lookup(FIRST_DAY_EXTRA_MEAN_GIVEN_RETENTION, names["retention_outlook"])[ret]
    sessions = np.where(rng.random(size=n) < p_zero, 0, 1 + rng.poisson(extra))

    age_params = np.array([AGE_GIVEN_LIFE[v] for v in names["life_stage"]])[lat["life_stage"]]
    age = np.clip(np.rint(age_params[:, 0] + age_params[:, 1] * rng.standard_normal(n)),
                  age_params[:, 2], age_params[:, 3])

    gender = _categorical(rng, net.cdf["gender"], n)
    city = _categorical(rng, net.cdf["city"][lat["spending_power"]], n)

    v = net.vocab
    occ = v.occupation.draw(rng, lat["life_stage"] * v.n_sp + lat["spending_power"], OCCUPATION_NOISE)
    dev = v.device.draw(rng, lat["spending_power"], DEVICE_NOISE)

    # Interests: 1-4 distinct tags, mostly from the primary interest.
    n_tags = 1 + _categorical(rng, net.cdf["tag_count"], n)
    slots = np.stack([v.tags.draw(rng, lat["primary_interest"], TAG_NOISE)
                      for _ in range(len(TAG_COUNT_PROBS))], axis=1)
    keep = np.arange(len(TAG_COUNT_PROBS))[None, :] < n_tags[:, None]
    for j in range(1, slots.shape[1]):
        keep[:, j] &= ~(slots[:, :j] == slots[:, j:j + 1]).any(axis=1)
    keep &= present["interests"][:, None]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    tag_values = v.tags.values.take(pa.array(slots[keep]))
    interests = pa.ListArray.from_arrays(pa.array(offsets), tag_values,
                                         mask=pa.array(~present["interests"]))

    def text(vocab: _GroupedVocab, idx: np.ndarray, field: str) -> pa.Array:
        return vocab.values.take(pa.array(idx, mask=~present[field]))

    def cat(domain: tuple[str, ...], idx: np.ndarray, field: str | None) -> pa.Array:
        arr = pa.array(np.asarray(domain, dtype=object)).take(pa.array(idx))
        if field is None:
            return arr
        return pc.if_else(pa.array(present[field]), arr, pa.nulls(n, pa.string()))

    cols = {
        ID_COLUMN: pa.array(user_ids, type=pa.int64()),
        "event_timestamp": pa.array(signup_us, type=TIMESTAMP_TYPE),
        "acquisition_channel": cat(CHANNELS, lat["acquisition_channel"], None),
        "first_day_sessions": pa.array(sessions.astype(np.float64)),
        "age": pa.array(age, mask=~present["age"]),
        "gender": cat(GENDERS, gender, "gender"),
        "city_tier": cat(CITY_TIERS, city, "city_tier"),
        "device_model": text(v.device, dev, "device_model"),
        "occupation": text(v.occupation, occ, "occupation"),
        "interests": interests,
    }
    schema = DEFAULT_PROFILE_SCHEMA.arrow_schema()
    return pa.table([cols[name] for name in schema.names], schema=schema), sessions


def _draw_events(net: _Network, rng: np.random.Generator, lat: dict[str, np.ndarray],
                 user_ids: np.ndarray, signup_us: np.ndarray, sessions: np.ndarray,
                 observed_days: int) -> pa.Table:
    names = net.names
    n = user_ids.shape[0]
    params = np.array([ACTIVITY_GIVEN_RETENTION[v] for v in names["retention_outlook"]])
    a, tau, b = params[lat["retention_outlook"]].astype(np.float32).T
    factor = _lookup(ACTIVITY_FACTOR_BY_INTENT, names["engagement_intent"])[lat["engagement_intent"]]
    factor = (factor * rng.gamma(FRAILTY_SHAPE, 1.0 / FRAILTY_SHAPE, size=n)).astype(np.float32)
    days = np.arange(1, observed_days, dtype=np.float32)
    p = (a[:, None] * np.exp(-days[None, :] / tau[:, None]) + b[:, None]) * factor[:, None]
    active = np.empty((n, observed_days), dtype=bool)
    active[:, 0] = sessions > 0
    active[:, 1:] = rng.random((n, observed_days - 1), dtype=np.float32) < p
    del p
    who, day = np.nonzero(active)  # row-major: sorted by user, then day
    del active
    m = who.shape[0]
    offset = rng.integers(0, DAY_US, size=m)
    act_ts = signup_us[who] + day.astype(np.int64) * DAY_US + offset

    q = _lookup(PURCHASE_PROB_PER_ACTIVE_DAY, names["monetization_propensity"])
    buys = rng.random(size=m) < q[lat["monetization_propensity"][who]]
    b_who = who[buys]
    b_off = offset[buys]
    # A purchase comes later the same day than that day's activity event.
    later = 1 + np.floor(rng.random(size=b_who.shape[0]) * (DAY_US - 1 - b_off)).astype(np.int64)
    b_ts = act_ts[buys] + later
    mu = _lookup(PURCHASE_LOG_MEAN_BY_SPENDING, names["spending_power"])[lat["spending_power"][b_who]]
    amount = np.exp(mu + PURCHASE_LOG_SD * rng.standard_normal(b_who.shape[0]))
    amount = np.maximum(PURCHASE_AMOUNT_STEP, np.rint(amount / PURCHASE_AMOUNT_STEP) * PURCHASE_AMOUNT_STEP)

    uid = np.concatenate([user_ids[who], user_ids[b_who]])
    ts = np.concatenate([act_ts, b_ts])
    value = np.concatenate([np.zeros(m), amount])
    is_purchase = np.concatenate([np.zeros(m, dtype=bool), np.ones(b_who.shape[0], dtype=bool)])
    order = np.lexsort((ts, uid))
    return pa.table(
        [pa.array(uid[order], type=pa.int64()),
         pa.array(ts[order], type=TIMESTAMP_TYPE),
         pa.array(value[order], mask=~is_purchase[order])],
        schema=events_schema(),
    )


def generate_chunk(chunk_index: int, n_users: int, first_user_id: int, seed: int = 0,
                   start_us: int = 0, signup_window_days: int = 60, horizon_days: int = 30,
                   ) -> dict[str, pa.Table]:
    """One chunk's four tables (profiles, events, labels, latent), depending only on the args."""
    net = _network()
    rng_latent, rng_profile, rng_outcome = chunk_rng(seed, chunk_index)
    user_ids = np.arange(first_user_id, first_user_id + n_users, dtype=np.int64)
    lat = _draw_latent(net, rng_latent, n_users)
    signup_us = start_us + rng_latent.integers(0, signup_window_days * DAY_US, size=n_users)
    profiles, sessions = _draw_profile(net, rng_profile, lat, user_ids, signup_us)
    events = _draw_events(net, rng_outcome, lat, user_ids, signup_us, sessions,
                          horizon_days + EXTRA_OBSERVED_DAYS)
    labels = derive_labels(profiles, events, horizon_days)
    latent = pa.table(
        [pa.array(user_ids, type=pa.int64())]
        + [pa.array(np.asarray(net.names[t], dtype=object)).take(pa.array(lat[t]))
           for t in net.taxonomy.type_names],
        schema=latent_schema(net.taxonomy),
    )
    return {"profiles": profiles, "events": events, "labels": labels, "latent": latent}


def _parse_start(start_date: str) -> int:
    """Microseconds since the epoch, UTC (a date or ISO datetime; naive means UTC)."""
    dt = datetime.fromisoformat(start_date)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1_000_000))


def _write_part(table: pa.Table, directory: Path, index: int, schema: pa.Schema) -> None:
    table = table.select(schema.names).cast(schema).combine_chunks()
    write_parquet_atomic(table, part_file(directory, index), **PARQUET_OPTIONS)


def _progress(enabled: bool):  # noqa: ANN202 - rich's Progress
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("users"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)


def generate_population(
    out: Path,
    users: int,
    seed: int = 0,
    chunk_size: int = 200_000,
    start_date: str = "2026-01-01",
    signup_window_days: int = 60,
    horizon_days: int = 30,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a synthetic dataset directory (profiles, events, labels, latent, manifest).

    Returns the manifest. The directory appears only when complete (``atomic_dir``); an existing
    one is refused unless ``overwrite``. Peak memory follows ``chunk_size``, not ``users``.
    """
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if signup_window_days < 1 or horizon_days < 1:
        raise ValueError("signup_window_days and horizon_days must be >= 1")
    net = _network()
    start_us = _parse_start(start_date)
    n_chunks = (users + chunk_size - 1) // chunk_size
    schemas = {"profiles": DEFAULT_PROFILE_SCHEMA.arrow_schema(), "events": events_schema(),
               "labels": label_schema(horizon_days), "latent": latent_schema(net.taxonomy)}
    n_events = 0
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        layout = DatasetLayout(tmp)
        dirs = {"profiles": layout.profiles, "events": layout.events, "labels": layout.labels,
                "latent": layout.latent}
        for d in dirs.values():
            d.mkdir(parents=True)
        with _progress(progress) as bar:
            task = bar.add_task("generate", total=users)
            for i in range(n_chunks):
                n = min(chunk_size, users - i * chunk_size)
                tables = generate_chunk(i, n, first_user_id=1 + i * chunk_size, seed=seed,
                                        start_us=start_us, signup_window_days=signup_window_days,
                                        horizon_days=horizon_days)
                for name, table in tables.items():
                    _write_part(table, dirs[name], i, schemas[name])
                n_events += tables["events"].num_rows
                del tables
                bar.update(task, advance=n)
        manifest = _manifest(users, n_events, n_chunks, seed, chunk_size, start_date,
                             signup_window_days, horizon_days, net.taxonomy)
        write_json_atomic(manifest, layout.manifest)
    return manifest


def _manifest(users: int, n_events: int, n_chunks: int, seed: int, chunk_size: int,
              start_date: str, signup_window_days: int, horizon_days: int,
              taxonomy: Taxonomy) -> dict:
    params = {
        "version": GENERATOR_VERSION,
        "chunk_size": chunk_size,
        "start_date": start_date,
        "signup_window_days": signup_window_days,
        "observed_days": horizon_days + EXTRA_OBSERVED_DAYS,
        "vocabulary_sizes": {"occupation": len(OCCUPATIONS), "device_model": len(DEVICE_MODELS),
                             "interests": len(INTEREST_TAGS)},
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "synthetic",
        "users": users,
        "events": n_events,
        "horizon_days": horizon_days,
        "label_names": list(label_names(horizon_days)),
        "profile_schema": DEFAULT_PROFILE_SCHEMA.model_dump(mode="json"),
        "taxonomy_fingerprint": taxonomy.fingerprint(),
        "parts": {t: n_chunks for t in ("profiles", "events", "labels", "latent")},
        "reference_null_rates": reference_null_rates(),
        "reference_domains": reference_domains(),
        "seed": seed,
        "generator": params,
    }
