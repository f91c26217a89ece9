import pytest

from scaletot_features.taxonomy import DEFAULT_TAXONOMY, TaxonomyError, load_taxonomy

DESIGN_TYPES = ["life_stage", "spending_power", "primary_interest", "engagement_intent",
                "monetization_propensity", "retention_outlook"]


def test_default_taxonomy_is_the_design_one():
    assert DEFAULT_TAXONOMY.type_names == DESIGN_TYPES
    for t in DEFAULT_TAXONOMY.types:
        assert t.description and all(d for d in t.values.values())
    assert set(DEFAULT_TAXONOMY.outcome_types) == {"lt30", "revenue_30"}


def test_user_taxonomy_loads_from_yaml(tmp_path):
    p = tmp_path / "tax.yaml"
    p.write_text("name: mine\ntypes:\n  - name: tenure\n    description: how long\n"
                 "    values: {new: a new user, old: an old user}\n")
    tax = load_taxonomy(p)
    assert tax.type_names == ["tenure"] and tax["tenure"].value_names == ["new", "old"]
    assert tax.fingerprint() != DEFAULT_TAXONOMY.fingerprint()


@pytest.mark.parametrize("body, needle", [
    ("types: []", "at least one"),
    ("types:\n  - name: a\n    description: x\n    values: {only: one}", "at least two"),
    ("types:\n  - name: Bad Name\n    description: x\n    values: {a: x, b: y}", "must match"),
    ("types:\n  - name: a\n    description: x\n    values: {a: x, b: y}\noutcome_types: {lt30: [zz]}",
     "unknown types"),
    ("types:\n  - name: a\n    description: x\n    values: {a: x, b: y}\n    colour: red", "colour"),
    ("types: [", "not valid YAML"),
])
def test_bad_taxonomy_is_refused_with_the_key(tmp_path, body, needle):
    p = tmp_path / "tax.yaml"
    p.write_text(body)
    with pytest.raises(TaxonomyError, match=needle):
        load_taxonomy(p)


def test_unknown_type_and_value_lookups_say_what_is_allowed():
    with pytest.raises(TaxonomyError, match="known"):
        DEFAULT_TAXONOMY["mood"]
    with pytest.raises(TaxonomyError, match="allowed"):
        DEFAULT_TAXONOMY["life_stage"].index("astronaut")


def test_fingerprint_sees_value_order():
    raw = DEFAULT_TAXONOMY.model_dump()
    first = raw["types"][0]
    first["values"] = dict(reversed(list(first["values"].items())))
    reordered = type(DEFAULT_TAXONOMY).model_validate(raw)
    assert reordered.fingerprint() != DEFAULT_TAXONOMY.fingerprint()
