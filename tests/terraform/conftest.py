import warnings
from pathlib import Path

import pytest

from .tf import all_config_dirs, example_dir, load_config, module_dir, provider_mirror, terraform_binary


def pytest_configure(config: pytest.Config) -> None:
    # Registered here so that tests/terraform stays self-contained under --strict-markers.
    config.addinivalue_line(
        "markers",
        "checkov: runs checkov over terraform/ (installs it into .venv-checkov on first use); "
        "deselect with -m 'not checkov'",
    )


@pytest.fixture(scope="module")
def terraform(request: pytest.FixtureRequest) -> str:
    """Path of the terraform binary; where there is none, skips the test and says which
    check went unrun (each test module names its own in TERRAFORM_CHECK)."""
    binary = terraform_binary()
    if binary is None:
        what = getattr(request.module, "TERRAFORM_CHECK", "a check that needs the terraform binary")
        pytest.skip(f"terraform is not installed; not checked: {what}")
    return binary


@pytest.fixture(scope="module")
def aws_provider_mirror(terraform: str, request: pytest.FixtureRequest) -> Path:
    """The local mirror holding hashicorp/aws, found at run time. Where there is none the test
    is skipped, and a warning says which check did not run: nothing here may download it."""
    mirror = provider_mirror("aws")
    if mirror is None:
        what = getattr(request.module, "TERRAFORM_CHECK", "a check that needs the AWS provider")
        message = (
            "NO LOCAL MIRROR OF THE hashicorp/aws PROVIDER (looked in /opt/*, the usual plugin "
            f"directories and $CI_BROKER_TF_PLUGIN_DIR); NOT CHECKED: {what}"
        )
        warnings.warn(message, pytest.PytestWarning, stacklevel=1)
        pytest.skip(message)
    return mirror


@pytest.fixture(scope="session")
def modules():
    return {cloud: load_config(module_dir(cloud)) for cloud in ("aws", "gcp", "azure")}


@pytest.fixture(scope="session")
def examples():
    return {cloud: load_config(example_dir(cloud)) for cloud in ("aws", "gcp", "azure")}


@pytest.fixture(scope="session")
def every_config():
    return [load_config(path) for path in all_config_dirs()]
