"""Your-own-data ingest on real CSV and parquet files: labels by hand, every refusal, atomicity."""

from __future__ import annotations

import csv
import gzip
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaletot_features.config import load_settings
from scaletot_features.data.ingest import EVENTS_SCHEMA, IngestError, IngestWarning, ingest
from scaletot_features.data.io import read_json, read_table
from scaletot_features.dataset import SCHEMA_VERSION
from scaletot_features.data.labels import label_schema
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA

UTC = timezone.utc
PROFILE_COLUMNS = ["user_id", "event_timestamp", "acquisition_channel", "first_day_sessions", "age",
                   "gender", "city_tier", "device_model", "occupation", "interests"]


def base_profiles() -> list[dict[str, Any]]:
    """Three users as CSV text cells; user 2 is a bare profile (only the required fields)."""
    return [
        {"user_id": "1", "event_timestamp": "2026-01-01T00:00:00", "acquisition_channel": "referral",
         "first_day_sessions": "3", "age": "34", "gender": "female", "city_tier": "tier1",
         "device_model": " iPhone 13 ", "occupation": "nurse", "interests": '["music", " ", "travel"]'},
        {"user_id": "2", "event_timestamp": "2026-01-05 12:00", "acquisition_channel": "app_store",
         "first_day_sessions": "0", "age": "", "gender": "", "city_tier": "", "device_model": "",
         "occupation": "", "interests": "[]"},
        {"user_id": "3", "event_timestamp": "2026-01-10", "acquisition_channel": "paid_social",
         "first_day_sessions": "1.0", "age": "19", "gender": "male", "city_tier": "rural",
         "device_model": "Redmi 9", "occupation": "", "interests": '["games"]'},
    ]


def base_events() -> list[dict[str, Any]]:
    """User 1: days 0, 0, 5 and 31 after signup -> lt30 = 2 distinct days, revenue 1.5 + 0 + 2.
    User 3: first event 12 h before the profile snapshot, so first_seen moves to it; a second
    event 25 h later is day 1 -> lt30 = 2, revenue 4 + 1. User 2: no events -> 0 and 0.0."""
    return [
        {"user_id": "1", "timestamp": "2026-01-01T00:10:00Z", "value": "1.5"},
        {"user_id": "1", "timestamp": "2026-01-01T05:00:00", "value": ""},
        {"user_id": "1", "timestamp": "2026-01-06T01:00:00", "value": "2"},
        {"user_id": "1", "timestamp": "2026-02-01T01:00:00", "value": "7"},
        {"user_id": "3", "timestamp": "2026-01-09T12:00:00+00:00", "value": "4"},
        {"user_id": "3", "timestamp": "2026-01-10T13:00:00", "value": "1"},
    ]


EXPECTED_LABELS = {1: (2, 3.5, datetime(2026, 1, 1, tzinfo=UTC)),
                   2: (0, 0.0, datetime(2026, 1, 5, 12, tzinfo=UTC)),
                   3: (2, 5.0, datetime(2026, 1, 9, 12, tzinfo=UTC))}


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    columns = columns if columns is not None else (list(rows[0]) if rows else [])
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as fh:  # type: ignore[operator]
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def parquet_profiles() -> pa.Table:
    """The same three users as typed parquet: naive timestamps, a list column for tags."""
    return pa.table({
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "event_timestamp": pa.array([datetime(2026, 1, 1), datetime(2026, 1, 5, 12), datetime(2026, 1, 10)],
                                    pa.timestamp("ms")),
        "acquisition_channel": ["referral", "app_store", "paid_social"],
        "first_day_sessions": pa.array([3, 0, 1], pa.int32()),
        "age": pa.array([34.0, None, 19.0]),
        "gender": ["female", None, "male"],
        "city_tier": ["tier1", None, "rural"],
        "device_model": [" iPhone 13 ", None, "Redmi 9"],
        "occupation": ["nurse", None, None],
        "interests": pa.array([["music", " ", "travel"], [], ["games"]], pa.list_(pa.string())),
    })


