"""The layout every trust module and example must keep (CONTRACT section 7, issue 5)."""

import re

import pytest

from .tf import CLOUDS, EXAMPLES, MODULES, ROLE_NAME_PATTERN, TERRAFORM, expr, run_terraform

STANDARD_FILES = ("versions.tf", "variables.tf", "main.tf", "outputs.tf")

TERRAFORM_CHECK = "`terraform fmt -check -recursive terraform/`"


def test_the_three_modules_and_examples_exist():
    assert sorted(p.name for p in MODULES.iterdir() if p.is_dir()) == [
        "aws-trust",
        "azure-trust",
        "gcp-trust",
    ]
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) == ["aws", "azure", "gcp"]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_module_and_example_have_the_standard_files(cloud):
    for directory in (MODULES / f"{cloud}-trust", EXAMPLES / cloud):
        missing = [name for name in STANDARD_FILES if not (directory / name).is_file()]
        assert not missing, f"{directory.relative_to(TERRAFORM)} lacks {missing}"
    assert (MODULES / f"{cloud}-trust" / "README.md").is_file()
    assert (EXAMPLES / cloud / "example.tfvars").is_file()


def test_every_config_pins_terraform_and_provider_versions(every_config):
    for config in every_config:
        assert "versions.tf" in config.files, f"{config.name} has no versions.tf"
        blocks = config.files["versions.tf"].get("terraform", [])
        assert len(blocks) == 1, f"{config.name}/versions.tf needs one terraform block"
        block = blocks[0]
        assert re.fullmatch(r">=\s*1\.\d+\.\d+", block.get("required_version", "")), config.name
        providers = {}
        for entry in block.get("required_providers", []):
            providers.update(entry)
        assert providers, f"{config.name} declares no required_providers"
        for name, spec in providers.items():
            assert spec.get("source", "").startswith("hashicorp/"), (config.name, name)
            version = spec.get("version", "")
            # A floor and a ceiling: a provider's next major release changes resource schemas.
            assert ">=" in version and re.search(r"<\s*\d", version), (config.name, name, version)


def test_examples_require_the_same_providers_as_their_module(modules, examples):
    for cloud in CLOUDS:
        module_block = modules[cloud].files["versions.tf"]["terraform"][0]
        example_block = examples[cloud].files["versions.tf"]["terraform"][0]
        assert example_block["required_providers"] == module_block["required_providers"], cloud
        assert example_block["required_version"] == module_block["required_version"], cloud


def test_every_variable_has_a_description_and_a_type(every_config):
    for config in every_config:
        variables = config.variables()
        for name, body in variables.items():
            assert str(body.get("description", "")).strip(), (
                f"{config.name}: variable {name} has no description"
            )
            assert "type" in body, f"{config.name}: variable {name} has no type"


def test_every_module_variable_is_validated(modules):
    for _cloud, config in modules.items():
        for name, body in config.variables().items():
            validations = body.get("validation", [])
            assert validations, f"{config.name}: variable {name} has no validation block"
            for validation in validations:
                assert validation.get("condition") and validation.get("error_message"), (config.name, name)


def test_role_names_are_validated_with_the_brokers_pattern(modules):
    for _cloud, config in modules.items():
        conditions = [v["condition"] for v in config.variables()["roles"]["validation"]]
        assert any(ROLE_NAME_PATTERN in c and "keys(var.roles)" in c for c in conditions), config.name


def test_issuer_must_be_https(modules):
    for _cloud, config in modules.items():
        conditions = [v["condition"] for v in config.variables()["issuer_url"]["validation"]]
        assert any('regex("^https://' in c for c in conditions), config.name


@pytest.mark.parametrize("cloud", CLOUDS)
def test_module_outputs_the_roles_snippet_made_with_yamlencode(modules, cloud):
    config = modules[cloud]
    outputs = config.outputs()
    assert expr(outputs["broker_roles_yaml"]["value"]) == "${local.broker_roles_yaml}"
    assert outputs["broker_roles_yaml"]["description"]
    local = config.files["broker_config.tf"]["locals"][0]
    assert expr(local["broker_roles_yaml"]) == "${yamlencode({roles=local.broker_roles})}"
    # One entry per broker role, for this cloud only, carrying the role's allow rules.
    roles = expr(local["broker_roles"])
    assert roles.startswith("${{forname,roleinvar.roles:name=>{")
    assert f"cloud={cloud}" in roles.replace('"', "")
    assert "allow=try(var.allow_rules[name],[])" in roles


@pytest.mark.parametrize("cloud", CLOUDS)
def test_example_calls_its_module_and_passes_the_snippet_on(examples, cloud):
    config = examples[cloud]
    calls = dict(config.blocks("module"))
    assert calls["broker_trust"]["source"] == f"../../modules/{cloud}-trust"
    for name in ("issuer_url", "roles", "allow_rules"):
        assert expr(calls["broker_trust"][name]) == f"${{var.{name}}}", (cloud, name)
    assert expr(config.outputs()["broker_roles_yaml"]["value"]) == "${module.broker_trust.broker_roles_yaml}"


def test_terraform_fmt(terraform):
    result = run_terraform(["fmt", "-check", "-recursive", "-diff", str(TERRAFORM)], cwd=TERRAFORM)
    assert result.returncode == 0, (
        f"terraform fmt -check -recursive terraform/ failed:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("cloud", CLOUDS)
def test_module_readme_documents_every_input_and_output(modules, cloud):
    config = modules[cloud]
    readme = (config.path / "README.md").read_text()
    for kind, names in (("input", config.variables()), ("output", config.outputs())):
        for name in names:
            assert re.search(rf"^\| `{name}` \|", readme, re.M), (
                f"{config.name}/README.md has no row for {kind} {name}"
            )
