"""pytest fixtures that give each test real Mosquitto brokers.

pytest loads this plugin automatically once EVC is installed (entry point ``evc`` in the
``pytest11`` group), so a device app's own test suite can write::

    def test_my_app_publishes(evc_fog_broker, evc_topic_namespace):
        app = MyApp(broker_url=evc_fog_broker.url, site=evc_topic_namespace)
        ...

Every broker is a fresh Mosquitto on 127.0.0.1 with its own port, configured like the tier it
stands for, and is closed when the test ends. A broker that cannot start FAILS the test (it is
never skipped), so a missing Mosquitto cannot hide behind a green run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from evc.errors import BrokerError
from evc.harness.broker import Broker, MosquittoBroker, Tier, create_broker
from evc.harness.security import BrokerSecurity


class BrokerFactory(Protocol):
    """Signature of the callable that :func:`evc_broker_factory` provides."""

    def __call__(
        self,
        tier: Tier = "fog",
        *,
        workdir: Path | None = None,
        port: int | None = None,
        start: bool = True,
        security: BrokerSecurity | None = None,
    ) -> Broker:
        """Create a broker (started unless ``start=False``) that is closed after the test."""
        ...


@pytest.fixture
def evc_broker_factory() -> Iterator[BrokerFactory]:
    """Make extra brokers for this test: ``evc_broker_factory("cloud")``.

    Arguments of the returned callable:
        tier: ``"fog"`` or ``"cloud"`` (default ``"fog"``): which tier's config to use.
        workdir: Directory for config, log and persistence; a fresh temporary one if None.
        port: Port on 127.0.0.1; a free one if None.
        start: Start the broker before returning it (default True).
        security: Users, ACL and TLS (:class:`evc.harness.BrokerSecurity`): a local Mosquitto
            with the tier's secure config. Default: the open loopback config.

    Every broker made here is closed at teardown, in reverse order of creation. The test fails
    (never skips) if a broker cannot be created or started, with the tail of the broker log.
    """
    brokers: list[Broker] = []

    def make(
        tier: Tier = "fog",
        *,
        workdir: Path | None = None,
        port: int | None = None,
        start: bool = True,
        security: BrokerSecurity | None = None,
    ) -> Broker:
        try:
            if security is None:
                broker = create_broker(tier, workdir=workdir, port=port)
            else:  # Only a local Mosquitto renders the secure config.
                broker = MosquittoBroker(tier=tier, workdir=workdir, port=port, security=security)
        except BrokerError as exc:
            pytest.fail(f"cannot create a {tier} broker for this test: {exc}", pytrace=False)
        brokers.append(broker)
        if start:
            _start_or_fail(broker)
        return broker

    yield make
    _close_all(brokers)


@pytest.fixture
def evc_fog_broker(evc_broker_factory: BrokerFactory) -> Broker:
    """A started fog-tier Mosquitto on 127.0.0.1, closed after the test.

    Use ``.url`` (``mqtt://127.0.0.1:PORT``) or ``.host`` and ``.port`` to connect; ``.stop()``,
    ``.kill()``, ``.restart()``, ``.pause()`` and ``.resume()`` simulate outages, and
    ``.log_path`` is the broker log (the only place Mosquitto reports dropped messages).
    """
    return evc_broker_factory("fog")


@pytest.fixture
def evc_cloud_broker(evc_broker_factory: BrokerFactory) -> Broker:
    """A started cloud-tier Mosquitto on 127.0.0.1, closed after the test.

    Independent of :func:`evc_fog_broker`: a test that uses both gets two brokers on two
    ports, as a gateway sees in production.
    """
    return evc_broker_factory("cloud")


@pytest.fixture
def evc_topic_namespace() -> str:
    """A site name unique to this test, such as ``t-1a2b3c4d``.

    Use it as the site of every topic the test publishes or subscribes to, so that tests
    sharing a broker (or retained messages left by an earlier test) never see each other.
    """
    return f"t-{uuid.uuid4().hex[:8]}"


def _start_or_fail(broker: Broker) -> None:
    try:
        broker.start()
    except BrokerError as exc:
        pytest.fail(f"the {broker.tier} broker did not start: {exc}", pytrace=False)


def _close_all(brokers: list[Broker]) -> None:
    errors: list[str] = []
    for broker in reversed(brokers):
        try:
            broker.close()
        except BrokerError as exc:
            errors.append(str(exc))
    if errors:
        raise BrokerError("brokers did not close cleanly:\n" + "\n".join(errors))
