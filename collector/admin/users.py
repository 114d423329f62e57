"""Users of the admin UI and API: roles, tenant grants, passwords (argon2id),
API tokens, browser sessions and login throttling.

    DIR/keys/users.json     users, password hashes, API token hashes (0600)

Roles: ``admin`` reads every tenant and manages users; ``auditor`` reads and
exports only the tenants granted.  Sessions live in the server's memory (a
restart logs everyone out, which is the safe direction) and are bound to the
user's credential *generation*: a new random value whenever the user is
added, replaced (a password change) or logged out with `auditlake users
logout NAME`, so an old cookie never outlives the credentials it was made
with, nor passes to a new user of the same name.  API tokens expire
(``--expires-days``, default 90) and are limited per user.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from auditlake.collector.errors import AuthError, ConfigError

ROLES = ("admin", "auditor")
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
        """Tenants this user may read; None means every tenant."""
        return None if self.role == "admin" else self.tenants

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class UserStore:
    """The users in ``DIR/keys/users.json``; reloads when the file changes, so
    `auditlake users ...` takes effect in a running collector at once."""

    def __init__(self, keys_dir: Path) -> None:
        self.path = keys_dir / "users.json"
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._raw: dict[str, dict[str, object]] = {}
        # Each check holds 64 MiB for ~0.1 s: a burst of logins must queue,
        # not multiply that.
        self._checks = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._raw, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        doc = json.loads(self.path.read_text())
        self._raw = {u["name"]: u for u in doc.get("users", [])}
        self._mtime = mtime

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"users": sorted(self._raw.values(), key=lambda u: str(u["name"]))}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._mtime = None

    @staticmethod
    def _user(raw: dict[str, object]) -> User:
        tenants = raw.get("tenants", [])
        return User(str(raw["name"]), str(raw["role"]),
                    frozenset(str(t) for t in tenants) if isinstance(tenants, list) else frozenset(),
                    str(raw.get("created_at", "")), str(raw.get("generation", "")))

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        with self._lock:
            self._load()
            raw = self._raw.get(name)
            return self._user(raw) if raw else None

    def users(self) -> list[User]:
        """Every user, by name."""
        with self._lock:
            self._load()
            return [self._user(r) for _, r in sorted(self._raw.items())]

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
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"the password must be at least {MIN_PASSWORD} characters")
        entry: dict[str, object] = {
            "name": name,
            "role": role,
            "tenants": clean,
            "password": _HASHER.hash(password),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "generation": secrets.token_hex(8),
            "tokens": [],
        }
        with self._lock:
            self._load()
            if name in self._raw and not replace:
                raise ConfigError(f"user {name!r} exists (remove it first, or use --replace)")
            self._raw[name] = entry
            self._save()
        return self._user(entry)

    def remove(self, name: str) -> bool:
        """Delete a user and their API tokens; True if it existed."""
        with self._lock:
            self._load()
            found = self._raw.pop(name, None) is not None
            if found:
                self._save()
            return found

    def logout(self, name: str) -> bool:
        """End every session of ``name`` (a new credential generation; a
        running collector sees it at the user's next request); True if the
        user exists."""
        with self._lock:
            self._load()
            raw = self._raw.get(name)
            if raw is None:
                return False
            raw["generation"] = secrets.token_hex(8)
            self._save()
            return True

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
        with self._lock:
            self._load()
            raw = self._raw.get(name)
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
        with self._lock:
            self._load()
            raw = self._raw.get(name)
            if raw is None:
                raise ConfigError(f"no user {name!r}")
            tokens = [t for t in raw.get("tokens", []) if not _expired(t, now)]  # type: ignore[attr-defined]
            if len(tokens) >= MAX_TOKENS_PER_USER:
                raise ConfigError(f"user {name!r} holds {len(tokens)} API tokens, the limit: "
                                  "revoke one first (auditlake users token revoke NAME ID)")
            tokens.append({"id": token_id, "sha256": hashlib.sha256(token.encode()).hexdigest(),
                           "created_at": _iso(now), "expires_at": _iso(now + expires_days * 86400),
                           "description": description})
            raw["tokens"] = tokens
            self._save()
        return token

    def tokens(self, name: str) -> list[TokenInfo]:
        """The API tokens of ``name`` (never their secrets), oldest first."""
        with self._lock:
            self._load()
            raw = self._raw.get(name)
            if raw is None:
                raise ConfigError(f"no user {name!r}")
            return [TokenInfo(str(t.get("id")), str(t.get("created_at", "")), str(t.get("expires_at", "")),
                              str(t.get("description", "")))
                    for t in raw.get("tokens", [])]  # type: ignore[attr-defined]

    def revoke_token(self, name: str, token_id: str) -> bool:
        """Remove one API token of ``name``; True if it existed."""
        with self._lock:
            self._load()
            raw = self._raw.get(name)
            if raw is None:
                return False
            tokens = list(raw.get("tokens", []))  # type: ignore[call-overload]
            kept = [t for t in tokens if t.get("id") != token_id]
            if len(kept) == len(tokens):
                return False
            raw["tokens"] = kept
            self._save()
            return True

    def check_token(self, token: str) -> User:
        """The user owning API token ``token``; AuthError otherwise."""
        if not token.startswith(_TOKEN_PREFIX) or token.count("_") < 2:
            raise AuthError("malformed API token (expected alu_<id>_<secret>)")
        token_id = token[len(_TOKEN_PREFIX):].split("_", 1)[0]
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            self._load()
            for raw in self._raw.values():
                for t in raw.get("tokens", []):  # type: ignore[attr-defined]
                    if t.get("id") == token_id and hmac.compare_digest(str(t.get("sha256")), digest):
                        if _expired(t, time.time()):
                            raise AuthError(f"API token {token_id} expired on {t.get('expires_at')}")
                        return self._user(raw)
        raise AuthError("unknown API token")


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


@dataclass
class Session:
    """A logged-in browser: whose it is, its CSRF token, when it ends."""

    user: str
    csrf: str
    created: float
    last_seen: float
    tokens_shown: list[str] = field(default_factory=list)
    #: The user's credential generation at login (UserStore.session_user).
    generation: str = ""


class SessionStore:
    """Server-side sessions keyed by the SHA-256 of a random cookie value (a
    leaked memory dump or log of keys does not give a usable cookie)."""

    def __init__(self, *, idle_s: float = 30 * 60, absolute_s: float = 12 * 3600) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._lock = threading.Lock()
        self._by_key: dict[str, Session] = {}

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()

    def create(self, user: str, generation: str = "") -> tuple[str, Session]:
        """A new session for ``user`` at credential ``generation``; returns
        (cookie value, session)."""
        cookie = secrets.token_urlsafe(32)
        now = time.monotonic()
        s = Session(user, secrets.token_urlsafe(32), now, now, generation=generation)
        with self._lock:
            self._expire(now)
            self._by_key[self._key(cookie)] = s
        return cookie, s

    def get(self, cookie: str | None) -> Session | None:
        """The live session for ``cookie`` (touching it), or None."""
        if not cookie:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._by_key.get(self._key(cookie))
            if s is None:
                return None
            if now - s.last_seen > self.idle_s or now - s.created > self.absolute_s:
                del self._by_key[self._key(cookie)]
                return None
            s.last_seen = now
            return s

    def end(self, cookie: str | None) -> None:
        """Log out."""
        if cookie:
            with self._lock:
                self._by_key.pop(self._key(cookie), None)

    def end_user(self, user: str) -> None:
        """End every session of ``user`` (removed or changed)."""
        with self._lock:
            for k in [k for k, s in self._by_key.items() if s.user == user]:
                del self._by_key[k]

    def _expire(self, now: float) -> None:
        for k in [k for k, s in self._by_key.items()
                  if now - s.last_seen > self.idle_s or now - s.created > self.absolute_s]:
            del self._by_key[k]


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

    data = DataDir.from_args(args)
    data.create()
    return UserStore(data.keys)


def cmd_users_add(args: argparse.Namespace) -> int:
    user = _store(args).add(args.name, args.role, args.tenant or [], _read_password(args),
                            replace=args.replace)
    grants = ",".join(sorted(user.tenants)) or "*"
    print(f"user {user.name} ({user.role}, tenants {grants}) saved")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    for u in _store(args).users():
        print(f"{u.name}\t{u.role}\t{','.join(sorted(u.tenants)) or '*'}\t{u.created_at}")
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
    p.add_argument("--role", choices=ROLES, required=True)
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
