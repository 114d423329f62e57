"""Users of the admin UI and API: roles, tenant grants, passwords (argon2id),
API tokens, browser sessions and login throttling.

Everything but the throttle lives in the fleet state (``fleet_state(data)``:
``DIR/keys`` for a local lake, ``URL/_auditlake`` for a ``--lake``), so that
every collector of a lake knows the same users, accepts the same API tokens
and sessions, and a restart logs nobody out:

    users.json                 users, password hashes, API token hashes (0600 on disk)
    sessions/<sha256>.json     one record per browser session
    session-secret.json        the key session cookies are tagged with

Roles: ``admin`` reads every tenant and manages users; ``auditor`` reads and
exports only the tenants granted; ``monitor`` reads only the signed tree
heads and consistency proofs (what ``auditlake monitor --url`` polls), no
event of any tenant: the least an external monitor needs, so it never holds
an admin's token.  The API and the pages deny a monitor every endpoint not
marked for it, in one place (``routes/principal.py``).  ``users.json`` is a
:class:`~auditlake.collector.storage.fleet_doc.FleetDocument`: changed only by
conditional read-modify-write, read through a cache (a local file at each
change, an object within ~2-5 s).  API tokens expire (``--expires-days``,
default 90) and are limited per user.

Sessions are server-side records, as before, now kept in the fleet state
instead of one process's memory:

- the cookie is ``<random id>.<tag>``, the tag an HMAC of the id under
  ``session-secret.json`` (created once by the first collector, with
  put_if_absent).  The tag is a filter, not the trust: a made-up cookie is
  refused without a request to the store, and only a cookie whose record
  exists is a session.  The record is named by the cookie's SHA-256 (a
  listing of records gives no usable cookie) and holds the user, the
  user's credential *generation* at login, the CSRF token, and the
  wall-clock times it began and was last used;
- a collector caches a record for 2 s between reads, so the UI's latency
  stays what it was: at most one GET per session and collector every 2 s,
  and ``last_seen`` written back at most once a minute (on the version
  read, so a touch never brings back a record a logout deleted);
- idle (``session_idle_minutes``) and absolute (``session_max_hours``)
  expiry are checked against the record's times; an expired session's
  record is deleted, and records of browsers that never came back are
  swept once an hour;
- logout deletes the record: the session ends at once where it was made,
  within 2 s at the other collectors;
- `auditlake users logout NAME`, a password change (``--replace``) or a
  removal give the user a new *generation*: every session made before,
  anywhere, ends at its next request (``UserStore.session_user``), so an
  old cookie never outlives the credentials it was made with, nor passes to
  a new user of the same name;
- CSRF is as before: each form carries the session's token, now in the record.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from auditlake.collector.errors import AuthError, ConfigError, StorageError
from auditlake.collector.storage.conditional import ConditionalWrites, PreconditionFailed
from auditlake.collector.storage.fleet_doc import FleetDocument, FreshnessPolicy
from auditlake.collector.storage.store import LocalStore, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The document of users inside the fleet state.
USERS = "users.json"
ROLES = ("admin", "auditor", "monitor")
#: The role that may call only the endpoints marked for it (``routes/principal.py``).
MONITOR = "monitor"
#: API tokens one user may hold at once.
MAX_TOKENS_PER_USER = 20
#: Default lifetime of an API token.
DEFAULT_TOKEN_DAYS = 90
#: Password checks (argon2id, 64 MiB each) running at once, whoever asks.
MAX_CONCURRENT_CHECKS = 2
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_TOKEN_PREFIX = "alu_"
MIN_PASSWORD = 10

# argon2id with the library's defaults (RFC 9106 "second recommended"
# profile: 64 MiB, 3 passes): memory-hard, ~50-100 ms per login here.
_HASHER = PasswordHasher()
_dummy_hash: str | None = None


def _dummy() -> str:
    """A hash verified against when the user does not exist, so the answer
    takes as long either way and does not reveal which names exist (made on
    first use: hashing costs ~1 s of CPU we do not want at every CLI start)."""
    global _dummy_hash  # noqa: PLW0603
    if _dummy_hash is None:
        _dummy_hash = _HASHER.hash("auditlake-no-such-user")
    return _dummy_hash


@dataclass(frozen=True)
class User:
    """An admin UI user.  ``tenants`` matters for auditors only."""

    name: str
    role: str
    tenants: frozenset[str]
    created_at: str
    #: Changes whenever the credentials do; sessions made before are void.
    generation: str = ""

    @property
    def scope(self) -> frozenset[str] | None:
        """Tenants this user may read; None means every tenant (a monitor's is
        empty: no tenant, should a read ever reach the lake for one)."""
        return None if self.role == "admin" else self.tenants

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_monitor(self) -> bool:
        """Whether this user may call only the endpoints marked for monitors."""
        return self.role == MONITOR

    @property
    def grants(self) -> str:
        """The tenants granted, as `users list` shows them: ``*`` every one, ``-`` none."""
        return "*" if self.is_admin else ",".join(sorted(self.tenants)) or "-"


class UserStore:
    """The users in the fleet state's ``users.json`` (``fleet`` is
    ``fleet_state(data)``; a path means a local keys folder).  Read through
    a :class:`FleetDocument`: on local disk a change applies at the next
    request, in an object store within seconds, at every collector."""

    def __init__(self, fleet: Store | str | os.PathLike[str], *, policy: FreshnessPolicy | None = None) -> None:
        self.store = fleet if isinstance(fleet, Store) else LocalStore(fleet, "keys")
        self._doc = FleetDocument(self.store, USERS, _parse_users, policy=policy)
        # Each check holds 64 MiB for ~0.1 s: a burst of logins must queue,
        # not multiply that.
        self._checks = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)

    def _raw(self, name: str) -> dict[str, Any] | None:
        """The stored entry of ``name`` (never to be changed in place)."""
        return self._doc.read().get(name)

    def _edit(self, fn: Callable[[dict[str, dict[str, Any]]], T]) -> T:
        """Apply ``fn`` to the users by name and write them back (FleetDocument.update)."""

        def change(raw: dict[str, Any]) -> T:
            by_name = {str(u["name"]): u for u in raw.get("users", [])}
            result = fn(by_name)
            if by_name or "users" in raw:
                raw["users"] = sorted(by_name.values(), key=lambda u: str(u["name"]))
            return result

        return self._doc.update(change)

    @staticmethod
    def _user(raw: dict[str, Any]) -> User:
        tenants = raw.get("tenants", [])
        return User(str(raw["name"]), str(raw["role"]),
                    frozenset(str(t) for t in tenants) if isinstance(tenants, list) else frozenset(),
                    str(raw.get("created_at", "")), str(raw.get("generation", "")))

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        raw = self._raw(name)
        return self._user(raw) if raw else None

    def users(self) -> list[User]:
        """Every user, by name."""
        return [self._user(r) for _, r in sorted(self._doc.read().items())]

    def add(self, name: str, role: str, tenants: tuple[str, ...] | list[str], password: str,
            *, replace: bool = False) -> User:
        """Create (or with ``replace``, overwrite) a user."""
        if not _NAME_RE.match(name):
            raise ConfigError("a user name is 1-64 letters, digits or . _ @ + - (starting with a letter or digit)")
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}")
        clean = sorted({t.strip() for t in tenants if t.strip()})
        if role == "auditor" and not clean:
            raise ConfigError("an auditor needs at least one tenant (--tenant T)")
        if role == "admin" and clean:
            raise ConfigError("an admin reads every tenant; --tenant is for auditors")
        if role == MONITOR and clean:
            raise ConfigError("a monitor reads no tenant's events, only signed tree heads and consistency "
                              "proofs; --tenant is for auditors")
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"the password must be at least {MIN_PASSWORD} characters")
        entry: dict[str, Any] = {
            "name": name,
            "role": role,
            "tenants": clean,
            "password": _HASHER.hash(password),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "generation": secrets.token_hex(8),
            "tokens": [],
        }

        def put(by_name: dict[str, dict[str, Any]]) -> None:
            if name in by_name and not replace:
                raise ConfigError(f"user {name!r} exists (remove it first, or use --replace)")
            by_name[name] = dict(entry)

        self._edit(put)
        return self._user(entry)

    def remove(self, name: str) -> bool:
        """Delete a user and their API tokens; True if it existed."""
        return self._edit(lambda by_name: by_name.pop(name, None) is not None)

    def logout(self, name: str) -> bool:
        """End every session of ``name`` (a new credential generation; every
        collector sees it at the user's next request, within seconds on an
        object store); True if the user exists."""
        generation = secrets.token_hex(8)

        def bump(by_name: dict[str, dict[str, Any]]) -> bool:
            raw = by_name.get(name)
            if raw is None:
                return False
            raw["generation"] = generation
            return True

        return self._edit(bump)

    def session_user(self, session: Session) -> User | None:
        """The user of a live session, or None when the user was removed,
        replaced or logged out since the session began."""
        user = self.get(session.user)
        if user is None or not hmac.compare_digest(user.generation, session.generation):
            return None
        return user

    def check_password(self, name: str, password: str, *, wait_s: float = 10.0) -> User | None:
        """The user when ``password`` is theirs, else None (constant-ish time).
        At most MAX_CONCURRENT_CHECKS run at once; LoginBusy after ``wait_s``."""
        raw = self._raw(name)
        if raw is None:
            # Perhaps added at another collector a moment ago (one re-read a
            # second at most; the login throttle bounds the guesses).
            raw = self._doc.read(max_age_s=1.0).get(name)
        stored = str(raw["password"]) if raw else _dummy()
        if not self._checks.acquire(timeout=wait_s):
            raise LoginBusy("too many logins in progress; try again in a few seconds")
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        finally:
            self._checks.release()
        return self._user(raw) if raw else None

    def create_token(self, name: str, description: str = "", *,
                     expires_days: float = DEFAULT_TOKEN_DAYS) -> str:
        """A new API token for ``name`` (shown once; only its SHA-256 is kept),
        valid for ``expires_days``."""
        if not 0 < expires_days <= 3650:
            raise ConfigError("--expires-days must be between 0 and 3650")
        token_id = secrets.token_hex(6)
        token = f"{_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        record = {"id": token_id, "sha256": hashlib.sha256(token.encode()).hexdigest(),
                  "created_at": _iso(now), "expires_at": _iso(now + expires_days * 86400),
                  "description": description}

        def add(by_name: dict[str, dict[str, Any]]) -> None:
            raw = by_name.get(name)
            if raw is None:
                raise ConfigError(f"no user {name!r}")
            tokens = [t for t in raw.get("tokens", []) if not _expired(t, now)]
            if len(tokens) >= MAX_TOKENS_PER_USER:
                raise ConfigError(f"user {name!r} holds {len(tokens)} API tokens, the limit: "
                                  "revoke one first (auditlake users token revoke NAME ID)")
            raw["tokens"] = [*tokens, record]

        self._edit(add)
        return token

    def tokens(self, name: str) -> list[TokenInfo]:
        """The API tokens of ``name`` (never their secrets), oldest first."""
        raw = self._raw(name)
        if raw is None:
            raise ConfigError(f"no user {name!r}")
        return [TokenInfo(str(t.get("id")), str(t.get("created_at", "")), str(t.get("expires_at", "")),
                          str(t.get("description", "")))
                for t in raw.get("tokens", [])]

    def revoke_token(self, name: str, token_id: str) -> bool:
        """Remove one API token of ``name``; True if it existed."""

        def drop(by_name: dict[str, dict[str, Any]]) -> bool:
            raw = by_name.get(name)
            if raw is None:
                return False
            tokens = list(raw.get("tokens", []))
            kept = [t for t in tokens if t.get("id") != token_id]
            if len(kept) == len(tokens):
                return False
            raw["tokens"] = kept
            return True

        return self._edit(drop)

    def check_token(self, token: str) -> User:
        """The user owning API token ``token``; AuthError otherwise."""
        if not token.startswith(_TOKEN_PREFIX) or token.count("_") < 2:
            raise AuthError("malformed API token (expected alu_<id>_<secret>)")
        token_id = token[len(_TOKEN_PREFIX):].split("_", 1)[0]
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = self._find_token(self._doc.read(), token_id, digest)
        if found is None:
            # Perhaps made at another collector a moment ago (one re-read a second at most).
            found = self._find_token(self._doc.read(max_age_s=1.0), token_id, digest)
        if found is None:
            raise AuthError("unknown API token")
        raw, t = found
        if _expired(t, time.time()):
            raise AuthError(f"API token {token_id} expired on {t.get('expires_at')}")
        return self._user(raw)

    @staticmethod
    def _find_token(users: dict[str, dict[str, Any]], token_id: str,
                    digest: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        for raw in users.values():
            for t in raw.get("tokens", []):
                if t.get("id") == token_id and hmac.compare_digest(str(t.get("sha256")), digest):
                    return raw, t
        return None


def _parse_users(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(u["name"]): u for u in raw.get("users", [])}


@dataclass(frozen=True)
class TokenInfo:
    """What `auditlake users token list` shows of one API token."""

    token_id: str
    created_at: str
    expires_at: str
    description: str


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _expired(token: dict[str, object], now: float) -> bool:
    expires = str(token.get("expires_at", ""))
    # Tokens made before expiry existed carry none: they stay valid until
    # revoked, and `users token list` shows them as "never".
    return bool(expires) and expires <= _iso(now)


class LoginBusy(AuthError):
    """Every password-check slot stayed busy: the client should retry shortly."""


# -- sessions --------------------------------------------------------------------


#: Folder of the session records inside the fleet state.
SESSIONS = "sessions"
#: The key every collector of the lake tags session cookies with.
SESSION_SECRET = "session-secret.json"


@dataclass
class Session:
    """A logged-in browser: whose it is, its CSRF token, when it began and
    was last used (wall-clock seconds: collectors compare them)."""

    user: str
    csrf: str
    created: float
    last_seen: float
    #: The user's credential generation at login (UserStore.session_user).
    generation: str = ""

    def to_json(self) -> dict[str, Any]:
        """The session as its record in the fleet state stores it."""
        return {"user": self.user, "csrf": self.csrf, "created": self.created, "last_seen": self.last_seen,
                "generation": self.generation}


@dataclass
class _Held:
    """A session as this process holds it: the record's version, when it
    was read (monotonic) and the ``last_seen`` the record holds."""

    session: Session
    version: str
    fetched: float
    stored_seen: float


class SessionStore:
    """Browser sessions shared by every collector of a lake (see the module
    docstring): one record per session in the fleet state, cached here for
    ``cache_s`` (2 s) between reads, its ``last_seen`` written back at most
    every ``touch_s``.  Cookies carry an HMAC tag under a key of the fleet
    state, so a made-up cookie costs no request to the store."""

    def __init__(self, fleet: Store | str | os.PathLike[str], *, idle_s: float = 30 * 60,
                 absolute_s: float = 12 * 3600, cache_s: float = 2.0, sweep_s: float = 3600.0) -> None:
        self.store = fleet if isinstance(fleet, Store) else LocalStore(fleet, "keys")
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.cache_s = cache_s
        #: A busy session's record is rewritten this often at most; another
        #: collector may see it idle this much longer than it is.
        self.touch_s = min(60.0, idle_s / 4)
        self.sweep_s = sweep_s
        self._lock = threading.Lock()
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._secret: bytes | None = None
        self._next_sweep = time.monotonic() + min(60.0, sweep_s)

    # -- the cookie ------------------------------------------------------------------

    def _conditional(self) -> ConditionalWrites:
        cond = self.store.conditional
        if cond is None:
            raise StorageError(f"{self.store.uri}: this store has no conditional writes, which sessions need")
        return cond

    def _key_bytes(self) -> bytes:
        """The fleet's cookie key, made once by whichever collector needs it first."""
        if self._secret is None:
            cond = self._conditional()
            for _ in range(5):
                got = cond.read_versioned(SESSION_SECRET)
                if got is not None:
                    self._secret = bytes.fromhex(json.loads(got.data)["hmac_sha256_key"])
                    break
                mine = secrets.token_hex(32)
                try:
                    cond.put_if_absent(SESSION_SECRET, json.dumps({"hmac_sha256_key": mine}).encode())
                except PreconditionFailed:
                    continue  # another collector made it first: read theirs
                _make_private(self.store, SESSION_SECRET)
                self._secret = bytes.fromhex(mine)
                break
            else:
                raise StorageError(f"{self.store.uri}: cannot read or create {SESSION_SECRET}")
        return self._secret

    def _tag(self, sid: str) -> str:
        mac = hmac.new(self._key_bytes(), sid.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def _record_key(self, cookie: str | None) -> str | None:
        """The record of a well-formed, correctly tagged cookie (no request
        to the store for any other), named by its SHA-256: a listing of the
        records does not give a usable cookie."""
        if not cookie or len(cookie) > 200:
            return None
        sid, _, tag = cookie.partition(".")
        if not sid or not hmac.compare_digest(tag.encode("utf-8", "replace"), self._tag(sid).encode()):
            return None
        return f"{SESSIONS}/{hashlib.sha256(cookie.encode()).hexdigest()}.json"

    # -- sessions --------------------------------------------------------------------

    def create(self, user: str, generation: str = "") -> tuple[str, Session]:
        """A new session for ``user`` at credential ``generation``; returns
        (cookie value, session)."""
        sid = secrets.token_urlsafe(32)
        cookie = f"{sid}.{self._tag(sid)}"
        now = time.time()
        session = Session(user, secrets.token_urlsafe(32), now, now, generation=generation)
        key = self._record_key(cookie)
        assert key is not None
        version = self._conditional().put_if_absent(key, _record(session))
        _make_private(self.store, key)
        self._hold(key, _Held(session, version, time.monotonic(), now))
        self._maybe_sweep()
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        """The live session for ``cookie`` (touching it), or None."""
        try:
            key = self._record_key(cookie)
        except (OSError, ValueError) as exc:  # the cookie key cannot be read: nobody is signed in
            log.warning("cannot check a session cookie: %s", exc)
            return None
        if key is None:
            return None
        with self._lock:
            held = self._held.get(key)
        if held is None or time.monotonic() - held.fetched >= self.cache_s:
            held = self._fetch(key, held)
            if held is None:
                return None
        session, now = held.session, time.time()
        if now - session.last_seen > self.idle_s or now - session.created > self.absolute_s:
            self._forget(key)
            return None
        session.last_seen = now
        if now - held.stored_seen >= self.touch_s and not self._touch(key, held):
            return None
        return session

    def end(self, cookie: str | None) -> None:
        """Log out, at every collector (the others within ``cache_s``)."""
        try:
            key = self._record_key(cookie)
        except (OSError, ValueError):
            return
        if key is not None:
            self._forget(key)

    def _fetch(self, key: str, held: _Held | None) -> _Held | None:
        """The session's record read again (None: it ended)."""
        started = time.monotonic()
        try:
            got = self._conditional().read_versioned(key)
            record = json.loads(got.data) if got is not None else None
        except (OSError, ValueError) as exc:
            # The store is unreachable: a session seen here before goes on
            # (and is checked again after the next cache_s); others wait.
            log.warning("cannot read a session record from %s: %s", self.store.uri, exc)
            if held is not None:
                held.fetched = started
            return held
        if got is None or not isinstance(record, dict):
            with self._lock:
                self._held.pop(key, None)
            return None
        stored_seen = float(record.get("last_seen", 0.0))
        session = Session(str(record.get("user", "")), str(record.get("csrf", "")), float(record.get("created", 0.0)),
                          max(stored_seen, held.session.last_seen if held else 0.0),
                          generation=str(record.get("generation", "")))
        fresh = _Held(session, got.version, started, stored_seen)
        self._hold(key, fresh)
        return fresh

    def _touch(self, key: str, held: _Held) -> bool:
        """Write the session's ``last_seen`` back, on the version read, so a
        logout elsewhere (the record deleted) is never undone; False when
        the session turns out to have ended."""
        try:
            held.version = self._conditional().put_if_version(key, _record(held.session), held.version)
        except PreconditionFailed:
            return self._fetch(key, held) is not None  # touched elsewhere, or ended
        except OSError as exc:
            # Unreachable, or (S3) If-Match on a deleted record: the next read tells.
            log.warning("cannot write a session record to %s: %s", self.store.uri, exc)
        held.stored_seen = held.session.last_seen
        return True

    def _hold(self, key: str, held: _Held) -> None:
        with self._lock:
            self._held[key] = held
            self._held.move_to_end(key)
            while len(self._held) > 10_000:  # bound memory; a dropped entry is read again
                self._held.popitem(last=False)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)
        try:
            self.store.delete(key)
        except OSError as exc:
            log.warning("cannot delete a session record from %s: %s", self.store.uri, exc)

    # -- records nobody comes back to ------------------------------------------------

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + self.sweep_s
        threading.Thread(target=self.sweep, name="auditlake-session-sweep", daemon=True).start()

    def sweep(self) -> int:
        """Delete the records of sessions that have expired (a browser that
        never came back leaves one); the number deleted."""
        deleted = 0
        now = time.time()
        try:
            for obj in self.store.list(SESSIONS):
                try:
                    record = json.loads(self.store.read(obj.key))
                except FileNotFoundError:
                    continue
                except ValueError:
                    record = {}
                # Another collector's last_seen may lag by touch_s; clocks by a little.
                idle = now - float(record.get("last_seen", 0.0)) > self.idle_s + self.touch_s + 60
                if idle or now - float(record.get("created", 0.0)) > self.absolute_s + 60:
                    self.store.delete(obj.key)
                    deleted += 1
        except OSError as exc:
            log.warning("cannot sweep expired sessions in %s: %s", self.store.uri, exc)
        return deleted


