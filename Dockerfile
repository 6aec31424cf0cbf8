# syntax=docker/dockerfile:1
# ci-broker: a slim, non-root image. The build stage installs the package and its dependencies
# into a virtualenv; the final stage copies only that virtualenv onto a clean slim base, so no
# compiler, pip cache or source tree ships. All dependencies install from wheels.
# Dependencies come from requirements/runtime.txt only (`make lock`): exact versions, each file
# checked against its hash, the build backend included (no build isolation, so nothing unpinned is
# fetched); the package itself is then installed without dependencies of its own.
# The runtime dependencies only: never the `demo` extra (moto) or `test` (tests/test_packaging.py).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN python -m venv /opt/ci-broker \
 && /opt/ci-broker/bin/pip install --no-compile --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md LICENSE ./
COPY broker ./broker
RUN /opt/ci-broker/bin/pip install --no-compile --no-deps --no-build-isolation . \
 && /opt/ci-broker/bin/pip check \
 && /opt/ci-broker/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/ci-broker/bin/python -m compileall -q /opt/ci-broker

FROM ${PYTHON_IMAGE}
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without looking up a name.
RUN groupadd --gid 10001 ci-broker \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ci-broker
COPY --from=build /opt/ci-broker /opt/ci-broker
ENV PATH=/opt/ci-broker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CI_BROKER_CONFIG=/etc/ci-broker/broker.yaml
USER 10001:10001
EXPOSE 8080 9090
# gunicorn stops accepting and finishes in-flight exchanges on SIGTERM (graceful_timeout 30 s).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["ci-broker", "serve"]
# /metrics on a port of its own, which only the scraper should reach (docs/operations.md).
CMD ["--bind", "0.0.0.0:8080", "--metrics-bind", "0.0.0.0:9090"]
