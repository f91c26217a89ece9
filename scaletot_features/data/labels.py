"""LTV labels derived from raw events at a horizon after each user's first-seen time.

One function serves the synthetic generator and your-own-data ingest, so both define
``lt30`` and ``revenue_30`` identically:

- first_seen = the earlier of the profile's ``event_timestamp`` and the user's first event;
- ``lt{H}``: distinct active days d (d = whole days since first_seen) with 0 <= d < H;
- ``revenue_{H}``: sum of event ``value`` (null counts as 0) within [first_seen, first_seen + H days);
- the revenue sum is ordered, so parallel aggregation gives the same bits every run;
- ``label_timestamp`` = first_seen + H days: when the label becomes known (for point-in-time joins).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from scaletot_features.dataset import label_names, label_schema  # noqa: F401 (re-exported)
from scaletot_features.profile import ID_COLUMN, TIMESTAMP_COLUMN


def derive_labels(profiles: pa.Table, events: pa.Table, horizon_days: int = 30) -> pa.Table:
    """One label row per profile (users without events get 0 and 0.0)."""
    active, revenue = label_names(horizon_days)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("p", profiles.select([ID_COLUMN, TIMESTAMP_COLUMN]))
        ev_cols = ["user_id", "timestamp"] + (["value"] if "value" in events.column_names else [])
        con.register("e", events.select(ev_cols))
        value = "coalesce(e.value, 0)" if "value" in ev_cols else "0"
        sql = f"""
        WITH first AS (
            SELECT p.user_id,
                   least(p.event_timestamp, coalesce(min(e.timestamp), p.event_timestamp)) AS first_seen
            FROM p LEFT JOIN e ON e.user_id = p.user_id
            GROUP BY p.user_id, p.event_timestamp
        ),
        win AS (
            SELECT f.user_id,
                   floor(epoch(e.timestamp - f.first_seen) / 86400)::BIGINT AS day,
                   {value} AS value
            FROM first f JOIN e ON e.user_id = f.user_id
            WHERE e.timestamp >= f.first_seen
              AND e.timestamp < f.first_seen + INTERVAL {int(horizon_days)} DAY
        ),
        agg AS (
            SELECT user_id, count(DISTINCT day)::INTEGER AS n_days, sum(value ORDER BY value)::DOUBLE AS rev
            FROM win GROUP BY user_id
        )
        SELECT f.user_id, f.first_seen,
               f.first_seen + INTERVAL {int(horizon_days)} DAY AS label_timestamp,
               coalesce(a.n_days, 0)::INTEGER AS "{active}",
               coalesce(a.rev, 0.0)::DOUBLE AS "{revenue}"
        FROM first f LEFT JOIN agg a ON a.user_id = f.user_id
        ORDER BY f.user_id
        """
        out = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return out.cast(label_schema(horizon_days))
