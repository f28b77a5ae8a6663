# One image for every EVC role: `docker run evc gateway run --config /etc/evc/gateway.yaml`.
FROM python:3.11-slim

# mosquitto is only needed for `evc broker up`, `evc demo` and the test harness.
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/evc
COPY pyproject.toml README.md ./
COPY evc ./evc
COPY brokers ./brokers
COPY configs ./configs
RUN pip install --no-cache-dir .

# Outboxes, record stores and boot epochs live here: mount a volume to keep them.
VOLUME ["/var/lib/evc"]
WORKDIR /var/lib/evc
ENTRYPOINT ["evc"]
CMD ["--help"]
