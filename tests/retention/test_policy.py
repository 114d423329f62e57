"""The retention policy as a value: parsing, validation, legal holds, and the
tombstone's sequence ranges."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditlake.collector.errors import ConfigError
from auditlake.collector.retention.expire import _seq_ranges
from auditlake.collector.retention.policy import LegalHold, load_policy


def test_no_retention_table_means_no_policy() -> None:
    assert load_policy({}) is None


def test_policy_from_toml_with_defaults_and_holds() -> None:
    p = load_policy({"retention": {
        "cold": "s3://b/p", "delete_after_days": 2190, "schedule": "hourly",
        "legal_hold": [{"tenant": "acme", "from": dt.date(2023, 1, 1), "reason": "case"}],
    }})
    assert p is not None
    assert (p.hot_days, p.delete_after_days, p.minimum_days, p.schedule_s) == (30, 2190, 365, 3600.0)
    assert p.legal_holds == (LegalHold("case", "acme", dt.date(2023, 1, 1), None),)
    today = dt.date(2030, 6, 1)
    assert p.move_before(today) == dt.date(2030, 5, 2)
    assert p.expire_before(today) == today - dt.timedelta(days=2190)


@pytest.mark.parametrize("table,needle", [
    ({"hot_days": 30}, "cold is required"),
    ({"cold": "/c", "delete_after_days": 100}, "minimum_days = 365"),
    ({"cold": "/c", "hot_days": 60, "delete_after_days": 30, "minimum_days": 0}, "shorter than hot_days"),
    ({"cold": "/c", "hot_dayz": 3}, "unknown setting(s) in [retention]: hot_dayz"),
    ({"cold": "/c", "hot_days": "many"}, "hot_days: expected a whole number"),
    ({"cold": "/c", "legal_hold": [{"tenant": "a"}]}, "reason is required"),
    ({"cold": "/c", "legal_hold": [{"reason": "r"}]}, "give a tenant and/or from/to dates"),
    ({"cold": "/c", "legal_hold": [{"reason": "r", "from": "2024-02-01", "to": "2024-01-01"}]}, "'to' is before"),
    ({"cold": "/c", "legal_hold": [{"reason": "r", "from": "soon"}]}, "expected a date"),
])
def test_invalid_policies_are_refused_naming_the_setting(table: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_policy({"retention": table})
    assert needle in str(exc.value)


def test_environment_overrides_scalar_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITLAKE_RETENTION_HOT_DAYS", "7")
    p = load_policy({"retention": {"cold": "/c"}})
    assert p is not None and p.hot_days == 7


def test_holds_match_dates_and_tenants() -> None:
    day = dt.date(2024, 5, 5)
    assert LegalHold("r", start=day, end=day).holds(day, lambda: set())
    assert not LegalHold("r", start=day + dt.timedelta(days=1)).holds(day, lambda: {"acme"})
    assert LegalHold("r", tenant="acme").holds(day, lambda: {"acme", "globex"})
    assert not LegalHold("r", tenant="acme").holds(day, lambda: {"globex"})


@given(st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=200, unique=True))
def test_seq_ranges_cover_exactly_the_file_seqs_with_the_last_hash(seqs: list[int]) -> None:
    table = pa.table({"seq": pa.array(seqs, pa.int64()), "chain_hash": [f"h{s}" for s in seqs]})
    ranges = _seq_ranges(table)
    covered = [s for first, last, _ in ranges for s in range(first, last + 1)]
    assert covered == sorted(seqs)
    assert all(h == f"h{last}" for _, last, h in ranges)
    assert all(b[0] > a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
