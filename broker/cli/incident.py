"""Incident response at runtime: `block`, `unblock` and `blocks` (contract section 9).

They write to and read from the broker's shared store (`server.store`), which every replica
polls (`broker.blocks`): a block is in force everywhere within two seconds of this command
returning. Every error (bad input, `memory` store, store unreachable, a record this version
cannot read) exits 2 having written nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from broker.cli.common import EXIT_ERROR, EXIT_OK, Subparsers, add_config_option, load

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
