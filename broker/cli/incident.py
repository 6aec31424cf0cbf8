"""Incident response at runtime: `block`, `unblock`, `blocks` and `revoke` (contract section 9).

They write to and read from the broker's shared store (`server.store`), which every replica
polls (`broker.blocks`): a block is in force everywhere within two seconds of this command
returning. Every error (bad input, `memory` store, store unreachable, a record this version
cannot read) exits 2 having written nothing.

`revoke` ends broker sessions in the same store and prints, per cloud, what stops credentials
already issued (`broker.revoke`); with `--apply` it performs the AWS and GCP steps with the
operator's own credentials. Bad input and a revoke that matches nothing exit 2 having changed
nothing; a cloud step that fails under `--apply` exits 2 after the others were tried.

Each change they make is one audit event (`"type"`: `block`, `unblock` or `revoke`, with the
operator's user@host) where the broker's own events go (`server.audit`, or the file
`$CI_BROKER_AUDIT_LOG` names, as for `serve --audit-log`): a file or syslog sink
gets it beside the exchanges it changed. With the `stdout` sink the broker's stdout belongs to
its own process, out of this command's reach: the event goes to this command's stderr instead,
and stdout stays what scripts read (a block's id on the first line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from broker.cli.common import AUDIT_LOG_ENV, EXIT_ERROR, EXIT_OK, Subparsers, add_config_option, load

if TYPE_CHECKING:
    from broker.blockstore import BlockStore
    from broker.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "block",
        help="refuse an identity's exchanges and refreshes on every replica within 2 seconds",
        description="Record a block in the shared store; prints the block's id alone on the first line.",
    )
    add_config_option(p)
    p.add_argument("--provider", required=True, help="the provider (by name) whose tokens to block")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a claim the token must carry for the block to apply (exact match; repeat for more, all must hold)",
    )
    p.add_argument("--role", help="block this role only (default: every role)")
    p.add_argument(
        "--for", dest="duration", metavar="DURATION", help="expire after 90s, 15m, 2h, 7d... (default: never)"
    )
    p.add_argument(
        "--reason", required=True, help="why (a ticket id): shown by `blocks` and in the audit log"
    )
    p.set_defaults(handler=block)

    p = sub.add_parser(
        "unblock", help="remove a block (every replica lets the identity through within 2 seconds)"
    )
    add_config_option(p)
    p.add_argument("id", help="the block's id, as `block` printed it")
    p.set_defaults(handler=unblock)

    p = sub.add_parser("blocks", help="list the blocks in force")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="a JSON array instead of text")
    p.set_defaults(handler=list_blocks)

    p = sub.add_parser(
        "revoke",
        help="end broker sessions now and print (or, with --apply, take) each cloud's step "
        "against credentials already issued",
        description="End the matching broker sessions, then print per cloud what stops credentials "
        "already issued. Without --apply nothing outside the broker changes.",
    )
    add_config_option(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", metavar="ID", help="one session, by the id the exchange returned")
    which.add_argument("--role", help="every session of this role, and the role's cloud side")
    which.add_argument(
        "--provider", help="an identity: this provider's tokens with the --claim values (as for block)"
    )
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --provider: a claim the identity's tokens carry (exact match; repeat for more)",
    )
    p.add_argument(
        "--issued-before",
        metavar="RFC3339",
        help="only sessions and credentials issued before this time (default: now)",
    )
    p.add_argument("--reason", default="", help="why (a ticket id): printed with what was ended")
    p.add_argument(
        "--apply",
        action="store_true",
        help="also perform the AWS and GCP steps with your own credentials (boto3's default chain, "
        "Google application default credentials); Azure is always printed only",
    )
    p.add_argument(
        "--gcp-iam-url",
        default=None,
        metavar="URL",
        help="Google's IAM API base URL (default https://iam.googleapis.com; for private endpoints)",
    )
    p.set_defaults(handler=revoke)


class _Refused(Exception):
    """An error to print, exiting 2."""


def _run(args: argparse.Namespace, command: Callable[[Config], None]) -> int:
    """Load the config and run `command`; every error it raises is one line on stderr and exit 2."""
    from broker.blocks import BlockError, BlockFormatError
    from broker.blockstore import BlockStoreError

    config = load(args)
    if config is None:
        return EXIT_ERROR
    try:
        command(config)
    except (_Refused, BlockError, BlockFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BlockStoreError as exc:
        print(f"error: the block store is unavailable: {exc}; nothing was changed", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


@contextmanager
def _opened(config: Config) -> Iterator[BlockStore]:
    """The config's block store, closed afterwards; refused for `memory`."""
    from broker.blockstore import open_block_store

    store = open_block_store(config.server.replay_store)
    if store is None:
        raise _Refused(
            "server.store is memory: each broker process keeps its own state, so a block written "
            "here would reach no running broker. Blocks need the shared store (sqlite:///PATH on "
            "one host, redis://HOST:PORT/DB for several)."
        )
    try:
        yield store
    finally:
        store.close()