def _record(session: Session) -> bytes:
    return json.dumps(session.to_json()).encode()


def _make_private(store: Store, key: str) -> None:
    # Session records and the cookie key: 0600 in the 0700 keys folder.
    if isinstance(store, LocalStore):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(store.local_path(key), 0o600)


@dataclass(frozen=True)
class ThrottlePolicy:
    """Login throttling: after ``free_failures`` failures inside ``window_s``
    (per user name and per client address, counted separately) each further
    attempt must wait ``base_delay_s * 2**(extra failures)``, at most
    ``max_delay_s``."""

    free_failures: int = 5
    window_s: float = 15 * 60
    base_delay_s: float = 1.0
    max_delay_s: float = 15 * 60

    def __post_init__(self) -> None:
        for name in ("free_failures", "window_s", "base_delay_s", "max_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ThrottlePolicy.{name} must not be negative")


class LoginThrottle:
    """Failed-login bookkeeping for the throttle policy."""

    def __init__(self, policy: ThrottlePolicy | None = None) -> None:
        self.policy = policy or ThrottlePolicy()
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def reserve(self, *keys: str) -> tuple[float, float]:
        """Atomically: ``(wait, stamp)``.  When ``wait`` is 0 the attempt is
        allowed and already counted as a failure of every key (at ``stamp``),
        so simultaneous guesses cannot all pass the check before the first
        is recorded; ``succeeded(..., stamp=stamp)`` takes it back."""
        now = time.monotonic()
        with self._lock:
            wait = self._wait_locked(now, keys)
            if wait > 0:
                return wait, now
            for key in keys:
                self._failures.setdefault(key, []).append(now)
            self._bound()
        return 0.0, now

    def wait_s(self, *keys: str) -> float:
        """Seconds before another attempt for any of ``keys`` is allowed (0: now)."""
        now = time.monotonic()
        with self._lock:
            return self._wait_locked(now, keys)

    def _wait_locked(self, now: float, keys: tuple[str, ...]) -> float:
        p = self.policy
        worst = 0.0
        for key in keys:
            recent = [t for t in self._failures.get(key, []) if now - t < p.window_s]
            self._failures[key] = recent
            extra = len(recent) - p.free_failures
            if extra >= 0 and recent:
                delay = min(p.base_delay_s * (2 ** min(extra, 30)), p.max_delay_s)
                worst = max(worst, recent[-1] + delay - now)
        return max(0.0, worst)

    def failed(self, *keys: str) -> None:
        """Record a failed attempt."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(now)
            self._bound()

    def _bound(self) -> None:
        if len(self._failures) > 100_000:  # bound memory under a spray of names
            for k in list(self._failures)[:50_000]:
                del self._failures[k]

    def succeeded(self, key: str, *, stamp: float | None = None, reserved: tuple[str, ...] = ()) -> None:
        """Forget the failures of ``key`` (the user name, not the address), and
        take back the attempt ``reserve`` counted at ``stamp`` for ``reserved``."""
        with self._lock:
            self._failures.pop(key, None)
            if stamp is not None:
                for other in reserved:
                    times = self._failures.get(other)
                    if times and stamp in times:
                        times.remove(stamp)


# -- CLI: auditlake users ... -------------------------------------------------------


def _read_password(args: argparse.Namespace) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {args.name}: ")
        again = getpass.getpass("again: ")
        if first != again:
            raise ConfigError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _store(args: argparse.Namespace) -> UserStore:
    from auditlake.collector.storage.datadir import DataDir  # noqa: PLC0415
    from auditlake.collector.storage.tiers import fleet_state  # noqa: PLC0415

    data = DataDir.from_args(args)
    data.create()
    return UserStore(fleet_state(data))


def cmd_users_add(args: argparse.Namespace) -> int:
    user = _store(args).add(args.name, args.role, args.tenant or [], _read_password(args),
                            replace=args.replace)
    print(f"user {user.name} ({user.role}, tenants {user.grants}) saved")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    for u in _store(args).users():
        print(f"{u.name}\t{u.role}\t{u.grants}\t{u.created_at}")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    if not _store(args).remove(args.name):
        print(f"auditlake: no user {args.name}", file=sys.stderr)
        return 1
    return 0


def cmd_users_logout(args: argparse.Namespace) -> int:
    if not _store(args).logout(args.name):
        print(f"auditlake: no user {args.name}", file=sys.stderr)
        return 1
    print(f"every session of {args.name} ends at its next request")
    return 0


def cmd_users_token(args: argparse.Namespace) -> int:
    """``users token NAME`` / ``users token create NAME`` / ``list NAME`` / ``revoke NAME ID``."""
    words = list(args.words)
    action = words.pop(0) if words and words[0] in ("create", "list", "revoke") and len(words) > 1 else "create"
    usage = "usage: auditlake users token [create] NAME | list NAME | revoke NAME TOKEN_ID"
    store = _store(args)
    if action == "create" and len(words) == 1:
        print(store.create_token(words[0], args.description or "", expires_days=args.expires_days))
        return 0
    if action == "list" and len(words) == 1:
        for t in store.tokens(words[0]):
            print(f"{t.token_id}\t{t.created_at}\t{t.expires_at or 'never'}\t{t.description}")
        return 0
    if action == "revoke" and len(words) == 2:
        if not store.revoke_token(words[0], words[1]):
            print(f"auditlake: user {words[0]} has no API token {words[1]}", file=sys.stderr)
            return 1
        print(f"API token {words[1]} of {words[0]} revoked")
        return 0
    print(usage, file=sys.stderr)
    return 2


def register_users(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``auditlake users add|list|remove|token``."""
    from auditlake.collector.config import add_data_arg  # noqa: PLC0415

    users = sub.add_parser("users", help="admin UI users (roles, tenant grants, API tokens)")
    us = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    p = us.add_parser("add", help="add a user; the password is read from a prompt, or stdin when piped")
    add_data_arg(p)
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, required=True,
                   help="admin: every tenant, and users; auditor: the --tenant(s) granted; "
                   "monitor: only signed tree heads and consistency proofs (auditlake monitor --url)")
    p.add_argument("--tenant", action="append", help="tenant an auditor may read (repeatable)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing user")
    p.set_defaults(func=cmd_users_add)
    p = us.add_parser("list", help="list users")
    add_data_arg(p)
    p.set_defaults(func=cmd_users_list)
    p = us.add_parser("remove", help="remove a user and their API tokens")
    add_data_arg(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_users_remove)
    p = us.add_parser("logout", help="end every session of a user at once")
    add_data_arg(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_users_logout)
    p = us.add_parser("token", help="API tokens: [create] NAME (printed once) | list NAME | revoke NAME ID",
                      usage="%(prog)s [create] NAME | list NAME | revoke NAME TOKEN_ID")
    add_data_arg(p)
    p.add_argument("words", nargs="+", metavar="ARG")
    p.add_argument("--description", help="what the token is for")
    p.add_argument("--expires-days", type=float, default=DEFAULT_TOKEN_DAYS,
                   help=f"lifetime of a new token (default {DEFAULT_TOKEN_DAYS})")
    p.set_defaults(func=cmd_users_token)
