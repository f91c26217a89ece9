"""The one user-hash split (``scaletot_features.dataset.user_hash01``) every stage splits by."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from scaletot_features.dataset import SPLIT_USES, hash_mask, hash_order, user_hash01

IDS = np.arange(10_000, 30_000, dtype=np.int64)


def test_values_are_in_unit_interval_and_fixed_across_processes():
    h = user_hash01(IDS, seed=5)
    assert h.dtype == np.float64 and h.shape == IDS.shape
    assert (h >= 0).all() and (h < 1).all()
    # another interpreter (a Ray worker, tomorrow's run) computes the same numbers:
    # no Python hash(), no per-process salt
    code = ("import numpy as np; from scaletot_features.dataset import user_hash01; "
            "print(repr(user_hash01(np.array([0, 1, -7, 2**62]), 5).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert eval(out.stdout) == user_hash01(np.array([0, 1, -7, 2**62]), 5).tolist()


def test_seed_changes_membership():
    a, b = hash_mask(IDS, 0.3, seed=0), hash_mask(IDS, 0.3, seed=1)
    assert not np.array_equal(a, b)
    # unrelated, not shifted: the overlap is what independence predicts (0.3 * 0.3)
    assert abs((a & b).mean() - 0.09) < 4 * np.sqrt(0.09 * 0.91 / len(IDS))


@pytest.mark.parametrize("n", [200, 2_000, 20_000])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.9])
def test_fraction_is_respected_within_binomial_noise(n, fraction):
    mask = hash_mask(IDS[:n], fraction, seed=3)
    assert abs(mask.mean() - fraction) <= 4 * np.sqrt(fraction * (1 - fraction) / n)
    # also on consecutive blocks of ids (ids are often dense ranges)
    assert abs(hash_mask(np.arange(n), fraction).mean() - fraction) \
        <= 4 * np.sqrt(fraction * (1 - fraction) / n)


def test_independent_of_input_order_and_type():
    perm = np.random.default_rng(0).permutation(len(IDS))
    np.testing.assert_array_equal(hash_mask(IDS[perm], 0.2, 7), hash_mask(IDS, 0.2, 7)[perm])
    np.testing.assert_array_equal(user_hash01(IDS[:50].tolist(), 7), user_hash01(IDS[:50], 7))
    # duplicated ids land on the same side
    dup = np.concatenate([IDS[:100], IDS[:100]])
    m = hash_mask(dup, 0.5, 7)
    np.testing.assert_array_equal(m[:100], m[100:])


def test_order_is_order_free_and_nests():
    order = IDS[hash_order(IDS, 11)]
    assert sorted(order.tolist()) == IDS.tolist()
    np.testing.assert_array_equal(IDS[::-1][hash_order(IDS[::-1], 11)], order)
    # the first k of the order are the k smallest hashes: a bigger sample contains a smaller one
    h = user_hash01(order, 11)
    assert (np.diff(h) >= 0).all()
    assert not np.array_equal(order, IDS[hash_order(IDS, 12)])


def test_each_use_is_its_own_split():
    # the coverage subset is the lowest hashes at its seed; the encoder's test split at the same
    # configured seed must not be "the lowest hashes" too, or it holds the whole subset out
    covered = IDS[hash_order(IDS, 0, "coverage")[:1500]]
    assert 0.1 < hash_mask(covered, 0.2, 0, "encoder_test").mean() < 0.3
    offsets = {}
    for use, offset in SPLIT_USES.items():
        offsets.setdefault(offset, []).append(use)
    # uses that share an offset share a split on purpose: the gate's sample has no consumer,
    # and the encoder falls back to the student's holdout rule only when that split is absent
    assert [sorted(u) for u in offsets.values() if len(u) > 1] == [
        ["encoder_test", "gate_sample", "student_holdout"]]
    with pytest.raises(ValueError, match="unknown split use"):
        user_hash01(IDS, 0, "nope")