def block(args: argparse.Namespace) -> int:
    return _run(args, lambda config: _block(args, config))


def _block(args: argparse.Namespace, config: Config) -> None:
    from broker.blocks import BlockFormatError, new_block, parse_record

    made = new_block(
        config,
        provider=args.provider,
        claims=args.claim,
        role=args.role,
        reason=args.reason,
        duration=args.duration,
    )
    with _opened(config) as store:
        _, records = store.snapshot()
        expired: list[str] = []
        now = time.time()
        for block_id, text in records.items():
            try:
                if not parse_record(block_id, text, config).active(now):
                    expired.append(block_id)  # removed in the same write: the list stays short
            except BlockFormatError as exc:
                print(f"warning: {exc}", file=sys.stderr)
        if not store.add(made.id, made.record(), expired):
            raise _Refused(f"block id {made.id} already exists; run the command again")
    public = made.public()
    _audit(config, "block", "applied", block_id=public.pop("id"), **public)
    print(made.id)
    print(f"blocked {made.describe()}")
    print(f"every replica refuses it within 2 seconds; `ci-broker unblock {made.id}` removes it")


def unblock(args: argparse.Namespace) -> int:
    return _run(args, lambda config: _unblock(args.id, config))


def _unblock(block_id: str, config: Config) -> None:
    from broker.blocks import BLOCK_ID

    if not BLOCK_ID.fullmatch(block_id):
        raise _Refused(f"{block_id[:80]!r} is not a block id (blk- and 12 hex digits)")
    with _opened(config) as store:
        if not store.remove(block_id):
            raise _Refused(f"no block {block_id} (already removed? `ci-broker blocks` lists them)")
    _audit(config, "unblock", "applied", block_id=block_id)
    print(f"removed block {block_id}; every replica lets the identity through within 2 seconds")


def list_blocks(args: argparse.Namespace) -> int:
    return _run(args, lambda config: _list(config, as_json=args.json))


def _list(config: Config, *, as_json: bool) -> None:
    from broker.blocks import read_blocks

    with _opened(config) as store:
        blocks = read_blocks(store.snapshot()[1], config)
    now = time.time()
    active = [b for b in blocks if b.active(now)]
    if as_json:
        print(json.dumps([b.public() for b in active], indent=2))
    elif not active:
        print("no blocks in force")
    else:
        for b in active:
            print(b.describe())


def revoke(args: argparse.Namespace) -> int:
    from broker.errors import Unavailable
    from broker.revoke import RevokeError

    config = load(args)
    if config is None:
        return EXIT_ERROR
    try:
        return _revoke(args, config)
    except RevokeError as exc:
        print(f"error: {exc}; nothing was changed", file=sys.stderr)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
    except Unavailable as exc:
        print(f"error: the session store is unavailable ({exc.reason}); nothing was changed", file=sys.stderr)
    return EXIT_ERROR


