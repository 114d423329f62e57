"""diff(): dotted paths, lists, redaction, no noise; property-based."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlake.sdk import diff
from auditlake.sdk._diff import REDACTED


def test_nested_paths_are_dotted_and_lists_indexed() -> None:
    before = {"name": "a", "address": {"city": "Oslo", "zip": "0150"}, "tags": ["x", "y"]}
    after = {"name": "a", "address": {"city": "Bergen", "zip": "0150"}, "tags": ["x", "z", "w"]}
    assert json.loads(diff(before, after)) == {
        "address.city": {"before": "Oslo", "after": "Bergen"},
        "tags.1": {"before": "y", "after": "z"},
        "tags.2": {"before": None, "after": "w"},
    }


def test_added_and_removed_keys() -> None:
    assert json.loads(diff({"a": 1}, {"b": 2})) == {
        "a": {"before": 1, "after": None},
        "b": {"before": None, "after": 2},
    }


def test_unchanged_update_produces_no_noise() -> None:
    state = {"a": [1, {"b": 2}], "c": None}
    assert diff(state, json.loads(json.dumps(state))) == "{}"


def test_bool_to_int_is_a_change() -> None:
    assert json.loads(diff({"a": True}, {"a": 1})) == {"a": {"before": True, "after": 1}}


def test_secrets_are_reported_changed_with_values_redacted() -> None:
    before = {"password": "hunter2", "profile": {"API-Key": "k1", "name": "x"}, "ssn": "1"}
    after = {"password": "hunter3", "profile": {"API-Key": "k2", "name": "x"}, "ssn": "1"}
    changes = json.loads(diff(before, after))
    assert changes == {
        "password": {"before": REDACTED, "after": REDACTED},
        "profile.API-Key": {"before": REDACTED, "after": REDACTED},
    }


def test_a_whole_subtree_under_a_secret_key_is_redacted() -> None:
    changes = diff({}, {"credentials": {"token": "abc", "secret": {"value": "s3"}}})
    assert "abc" not in changes and "s3" not in changes
    changes = diff(None, {"user": {"password": "p@ss"}})
    assert "p@ss" not in changes


def test_custom_redaction_list_replaces_the_default() -> None:
    changes = json.loads(diff({"iban": "A", "password": "p"}, {"iban": "B", "password": "q"},
                              redact=["iban"]))
    assert changes["iban"] == {"before": REDACTED, "after": REDACTED}
    assert changes["password"] == {"before": "p", "after": "q"}


scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
keys = st.text(alphabet="abcdefgh", min_size=1, max_size=4)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=6)
fast = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(documents)
def test_property_identical_states_have_an_empty_diff(document: dict[str, Any]) -> None:
    assert diff(document, json.loads(json.dumps(document))) == "{}"


@fast
@given(documents, documents)
def test_property_every_reported_path_really_changed(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    for path, change in json.loads(diff(before, after, redact=[])).items():
        assert change["before"] != change["after"] or type(change["before"]) is not type(
            change["after"]
        ), path


@fast
@given(st.dictionaries(keys, scalars, max_size=6), st.dictionaries(keys, scalars, max_size=6))
def test_property_flat_diff_is_exactly_the_changed_keys(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    # An absent key reads as null.
    expected = {
        k for k in before.keys() | after.keys()
        if type(before.get(k)) is not type(after.get(k)) or before.get(k) != after.get(k)
    }
    assert set(json.loads(diff(before, after, redact=[]))) == expected


@fast
@given(documents, st.text(alphabet="XYZ0123456789", min_size=6, max_size=12))
def test_property_a_secret_value_never_appears(document: dict[str, Any], secret: str) -> None:
    after = {**document, "nested": {"password": secret, "list": [{"token": secret}]}}
    assert secret not in diff(document, after)
    assert secret not in diff(after, document)
