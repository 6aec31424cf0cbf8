import pytest

from .tf import load_config, module_dir, example_dir, all_config_dirs, terraform_binary


def pytest_configure(config: pytest.Config) -> None:
    # Registered here so that tests/terraform stays self-contained under --strict-markers.
    config.addinivalue_line(
        "markers",
        "checkov: runs checkov over terraform/ (installs it into .venv-checkov on first use); "
        "deselect with -m 'not checkov'",
    )


@pytest.fixture(scope="session")
def terraform() -> str:
    """Path of the terraform binary; skips the test, naming the gap, where there is none."""
    binary = terraform_binary()
    if binary is None:
        pytest.skip("terraform is not installed: this check, which needs the terraform binary, was not run")
    return binary


@pytest.fixture(scope="session")
def modules():
    return {cloud: load_config(module_dir(cloud)) for cloud in ("aws", "gcp", "azure")}


@pytest.fixture(scope="session")
def examples():
    return {cloud: load_config(example_dir(cloud)) for cloud in ("aws", "gcp", "azure")}


@pytest.fixture(scope="session")
def every_config():
    return [load_config(path) for path in all_config_dirs()]
