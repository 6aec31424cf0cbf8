"""Every pipeline example in the docs must run where users run it (issue 20).

GitLab's Docker executor starts the job's image with the image's own ENTRYPOINT and feeds it the
job's shell script: an image whose entrypoint is a tool (`aws`, `terraform`) fails the job
before the first line unless the job overrides it with `entrypoint: [""]`. Local runs use the
shell executor, so nothing else would catch it: this test reads every YAML example in the README,
docs/, examples/ and the integrations' READMEs and flags those images.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from support import ROOT

# Images whose ENTRYPOINT is a tool rather than a shell, from their published Dockerfiles.
# Not listed because they set none (a shell script runs as is): google/cloud-sdk,
# mcr.microsoft.com/azure-cli, alpine, debian, ubuntu, python, cimg/*.
TOOL_ENTRYPOINTS = {
    "amazon/aws-cli": "/usr/local/bin/aws",
    "public.ecr.aws/aws-cli/aws-cli": "/usr/local/bin/aws",
    "hashicorp/terraform": "/bin/terraform",
    "hashicorp/packer": "/bin/packer",
    "bitnami/kubectl": "kubectl",
    "alpine/helm": "helm",
    "alpine/git": "git",
    "gcr.io/kaniko-project/executor": "/kaniko/executor",
    "minio/mc": "mc",
}

DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "gitlab-templates" / "README.md"]
    + [ROOT / "buildkite-plugin" / "README.md"]
)
EXAMPLE_FILES = sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in {".yml", ".yaml"})


class _Loader(yaml.SafeLoader):
    """GitLab's `!reference [job, key]` is a tag PyYAML does not know: read it as its list."""


_Loader.add_constructor("!reference", lambda loader, node: loader.construct_sequence(node))


def yaml_examples() -> Iterator[tuple[str, str]]:
    for path in DOCUMENTS:
        text = path.read_text()
        for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            line = text[: match.start()].count("\n") + 2
            yield f"{path.relative_to(ROOT)}:{line}", match.group(1)
    for path in EXAMPLE_FILES:
        yield str(path.relative_to(ROOT)), path.read_text()


def image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name.removeprefix("docker.io/").removeprefix("library/")


def unrunnable_images(document: Any) -> list[str]:
    """The images in a parsed example that would start their tool instead of the job's script."""
    found = []

    def walk(node: Any, parent_key: str | None) -> None:
        if isinstance(node, dict):
            image = node.get("image")
            runs_a_script = "script" in node or "before_script" in node or parent_key == "default"
            # Bitbucket steps (`step:`) and Kubernetes containers (`command:`) are not GitLab jobs:
            # a container's command replaces the entrypoint; Bitbucket's handling is its own.
            if image is not None and runs_a_script and parent_key != "step" and "command" not in node:
                if isinstance(image, dict):
                    name, entrypoint = image.get("name", ""), image.get("entrypoint")
                else:
                    name, entrypoint = image, None
                if image_name(str(name)) in TOOL_ENTRYPOINTS and entrypoint != [""]:
                    found.append(str(name))
            for key, value in node.items():
                walk(value, str(key))
        elif isinstance(node, list):
            for value in node:
                walk(value, parent_key)

    walk(document, None)
    return found


EXAMPLES = list(yaml_examples())


def test_the_examples_are_found() -> None:
    where = {w.split(":")[0] for w, _ in EXAMPLES}
    assert {"docs/pipelines.md", "README.md", "gitlab-templates/README.md"} <= where
    assert sum(1 for w, _ in EXAMPLES if w.startswith("docs/pipelines.md")) >= 10


@pytest.mark.parametrize("where,text", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_pipeline_example_runs_on_gitlabs_docker_executor(where: str, text: str) -> None:
    document = yaml.load(textwrap.dedent(text), Loader=_Loader)
    bad = unrunnable_images(document)
    assert not bad, (
        f"{where}: {bad} start {[TOOL_ENTRYPOINTS[image_name(b)] for b in bad]}, not a shell: "
        'give the job `image: {name: ..., entrypoint: [""]}` or use an image without an entrypoint'
    )


def test_the_check_flags_a_tool_image_and_accepts_the_override() -> None:
    job = {"deploy": {"image": "amazon/aws-cli:2.17.0", "script": ["aws sts get-caller-identity"]}}
    assert unrunnable_images(job) == ["amazon/aws-cli:2.17.0"]
    assert unrunnable_images({"default": {"image": "docker.io/hashicorp/terraform@sha256:ab"}})
    assert unrunnable_images(
        {"j": {"image": {"name": "amazon/aws-cli", "entrypoint": ["aws"]}, "script": []}}
    )
    job["deploy"]["image"] = {"name": "amazon/aws-cli:2.17.0", "entrypoint": [""]}
    assert unrunnable_images(job) == []
    assert unrunnable_images({"j": {"image": "google/cloud-sdk:slim", "script": ["gcloud info"]}}) == []
    pod = {"containers": [{"name": "d", "image": "amazon/aws-cli", "command": ["/bin/sh", "-c", "x"]}]}
    assert unrunnable_images(pod) == []
