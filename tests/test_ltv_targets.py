"""``ltv.targets``: the config keys, the defaults a dataset's labels get, the value rules per kind
(bad ``ltv.targets`` values are among tests/test_config.py's refused keys)."""

from __future__ import annotations

import numpy as np
import pytest

from scaletot_features.config import LTVTarget, build_settings, load_settings
from scaletot_features.ltv.targets import (
    TargetsError,
    dataset_targets,
    retained_threshold,
    value_problem,
    value_rule,
)


def test_targets_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ltv:\n  targets:\n    - {name: annual_income, kind: lognormal}\n"
                 "    - {name: visits_12m, kind: hurdle_count, max: 365}\n")
    s = load_settings(p)
    assert [(t.name, t.kind, t.max) for t in s.ltv.targets] == [
        ("annual_income", "lognormal", None), ("visits_12m", "hurdle_count", 365)]
    assert build_settings("tiny").ltv.targets is None  # the default: derived from the manifest


def test_defaults_follow_the_horizon_and_keep_todays_order():
    manifest = {"label_names": ["lt365", "revenue_365"], "horizon_days": 365}
    got = dataset_targets(manifest, None)
    assert [(t.name, t.kind, t.max) for t in got] == [("revenue_365", "ziln", None),
                                                      ("lt365", "hurdle_count", 365)]


def test_labels_without_a_default_kind_or_a_missing_target_are_refused():
    manifest = {"label_names": ["annual_income"], "horizon_days": 30, "label_source": "file"}
    with pytest.raises(TargetsError, match=r"ltv.targets.*annual_income.*kind: lognormal"):
        dataset_targets(manifest, None)
    ok = [LTVTarget(name="annual_income", kind="lognormal")]
    assert dataset_targets(manifest, ok) == ok
    with pytest.raises(TargetsError, match=r"ltv.targets\[1\].name: 'ltv_365'.*\['annual_income'\]"):
        dataset_targets(manifest, ok + [LTVTarget(name="ltv_365", kind="ziln")])


def test_value_rules_per_kind():
    ziln = LTVTarget(name="revenue", kind="ziln")
    count = LTVTarget(name="visits", kind="hurdle_count", max=3)
    income = LTVTarget(name="income", kind="lognormal")
    assert value_problem(ziln, np.array([0.0, 2.5])) is None
    assert "revenue" in value_problem(ziln, np.array([0.0, -1.0])) and ">= 0" in \
        value_problem(ziln, np.array([-1.0]))
    assert value_problem(count, np.array([0, 3, 1])) is None
    assert "[0, 3]" in value_problem(count, np.array([4.0]))
    assert "1 of 2" in value_problem(count, np.array([1.5, 2.0]))
    assert value_problem(income, np.array([0.5, 9e4])) is None
    assert "> 0" in value_problem(income, np.array([0.0, 1.0]))
    assert "NaN" in value_problem(income, np.array([np.nan]))
    assert value_rule(count).violation_sql("x") == "(x < 0.0 OR x > 3.0 OR x <> floor(x))"
    assert value_rule(income).violation_sql("x") == "(x <= 0.0)"
    assert retained_threshold(count, 7) == 3 and retained_threshold(
        LTVTarget(name="lt30", kind="hurdle_count", max=30), 7) == 7
