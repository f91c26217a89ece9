"""Typed chains: the text form round-trips, and the parser refuses anything not exactly valid."""

import pytest
from hypothesis import given, strategies as st

from scaletot_features.chain import (
    Chain, ChainNode, ChainParseError, chain_text, parse_chain_values, segment_spans,
)
from scaletot_features.taxonomy import DEFAULT_TAXONOMY as TAX


def chains():
    """Any valid assignment of one allowed value per type, in order."""
    return st.tuples(*[st.sampled_from(t.value_names) for t in TAX.types]).map(
        lambda vals: dict(zip(TAX.type_names, vals))
    )


@given(chains())
def test_text_round_trips(values):
    text = chain_text(values)
    assert parse_chain_values(text, TAX) == values
    assert chain_text(parse_chain_values(text, TAX)) == text


@given(chains(), st.data())
def test_out_of_set_value_is_refused(values, data):
    t = data.draw(st.sampled_from(TAX.type_names))
    bad = data.draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
                    .filter(lambda v: v not in TAX[t].value_names))
    values = {**values, t: bad}
    with pytest.raises(ChainParseError, match="not allowed"):
        parse_chain_values(chain_text(values), TAX)


@given(chains(), st.data())
def test_missing_node_is_refused(values, data):
    drop = data.draw(st.sampled_from(TAX.type_names))
    values = {k: v for k, v in values.items() if k != drop}
    with pytest.raises(ChainParseError):
        parse_chain_values(chain_text(values), TAX)


@given(chains(), st.data())
def test_reordered_nodes_are_refused(values, data):
    items = list(values.items())
    i = data.draw(st.integers(0, len(items) - 2))
    items[i], items[i + 1] = items[i + 1], items[i]
    with pytest.raises(ChainParseError, match="expected"):
        parse_chain_values(chain_text(dict(items)), TAX)


def test_unknown_type_duplicate_and_garbage_are_refused():
    good = {t.name: t.value_names[0] for t in TAX.types}
    text = chain_text(good)
    with pytest.raises(ChainParseError, match="unknown state type"):
        parse_chain_values(text + "\nmood: happy", TAX)
    with pytest.raises(ChainParseError, match="twice"):
        parse_chain_values(text + "\nlife_stage: student", TAX)
    with pytest.raises(ChainParseError, match="expected '<type>: <value>'"):
        parse_chain_values("this user is a student", TAX)
    with pytest.raises(ChainParseError):
        parse_chain_values("", TAX)


def test_record_round_trip_keeps_probs_and_evidence():
    nodes = tuple(ChainNode(t.name, t.value_names[-1], prob=0.6, entropy=0.4, evidence=("age",))
                  for t in TAX.types)
    chain = Chain(nodes, provenance="teacher", model_id="m")
    back = Chain.from_record(chain.to_record(), TAX)
    assert back == chain


def test_node_refuses_bad_probabilities():
    with pytest.raises(ValueError):
        ChainNode("life_stage", "student", prob=1.5)
    with pytest.raises(ValueError):
        ChainNode("life_stage", "student", entropy=float("nan"))


@given(chains())
def test_segments_cover_each_line_exactly(values):
    text = chain_text(values)
    spans = segment_spans(text)
    assert len(spans) == len(TAX.types)
    assert [text[a:b] for a, b in spans] == text.split("\n")
    assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1))
