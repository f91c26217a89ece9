"""The validation gate, with real Great Expectations on real parquet dataset directories.

The tiny synthetic population (tests/conftest.py) passes; each corruption (a null-rate jump, a value outside its
domain, a negative count, a duplicate id, a label above its horizon) fails and names the
expectation and column. The coverage drift and reasoning-feature suites are exercised on frames.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from scaletot_features.config import Settings, build_settings
from scaletot_features.data.io import PartWriter, read_json, read_table
from scaletot_features.dataset import DatasetLayout, hash_mask
from scaletot_features.data.labels import label_schema
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
from scaletot_features.taxonomy import DEFAULT_TAXONOMY
from validation.gate import (
    GateResult,
    format_failures,
    run_suite,
    validate_dataset,
)
from validation.suites import (
    MISSING,
    coverage_drift_suite,
    null_band,
    reasoning_feature_suite,
    sparse_profile_suite,
)

USERS = 2000  # the tiny_population fixture (tests/conftest.py): the real synthetic generator
HORIZON = 30
NULL_RATE = "expect_column_proportion_of_non_null_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"
KL = "expect_column_kl_divergence_to_be_less_than"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return build_settings("tiny")


@pytest.fixture(scope="session")
def reference_null_rates(tiny_population: Path) -> dict[str, float]:
    return read_json(DatasetLayout(tiny_population).manifest)["reference_null_rates"]


def _corrupt(clean: Path, dest: Path,
             profiles: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
             labels: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Path:
    """A copy of the clean dataset with its profiles and/or labels rewritten by a function."""
    out = dest / "corrupt"
    shutil.copytree(clean, out)
    layout = DatasetLayout(out)
    for table_dir, fn, schema in ((layout.profiles, profiles, DEFAULT_PROFILE_SCHEMA.arrow_schema()),
                                  (layout.labels, labels, label_schema(HORIZON))):
        if fn is None:
            continue
        df = fn(read_table(table_dir).to_pandas())
        shutil.rmtree(table_dir)
        PartWriter(table_dir, schema).write(pa.Table.from_pandas(df, preserve_index=False))
    return out


def _failures(results: list[GateResult]) -> set[tuple[str, str, str]]:
    return {(r.suite, f["expectation"], f["column"]) for r in results for f in r.failed}


# --------------------------------------------------------------------------- dataset gate


def test_clean_dataset_passes_and_writes_results(
    population_copy: Path, settings: Settings, reference_null_rates: dict[str, float]
) -> None:
    results = validate_dataset(population_copy, settings)
    assert [r.suite for r in results] == ["sparse_profile", "labels"]
    assert all(r.success for r in results), format_failures(results)
    assert format_failures(results) == ""
    profile = results[0]
    assert profile.rows == USERS and not profile.sampled
    assert profile.statistics["evaluated_expectations"] >= 25
    # every declared field got a null-rate band or a not-null check, observed values recorded
    null_checks = {r["column"]: r["observed"] for r in profile.results if r["expectation"] == NULL_RATE}
    optional = {f.name for f in DEFAULT_PROFILE_SCHEMA.optional}
    assert set(null_checks) == optional
    for name in optional:
        assert abs((1 - null_checks[name]) - reference_null_rates[name]) < 0.05
    for r in results:
        written = json.loads((population_copy / "validation" / f"{r.suite}.json").read_text())
        assert written["success"] is True and written["failed"] == []
        assert written["statistics"] == r.statistics


def _set_null(col: str, fraction: float) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df[col] = df[col].astype(object)
        df.loc[df.index[: int(len(df) * fraction)], col] = None
        return df
    return fn


def _set_rows(col: str, value: object, rows: int = 5) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[df.index[:rows], col] = value
        return df
    return fn


def _duplicate_id(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[df.index[10], "user_id"] = df["user_id"].iloc[0]
    return df


CORRUPTIONS = {
    "null_rate_jump": (dict(profiles=_set_null("gender", 0.6)),
                       ("sparse_profile", NULL_RATE, "gender")),
    "out_of_domain": (dict(profiles=_set_rows("city_tier", "tier9")),
                      ("sparse_profile", IN_SET, "city_tier")),
    "negative_count": (dict(profiles=_set_rows("first_day_sessions", -1.0)),
                       ("sparse_profile", BETWEEN, "first_day_sessions")),
    "duplicate_id": (dict(profiles=_duplicate_id), ("sparse_profile", UNIQUE, "user_id")),
    "label_above_horizon": (dict(labels=_set_rows("lt30", HORIZON + 1)),
                            ("labels", BETWEEN, "lt30")),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_fails_naming_expectation_and_column(
    case: str, tiny_population: Path, settings: Settings, tmp_path: Path
) -> None:
    corruption, expected = CORRUPTIONS[case]
    data = _corrupt(tiny_population, tmp_path, **corruption)
    results = validate_dataset(data, settings)
    assert _failures(results) == {expected}  # exactly the broken thing, nothing else
    suite, expectation, column = expected
    failed = next(r for r in results if r.suite == suite)
    assert not failed.success
    text = format_failures(results)
    assert expectation in text and column in text
    written = json.loads((data / "validation" / f"{suite}.json").read_text())
    assert written["success"] is False
    [entry] = written["failed"]
    assert entry["expectation"] == expectation and entry["column"] == column
    assert entry["observed"] is not None
    other = "labels" if suite == "sparse_profile" else "sparse_profile"
    assert read_json(data / "validation" / f"{other}.json")["success"] is True


def test_null_rate_band_fails_in_both_directions(
    tiny_population: Path, settings: Settings, tmp_path: Path,
    reference_null_rates: dict[str, float],
) -> None:
    def fill_gender(df: pd.DataFrame) -> pd.DataFrame:
        df["gender"] = df["gender"].fillna("female")  # null rate 0.6 -> 0: below the band
        return df

    results = validate_dataset(_corrupt(tiny_population, tmp_path, profiles=fill_gender), settings)
    [failure] = results[0].failed
    assert (failure["expectation"], failure["column"]) == (NULL_RATE, "gender")
    assert failure["details"]["null_rate"] == 0.0
    tolerance = settings.validation.null_rate_tolerance
    assert failure["details"]["null_band"] == list(null_band(reference_null_rates["gender"], tolerance))
    assert "null rate 0" in failure["message"]


def test_empty_strings_and_empty_tag_lists_count_as_missing(settings: Settings) -> None:
    schema = DEFAULT_PROFILE_SCHEMA
    n = 100
    df = pd.DataFrame({
        "user_id": np.arange(n, dtype=np.int64),
        "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"),
        "acquisition_channel": "referral", "first_day_sessions": 1.0,
        "age": 30.0, "gender": "female", "city_tier": "tier1",
        "device_model": ["" if i < 50 else "phone" for i in range(n)],
        "occupation": "job",
        "interests": [[] if i < 50 else ["music"] for i in range(n)],
    })
    suite = sparse_profile_suite(schema, {"device_model": 0.5, "interests": 0.5}, 0.01)
    result = run_suite(df, suite)
    assert result.success, format_failures([result])
    strict = sparse_profile_suite(schema, {"device_model": 0.0, "interests": 0.0}, 0.01)
    assert {f["column"] for f in run_suite(df, strict).failed} == {"device_model", "interests"}


def test_settings_null_rates_override_the_manifest(
    tiny_population: Path, tmp_path: Path
) -> None:
    data = _corrupt(tiny_population, tmp_path, profiles=_set_null("gender", 0.6))
    observed = read_table(DatasetLayout(data).profiles, ["gender"]).column(0).null_count / USERS
    overridden = build_settings(
        "tiny", {"validation": {"expected_null_rates": {"gender": observed + 0.05}}})
    assert all(r.success for r in validate_dataset(data, overridden))
    assert not validate_dataset(data, build_settings("tiny"))[0].success
    bad = build_settings("tiny", {"validation": {"expected_null_rates": {"genderr": 0.5}}})
    with pytest.raises(ValueError, match="genderr"):
        validate_dataset(data, bad)


def test_integer_fields_reject_fractions(tiny_population: Path, settings: Settings, tmp_path: Path) -> None:
    data = _corrupt(tiny_population, tmp_path, profiles=_set_rows("age", 30.5))
    [failure] = validate_dataset(data, settings)[0].failed
    assert failure["column"] == "age" and failure["details"]["check"] == "integer"
    assert failure["observed"]["unexpected_count"] == 5


def test_big_tables_are_validated_on_an_id_hash_sample(
    tiny_population: Path, settings: Settings, tmp_path: Path
) -> None:
    profiles = read_table(DatasetLayout(tiny_population).profiles).to_pandas()
    fraction = 1000 / USERS
    mask = hash_mask(profiles["user_id"].to_numpy(), fraction, use="gate_sample")
    assert 800 < mask.sum() < 1200
    np.testing.assert_array_equal(mask, hash_mask(profiles["user_id"].to_numpy(), fraction, use="gate_sample"))

    results = validate_dataset(_corrupt(tiny_population, tmp_path / "copy"), settings, max_rows=1000)
    assert all(r.success and r.sampled and r.rows == mask.sum() and r.total_rows == USERS
               for r in results)
    assert "sample" in results[0].notes[-1]

    # a duplicated id lands in the sample with all its copies, so uniqueness still catches it
    kept, dropped = profiles["user_id"][mask], profiles["user_id"][~mask]

    def duplicate_sampled(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[df["user_id"] == dropped.iloc[0], "user_id"] = kept.iloc[0]
        return df

    data = _corrupt(tiny_population, tmp_path, profiles=duplicate_sampled)
    results = validate_dataset(data, settings, max_rows=1000)
    assert _failures(results) == {("sparse_profile", UNIQUE, "user_id")}
    assert "sample of" in format_failures(results)


def test_importing_the_gate_does_not_import_great_expectations() -> None:
    code = ("import sys, validation, validation.gate, validation.suites; "
            "sys.exit(1 if 'great_expectations' in sys.modules else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --------------------------------------------------------------------------- coverage drift


@pytest.fixture(scope="session")
def population(tiny_population: Path) -> pd.DataFrame:
    return read_table(DatasetLayout(tiny_population).profiles).to_pandas()


COVERAGE_COLUMNS = ["acquisition_channel", "sparsity_bucket", "gender"]


def test_coverage_drift_passes_for_a_random_subset(population: pd.DataFrame,
                                                   settings: Settings) -> None:
    suite = coverage_drift_suite(population, COVERAGE_COLUMNS, settings.validation.coverage_kl_max,
                                 schema=DEFAULT_PROFILE_SCHEMA)
    subset = population.sample(frac=0.1, random_state=0)
    result = run_suite(subset, suite)
    assert result.success, format_failures([result])
    observed = {r["column"]: r["observed"] for r in result.results}
    assert set(observed) == set(COVERAGE_COLUMNS)
    assert all(0 <= v < settings.validation.coverage_kl_max for v in observed.values())


def test_coverage_drift_fails_for_a_skewed_subset(population: pd.DataFrame,
                                                  settings: Settings) -> None:
    suite = coverage_drift_suite(population, COVERAGE_COLUMNS, settings.validation.coverage_kl_max,
                                 schema=DEFAULT_PROFILE_SCHEMA)
    one_channel = population[population["acquisition_channel"] == "referral"]
    result = run_suite(one_channel, suite)
    failed = {f["column"]: f for f in result.failed}
    assert failed["acquisition_channel"]["expectation"] == KL
    share = len(one_channel) / len(population)  # KL(one value || population) = log(1 / share)
    assert failed["acquisition_channel"]["observed"] == pytest.approx(-np.log(share))
    assert "acquisition_channel" in format_failures([result])

    # missing is its own category: a subset of users who left gender empty drifts on gender
    no_gender = population[population["gender"].isna()].sample(frac=0.3, random_state=0)
    failed = {f["column"]: f for f in run_suite(no_gender, suite).failed}
    share = population["gender"].isna().mean()
    assert failed["gender"]["observed"] == pytest.approx(-np.log(share))
    assert MISSING in suite.expectations[2].partition_object["values"]


def test_coverage_drift_fails_on_a_value_the_population_never_had(population: pd.DataFrame) -> None:
    suite = coverage_drift_suite(population, ["acquisition_channel"], 0.05)
    subset = population.sample(n=300, random_state=1).copy()
    subset.iloc[:3, subset.columns.get_loc("acquisition_channel")] = "carrier_pigeon"
    [failure] = run_suite(subset, suite).failed
    assert failure["column"] == "acquisition_channel"
    assert failure["observed"] is None  # infinite divergence
    assert "never had" in failure["message"]


# --------------------------------------------------------------------------- reasoning features

EMB_DIM = 8


def _features(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"user_id": np.arange(n, dtype=np.int64)}
    for t in DEFAULT_TAXONOMY.types:
        k = len(t.value_names)
        probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
        choice = probs.argmax(axis=1)
        data[t.name] = [t.value_names[i] for i in choice]
        data[f"{t.name}_prob"] = probs[np.arange(n), choice].astype(np.float64)
        data[f"{t.name}_probs"] = list(probs)
    emb = rng.normal(size=(n, EMB_DIM)).astype(np.float32)
    data["embedding"] = list(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    return pd.DataFrame(data)


def _features_via_parquet(df: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """Round-trip through parquet, as the feature table is stored (list<float32> columns)."""
    path = tmp_path / "features.parquet"
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.cast(pa.schema([
        pa.field(f.name, pa.list_(pa.float32())) if pa.types.is_list(f.type) else f
        for f in table.schema]))
    import pyarrow.parquet as pq
    pq.write_table(table, path)
    return pq.read_table(path).to_pandas()


def _reasoning_suite():
    return reasoning_feature_suite(DEFAULT_TAXONOMY, EMB_DIM, norm_range=(0.99, 1.01),
                                   prob_lists=True)


def test_reasoning_features_pass_on_good_rows(tmp_path: Path) -> None:
    result = run_suite(_features_via_parquet(_features(), tmp_path), _reasoning_suite())
    assert result.success, format_failures([result])
    # ids 2; per type: value 2, prob 2, probs list 7; embedding 5
    assert result.statistics["evaluated_expectations"] == 2 + 11 * len(DEFAULT_TAXONOMY.types) + 5


def test_reasoning_features_missing_column_is_named() -> None:
    result = run_suite(_features().drop(columns=["embedding"]), _reasoning_suite())
    assert ("column_exists", "embedding") in {(f["details"]["check"], f["column"])
                                              for f in result.failed}
    assert "embedding" in format_failures([result])


def _first_type() -> str:
    return DEFAULT_TAXONOMY.types[0].name


def _bad_value(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[3, _first_type()] = "astronaut"
    return df


def _nan_embedding(df: pd.DataFrame) -> pd.DataFrame:
    v = np.array(df.loc[5, "embedding"], dtype=np.float32)
    v[2] = np.nan
    df.at[5, "embedding"] = v
    return df


def _prob_above_one(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[7, f"{_first_type()}_prob"] = 1.3
    return df


def _probs_not_summing(df: pd.DataFrame) -> pd.DataFrame:
    df.at[1, f"{_first_type()}_probs"] = np.array(df.loc[1, f"{_first_type()}_probs"]) * 0.5
    return df


def _short_embedding(df: pd.DataFrame) -> pd.DataFrame:
    short = np.array(df.loc[0, "embedding"])[:-1]
    df.at[0, "embedding"] = short / np.linalg.norm(short)  # still unit norm: only the size is off
    return df


def _huge_embedding(df: pd.DataFrame) -> pd.DataFrame:
    df.at[0, "embedding"] = np.array(df.loc[0, "embedding"]) * 10
    return df


REASONING_CORRUPTIONS = {
    "value_out_of_set": (_bad_value, {("in_set", _first_type())}),
    "nan_in_embedding": (_nan_embedding, {("no_nan", "embedding")}),
    "prob_above_one": (_prob_above_one, {("prob_range", f"{_first_type()}_prob")}),
    "probs_not_summing_to_one": (_probs_not_summing, {("prob_sum", f"{_first_type()}_probs")}),
    "wrong_dimension": (_short_embedding, {("list_length", "embedding")}),
    "norm_out_of_range": (_huge_embedding, {("embedding_norm", "embedding")}),
}


@pytest.mark.parametrize("case", list(REASONING_CORRUPTIONS))
def test_reasoning_features_fail_and_name_the_column(case: str, tmp_path: Path) -> None:
    corrupt, expected = REASONING_CORRUPTIONS[case]
    df = _features_via_parquet(corrupt(_features()), tmp_path)
    result = run_suite(df, _reasoning_suite())
    assert not result.success
    assert {(f["details"]["check"], f["column"]) for f in result.failed} == expected
    [(_, column)] = expected
    assert column in format_failures([result])
