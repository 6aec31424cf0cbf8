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


def _store(config: Config) -> BlockStore | None:
    """The config's block store, or None after saying why there is none."""
    from broker.blockstore import BlockStoreError, open_block_store

    url = config.server.replay_store
    if url == "memory":
        print(
            "error: server.store is memory: each broker process keeps its own state, so a block "
            "written here would reach no running broker. Blocks need the shared store "
            "(sqlite:///PATH on one host, redis://HOST:PORT/DB for several).",
            file=sys.stderr,
        )
        return None
    try:
        return open_block_store(url)
    except BlockStoreError as exc:
        print(f"error: the block store is unavailable: {exc}", file=sys.stderr)
        return None


def block(args: argparse.Namespace) -> int:
    from broker.blocks import BlockError, BlockFormatError, new_block, parse_record
    from broker.blockstore import BlockStoreError

    config = load(args)
    if config is None:
        return EXIT_ERROR
    try:
        made = new_block(
            config,
            provider=args.provider,
            claims=args.claim,
            role=args.role,
            reason=args.reason,
            duration=args.duration,
        )
    except BlockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    store = _store(config)
    if store is None:
        return EXIT_ERROR
    try:
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
            print(f"error: block id {made.id} already exists; run the command again", file=sys.stderr)
            return EXIT_ERROR
    except BlockStoreError as exc:
        print(f"error: the block store is unavailable: {exc}; nothing was written", file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()
    print(made.id)
    print(f"blocked {made.describe()}")
    print(f"every replica refuses it within 2 seconds; `ci-broker unblock {made.id}` removes it")
    return EXIT_OK


def unblock(args: argparse.Namespace) -> int:
    from broker.blocks import BLOCK_ID
    from broker.blockstore import BlockStoreError

    config = load(args)
    if config is None:
        return EXIT_ERROR
    if not BLOCK_ID.fullmatch(args.id):
        print(f"error: {args.id[:80]!r} is not a block id (blk- and 12 hex digits)", file=sys.stderr)
        return EXIT_ERROR
    store = _store(config)
    if store is None:
        return EXIT_ERROR
    try:
        removed = store.remove(args.id)
    except BlockStoreError as exc:
        print(f"error: the block store is unavailable: {exc}; nothing was changed", file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()
    if not removed:
        print(f"error: no block {args.id} (already removed? `ci-broker blocks` lists them)", file=sys.stderr)
        return EXIT_ERROR
    print(f"removed block {args.id}; every replica lets the identity through within 2 seconds")
    return EXIT_OK


def list_blocks(args: argparse.Namespace) -> int:
    from broker.blocks import BlockFormatError, read_blocks
    from broker.blockstore import BlockStoreError

    config = load(args)
    if config is None:
        return EXIT_ERROR
    store = _store(config)
    if store is None:
        return EXIT_ERROR
    try:
        _, records = store.snapshot()
        blocks = read_blocks(records, config)
    except BlockStoreError as exc:
        print(f"error: the block store is unavailable: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BlockFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()
    now = time.time()
    active = [b for b in blocks if b.active(now)]
    if args.json:
        print(json.dumps([b.public() for b in active], indent=2))
    elif not active:
        print("no blocks in force")
    else:
        for b in active:
            print(b.describe())
    return EXIT_OK
