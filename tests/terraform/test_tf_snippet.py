"""The `roles:` snippet each module outputs loads into the broker as it is (issue 5).

An operator applies an example, pastes its broker_roles_yaml output into the broker config
and runs `ci-broker check`. These tests do the same with the examples' own inputs.
"""

import re

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import ci_broker

from . import snippet
from .tf import CLOUDS, example_dir, module_dir, parse_file

TERRAFORM_CHECK = "terraform's own rendering of the roles snippets"


def _signing_key(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "broker-1.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _broker_config(directory, issuer, roles_yaml):
    """A whole broker config: a server and providers block, then the pasted snippet."""
    head = {
        "server": {"issuer": issuer, "signing_keys": [str(_signing_key(directory))]},
        "providers": {
            "github": {"issuer": "https://token.actions.githubusercontent.com", "type": "github"},
            "gitlab": {"issuer": "https://gitlab.com", "type": "gitlab"},
        },
    }
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump(head, sort_keys=False) + roles_yaml)
    return path


def _broker_check(config_path):
    return ci_broker("check", "--config", str(config_path), cwd=config_path.parent)


def _require_cloud_support(cloud):
    # GCP and Azure roles arrive in the core with issue 3; until then the broker refuses
    # `cloud: gcp` outright and these snippets cannot be judged.
    from broker import clouds

    if cloud not in clouds.NAMES:
        pytest.skip(
            f"the broker does not support cloud {cloud!r} yet: its roles snippet was not loaded by ci-broker check"
        )


def _findings(result):
    return [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if re.match(r"\s*(error|warning):", line)
    ]


@pytest.fixture(scope="module")
def terraform_stubs(terraform, tmp_path_factory):
    return {cloud: snippet.stub_module(cloud, tmp_path_factory.mktemp(f"{cloud}-stub")) for cloud in CLOUDS}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_stub_stands_in_for_exactly_the_resource_values_the_snippet_uses(cloud):
    # If broker_config.tf starts to use another resource-derived local, the stub (and the
    # Python mirror) must learn it too; and each stand-in must exist in the real module.
    text = (module_dir(cloud) / "broker_config.tf").read_text()
    own = set(parse_file(module_dir(cloud) / "broker_config.tf")["locals"][0])
    used = set(re.findall(r"\blocal\.(\w+)", text)) - own
    assert used == snippet.stubbed_locals(cloud)
    main_locals = set(parse_file(module_dir(cloud) / "main.tf")["locals"][0])
    assert used <= main_locals


@pytest.mark.parametrize("cloud", CLOUDS)
def test_python_rendering_matches_terraforms(cloud, terraform_stubs):
    code, text = snippet.evaluate(terraform_stubs[cloud], example_dir(cloud) / "example.tfvars")
    assert code == 0, text
    assert yaml.safe_load(text) == snippet.render(cloud, snippet.example_values(cloud))


def test_python_rendering_matches_terraforms_in_aws_assume_role_mode(terraform_stubs):
    extra = ("-var=mode=assume_role", "-var=broker_principal_arn=arn:aws:iam::123456789012:role/ci-broker")
    code, text = snippet.evaluate(terraform_stubs["aws"], example_dir("aws") / "example.tfvars", extra)
    assert code == 0, text
    values = {**snippet.example_values("aws"), "mode": "assume_role"}
    rendered = snippet.render("aws", values)
    assert yaml.safe_load(text) == rendered
    assert all(role["aws"]["mode"] == "assume_role" for role in rendered["roles"].values())


@pytest.mark.parametrize("cloud", CLOUDS)
def test_snippet_has_the_contracts_shape(cloud):
    rendered = snippet.render(cloud, snippet.example_values(cloud))
    assert set(rendered) == {"roles"}
    for name, role in rendered["roles"].items():
        assert set(role) == {"cloud", cloud, "allow"}
        assert role["cloud"] == cloud
        assert role["allow"], f"example role {name} has no allow rules"
    if cloud == "gcp":
        for role in rendered["roles"].values():
            assert re.fullmatch(
                r"//iam\.googleapis\.com/projects/\d+/locations/global/workloadIdentityPools/[a-z0-9-]+/providers/[a-z0-9-]+",
                role["gcp"]["audience"],
            )


@pytest.mark.parametrize("source", ["python", "terraform"])
@pytest.mark.parametrize("cloud", CLOUDS)
def test_example_snippet_passes_broker_check(cloud, source, tmp_path, request):
    _require_cloud_support(cloud)
    values = snippet.example_values(cloud)
    if source == "terraform":
        stubs = request.getfixturevalue("terraform_stubs")
        code, roles_yaml = snippet.evaluate(stubs[cloud], example_dir(cloud) / "example.tfvars")
        assert code == 0, roles_yaml
    else:
        roles_yaml = yaml.safe_dump(snippet.render(cloud, values), sort_keys=False)
    config = _broker_config(tmp_path, values["issuer_url"], roles_yaml)
    result = _broker_check(config)
    assert result.returncode == 0, (
        f"ci-broker check refused the {cloud} snippet:\n{result.stdout}{result.stderr}"
    )
    # The examples are what operators copy: they should not even draw a warning.
    assert not _findings(result), _findings(result)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_snippet_of_a_role_without_rules_is_refused_by_broker_check(cloud, tmp_path):
    # The modules emit `allow: []` for a role with no allow_rules; the READMEs promise the
    # broker refuses that rather than loading a role nobody meant to open or close.
    _require_cloud_support(cloud)
    values = {**snippet.example_values(cloud), "allow_rules": {}}
    roles_yaml = yaml.safe_dump(snippet.render(cloud, values), sort_keys=False)
    result = _broker_check(_broker_config(tmp_path, values["issuer_url"], roles_yaml))
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in _findings(result) if line.lstrip().startswith("error:")]
    assert errors and all(".allow:" in line for line in errors), result.stdout + result.stderr


SOVEREIGN_AZURE = {
    "token_exchange_audience": "api://AzureADTokenExchangeUSGov",
    "authority_host": "https://login.microsoftonline.us",
}


def test_azure_snippet_for_a_sovereign_cloud_names_its_audience_and_authority(terraform_stubs, tmp_path):
    # Without them the broker would mint for api://AzureADTokenExchange and sign in at the public
    # cloud, and Entra ID in Azure Government would refuse every exchange.
    extra = tuple(f"-var={name}={value}" for name, value in SOVEREIGN_AZURE.items())
    code, roles_yaml = snippet.evaluate(
        terraform_stubs["azure"], example_dir("azure") / "example.tfvars", extra
    )
    assert code == 0, roles_yaml
    values = {**snippet.example_values("azure"), **SOVEREIGN_AZURE}
    rendered = yaml.safe_load(roles_yaml)
    assert rendered == snippet.render("azure", values)
    for role in rendered["roles"].values():
        assert role["azure"]["assertion_audience"] == "api://AzureADTokenExchangeUSGov"
        assert role["azure"]["authority_host"] == "https://login.microsoftonline.us"
    _require_cloud_support("azure")
    result = _broker_check(_broker_config(tmp_path, values["issuer_url"], roles_yaml))
    assert result.returncode == 0 and not _findings(result), result.stdout + result.stderr


def test_azure_snippet_for_the_public_cloud_leaves_both_to_the_brokers_defaults(terraform_stubs):
    code, roles_yaml = snippet.evaluate(terraform_stubs["azure"], example_dir("azure") / "example.tfvars")
    assert code == 0, roles_yaml
    for role in yaml.safe_load(roles_yaml)["roles"].values():
        assert "assertion_audience" not in role["azure"] and "authority_host" not in role["azure"]
