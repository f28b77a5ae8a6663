"""Real Mosquitto brokers for tests and demos, and the pytest plugin that provides them.

The pytest fixtures live in :mod:`evc.harness.pytest_plugin`, which pytest loads through the
``evc`` entry point; it is not imported here so that the harness works without pytest.
"""

from evc.harness.broker import (
    INSTALL_HINT,
    LOOPBACK,
    Broker,
    MosquittoBroker,
    Tier,
    create_broker,
    find_mosquitto,
    free_port,
    mqtt_handshake,
    port_is_free,
    render_config,
    start_broker,
    templates_dir,
)
from evc.harness.pki import TestCA
from evc.harness.security import (
    PROBE_USER,
    BrokerSecurity,
    ClientCert,
    TlsFiles,
    render_cloud_acl,
    render_fog_acl,
    write_password_file,
)

__all__ = [
    "INSTALL_HINT",
    "LOOPBACK",
    "PROBE_USER",
    "Broker",
    "BrokerSecurity",
    "ClientCert",
    "MosquittoBroker",
    "TestCA",
    "Tier",
    "TlsFiles",
    "create_broker",
    "find_mosquitto",
    "free_port",
    "mqtt_handshake",
    "port_is_free",
    "render_cloud_acl",
    "render_config",
    "render_fog_acl",
    "start_broker",
    "templates_dir",
    "write_password_file",
]
