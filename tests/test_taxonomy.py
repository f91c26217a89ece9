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


def test_fingerprint_survives_a_sorted_key_json_round_trip_of_outcome_types():
    """An encoder manifest is written with sorted keys: outcome_types keyed in another order
    (total_charges before tenure) came back reordered, its fingerprint changed, and `embed`
    refused the encoder just distilled ("the manifest was edited")."""
    import json

    from scaletot_features.encoder.artifact import (
        taxonomy_digest, taxonomy_from_json, taxonomy_to_json)

    raw = DEFAULT_TAXONOMY.model_dump()
    raw["outcome_types"] = {"total_charges": ["spending_power"], "tenure": ["retention_outlook"]}
    tax = type(DEFAULT_TAXONOMY).model_validate(raw)
    back = taxonomy_from_json(json.loads(json.dumps(taxonomy_to_json(tax), sort_keys=True)))
    assert list(back.outcome_types) == ["tenure", "total_charges"]  # reordered by the JSON
    assert back.fingerprint() == tax.fingerprint()
    assert taxonomy_digest(back) == taxonomy_digest(tax)
    # which label maps to which types still counts
    raw["outcome_types"] = {"total_charges": ["retention_outlook"], "tenure": ["spending_power"]}
    assert type(DEFAULT_TAXONOMY).model_validate(raw).fingerprint() != tax.fingerprint()
    # a taxonomy keyed in sorted order (the default) keeps the fingerprint it always had
    assert DEFAULT_TAXONOMY.fingerprint() == __import__("hashlib").sha256(
        json.dumps(DEFAULT_TAXONOMY.model_dump()).encode()).hexdigest()[:16]
