"""The broker as an OIDC issuer: its discovery document and JWKS, served or written to files.

The clouds fetch exactly two documents from `server.issuer`: `/.well-known/openid-configuration`
and the `jwks_uri` it names. A broker behind a firewall can publish them as static files on object
storage (`ci-broker discovery`), byte for byte what `GET` on the running broker returns.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from broker.config import ServerConfig
from broker.keys import jwks

DISCOVERY_PATH = ".well-known/openid-configuration"
JWKS_PATH = ".well-known/jwks.json"
CLAIMS_SUPPORTED = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "provider",
    "repository",
    "repository_id",
    "ref",
    "run_id",
    "sha",
]


def openid_configuration(server: ServerConfig) -> dict[str, Any]:
    return {
        "issuer": server.issuer,
        "jwks_uri": f"{server.issuer}/{JWKS_PATH}",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": sorted({k.alg for k in server.signing_keys}),
        "claims_supported": CLAIMS_SUPPORTED,
    }


def jwks_document(server: ServerConfig) -> dict[str, Any]:
    """Every configured key's public half, in config order (the first is the one that signs)."""
    return jwks(server.signing_keys)


def documents(server: ServerConfig) -> dict[str, bytes]:
    """Both documents rendered once, by their path under the issuer: served and written as is."""
    return {DISCOVERY_PATH: render(openid_configuration(server)), JWKS_PATH: render(jwks_document(server))}


def render(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def write_documents(server: ServerConfig, out_dir: Path) -> list[Path]:
    """Write both documents under `out_dir` at the paths the issuer URL expects; returns them.

    Each file is replaced atomically, so a sync running at the same time never uploads half a
    JWKS. Only public key material is written.
    """
    written = []
    for relative, body in documents(server).items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        written.append(path)
    return written
