"""Fixtures for the pipeline integrations: a real `ci-broker serve` (tests/serving.py) in front of
a sandbox of its own. Paths, tools and helpers live in support.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from serving import ServedBroker

from broker.sandbox.stack import Sandbox, free_port


@dataclass
class SandboxBroker:
    """`ci-broker serve` (gunicorn, as in production) and the sandbox it is configured for."""

    box: Sandbox
    served: ServedBroker

    @property
    def url(self) -> str:
        return self.box.broker_url

    def log_text(self) -> str:
        return self.served.output()


@pytest.fixture(scope="module")
def served_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxBroker]:
    # A sandbox of its own: the session sandbox's port may already hold an in-process broker.
    workdir = tmp_path_factory.mktemp("served-broker")
    with Sandbox(workdir, broker_port=free_port()) as box:
        served = ServedBroker(box.write_config(), f"127.0.0.1:{box.broker_port}", workdir / "serve.log")
        try:
            served.wait_ready()
            yield SandboxBroker(box, served)
        finally:
            served.stop()


@pytest.fixture(scope="module")
def served_session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxBroker]:
    """`ci-broker serve` whose roles give sessions (contract section 8): AWS credentials for 15
    minutes (inside botocore's refresh window, so every call past the first asks again), GCP and
    Azure roles with `federated_token: true`, on a sqlite store as a real deployment would use."""
    workdir = tmp_path_factory.mktemp("served-session-broker")
    with Sandbox(workdir, broker_port=free_port()) as box:
        config = box.config_dict()
        config["server"]["replay_store"] = f"sqlite:///{workdir / 'state.db'}"
        for role in config["roles"].values():
            role["session_lifetime"] = 3 * 3600
        config["roles"]["deploy-prod"]["aws"]["duration"] = 900
        config["roles"]["gcp-deploy"]["gcp"]["federated_token"] = True
        config["roles"]["azure-deploy"]["azure"]["federated_token"] = True
        path = box.write_config(config, name="sessions.yaml")
        served = ServedBroker(path, f"127.0.0.1:{box.broker_port}", workdir / "serve.log")
        try:
            served.wait_ready()
            yield SandboxBroker(box, served)
        finally:
            served.stop()


AUDIT_ROLE_ARN = "arn:aws:iam::123456789012:role/gitlab-audit"


@pytest.fixture(scope="module")
def served_two_aws_roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxBroker]:
    """`ci-broker serve` with a second AWS role for the same GitLab project (`gitlab-audit`, its own
    IAM role in the sandbox STS), so one job can hold two AWS roles at once."""
    workdir = tmp_path_factory.mktemp("served-two-aws-roles")
    with Sandbox(workdir, broker_port=free_port()) as box:
        config = box.config_dict()
        audit = copy.deepcopy(config["roles"]["gitlab-deploy"])
        audit["aws"]["role_arn"] = AUDIT_ROLE_ARN
        config["roles"]["gitlab-audit"] = audit
        box.sts.trust_role(AUDIT_ROLE_ARN, "gitlab-audit")
        served = ServedBroker(
            box.write_config(config, name="two-aws.yaml"),
            f"127.0.0.1:{box.broker_port}",
            workdir / "serve.log",
        )
        try:
            served.wait_ready()
            yield SandboxBroker(box, served)
        finally:
            served.stop()