def _revoke(args: argparse.Namespace, config: Config) -> int:
    from broker.blocks import MAX_REASON_CHARS
    from broker.revoke import Clients, StepFailed, end_sessions, gcp_iam_url, plan, select
    from broker.sessions import open_session_store

    url = config.server.replay_store
    if url == "memory" and (args.session or any(r.session_lifetime for r in config.roles.values())):
        raise _Refused(
            "server.store is memory: sessions live inside each broker process, out of reach of this "
            "command. Sessions need the shared store (sqlite:///PATH on one host, redis://HOST:PORT/DB "
            "for several); nothing was changed"
        )
    reason = args.reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        raise _Refused(f"--reason is longer than {MAX_REASON_CHARS} characters; nothing was changed")
    iam_url = gcp_iam_url(args.gcp_iam_url)
    store = open_session_store(url)
    try:
        selection = select(
            config,
            store,
            session_id=args.session,
            role=args.role,
            provider=args.provider,
            claims=args.claim,
            issued_before=args.issued_before,
        )
        ended = end_sessions(store, selection.sessions)
    finally:
        store.close()

    because = f" (reason: {reason})" if reason else ""
    if selection.note:
        print(selection.note)
    print(f"ended {len(ended)} broker session{'s' * (len(ended) != 1)}{because}")
    for session in ended:
        print(f"  {session.id}  role {session.role}  {session.provider} sub={session.claims.get('sub')}")
    print()
    steps = plan(config, selection, gcp_iam_url=iam_url)
    print(f"Credentials the clouds already issued for {', '.join(selection.roles)}:")
    clients, failed = Clients(), 0
    results: list[str] = []  # per step, for the audit event: applied, failed, or left to the operator
    for step in steps:
        print()
        print(f"{step.cloud.upper()} ({', '.join(step.roles)}): {step.summary}")
        if args.apply and step.action is not None:
            try:
                print(f"  applied: {step.action.apply(clients)}")
                results.append("applied")
            except StepFailed as exc:
                failed += 1
                results.append("failed")
                print(f"  FAILED: {exc}")
                print("  run it yourself:")
                for command in step.commands:
                    print(f"    {command}")
        else:
            results.append("printed")
            for command in step.commands:
                print(f"  {command}")
        for note in step.notes:
            print(f"  note: {note}")
    print()
    _audit(
        config,
        "revoke",
        "failed" if failed else "applied",
        reason=reason or None,
        role=args.role,
        provider=args.provider,
        # A mapping, as every event's `claims` is (jq's `.claims.NAME` must not meet a list);
        # `select` has checked each NAME=VALUE by now.
        claims={name.strip(): value for name, _, value in (c.partition("=") for c in args.claim)} or None,
        session_id=args.session,
        issued_before=args.issued_before,
        sessions_ended=[session.id for session in ended],
        roles=list(selection.roles),
        cloud_steps=[
            {"cloud": step.cloud, "roles": list(step.roles), "result": result}
            for step, result in zip(steps, results, strict=True)
        ],
    )
    if not args.apply:
        print(
            "Nothing outside the broker was changed: run the commands above, or add --apply for the AWS and GCP steps."
        )
    elif failed:
        print(f"{failed} cloud step{'s' * (failed != 1)} FAILED (above); the broker sessions were ended.")
        return EXIT_ERROR
    return EXIT_OK


def _audit(config: Config, kind: str, outcome: str, **fields: Any) -> None:
    """One audit event for a change this command made, where `server.audit` sends the broker's.

    The change is already made: a sink that cannot be written is a warning, and the line is
    printed on stderr so that it is not lost.
    """
    from broker.audit import FORMATTERS
    from broker.auditsink import AuditSyslog
    from broker.blocks import operator
    from broker.logs import audit_handler

    settings = config.server.audit
    event = {"type": kind, "outcome": outcome, **fields, "operator": operator()}
    line = FORMATTERS[settings.format](event)
    path = os.environ.get(AUDIT_LOG_ENV) or None  # as `serve --audit-log` defaults to it
    if path is None and settings.file is None and settings.syslog is None:
        print(line, file=sys.stderr)
        return
    problem = None
    try:
        sink = audit_handler(path, None, settings)
        try:
            sink.write_line(line)
            sink.flush()  # syslog: waits up to 5 s for the line to be sent
            if isinstance(sink, AuditSyslog) and sink.queue.pending():
                problem = "the syslog receiver did not take it"
        finally:
            sink.close()
    except OSError as exc:
        problem = str(exc)
    if problem is not None:
        where = f"file:{path}" if path else settings.sink
        print(f"warning: the audit event could not be written to {where}: {problem}", file=sys.stderr)
        print(line, file=sys.stderr)
