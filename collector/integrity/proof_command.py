"""The ``auditlake proof`` and ``auditlake monitor`` commands.

    auditlake proof EVENT_ID --data DIR --output FILE      an inclusion proof
    auditlake proof verify FILE --public-key KEY           check one, no lake needed
    auditlake proof consistency --from CP --to CP          later log extends earlier
    auditlake monitor --data DIR --state FILE --public-key KEY
    auditlake monitor --url URL --token TOKEN --state FILE --public-key KEY

A monitor keeps, per writer, the newest signed tree head it has seen; each
run it reads the writers' newest heads and checks a consistency proof from
the kept head to each new one.  A lake rolled back, or rewritten and
re-signed, no longer extends the head the monitor kept: the run fails,
names the writer, and keeps the old head.  The heads and proofs come from
the lake (``--data``) or from the admin API (``--url``, for a monitor with
no access to the lake); either way they are checked here, with the key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from auditlake.collector.errors import ConfigError, IntegrityError
from auditlake.collector.integrity.checkpoint import SignedCheckpoint
from auditlake.collector.integrity.merkle import ProofError, from_hex
from auditlake.collector.integrity.proofs import (
    CONSISTENCY_TYPE,
    INCLUSION_TYPE,
    ProofCheck,
    check_consistency,
    check_heads,
    check_inclusion,
    read_signed,
    signed_document,
)
from auditlake.collector.integrity.signing import KeyRing
from auditlake.collector.integrity.verify.checkpoints import load_key
from auditlake.collector.integrity.writer_tree import LakeTrees
from auditlake.collector.storage.datadir import DataDir

#: The first argument of ``auditlake proof`` that is a sub-command; anything
#: else is an event id (``auditlake proof EVENT_ID``).
SUBCOMMANDS = ("event", "verify", "consistency")

#: Where ``auditlake monitor --url`` finds its API token when --token is not given.
TOKEN_ENV = "AUDITLAKE_ADMIN_TOKEN"


def _keys(paths: list[str] | None) -> KeyRing:
    if not paths:
        raise ConfigError("--public-key FILE is required: a proof is only as good as the key it is "
                          "checked with (get it out of band: `auditlake keys public`)")
    ring, _ = load_key(DataDir(Path(".")), list(paths))
    assert ring is not None
    return ring


def _write(doc: dict[str, Any], output: str | None) -> None:
    text = json.dumps(doc, indent=1) + "\n"
    if output and output != "-":
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _print_check(check: ProofCheck, fmt: str) -> int:
    if fmt == "json":
        sys.stdout.write(json.dumps(check.to_json(), indent=1) + "\n")
    else:
        for name, ok, detail in check.steps:
            sys.stdout.write(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}\n")
        sys.stdout.write(check.summary + "\n")
    return 0 if check.ok else 1


def cmd_proof_event(args: argparse.Namespace) -> int:
    """Write the inclusion proof of one event."""
    trees = LakeTrees(DataDir.from_args(args), mirrors=args.checkpoint_mirror or ())
    _write(trees.inclusion(args.event_id, args.writer), args.output)
    return 0


def cmd_proof_verify(args: argparse.Namespace) -> int:
    """Check a proof file: 0 when it proves what it says, 1 when not."""
    try:
        doc = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read proof {args.file}: {exc}") from exc
    keys = _keys(args.public_key)
    kind = doc.get("type") if isinstance(doc, dict) else None
    check = check_consistency(doc, keys) if kind == CONSISTENCY_TYPE else check_inclusion(doc, keys)
    if kind not in (CONSISTENCY_TYPE, INCLUSION_TYPE):
        check = ProofCheck(False, (("document", False, f"type {kind!r} is not a proof"),),
                           f"FAILED: {args.file} is not an auditlake proof")
    return _print_check(check, args.format)


def _checkpoint_arg(trees: LakeTrees, value: str, writer: str | None) -> SignedCheckpoint:
    """A checkpoint named by a file (as stored) or by its seal number (with --writer)."""
    if value.isdigit():
        if writer is None:
            writers = sorted(trees.writers)
            if len(writers) != 1:
                raise ConfigError(f"seal {value}: name the writer with --writer (writers: {', '.join(writers)})")
            writer = writers[0]
        seals = trees.writers.get(writer, {})
        if int(value) not in seals:
            raise ConfigError(f"writer {writer} has no checkpoint {value}")
        return seals[int(value)]
    try:
        checkpoint, signature = read_signed(json.loads(Path(value).read_text()), value)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read checkpoint {value}: {exc}") from exc
    return SignedCheckpoint(checkpoint, signature, Path(value))


def cmd_proof_consistency(args: argparse.Namespace) -> int:
    """Write the consistency proof between two checkpoints of one writer."""
    trees = LakeTrees(DataDir.from_args(args), mirrors=args.checkpoint_mirror or ())
    first = _checkpoint_arg(trees, args.first, args.writer)
    second = (_checkpoint_arg(trees, args.second, args.writer or first.checkpoint.writer_id)
              if args.second else trees.head(first.checkpoint.writer_id))
    _write(trees.consistency(first, second), args.output)
    return 0


# -- the monitor -------------------------------------------------------------------------


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {"heads": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read monitor state {path}: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("heads"), dict):
        raise ConfigError(f"{path} is not a monitor state file")
    return state


class _LakeHeads:
    """Heads and consistency proofs read from the lake itself (``--data``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.trees = LakeTrees(DataDir.from_args(args), mirrors=args.checkpoint_mirror or ())
        self.writers = set(self.trees.writers)

    def head(self, writer: str) -> SignedCheckpoint:
        """The writer's newest signed tree head; IntegrityError when it has none."""
        return self.trees.head(writer)

    def proof(self, old: SignedCheckpoint, new: SignedCheckpoint) -> list[bytes]:
        """The consistency proof from the kept head ``old`` to ``new``."""
        return [from_hex(h) for h in self.trees.consistency(old, new)["proof"]]


#: The most an admin API answer may weigh before the monitor gives up on it.
_MAX_ANSWER = 64 * 1024 * 1024


class _ApiHeads:
    """Heads and consistency proofs fetched from an admin API (``--url``),
    with no access to the lake: ``GET /api/v1/checkpoints/heads`` once, then
    ``GET /api/v1/proofs/consistency`` for each writer whose head moved.
    Nothing fetched is trusted: every head and proof is checked here with
    the key given out of band."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0) -> None:
        self.base = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        doc = self._get("/api/v1/checkpoints/heads")
        if not isinstance(doc, dict) or not isinstance(doc.get("heads"), list):
            raise ConfigError(f"{self.base}: /api/v1/checkpoints/heads did not answer a list of heads")
        self._heads: dict[str, Any] = {}
        for item in doc["heads"]:
            writer = item.get("writer_id") if isinstance(item, dict) else None
            if not isinstance(writer, str):
                raise ConfigError(f"{self.base}: a head without a writer id")
            self._heads[writer] = item
        self._without = {str(w.get("writer_id")): str(w.get("reason", "")) for w in doc.get("without_tree_head", [])
                         if isinstance(w, dict)}
        self.writers = set(self._heads) | set(self._without)

    def head(self, writer: str) -> SignedCheckpoint:
        """The writer's newest signed tree head as the API gave it; IntegrityError when it has none."""
        if writer not in self._heads:
            raise IntegrityError(self._without.get(writer) or f"the admin API at {self.base} lists no writer {writer}")
        try:
            checkpoint, signature = read_signed(self._heads[writer], f"the API's head of writer {writer}")
        except ProofError as exc:
            raise IntegrityError(str(exc)) from None
        return SignedCheckpoint(checkpoint, signature, Path(f"{self.base}/api/v1/checkpoints/{writer}/head"))

    def proof(self, old: SignedCheckpoint, new: SignedCheckpoint) -> list[bytes]:
        """The consistency proof from the kept head ``old`` to ``new``, as the
        API makes it from its own checkpoint of ``old``'s seal (the check
        below is against the kept head, so a rewritten checkpoint fails it)."""
        a, b = old.checkpoint, new.checkpoint
        if a.tree_size == b.tree_size or a.tree_size == 0:
            return []  # nothing to fetch: the check compares the roots (or every log extends the empty one)
        query = urllib.parse.urlencode({"writer": a.writer_id, "from": a.seal, "to": b.seal})
        doc = self._get(f"/api/v1/proofs/consistency?{query}")
        path = doc.get("proof") if isinstance(doc, dict) else None
        if not isinstance(path, list) or not all(isinstance(h, str) for h in path):
            raise IntegrityError("the API's consistency proof has no list of hashes")
        return [from_hex(h) for h in path]

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.base + path, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310 - the user's URL
                body = answer.read(_MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            if exc.code in (401, 403):
                raise ConfigError(f"{self.base}: {message} (--token must be a monitor's (or an admin's) API "
                                  "token: `auditlake users add NAME --role monitor`, then "
                                  "`auditlake users token NAME`)") from None
            if exc.code in (400, 404, 409):
                raise IntegrityError(message) from None
            raise ConfigError(f"{self.base}{path}: HTTP {exc.code}: {message}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot reach the admin API at {self.base}: {exc}") from None
        if len(body) > _MAX_ANSWER:
            raise ConfigError(f"{self.base}{path}: the answer is larger than {_MAX_ANSWER} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ConfigError(f"{self.base}{path} did not answer JSON: {exc}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The ``error`` of an admin API error body, or the HTTP reason."""
    try:
        doc = json.loads(exc.read(65536))
        return str(doc["error"]) if isinstance(doc, dict) and "error" in doc else str(exc.reason)
    except (OSError, ValueError):
        return str(exc.reason)


def _head_source(args: argparse.Namespace) -> _LakeHeads | _ApiHeads:
    """Where the monitor reads heads: the admin API (``--url``) or the lake."""
    if args.url is None:
        return _LakeHeads(args)
    if args.data is not None or args.lake is not None:
        raise ConfigError("give --url (the admin API) or --data/--lake (the lake), not both")
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ConfigError(f"--url needs a monitor's (or an admin's) API token: --token TOKEN or ${TOKEN_ENV} "
                          "(`auditlake users add NAME --role monitor`, then `auditlake users token NAME`)")
    return _ApiHeads(args.url, token)


def cmd_monitor(args: argparse.Namespace) -> int:
    """Check each writer's newest signed tree head against the one kept from
    the previous run; keep the new heads that pass.  0 when every writer's
    log extends what was seen before, 1 otherwise."""
    keys = _keys(args.public_key)
    source = _head_source(args)
    state_path = Path(args.state)
    state = _load_state(state_path)
    heads: dict[str, Any] = dict(state["heads"])
    failures = 0
    lines: list[str] = []
    seen = set(heads)
    for writer in sorted(source.writers | seen):
        kept = heads.get(writer)
        try:
            new = source.head(writer)
        except IntegrityError as exc:
            if kept is None:
                lines.append(f"  skip {writer}: {exc}")
                continue
            failures += 1
            lines.append(f"  FAIL {writer}: its signed head of {kept['checkpoint'].get('tree_size')} events "
                         f"is gone from the lake ({exc})")
            continue
        cp = new.checkpoint
        if kept is None:
            check = check_heads(cp, new.signature, cp, new.signature, [], keys)
            verdict = "first seen" if check.ok else check.summary
        else:
            old, old_sig = read_signed(kept["checkpoint"], f"state {writer}")
            if old.tree_size is not None and cp.tree_size is not None and old.tree_size > cp.tree_size:
                check = ProofCheck(False, (), f"FAILED: the log shrank from {old.tree_size} events "
                                   f"(checkpoint {old.seal}) to {cp.tree_size} (checkpoint {cp.seal}): "
                                   "rolled back")
            else:
                try:
                    path = source.proof(SignedCheckpoint(old, old_sig, state_path), new)
                    check = check_heads(old, old_sig, cp, new.signature, path, keys)
                except (IntegrityError, ProofError, ValueError) as exc:
                    check = ProofCheck(False, (), f"FAILED: {exc}")
            verdict = check.summary
        if check.ok:
            heads[writer] = {"checkpoint": signed_document(cp, new.signature),
                             "seen": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            lines.append(f"  ok   {writer}: {cp.tree_size} events, checkpoint {cp.seal} ({verdict})")
        else:
            failures += 1
            lines.append(f"  FAIL {writer}: {verdict}")
    state_path.write_text(json.dumps({"heads": heads}, indent=1) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write("OK: every writer's log extends the heads seen before\n" if not failures else
                      f"FAILED: {failures} writer(s) do not extend the heads seen before "
                      f"(kept in {state_path})\n")
    return 0 if not failures else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``auditlake proof`` and ``auditlake monitor``."""
    from auditlake.collector.config import add_data_arg  # noqa: PLC0415

    proof = subparsers.add_parser(
        "proof", help="Merkle proofs (RFC 9162): one event is in the signed log; a later log extends an earlier",
        description="auditlake proof EVENT_ID --data DIR --output FILE writes an inclusion proof; "
        "`proof verify FILE --public-key KEY` checks one with no lake at hand; `proof consistency "
        "--from CP --to CP` proves the later checkpoint's log extends the earlier's.  "
        "docs/integrity.md section 8 specifies the files.")
    sub = proof.add_subparsers(dest="proof_command", required=True, metavar="{EVENT_ID,verify,consistency}")

    p = sub.add_parser("event", help="the inclusion proof of one event (the default: `proof EVENT_ID`)")
    add_data_arg(p)
    p.add_argument("event_id", metavar="EVENT_ID")
    p.add_argument("--writer", help="the writer whose copy to prove, when several collectors stored it")
    p.add_argument("--output", "-o", metavar="FILE", help="write the proof here (default: stdout)")
    p.add_argument("--checkpoint-mirror", metavar="DIR", action="append", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_proof_event)

    p = sub.add_parser("verify", help="check a proof file (inclusion or consistency); exit 0 when it holds")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--public-key", metavar="FILE", action="append",
                   help="the writers' public key(s), as `auditlake keys public` prints them (required)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_proof_verify)

    p = sub.add_parser("consistency", help="prove a later checkpoint's log extends an earlier one's")
    add_data_arg(p)
    p.add_argument("--from", dest="first", required=True, metavar="CHECKPOINT",
                   help="the earlier checkpoint: a checkpoint file (as stored or kept) or a seal number")
    p.add_argument("--to", dest="second", metavar="CHECKPOINT",
                   help="the later checkpoint (default: the writer's newest)")
    p.add_argument("--writer", help="the writer, when checkpoints are named by seal number")
    p.add_argument("--output", "-o", metavar="FILE", help="write the proof here (default: stdout)")
    p.add_argument("--checkpoint-mirror", metavar="DIR", action="append", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_proof_consistency)

    p = subparsers.add_parser(
        "monitor", help="check that every writer's signed log extends the heads seen on the previous run",
        description="Keeps each writer's newest signed tree head in --state FILE; each run checks a "
        "consistency proof from the kept head to the newest.  A rolled-back or rewritten log fails "
        "(exit 1) and the old head is kept.  Run it from cron with a key obtained out of band.  "
        "It reads the lake (--data/--lake), or, from another machine with no access to the lake, "
        "the admin API (--url with a monitor's (or an admin's) API token).")
    add_data_arg(p)
    p.add_argument("--url", metavar="URL",
                   help="the admin API's base URL (http://host:8080): fetch heads and consistency proofs over "
                   "HTTP instead of reading the lake")
    p.add_argument("--token", metavar="TOKEN",
                   help=f"a monitor's (or an admin's) API token for --url (default: ${TOKEN_ENV}, which keeps "
                   "it out of the process list)")
    p.add_argument("--state", required=True, metavar="FILE", help="where the heads seen are kept")
    p.add_argument("--public-key", metavar="FILE", action="append", help="the writers' public key(s) (required)")
    p.add_argument("--checkpoint-mirror", metavar="DIR", action="append", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_monitor)


def shorthand(argv: list[str]) -> list[str]:
    """``proof EVENT_ID ...`` is ``proof event EVENT_ID ...``."""
    if len(argv) >= 2 and argv[0] == "proof" and argv[1] not in SUBCOMMANDS and not argv[1].startswith("-"):
        return ["proof", "event", *argv[1:]]
    return argv
