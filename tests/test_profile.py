import math

import pyarrow as pa
import pytest
from hypothesis import given, strategies as st

from scaletot_features.profile import (
    DEFAULT_PROFILE_SCHEMA as S, FieldKind, ProfileField, ProfileSchema, is_missing, sparsity_bucket,
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
    assert [sparsity_bucket(n) for n in (0, 1, 2, 3, 6)] == ["bare", "sparse", "sparse", "rich", "rich"]


def test_sentence_style_states_each_present_field_on_its_own_line() -> None:
    row = {"acquisition_channel": "referral", "first_day_sessions": 0.0, "occupation": "nurse",
           "age": None}
    text = S.to_text(row, style="sentences")
    assert text.splitlines() == ["This user's acquired via is referral.",
                                 "This user's sessions on first day is 0.",
                                 "This user's occupation is nurse."]
    assert S.to_text({}, style="sentences") == "(no profile information)"
