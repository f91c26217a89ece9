"""Labels from events at a horizon: hand-computed answers on tiny tables."""

import datetime as dt

import pyarrow as pa

from scaletot_features.data.labels import derive_labels, label_schema

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TS = pa.timestamp("us", tz="UTC")


def _profiles(ids, ts=None):
    return pa.table({"user_id": pa.array(ids, pa.int64()),
                     "event_timestamp": pa.array(ts or [T0] * len(ids), TS)})


def _events(rows):
    uid, ts, val = zip(*rows) if rows else ((), (), ())
    return pa.table({"user_id": pa.array(uid, pa.int64()), "timestamp": pa.array(ts, TS),
                     "value": pa.array(val, pa.float64())})


def test_distinct_days_and_revenue_within_the_horizon():
    d = dt.timedelta
    ev = _events([(1, T0, None), (1, T0 + d(hours=5), 2.0), (1, T0 + d(days=5), 3.0),
                  (1, T0 + d(days=30), 100.0),  # day 30 is outside [0, 30)
                  (2, T0 + d(days=29, hours=23), 1.5)])
    out = derive_labels(_profiles([1, 2, 3]), ev).to_pylist()
    assert [(r["user_id"], r["lt30"], r["revenue_30"]) for r in out] == [(1, 2, 5.0), (2, 1, 1.5), (3, 0, 0.0)]
    assert out[0]["label_timestamp"] == T0 + d(days=30)


def test_first_seen_is_the_earlier_of_profile_and_first_event():
    early = T0 - dt.timedelta(days=3)
    out = derive_labels(_profiles([1]), _events([(1, early, 4.0)])).to_pylist()[0]
    assert out["first_seen"] == early and out["lt30"] == 1 and out["revenue_30"] == 4.0


def test_horizon_and_names_are_configurable():
    ev = _events([(1, T0, None), (1, T0 + dt.timedelta(days=8), None)])
    out = derive_labels(_profiles([1]), ev, horizon_days=7)
    assert out.schema == label_schema(7)
    assert out.column("lt7").to_pylist() == [1]


def test_events_without_value_column_and_no_events():
    ev = pa.table({"user_id": pa.array([1], pa.int64()), "timestamp": pa.array([T0], TS)})
    assert derive_labels(_profiles([1, 2]), ev).column("revenue_30").to_pylist() == [0.0, 0.0]
    assert derive_labels(_profiles([5]), _events([])).column("lt30").to_pylist() == [0]
