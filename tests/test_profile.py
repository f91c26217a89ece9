import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, strategies as st

from scaletot_features.profile import (
    DEFAULT_PROFILE_SCHEMA as S, SPARSITY_BUCKETS, FieldKind, ProfileField, ProfileSchema,
    is_missing, sparsity_bucket,
)


def test_arrow_schema_has_ids_timestamps_and_kinds():
    schema = S.arrow_schema()
    assert schema.field("user_id").type == pa.int64()
    assert schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("interests").type == pa.list_(pa.string())
    assert schema.field("age").type == pa.float64() and schema.field("age").nullable
    assert not schema.field("acquisition_channel").nullable


def test_missing_fields_are_left_out_of_the_prompt_not_imputed():
    text = S.to_text({"acquisition_channel": "referral", "first_day_sessions": 0.0,
                      "age": None, "gender": float("nan"), "occupation": "",
                      "interests": [], "device_model": "Galaxy A05"})
    assert text == "acquired via: referral\nsessions on first day: 0\ndevice: Galaxy A05"
    assert S.to_text({}) == "(no profile information)"


def _value_for(field):
    """Values of the field's own kind, or missing in any of its forms."""
    missing = st.sampled_from([None, float("nan"), "", []])
    line = st.text(alphabet="abcxyz -", min_size=1, max_size=8).filter(lambda s: s.strip())
    by_kind = {
        FieldKind.numeric: st.floats(min_value=0, max_value=200, allow_nan=False),
        FieldKind.categorical: st.sampled_from(field.domain or ("x",)),
        FieldKind.text: line,
        FieldKind.tags: st.lists(line, min_size=1, max_size=3),
    }
    return st.one_of(missing, by_kind[field.kind])


@given(st.fixed_dictionaries({f.name: _value_for(f) for f in S.fields}))
def test_prompt_has_one_line_per_present_field(row):
    text = S.to_text(row)
    present = S.present_fields(row)
    if present:
        assert len(text.split("\n")) == len(present)
    for name in present:
        assert S.field(name).label in text


def test_schema_rejects_bad_declarations():
    with pytest.raises(ValueError, match="domain"):
        ProfileField(name="x", kind=FieldKind.categorical, label="x")
    with pytest.raises(ValueError, match="range"):
        ProfileField(name="x", kind=FieldKind.text, label="x", min_value=0)
    f = ProfileField(name="user_id", kind=FieldKind.text, label="id")
    with pytest.raises(ValueError, match="reserved"):
        ProfileSchema(fields=(f,))


def test_missing_and_sparsity_helpers():
    assert is_missing(None) and is_missing(math.nan) and is_missing("") and is_missing([])
    assert not is_missing(0.0) and not is_missing("x") and not is_missing(["a"])
    assert sparsity_bucket([0, 1, 2, 3, 6]).tolist() == ["bare", "sparse", "sparse", "rich", "rich"]
    assert sparsity_bucket(0) == "bare"


def test_the_sparsity_buckets_agree_in_numpy_and_in_duckdb():
    import duckdb

    from scaletot_features.reasoning.coverage import sparsity_sql

    optional = [f for f in S.optional]
    rows = []  # one profile per count of present optional fields, 0 .. all
    for k in range(len(optional) + 1):
        row = {f.name: None for f in optional}
        for f in optional[:k]:
            row[f.name] = {"numeric": 30.0, "tags": ["chess"]}.get(f.kind.value, "x")
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=pa.schema([pa.field(f.name, f.arrow_type)
                                                         for f in optional]))
    con = duckdb.connect()
    con.register("p", table)
    got = [r[0] for r in con.sql(f"SELECT {sparsity_sql(S)} FROM p").fetchall()]
    assert got == sparsity_bucket(np.arange(len(optional) + 1)).tolist()
    assert [name for name, _ in SPARSITY_BUCKETS] == sorted(set(got), key=got.index)


def test_sentence_style_states_each_present_field_on_its_own_line() -> None:
    row = {"acquisition_channel": "referral", "first_day_sessions": 0.0, "occupation": "nurse",
           "age": None}
    text = S.to_text(row, style="sentences")
    assert text.splitlines() == ["This user's acquired via is referral.",
                                 "This user's sessions on first day is 0.",
                                 "This user's occupation is nurse."]
    assert S.to_text({}, style="sentences") == "(no profile information)"


def test_check_value_types_every_kind_and_strict_holds_the_declaration():
    from scaletot_features.profile import ProfileValueError, check_value

    age, channel, tags = S.field("age"), S.field("acquisition_channel"), S.field("interests")
    sessions = S.field("first_day_sessions")
    assert check_value(age, np.int64(30)) == 30.0 and isinstance(check_value(age, 30), float)
    assert check_value(age, None) is None and check_value(age, math.nan) is None
    assert check_value(tags, np.array(["a", "b"], dtype=object)) == ["a", "b"]
    for field, value, message in [
        (age, "thirty", "expected a number or null, got 'thirty'"),
        (age, True, "expected a number"),
        (channel, 3, "expected a string or null"),
        (tags, "chess", "expected a list of strings"),
        (tags, ["a", 1], "tags must be strings, got 1"),
    ]:
        for strict in (True, False):  # the type is checked in both modes
            with pytest.raises(ProfileValueError, match=message):
                check_value(field, value, strict=strict)
    strict_only = [
        (sessions, None, "required, got null"),
        (age, math.inf, "finite"),
        (age, 30.5, "whole number"),
        (age, 7, r"outside \[13"),
        (channel, "carrier_pigeon", "is not one of"),
        (tags, ["a", None], "tags must be strings, got None"),
    ]
    for field, value, message in strict_only:
        with pytest.raises(ProfileValueError, match=message):
            check_value(field, value)
        check_value(field, value, strict=False)  # lenient: the encoder copes
    assert check_value(tags, ["a", None], strict=False) == ["a"]
