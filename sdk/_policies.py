"""Retry, batch and spool policies: small frozen values, validated when built.

Every default lives here, once; ``docs/sdk.md`` lists them.  Each field is
also a setting of ``configure()`` (a keyword, an ``AUDITLAKE_*`` variable
and a TOML key): ``_config.POLICY_FIELDS`` maps one to the other, and the
docstrings below name the setting of each field.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from auditlake.sdk._exceptions import ConfigurationError

FullPolicy = Literal["drop_newest", "block"]


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigurationError(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a batch is retried when the collector answers a retryable status.

    A new batch is tried ``max_attempts`` times in a row (backoff between
    tries), then spooled; spooled batches are retried for ever, the backoff
    growing up to ``max_backoff``.  A RetryInfo delay sent by the collector
    replaces the computed backoff (capped at ``max_backoff``).

    Fields (setting in brackets):

    - ``max_attempts`` (``retry_max_attempts``): tries of a new batch before
      it is spooled.
    - ``initial_backoff`` (``retry_initial_backoff``): seconds before the
      second try.
    - ``max_backoff`` (``retry_max_backoff``): ceiling of the backoff, and of
      a RetryInfo delay.
    - ``multiplier`` (``retry_multiplier``): growth of the backoff per try.
    - ``jitter`` (``retry_jitter``): each backoff is scaled by a random
      factor in ``[1 - jitter, 1 + jitter]`` so that many processes do not
      retry in step.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _require(self.max_attempts >= 1, "max_attempts", "must be at least 1")
        _require(self.initial_backoff > 0, "initial_backoff", "must be positive")
        _require(
            self.max_backoff >= self.initial_backoff,
            "max_backoff",
            "must be at least initial_backoff",
        )
        _require(self.multiplier >= 1, "multiplier", "must be at least 1")
        _require(0 <= self.jitter <= 1, "jitter", "must be between 0 and 1")

    def backoff(self, attempt: int, rng: random.Random, hint: float | None = None) -> float:
        """Seconds to wait before try number ``attempt + 1`` (``attempt`` from 0)."""
        if hint is not None and hint >= 0:
            return min(hint, self.max_backoff)
        base = min(self.initial_backoff * self.multiplier ** min(attempt, 64), self.max_backoff)
        return base * (1 - self.jitter + 2 * self.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How events are grouped before export and how many may wait in memory.

    Fields (setting in brackets):

    - ``max_batch_size`` (``batch_max_size``): most events per export call.
    - ``schedule_delay`` (``batch_delay``): seconds an event waits at most
      before its batch leaves.
    - ``max_queue_size`` (``queue_max_size``): events held in memory.
    - ``export_timeout`` (``export_timeout``): deadline of one export call.
    """

    max_batch_size: int = 2048
    schedule_delay: float = 0.2
    max_queue_size: int = 50_000
    export_timeout: float = 10.0

    def __post_init__(self) -> None:
        _require(self.max_batch_size >= 1, "max_batch_size", "must be at least 1")
        _require(self.schedule_delay > 0, "schedule_delay", "must be positive")
        _require(
            self.max_queue_size >= self.max_batch_size,
            "max_queue_size",
            "must be at least max_batch_size",
        )
        _require(self.export_timeout > 0, "export_timeout", "must be positive")


@dataclass(frozen=True, slots=True)
class SpoolPolicy:
    """Where and how much the SDK keeps on disk while the collector is away.

    ``directory=None`` means ``~/.cache/auditlake/spool/<service>``;
    ``enabled=False`` keeps undelivered batches in memory only (bounded by
    the queue size).  ``full`` is what happens when the spool is full:
    ``drop_newest`` (counted, warned about) or ``block`` (``record()`` waits).

    Fields (setting in brackets): ``directory`` (``spool_dir``),
    ``max_bytes`` (``spool_max_bytes``), ``full`` (``spool_full``),
    ``enabled`` (``spool_enabled``).
    """

    directory: Path | None = None
    max_bytes: int = 256 * 1024 * 1024
    full: FullPolicy = "drop_newest"
    enabled: bool = True

    def __post_init__(self) -> None:
        _require(self.max_bytes > 0, "max_bytes", "must be positive")
        _require(self.full in ("drop_newest", "block"), "full", "must be drop_newest or block")
        if self.directory is not None and not isinstance(self.directory, Path):
            object.__setattr__(self, "directory", Path(self.directory))