def parquet_events() -> pa.Table:
    return pa.table({
        "user_id": pa.array([1, 1, 1, 1, 3, 3], pa.int64()),
        "timestamp": pa.array([datetime(2026, 1, 1, 0, 10, tzinfo=UTC), datetime(2026, 1, 1, 5, tzinfo=UTC),
                               datetime(2026, 1, 6, 1, tzinfo=UTC), datetime(2026, 2, 1, 1, tzinfo=UTC),
                               datetime(2026, 1, 9, 12, tzinfo=UTC), datetime(2026, 1, 10, 13, tzinfo=UTC)],
                              pa.timestamp("us", tz="UTC")),
        "value": [1.5, None, 2.0, 7.0, 4.0, 1.0],
    })


def labels_by_user(out: Path) -> dict[int, tuple[int, float, datetime]]:
    rows = read_table(out / "labels").to_pylist()
    return {r["user_id"]: (r["lt30"], r["revenue_30"], r["first_seen"]) for r in rows}


def sorted_rows(path: Path) -> list[dict[str, Any]]:
    return sorted(read_table(path).to_pylist(), key=lambda r: (r["user_id"], str(r.get("timestamp"))))


def assert_clean_dataset(out: Path) -> dict[str, Any]:
    assert labels_by_user(out) == EXPECTED_LABELS
    prof = read_table(out / "profiles")
    assert prof.schema.equals(DEFAULT_PROFILE_SCHEMA.arrow_schema(), check_metadata=False) or \
        pq.read_schema(next((out / "profiles").glob("*.parquet"))).remove_metadata().types == \
        DEFAULT_PROFILE_SCHEMA.arrow_schema().types
    assert prof.column("user_id").to_pylist() == [1, 2, 3]  # sorted by user_id, whatever the input order
    by_id = {r["user_id"]: r for r in prof.to_pylist()}
    assert by_id[1]["device_model"] == "iPhone 13"  # trimmed
    assert by_id[1]["interests"] == ["music", "travel"]  # blank tag dropped
    assert by_id[2]["interests"] is None and by_id[2]["age"] is None  # [] and "" are missing
    assert by_id[3]["first_day_sessions"] == 1.0
    assert by_id[2]["event_timestamp"] == datetime(2026, 1, 5, 12, tzinfo=UTC)
    ev = read_table(out / "events")
    assert [f.type for f in ev.schema] == [f.type for f in EVENTS_SCHEMA]
    assert ev.num_rows == 6 and ev.column("value").null_count == 1
    assert read_table(out / "labels").schema.types == label_schema(30).types
    assert not (out / "latent").exists()
    m = read_json(out / "manifest.json")
    assert m["kind"] == "ingested" and m["schema_version"] == SCHEMA_VERSION
    assert (m["users"], m["events"], m["horizon_days"]) == (3, 6, 30)
    assert m["label_names"] == ["lt30", "revenue_30"]
    assert m["reference_null_rates"]["acquisition_channel"] == 0.0
    assert m["reference_null_rates"]["age"] == pytest.approx(1 / 3, abs=1e-6)
    assert m["reference_null_rates"]["occupation"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["reference_null_rates"]["interests"] == pytest.approx(1 / 3, abs=1e-6)
    assert m["reference_domains"]["gender"] == ["female", "male", "nonbinary"]
    assert m["profile_schema"] == DEFAULT_PROFILE_SCHEMA.model_dump(mode="json")
    assert m["parts"]["profiles"] >= 1 and m["parts"]["labels"] >= 1
    return m


# --------------------------------------------------------------------------- clean inputs


def test_clean_csv_pair_gives_hand_computed_labels(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "profiles.csv", base_profiles())
    e = write_csv(tmp_path / "events.csv", base_events())
    m = ingest(p, e, tmp_path / "ds")
    assert m == read_json(tmp_path / "ds" / "manifest.json")
    assert_clean_dataset(tmp_path / "ds")
    assert m["absent_fields"] == [] and m["ignored_columns"] == {"profiles": [], "events": []}
    # nothing but the dataset is left beside it
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ds", "events.csv", "profiles.csv"]


def test_clean_parquet_pair_matches_csv(tmp_path: Path) -> None:
    pq.write_table(parquet_profiles().take([2, 0, 1]), tmp_path / "profiles.parquet")
    parts = tmp_path / "events_parts"
    parts.mkdir()
    ev = parquet_events().take([5, 0, 3, 1, 4, 2])
    pq.write_table(ev.slice(0, 3), parts / "part-0.parquet")
    pq.write_table(ev.slice(3), parts / "part-1.pq")
    ingest(tmp_path / "profiles.parquet", parts, tmp_path / "from_parquet")
    assert_clean_dataset(tmp_path / "from_parquet")

    write_csv(tmp_path / "p.csv.gz", base_profiles())
    write_csv(tmp_path / "e.csv", base_events())
    ingest(tmp_path / "p.csv.gz", tmp_path / "e.csv", tmp_path / "from_csv")
    for table in ("profiles", "events", "labels"):
        assert sorted_rows(tmp_path / "from_parquet" / table) == sorted_rows(tmp_path / "from_csv" / table)


def test_small_chunks_stream_parts_and_bucket_labels_identically(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "profiles.csv", base_profiles())
    e = write_csv(tmp_path / "events.csv", base_events())
    whole = ingest(p, e, tmp_path / "whole")
    chunked = ingest(p, e, tmp_path / "chunked", chunk_size=2)
    assert chunked["parts"] == {"profiles": 2, "events": 3, "labels": 2}
    assert whole["parts"] == {"profiles": 1, "events": 1, "labels": 1}
    assert labels_by_user(tmp_path / "chunked") == EXPECTED_LABELS
    for table in ("profiles", "events"):
        assert read_table(tmp_path / "chunked" / table).to_pylist() == \
            read_table(tmp_path / "whole" / table).to_pylist()  # same sorted rows, split in parts
    assert {k: v for k, v in chunked.items() if k != "parts"} == \
        {k: v for k, v in whole.items() if k != "parts"}


def test_horizon_is_configurable(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "profiles.csv", base_profiles())
    e = write_csv(tmp_path / "events.csv", base_events())
    m = ingest(p, e, tmp_path / "ds", horizon_days=3)
    assert m["label_names"] == ["lt3", "revenue_3"]
    rows = {r["user_id"]: (r["lt3"], r["revenue_3"]) for r in read_table(tmp_path / "ds" / "labels").to_pylist()}
    assert rows == {1: (1, 1.5), 2: (0, 0.0), 3: (2, 5.0)}


def test_absent_optional_and_extra_columns_warn_and_are_recorded(tmp_path: Path) -> None:
    rows = [{**r, "crm_segment": "x"} for r in base_profiles()]
    cols = [c for c in PROFILE_COLUMNS if c not in ("occupation", "interests")] + ["crm_segment"]
    p = write_csv(tmp_path / "profiles.csv", rows, cols)
    e = write_csv(tmp_path / "events.csv", [{k: v for k, v in r.items() if k != "value"} for r in base_events()])
    with pytest.warns(IngestWarning) as record:
        m = ingest(p, e, tmp_path / "ds")
    text = " ".join(str(w.message) for w in record)
    assert "crm_segment" in text and "occupation" in text and "interests" in text
    assert m["absent_fields"] == ["occupation", "interests"]
    assert m["ignored_columns"] == {"profiles": ["crm_segment"], "events": []}
    assert m["reference_null_rates"]["occupation"] == 1.0
    prof = read_table(tmp_path / "ds" / "profiles")
    assert prof.column_names == DEFAULT_PROFILE_SCHEMA.arrow_schema().names
    assert prof.column("interests").null_count == 3
    labels = labels_by_user(tmp_path / "ds")
    assert labels[1][:2] == (2, 0.0)  # no value column: revenue is 0, activity still counts


YAML_EXAMPLE = """\
preset: tiny
data:
  horizon_days: 30
  profile_fields:
    - {name: plan, kind: categorical, label: subscription plan, required: true,
       domain: [free, basic, pro]}
    - {name: seats, kind: numeric, label: seats bought, min_value: 1, max_value: 10000, integer: true}
    - {name: company_size, kind: categorical, label: company size, domain: [small, mid, large]}
    - {name: job_title, kind: text, label: job title}
    - {name: integrations, kind: tags, label: connected integrations}
"""


def test_own_profile_fields_declared_in_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(YAML_EXAMPLE)
    settings = load_settings(cfg)
    schema = settings.profile_schema()
    p = write_csv(tmp_path / "profiles.csv", [
        {"user_id": "10", "event_timestamp": "2026-03-01", "plan": "pro", "seats": "12",
         "company_size": "mid", "job_title": "data engineer", "integrations": '["slack","github"]'},
        {"user_id": "11", "event_timestamp": "2026-03-02", "plan": "free", "seats": "",
         "company_size": "", "job_title": "", "integrations": ""},
    ])
    e = write_csv(tmp_path / "events.csv", [{"user_id": "10", "timestamp": "2026-03-03", "value": "99"}])
    m = ingest(p, e, tmp_path / "ds", schema=schema, horizon_days=settings.data.horizon_days)
    assert m["reference_domains"] == {"plan": ["free", "basic", "pro"], "company_size": ["small", "mid", "large"]}
    prof = read_table(tmp_path / "ds" / "profiles")
    assert prof.schema.names == schema.arrow_schema().names
    assert prof.to_pylist()[0]["integrations"] == ["slack", "github"]
    assert labels_by_user(tmp_path / "ds")[10][:2] == (1, 99.0)

    bad = write_csv(tmp_path / "bad.csv", [{"user_id": "12", "event_timestamp": "2026-03-01",
                                            "plan": "enterprise", "seats": "0"}])
    with pytest.warns(IngestWarning, match="company_size"), pytest.raises(IngestError) as info:
        ingest(bad, e, tmp_path / "ds2", schema=schema)
    msg = str(info.value)
    assert "'plan'" in msg and "'enterprise'" in msg and "'seats'" in msg and "below the minimum 1" in msg
    assert not (tmp_path / "ds2").exists()


# --------------------------------------------------------------------------- refusals


def _csv_profiles(mutate: Callable[[list[dict[str, Any]]], None], columns: list[str] | None = None):
    def make(d: Path) -> tuple[Path, Path]:
        rows = base_profiles()
        mutate(rows)
        return (write_csv(d / "profiles.csv", rows, columns or PROFILE_COLUMNS),
                write_csv(d / "events.csv", base_events()))
    return make


def _csv_events(mutate: Callable[[list[dict[str, Any]]], None]):
    def make(d: Path) -> tuple[Path, Path]:
        rows = base_events()
        mutate(rows)
        return write_csv(d / "profiles.csv", base_profiles()), write_csv(d / "events.csv", rows)
    return make


def _set(i: int, **kv: str) -> Callable[[list[dict[str, Any]]], None]:
    return lambda rows: rows[i].update(kv)


def _raw_files(profiles_text: str | bytes, name: str = "profiles.csv",
               events_text: str | None = None, ename: str = "events.csv"):
    def make(d: Path) -> tuple[Path, Path]:
        p = d / name
        if isinstance(profiles_text, bytes):
            p.write_bytes(profiles_text)
        else:
            p.write_text(profiles_text)
        if events_text is None:
            e = write_csv(d / ename, base_events())
        else:
            e = d / ename
            e.write_text(events_text)
        return p, e
    return make


def _zero_byte_events(d: Path) -> tuple[Path, Path]:
    (d / "events.csv").write_bytes(b"")
    return write_csv(d / "profiles.csv", base_profiles()), d / "events.csv"


def _parquet(prof: Callable[[pa.Table], pa.Table] = lambda t: t,
             ev: Callable[[pa.Table], pa.Table] = lambda t: t):
    def make(d: Path) -> tuple[Path, Path]:
        pq.write_table(prof(parquet_profiles()), d / "profiles.parquet")
        pq.write_table(ev(parquet_events()), d / "events.parquet")
        return d / "profiles.parquet", d / "events.parquet"
    return make


def _swap(name: str, arr: pa.Array) -> Callable[[pa.Table], pa.Table]:
    return lambda t: t.set_column(t.schema.get_field_index(name), name, arr)


BAD_CASES: dict[str, tuple[Callable[[Path], tuple[Path, Path]], str, list[str]]] = {
    # name: (make files, file named in the message, fragments the message must hold)
    "missing column": (
        _csv_profiles(lambda rows: None, [c for c in PROFILE_COLUMNS if c != "acquisition_channel"]),
        "profiles.csv", ["missing required column(s) ['acquisition_channel']", "e.g. row {", "'user_id': '1'"]),
    "user_id not integer": (
        _csv_profiles(_set(1, user_id="u-2")), "profiles.csv",
        ["column 'user_id'", "is not an integer", "'user_id': 'u-2'"]),
    "user_id fractional": (
        _csv_profiles(_set(1, user_id="2.5")), "profiles.csv",
        ["column 'user_id'", "is not an integer", "'user_id': '2.5'"]),
    "null user_id in events": (
        _csv_events(_set(2, user_id="")), "events.csv",
        ["column 'user_id'", "missing (null)", "'timestamp': '2026-01-06T01:00:00'"]),
    "numeric field with text": (
        _csv_profiles(_set(0, age="thirty")), "profiles.csv",
        ["column 'age'", "is not a number", "'age': 'thirty'"]),
    "negative count": (
        _csv_profiles(_set(2, first_day_sessions="-1")), "profiles.csv",
        ["column 'first_day_sessions'", "below the minimum 0", "'first_day_sessions': '-1'", "'user_id': '3'"]),
    "fractional count": (
        _csv_profiles(_set(2, first_day_sessions="1.5")), "profiles.csv",
        ["column 'first_day_sessions'", "not a whole number", "'first_day_sessions': '1.5'"]),
    "age out of range": (
        _csv_profiles(_set(0, age="250")), "profiles.csv",
        ["column 'age'", "above the maximum 100", "'age': '250'"]),
    "required field blank": (
        _csv_profiles(_set(1, acquisition_channel="")), "profiles.csv",
        ["column 'acquisition_channel'", "required field is missing", "'user_id': '2'"]),
    "category outside domain": (
        _csv_profiles(_set(0, gender="Female")), "profiles.csv",
        ["column 'gender'", "not in the declared domain", "'gender': 'Female'"]),
    "bad tags": (
        _csv_profiles(_set(0, interests="music|travel")), "profiles.csv",
        ["column 'interests'", "not a JSON list of strings", "'interests': 'music|travel'"]),
    "duplicate user ids": (
        _csv_profiles(_set(2, user_id="2")), "profiles.csv",
        ["column 'user_id'", "duplicate user ids", "user_id 2 appears 2 times", "'acquisition_channel': 'paid_social'"]),
    "unparseable timestamp": (
        _csv_profiles(_set(1, event_timestamp="05/01/2026")), "profiles.csv",
        ["column 'event_timestamp'", "not a parseable timestamp", "'event_timestamp': '05/01/2026'"]),
    "unparseable event timestamp": (
        _csv_events(_set(3, timestamp="yesterday")), "events.csv",
        ["column 'timestamp'", "not a parseable timestamp", "'timestamp': 'yesterday'"]),
    "timestamp out of range": (
        _csv_profiles(_set(0, event_timestamp="1970-01-01")), "profiles.csv",
        ["column 'event_timestamp'", "outside [2000-01-01", "'event_timestamp': '1970-01-01'"]),
    "event value text": (
        _csv_events(_set(0, value="1,5")), "events.csv",
        ["column 'value'", "is not a number", "'value': '1,5'"]),
    "events for unknown users": (
        _csv_events(lambda rows: rows.extend([{"user_id": "99", "timestamp": "2026-01-02", "value": ""},
                                              {"user_id": "98", "timestamp": "2026-01-02", "value": ""}])),
        "events.csv", ["column 'user_id'", "not in the profiles file", "2 rows for 2 unknown ids",
                       "user_id 98", "'user_id': '98'"]),
    "empty profiles (header only)": (
        _csv_profiles(lambda rows: rows.clear()), "profiles.csv", ["empty", "no rows"]),
    "empty events (zero bytes)": (_zero_byte_events, "events.csv", ["events file", "is empty"]),
    "unknown extension": (
        _raw_files("user_id\n1\n", name="profiles.txt"), "profiles.txt", ["unknown file extension"]),
    "corrupt parquet": (
        _raw_files(b"not a parquet file at all", name="profiles.parquet"), "profiles.parquet", ["unreadable"]),
    "tags with a number": (
        _csv_profiles(_set(2, interests='["games", 3]')), "profiles.csv",
        ["column 'interests'", "not a JSON list of strings", "'interests': '[\"games\", 3]'"]),
    "malformed csv row": (
        _raw_files("user_id,event_timestamp,acquisition_channel,first_day_sessions\n"
                   "1,2026-01-01,referral,1\n2,2026-01-01,referral,1,extra\n"),
        "profiles.csv", ["unreadable", "Line"]),
    "parquet user_id as float": (
        _parquet(prof=_swap("user_id", pa.array([1.0, 2.0, 3.0]))), "profiles.parquet",
        ["column 'user_id'", "has type DOUBLE", "'user_id': 1.0"]),
    "parquet category outside domain": (
        _parquet(prof=_swap("city_tier", pa.array(["tier1", None, "moon"]))), "profiles.parquet",
        ["column 'city_tier'", "not in the declared domain", "'city_tier': 'moon'", "'user_id': 3"]),
    "parquet negative count": (
        _parquet(prof=_swap("first_day_sessions", pa.array([3, -2, 1], pa.int32()))), "profiles.parquet",
        ["column 'first_day_sessions'", "below the minimum 0", "'first_day_sessions': -2"]),
    "parquet duplicate ids": (
        _parquet(prof=_swap("user_id", pa.array([1, 3, 3], pa.int64()))), "profiles.parquet",
        ["duplicate user ids", "user_id 3 appears 2 times"]),
    "parquet unknown event user": (
        _parquet(ev=_swap("user_id", pa.array([1, 1, 1, 1, 3, 7], pa.int64()))), "events.parquet",
        ["not in the profiles file", "1 row for 1 unknown id", "user_id 7"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    make, file_name, fragments = BAD_CASES[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    p, e = make(inputs)
    out = tmp_path / "runs" / "ds"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        with pytest.raises(IngestError) as info:
            ingest(p, e, out)
    msg = str(info.value)
    assert file_name in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in:\n{msg}"
    assert not out.exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_existing_output_is_untouched_when_input_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("previous dataset")
    p = write_csv(tmp_path / "profiles.csv", base_profiles())
    bad = write_csv(tmp_path / "bad.csv", [{**r, "first_day_sessions": "-5"} for r in base_profiles()])
    e = write_csv(tmp_path / "events.csv", base_events())
    with pytest.raises(IngestError, match="first_day_sessions"):
        ingest(bad, e, out, overwrite=True)
    assert [x.name for x in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "previous dataset"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.csv", "ds", "events.csv", "profiles.csv"]

    with pytest.raises(IngestError, match="already exists"):
        ingest(p, e, out)
    assert [x.name for x in out.iterdir()] == ["keep.txt"]

    ingest(p, e, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert labels_by_user(out) == EXPECTED_LABELS


def test_output_inside_an_input_is_refused(tmp_path: Path) -> None:
    parts = tmp_path / "profiles"
    parts.mkdir()
    pq.write_table(parquet_profiles(), parts / "part-0.parquet")
    e = write_csv(tmp_path / "events.csv", base_events())
    for out in (parts, parts / "ds"):
        with pytest.raises(IngestError, match="overlaps the profiles input"):
            ingest(parts, e, out, overwrite=True)
    assert [x.name for x in parts.iterdir()] == ["part-0.parquet"]


def test_all_problems_are_listed_at_once(tmp_path: Path) -> None:
    rows = base_profiles()
    rows[0]["gender"] = "robot"
    rows[1]["age"] = "-3"
    ev = base_events()
    ev[0]["timestamp"] = "soon"
    p = write_csv(tmp_path / "profiles.csv", rows)
    e = write_csv(tmp_path / "events.csv", ev)
    with pytest.raises(IngestError) as info:
        ingest(p, e, tmp_path / "ds")
    msg = str(info.value)
    assert msg.startswith("refused: 3 problems")
    assert "'gender'" in msg and "'age'" in msg and "'timestamp'" in msg
    assert "profiles.csv" in msg and "events.csv" in msg


def test_timestamp_bounds_are_configurable_and_checked(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "profiles.csv", base_profiles())
    e = write_csv(tmp_path / "events.csv", base_events())
    with pytest.raises(IngestError) as info:
        ingest(p, e, tmp_path / "ds", max_timestamp="2026-01-31")
    msg = str(info.value)
    assert "events.csv" in msg and "column 'timestamp'" in msg and "'2026-02-01T01:00:00'" in msg
    assert "profiles.csv" not in msg
    with pytest.raises(IngestError, match="min_timestamp 'someday'"):
        ingest(p, e, tmp_path / "ds", min_timestamp="someday")
    assert not (tmp_path / "ds").exists()


def test_manifest_is_deterministic(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "profiles.csv", base_profiles())
    e = write_csv(tmp_path / "events.csv", base_events())
    ingest(p, e, tmp_path / "a")
    ingest(p, e, tmp_path / "b")
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for table in ("profiles", "events", "labels"):
        assert read_table(tmp_path / "a" / table).equals(read_table(tmp_path / "b" / table))
    json.loads((tmp_path / "a" / "manifest.json").read_text())
