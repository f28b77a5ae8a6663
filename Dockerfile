# syntax=docker/dockerfile:1
# One image for every EVC role, chosen by the command:
#   docker run -v evc-data:/var/lib/evc -v ./gateway.yaml:/etc/evc/gateway.yaml:ro \
#       evc gateway run --config /etc/evc/gateway.yaml
#   docker run ... evc cloud run --config /etc/evc/cloud.yaml
# Build: docker build -t evc:0.1.0 .   (docs/DEPLOY.md has the details)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: the EVC wheel and a wheel of every dependency --------------------------------------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# Only what the wheel is made of: the sources, the broker templates and the sample model it
# ships (pyproject.toml's force-include), so an edit elsewhere does not invalidate this layer.
COPY pyproject.toml README.md ./
COPY evc ./evc
COPY brokers ./brokers
COPY samples/models ./samples/models
# Resolving every dependency here means the runtime stage installs offline, from these wheels
# only, and never sees a compiler or a build backend.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: slim, mosquitto for `evc broker up` and the demo, an unprivileged user --------------
FROM ${PYTHON_IMAGE} AS runtime
ARG EVC_UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so that volumes and Kubernetes' runAsUser/fsGroup (deploy/k8s/) agree with it.
RUN groupadd --system --gid "${EVC_UID}" evc \
    && useradd --system --uid "${EVC_UID}" --gid evc --home-dir /var/lib/evc --no-create-home \
        --shell /usr/sbin/nologin evc \
    && install -d -o evc -g evc -m 0750 /var/lib/evc \
    && install -d -m 0755 /etc/evc /usr/share/evc

# A bind mount, not a COPY: the wheels never become a layer of the final image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels evc

# Example configs for reference; mount real ones under /etc/evc.
COPY configs /usr/share/evc/configs
COPY deploy/docker/healthcheck.py /usr/share/evc/healthcheck.py

# Outboxes, record stores and boot epochs live here: mount a volume to keep them. Relative paths
# in a config (var/gateway/outbox.db) resolve against this directory.
VOLUME ["/var/lib/evc"]
WORKDIR /var/lib/evc
USER evc:evc

# The daemon's own /metrics endpoint answers while its process is alive and serving; the probe
# reads metrics.host and metrics.port from the config named on the command line, and passes
# when the role has no endpoint (metrics.port null, `evc --help`, `evc broker up`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/share/evc/healthcheck.py"]

ENTRYPOINT ["evc"]
CMD ["--help"]
