"""``@audited``: one event per call of a function, with its outcome.

The event is recorded when the call ends: ``success`` when it returns,
``denied`` when it raises ``PermissionError`` (or another configured
``denied_exceptions`` type), ``failure`` otherwise, the exception type being
the ``reason``.  The exception always propagates.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from auditlake.sdk._config import PROVIDER
from auditlake.sdk._exceptions import NotConfiguredError
from auditlake.sdk._record import record

P = ParamSpec("P")
R = TypeVar("R")

ArgumentGetter = Callable[[Mapping[str, Any]], object]
ChangesGetter = Callable[[Mapping[str, Any], Any], object]


def _reader(
    signature: inspect.Signature, name: str, what: str
) -> Callable[[tuple[Any, ...], dict[str, Any]], object]:
    """A fast reader of one argument by name (no full bind on every call)."""
    if name not in signature.parameters:
        raise ValueError(f"{what}: the function has no parameter {name!r}")
    parameter = signature.parameters[name]
    params = list(signature.parameters.values())
    position = params.index(parameter)
    positional = parameter.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    default = None if parameter.default is inspect.Parameter.empty else parameter.default

    def read(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        if name in kwargs:
            return kwargs[name]
        if positional and position < len(args):
            return args[position]
        return default

    return read


def _require_configured(function: Callable[..., Any]) -> None:
    """Before an audited call runs: an SDK that is not configured could not
    record it, so the call does not run either (no side effect without its
    event, and no exception after a side effect that happened)."""
    if PROVIDER.processor is None:
        raise NotConfiguredError(
            f"{function.__qualname__} is @audited: call auditlake.sdk.configure() before calling it "
            "(it did not run)")


def audited(
    action: str | None = None,
    resource_type: str = "",
    *,
    resource_id: str | ArgumentGetter | None = None,
    changes: str | ChangesGetter | None = None,
    read: bool = False,
    durable: bool = False,
    metadata: Mapping[str, Any] | None = None,
    denied: tuple[type[BaseException], ...] | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record an audit event for every call of the decorated function or method.

    ``resource_id`` is a parameter name or a callable of the bound arguments
    (a ``{name: value}`` mapping).  ``changes`` is a parameter name (its value
    is recorded, e.g. a patch or a :func:`diff` string) or a callable
    ``(arguments, result) -> changes`` (``result`` is None after an
    exception).  ``read=True`` marks a data access: the action defaults to
    ``read``.  ``durable=True`` waits for the collector's acknowledgement
    after the call and raises :class:`DeliveryError` without it, so a caller
    inside a transaction can roll back.  Works on sync and async functions.
    """
    if action is None:
        if not read:
            raise ValueError("action: required unless read=True")
        action = "read"
    elif read and action != "read":
        raise ValueError(f"action: read=True records 'read', not {action!r}")
    the_action: str = action

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            # The call of a generator function does nothing yet: there is no
            # outcome to record.  Audit the function that consumes it.
            raise TypeError(f"@audited cannot wrap the generator function {function.__name__}")
        signature = inspect.signature(function)
        needs_bind = callable(resource_id) or callable(changes)
        id_reader = (
            _reader(signature, resource_id, "resource_id")
            if isinstance(resource_id, str)
            else None
        )
        changes_reader = (
            _reader(signature, changes, "changes") if isinstance(changes, str) else None
        )

        def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            return bound.arguments

        def emit(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            result: Any,
            error: BaseException | None,
        ) -> None:
            bound = arguments(args, kwargs) if needs_bind else None
            if id_reader is not None:
                rid = id_reader(args, kwargs)
            elif resource_id is not None and bound is not None:
                rid = cast(ArgumentGetter, resource_id)(bound)
            else:
                rid = ""
            if changes_reader is not None:
                change = changes_reader(args, kwargs)
            elif changes is not None and bound is not None and error is None:
                change = cast(ChangesGetter, changes)(bound, result)
            else:
                change = None
            if error is None:
                outcome, reason = "success", ""
            else:
                kinds = denied if denied is not None else PROVIDER.settings.denied_exceptions
                outcome = "denied" if isinstance(error, kinds) else "failure"
                reason = type(error).__name__
            record(
                the_action,
                resource_type,
                "" if rid is None else rid,
                outcome=outcome,
                reason=reason,
                changes=cast(Any, change),
                metadata=metadata,
                durable=durable and error is None,
                timeout=timeout,
            )

        if inspect.iscoroutinefunction(function):
            async_function = cast(Callable[..., Any], function)

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                _require_configured(function)
                try:
                    result = await async_function(*args, **kwargs)
                except BaseException as error:
                    emit(args, kwargs, None, error)
                    raise
                emit(args, kwargs, result, None)
                return result

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            _require_configured(function)
            try:
                result = function(*args, **kwargs)
            except BaseException as error:
                emit(args, kwargs, None, error)
                raise
            emit(args, kwargs, result, None)
            return result

        return wrapper

    return decorate
