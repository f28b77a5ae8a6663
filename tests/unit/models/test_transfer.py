"""ChunkFetcher and ChunkServer without a broker: the inbox, stopping, disk errors, refusals.

Messages are handed in as paho would hand them; nothing connects.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from evc.models import ArtifactCache, Compatibility, Manifest
from evc.models.transfer import Backoff, ChunkFetcher, ChunkServer, TransferError
from evc.mqtt.client import BrokerAddress
from evc.wire import Channel, DeviceTopic
from evc.wire.delivery import encode_chunk, encode_chunk_request

NOWHERE = BrokerAddress(host="127.0.0.1", port=1)
RECEIVER = DeviceTopic("site-1", "cam-1", Channel.MODEL)


def _message(payload: bytes, topic: str = "evc/site-1/dev/cam-1/chunk") -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    return message


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, Manifest]:
    path = tmp_path / "model.onnx"
    path.write_bytes(os.urandom(300))  # one chunk
    manifest = Manifest.describe(
        path, name="shapes", version="2", created_ms=0, chunk_size=1024,
        compatibility=Compatibility(input_shape=(3, 160, 160), classes=("a",)),
    )
    return path, manifest


@pytest.fixture
def refusals() -> list[str]:
    return []


@pytest.fixture
def fetcher(tmp_path: Path, refusals: list[str]) -> Iterator[ChunkFetcher]:
    fetcher = ChunkFetcher(
        address=NOWHERE, receiver=RECEIVER, cache=ArtifactCache(tmp_path / "cache"), window=2,
        on_refused=refusals.append,
    )
    yield fetcher
    fetcher.stop()


def _deliver_once_fetching(fetcher: ChunkFetcher, payload: bytes) -> threading.Thread:
    """Hand ``payload`` in as soon as a fetch runs, as a reply from the broker would come."""

    def deliver() -> None:
        deadline = time.monotonic() + 5
        while not fetcher._active.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        fetcher._deliver(_message(payload))

    thread = threading.Thread(target=deliver)
    thread.start()
    return thread


def test_backoff_doubles_up_to_its_limit_and_resets() -> None:
    backoff = Backoff(first_s=1.0, max_s=5.0)
    assert [backoff.next_s() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_s() == 1.0


def test_messages_between_fetches_are_dropped_unread(fetcher: ChunkFetcher) -> None:
    for _ in range(50):
        fetcher._deliver(_message(b"x" * 1024))
    assert fetcher._inbox.qsize() == 0
    assert fetcher.ignored == 50
    assert not fetcher.refused


def test_a_flood_during_a_fetch_is_bounded_and_counted(
    fetcher: ChunkFetcher, refusals: list[str]
) -> None:
    fetcher._active.set()  # as during a fetch
    for _ in range(100):
        fetcher._deliver(_message(b"junk"))
    held = fetcher._inbox.qsize()
    assert held == fetcher._inbox.maxsize
    assert fetcher.refused["overflow"] == 100 - held
    assert refusals.count("overflow") == 100 - held


def test_a_fetch_starts_with_an_empty_inbox(
    fetcher: ChunkFetcher, artifact: tuple[Path, Manifest]
) -> None:
    fetcher._active.set()
    fetcher._deliver(_message(b"stale junk"))  # left over from an earlier fetch
    fetcher._active.clear()
    with pytest.raises(TransferError) as caught:
        fetcher.fetch(artifact[1], timeout_s=0.3)
    assert caught.value.reason == "timeout"
    assert not fetcher.refused  # the stale message was not held against this fetch


def test_stop_ends_a_running_fetch_at_once(
    fetcher: ChunkFetcher, artifact: tuple[Path, Manifest]
) -> None:
    threading.Timer(0.2, fetcher.stop).start()
    started = time.monotonic()
    with pytest.raises(TransferError) as caught:
        fetcher.fetch(artifact[1], timeout_s=60)
    assert caught.value.reason == "stopped"
    assert time.monotonic() - started < 5


def test_a_disk_error_is_a_transfer_error_and_the_next_fetch_resumes(
    fetcher: ChunkFetcher, artifact: tuple[Path, Manifest]
) -> None:
    path, manifest = artifact
    chunk = encode_chunk(manifest.sha256, 0, path.read_bytes())
    full = fetcher.cache.root / "partial" / f"{manifest.sha256}.tmp"
    full.symlink_to("/dev/full")  # the sidecar write fails with ENOSPC
    thread = _deliver_once_fetching(fetcher, chunk)
    with pytest.raises(TransferError) as caught:
        fetcher.fetch(manifest, timeout_s=5)
    thread.join()
    assert caught.value.reason == "io"
    full.unlink()  # room again
    thread = _deliver_once_fetching(fetcher, chunk)
    done = fetcher.fetch(manifest, timeout_s=5)
    thread.join()
    assert done.read_bytes() == path.read_bytes()


def test_server_refusals_reach_the_hook(tmp_path: Path) -> None:
    refusals: list[str] = []
    server = ChunkServer(
        address=NOWHERE, request_filter="evc/site-1/dev/+/model", lookup=lambda _sha: None,
        on_refused=refusals.append,
    )
    server._on_request(_message(b"junk", topic="evc/site-1/dev/cam-1/model"))
    server._on_request(_message(b"{}", topic="not/a/model/topic"))
    assert refusals == ["malformed", "topic"]
    request = encode_chunk_request("ab" * 32, [0])
    server._connection.publish = lambda _topic, _payload: None  # type: ignore[method-assign]
    server._on_request(_message(request, topic="evc/site-1/dev/cam-1/model"))
    assert refusals == ["malformed", "topic", "not_available"]
    assert server.refused == {"malformed": 1, "topic": 1, "not_available": 1}
