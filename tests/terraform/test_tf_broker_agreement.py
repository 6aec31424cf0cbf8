"""The modules' trust and the broker's assertions agree (CONTRACT sections 3 and 7).

The broker's real config loader and assertion signer produce, for each role of each
example, the token the cloud would receive; the trust the module writes (read from its
HCL, with `role:${each.key}` filled in per role) must accept it, and must refuse the
assertion minted for any other role.
"""

import jwt
import pytest
import yaml

from . import snippet
from .test_tf_snippet import _broker_config
from .tf import CLOUDS, expr, load_config, module_dir


def _fill(template, role, issuer_url):
    return (
        str(template)
        .replace("${each.key}", role)
        .replace("${name}", role)
        .replace("${local.issuer_host}", issuer_url.removeprefix("https://"))
    )


def _aws_accepts(module, role, claims, issuer_url):
    [document] = [
        d for n, d in module.typed_blocks("data", "aws_iam_policy_document") if n == "trust_web_identity"
    ]
    [statement] = document["statement"]
    assert (
        dict(module.typed_blocks("resource", "aws_iam_openid_connect_provider"))["broker"]["url"]
        == "${var.issuer_url}"
    )
    context = {f"{issuer_url.removeprefix('https://')}:{k}": v for k, v in claims.items()}
    return claims["iss"] == issuer_url and all(
        condition["test"] == "StringEquals"
        and context.get(_fill(condition["variable"], role, issuer_url))
        in [_fill(v, role, issuer_url) for v in condition["values"]]
        for condition in statement["condition"]
    )


def _gcp_accepts(module, roles, claims, issuer_url, audience):
    # The provider: issuer, allowed audience, then attribute_condition `assertion.sub in subjects`.
    local = module.locals()
    assert expr(local["subjects"]) == '${[fornameinsort(keys(var.roles)):"role:${name}"]}'
    subjects = [f"role:{name}" for name in sorted(roles)]
    return claims["iss"] == issuer_url and claims["aud"] == audience and claims["sub"] in subjects


def _gcp_principal(module, role):
    return _fill(module.locals()["principals"], role, "").split('"')[1]


def _azure_accepts(module, role, claims, issuer_url, values):
    # coalesce(var.token_exchange_audience, local.public_cloud.assertion_audience)
    audience = values.get("token_exchange_audience") or module.locals()["public_cloud"]["assertion_audience"]
    for _, credential in module.typed_blocks("resource", "azuread_application_federated_identity_credential"):
        assert credential["audiences"] == ["${local.token_exchange_audience}"]
        return (
            claims["iss"] == issuer_url
            and claims["sub"] == _fill(credential["subject"], role, issuer_url)
            and claims["aud"] == audience
        )
    raise AssertionError("no federated credential")


SOVEREIGN = {
    "token_exchange_audience": "api://AzureADTokenExchangeUSGov",
    "authority_host": "https://login.microsoftonline.us",
}


@pytest.mark.parametrize(
    ("cloud", "inputs"),
    [*((cloud, {}) for cloud in CLOUDS), ("azure", SOVEREIGN)],
    ids=[*CLOUDS, "azure-usgov"],
)
def test_each_roles_assertion_passes_its_own_trust_and_no_other(cloud, inputs, tmp_path):
    from broker import clouds
    from broker.assertion import AssertionSigner
    from broker.config import load_config as load_broker_config

    if cloud not in clouds.NAMES:
        pytest.skip(f"the broker does not support cloud {cloud!r} yet: its assertions were not checked")
    values = {**snippet.example_values(cloud), **inputs}
    issuer_url = values["issuer_url"]
    rendered = snippet.render(cloud, values)
    config = load_broker_config(_broker_config(tmp_path, issuer_url, yaml.safe_dump(rendered)))
    signer = AssertionSigner(config.server.issuer, config.server.signing_keys[0])
    module = load_config(module_dir(cloud))
    roles = sorted(config.roles)
    assert roles == sorted(values["roles"])

    for granted in roles:
        # The audience each cloud back end of the broker mints its assertion for.
        settings = config.roles[granted].settings
        if cloud == "aws":
            from broker.clouds.aws import AUDIENCE as audience
        elif cloud == "gcp":
            audience = settings.audience
        else:
            audience = settings.assertion_audience
        token = signer.mint(granted, audience, {"provider": "github"})
        claims = jwt.decode(token, options={"verify_signature": False})
        for trusting in roles:
            if cloud == "aws":
                accepted = _aws_accepts(module, trusting, claims, issuer_url)
            elif cloud == "gcp":
                # One pool admits every configured role; separation is in the binding, which
                # names the subject of exactly one role.
                accepted = _gcp_accepts(
                    module, roles, claims, issuer_url, rendered["roles"][trusting]["gcp"]["audience"]
                )
                accepted = accepted and _gcp_principal(module, trusting).endswith(f"/subject/{claims['sub']}")
            else:
                accepted = _azure_accepts(module, trusting, claims, issuer_url, values)
            assert accepted == (trusting == granted), (cloud, granted, trusting, claims)
