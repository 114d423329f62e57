"""``diff()``: the ``changes`` column, ``{"a.b": {"before": x, "after": y}}``.

Nested mappings give dotted paths, sequences index paths (``items.0``).
A key matching the redaction list (case-insensitive substring, so
``access_token`` matches ``token``) is still reported as changed, but its
values, and everything below it, become ``"[REDACTED]"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

DEFAULT_REDACT: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "authorization",
    "cookie",
    "ssn",
    "social_security",
    "credit_card",
    "card_number",
    "cvv",
)
REDACTED: Final = "[REDACTED]"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Final = _Missing()


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _redact_value(value: object) -> object:
    if value is _MISSING or value is None:
        return None
    return REDACTED


def _scrub(value: object, patterns: tuple[str, ...]) -> object:
    """A copy of ``value`` with every matching key's value redacted."""
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if _matches(str(k), patterns) else _scrub(v, patterns)
            for k, v in value.items()
        }
    if _is_sequence(value):
        return [_scrub(v, patterns) for v in value]  # type: ignore[attr-defined]
    return None if value is _MISSING else value


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    lowered = key.lower().replace("-", "_")
    return any(pattern in lowered for pattern in patterns)


def _same(before: object, after: object) -> bool:
    # True == 1 == 1.0 in Python, but a bool becoming an int is a change.
    return type(before) is type(after) and before == after


def _walk(
    before: object,
    after: object,
    path: str,
    redacted: bool,
    patterns: tuple[str, ...],
    out: dict[str, dict[str, object]],
) -> None:
    before_map = isinstance(before, Mapping)
    after_map = isinstance(after, Mapping)
    if (before_map or before is _MISSING) and (after_map or after is _MISSING) and (
        before_map or after_map
    ):
        left: Mapping[Any, Any] = before if before_map else {}  # type: ignore[assignment]
        right: Mapping[Any, Any] = after if after_map else {}  # type: ignore[assignment]
        if left or right:
            for key in _ordered_union(left, right):
                name = str(key)
                _walk(
                    left.get(key, _MISSING),
                    right.get(key, _MISSING),
                    f"{path}.{name}" if path else name,
                    redacted or _matches(name, patterns),
                    patterns,
                    out,
                )
            return
    before_seq = _is_sequence(before)
    after_seq = _is_sequence(after)
    if (before_seq or before is _MISSING) and (after_seq or after is _MISSING) and (
        before_seq or after_seq
    ):
        left_seq: Sequence[Any] = before if before_seq else ()  # type: ignore[assignment]
        right_seq: Sequence[Any] = after if after_seq else ()  # type: ignore[assignment]
        if left_seq or right_seq:
            for index in range(max(len(left_seq), len(right_seq))):
                _walk(
                    left_seq[index] if index < len(left_seq) else _MISSING,
                    right_seq[index] if index < len(right_seq) else _MISSING,
                    f"{path}.{index}" if path else str(index),
                    redacted,
                    patterns,
                    out,
                )
            return
    if _same(before, after) or (before is None and after is _MISSING) or (
        before is _MISSING and after is None
    ):
        # An absent key and a null value read the same in JSON: no noise.
        return
    if redacted:
        out[path] = {"before": _redact_value(before), "after": _redact_value(after)}
    else:
        out[path] = {"before": _scrub(before, patterns), "after": _scrub(after, patterns)}


def _ordered_union(left: Mapping[Any, Any], right: Mapping[Any, Any]) -> Iterable[Any]:
    yield from left
    for key in right:
        if key not in left:
            yield key


def diff_dict(
    before: object, after: object, *, redact: Iterable[str] | None = None
) -> dict[str, dict[str, object]]:
    """The changes between two values as a dict (``diff()`` without the JSON)."""
    if redact is None:
        from auditlake.sdk._config import current_settings

        patterns = DEFAULT_REDACT + current_settings().redact
    else:
        patterns = tuple(redact)
    patterns = tuple(p.lower().replace("-", "_") for p in patterns)
    out: dict[str, dict[str, object]] = {}
    _walk(before, after, "", False, patterns, out)
    return out


def diff(before: object, after: object, *, redact: Iterable[str] | None = None) -> str:
    """The ``changes`` JSON between two states; ``"{}"`` when nothing changed.

    ``redact`` replaces the default list (:data:`DEFAULT_REDACT` plus the
    configured ``redact`` setting) of key fragments whose values are hidden.
    """
    return json.dumps(
        diff_dict(before, after, redact=redact),
        separators=(",", ":"),
        default=str,
        ensure_ascii=False,
    )
