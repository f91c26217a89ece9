"""Coverage selection: stratified, proportional, deterministic, rare segments kept."""

import pyarrow.compute as pc
import pytest

from scaletot_features.dataset import DatasetLayout
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA as S
from scaletot_features.reasoning.coverage import allocate, population_segments, select_coverage

STRATA = ["acquisition_channel", "sparsity_bucket"]


def test_allocation_is_proportional_sums_exactly_and_keeps_rare_strata():
    counts = {"big": 900, "mid": 90, "rare": 10}
    q = allocate(counts, 100)
    assert sum(q.values()) == 100 and q["rare"] >= 1 and q["big"] > q["mid"] > 0
    assert allocate(counts, 2) == {"big": 2, "mid": 0, "rare": 0}  # too few for all: proportional
    assert sum(allocate(counts, 5000).values()) == 1000  # never more than the population


def test_default_fraction_is_stratified_and_matches_segment_shares(tiny_population):
    profiles = DatasetLayout(tiny_population).profiles
    sel = select_coverage(profiles, S)  # default fraction 0.0732
    pop = population_segments(profiles, S, STRATA)
    assert sel.num_rows == round(0.0732 * pop.num_rows)
    assert len(set(sel.column("user_id").to_pylist())) == sel.num_rows
    pop_counts = dict(zip(*pc.value_counts(pop.column("acquisition_channel")).flatten()))
    sel_counts = dict(zip(*pc.value_counts(sel.column("acquisition_channel")).flatten()))
    for channel, n in pop_counts.items():
        share = n.as_py() / pop.num_rows
        got = sel_counts.get(channel)
        got = got.as_py() / sel.num_rows if got is not None else 0.0
        assert abs(got - share) < 0.03 + 1 / sel.num_rows * 3, channel
    assert set(sel.column("stratum").to_pylist()) == set(pop.column("stratum").to_pylist())


def test_selection_is_deterministic_and_seeded(tiny_population):
    profiles = DatasetLayout(tiny_population).profiles
    a = select_coverage(profiles, S, 0.05, STRATA, seed=1)
    b = select_coverage(profiles, S, 0.05, STRATA, seed=1)
    c = select_coverage(profiles, S, 0.05, STRATA, seed=2)
    assert a.equals(b) and not a.column("user_id").equals(c.column("user_id"))


def test_max_users_caps_and_unknown_stratum_is_refused(tiny_population):
    profiles = DatasetLayout(tiny_population).profiles
    assert select_coverage(profiles, S, 0.5, STRATA, max_users=24).num_rows == 24
    with pytest.raises(ValueError, match="neither a profile field"):
        select_coverage(profiles, S, 0.1, ["favourite_colour"])
    with pytest.raises(ValueError, match="fraction"):
        select_coverage(profiles, S, 0.0)
