"""Signing keys and the broker's issuer documents: `keygen`, `keys check|rotate`, `discovery`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from broker.cli.common import EXIT_ERROR, EXIT_OK, Handler, Subparsers, add_config_option, load

if TYPE_CHECKING:
    from broker.keys import SigningKey

EXIT_UNSAFE = 1


def register(sub: Subparsers) -> None:
    p = sub.add_parser("keygen", help="write a new PEM signing key (mode 0600)")
    p.add_argument("--alg", choices=("ES256", "RS256"), default="ES256")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=keygen)

    p = sub.add_parser("discovery", help="write the OIDC discovery document and JWKS as static files")
    add_config_option(p)
    p.add_argument("--out", required=True, help="directory; files go under OUT/.well-known/")
    p.set_defaults(handler=discovery)

    p = sub.add_parser("keys", help="signing-key rotation: check a config against the live JWKS")
    p.set_defaults(handler=keys)
    commands = p.add_subparsers(dest="keys_command", required=True)
    k = commands.add_parser("check", help="is deploying this config safe now? which rotation step is it?")
    add_config_option(k)
    k.add_argument(
        "--jwks-url",
        help="the JWKS the clouds fetch (default: the jwks_uri of <issuer>/.well-known/openid-configuration)",
    )
    k.add_argument(
        "--wait",
        type=int,
        default=None,
        help="seconds between rotation steps (default 3600: the clouds' JWKS cache time)",
    )
    k = commands.add_parser("rotate", help="start a rotation: write a new key and print the three steps")
    add_config_option(k)
    k.add_argument("--new-key", required=True, help="path for the new PEM key (must not exist)")
    k.add_argument("--alg", choices=("ES256", "RS256"), default="ES256")


def write_new_key(path: str, alg: str) -> SigningKey | None:
    """Write a new signing key, or print why not (never overwrites) and return None."""
    from broker.keys import write_private_key

    try:
        return write_private_key(Path(path), alg)
    except FileExistsError:
        print(f"error: {path} exists; refusing to overwrite a key", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror}", file=sys.stderr)
    return None


def keygen(args: argparse.Namespace) -> int:
    key = write_new_key(args.out, args.alg)
    if key is None:
        return EXIT_ERROR
    print(f"wrote {args.alg} key {args.out} (kid {key.kid})")
    return EXIT_OK


def discovery(args: argparse.Namespace) -> int:
    from broker.discovery import write_documents

    config = load(args)
    if config is None:
        return EXIT_ERROR
    try:
        paths = write_documents(config.server, Path(args.out))
    except OSError as exc:
        print(f"error: cannot write under {args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    for path in paths:
        print(f"wrote {path}")
    print(
        f"publish both at {config.server.issuer}/.well-known/ with Content-Type application/json "
        f"(the first has no extension; object stores would guess wrong), e.g.\n"
        f"  aws s3 cp {paths[0]} s3://BUCKET/PREFIX/.well-known/openid-configuration "
        f"--content-type application/json"
    )
    return EXIT_OK


def keys(args: argparse.Namespace) -> int:
    handler: Handler = {"check": _keys_check, "rotate": _keys_rotate}[args.keys_command]
    return handler(args)


def _keys_check(args: argparse.Namespace) -> int:
    from broker import keyrotation

    config = load(args)
    if config is None:
        return EXIT_ERROR
    wait = keyrotation.DEFAULT_WAIT if args.wait is None else args.wait
    print(f"signing_keys in {config.file} (the first signs, all are published):")
    for line in keyrotation.describe(config.server):
        print(f"  {line}")
    try:
        url = args.jwks_url or keyrotation.live_jwks_url(config.server.issuer)
        live = keyrotation.live_kids(url)
    except ValueError as exc:
        print(f"error: cannot read the live JWKS: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"live JWKS {url}: " + (", ".join(live) if live else "(no keys)"))
    result = keyrotation.plan([k.kid for k in config.server.signing_keys], live, wait)
    print(f"step: {result.step}")
    for line in result.lines:
        print(f"  {line}")
    return EXIT_OK if result.safe else EXIT_UNSAFE


def _keys_rotate(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return EXIT_ERROR
    new = write_new_key(args.new_key, args.alg)
    if new is None:
        return EXIT_ERROR
    old = config.server.signing_keys[0]
    others = [k.kid for k in config.server.signing_keys[1:]]
    print(f"wrote {args.alg} key {args.new_key} (kid {new.kid}); the key now signing is {old.kid}")
    if others:
        print(f"note: {', '.join(others)} are also published; finish or retire them first")
    print(f"""
Rotate in three deploys. Before each, run `ci-broker keys check --config FILE` with the config you
are about to deploy: it compares it with the live JWKS and refuses the two unsafe moves.

1. publish: add {args.new_key} SECOND in server.signing_keys, deploy (and re-run
   `ci-broker discovery` if the JWKS is published as a file). Wait for the clouds' JWKS caches
   (an hour unless you know them to be shorter).
2. promote: move {args.new_key} FIRST, keep the old key second, deploy. Wait at least 5 minutes
   (the broker's assertion lifetime) plus the clouds' cache time.
3. retire: remove the old key from server.signing_keys, deploy, and then delete its file.""")
    return EXIT_OK
