"""Chunked model transfer on real brokers: cloud -> gateway cache -> devices, resume after an
interruption, hostile chunks refused by reason, a tampered artifact never completing, and a
broker restart in the middle of a transfer."""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import RawClient, finish_within, wait_for

from evc.harness import Broker
from evc.models import (
    ArtifactCache,
    ChunkFetcher,
    ChunkServer,
    Compatibility,
    Manifest,
    TransferError,
)
from evc.mqtt.client import BrokerAddress
from evc.synthetic.sample_model import sample_model_path
from evc.wire import Channel, DeviceTopic, GatewayTopic, device_filter, gateway_filter
from evc.wire.delivery import chunk_request_from, encode_chunk

pytestmark = pytest.mark.integration

CHUNK_BYTES = 64 * 1024
Lookup = Callable[[str], tuple[Manifest, Path] | None]


def _describe(path: Path) -> Manifest:
    return Manifest.describe(
        path, name="shapes", version="1",
        compatibility=Compatibility(input_shape=(3, 160, 160), classes=("a",)),
        created_ms=0, chunk_size=CHUNK_BYTES,
    )


@functools.cache
def _sample_manifest() -> Manifest:
    return _describe(sample_model_path())


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _serve(
    stack: ExitStack, broker: Broker, request_filter: str, lookup: Lookup
) -> ChunkServer:
    server = ChunkServer(
        address=BrokerAddress.from_url(broker.url), request_filter=request_filter, lookup=lookup
    ).start()
    stack.callback(finish_within, server.stop, "ChunkServer.stop()")
    wait_for(server.ready.is_set, message="the chunk server's subscription")
    return server


def _fetcher(
    stack: ExitStack, broker: Broker, receiver: DeviceTopic | GatewayTopic, cache: ArtifactCache
) -> ChunkFetcher:
    fetcher = ChunkFetcher(
        address=BrokerAddress.from_url(broker.url), receiver=receiver, cache=cache,
        quiet_s=0.3, max_quiet_s=1.0,
    ).start()
    stack.callback(finish_within, fetcher.stop, "ChunkFetcher.stop()")
    wait_for(fetcher.ready.is_set, message="the fetcher's subscription")
    return fetcher


def _holding(manifest: Manifest, path: Path) -> Lookup:
    return lambda sha256: (manifest, path) if sha256 == manifest.sha256 else None


def _completed(cache: ArtifactCache) -> list[Path]:
    return list((cache.root / "sha256").iterdir())


class _Background:
    """A fetch running in a thread, so the test can act while it waits."""

    def __init__(self, fetcher: ChunkFetcher, manifest: Manifest, timeout_s: float) -> None:
        self.result: Path | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fetcher, manifest, timeout_s))
        self._thread.start()

    def _run(self, fetcher: ChunkFetcher, manifest: Manifest, timeout_s: float) -> None:
        try:
            self.result = fetcher.fetch(manifest, timeout_s=timeout_s)
        except BaseException as exc:  # re-raised by join() in the test thread
            self.result = exc

    def join(self, timeout: float = 30.0) -> Path:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the fetch did not return"
        if isinstance(self.result, BaseException):
            raise self.result
        assert isinstance(self.result, Path)
        return self.result


def test_cloud_to_gateway_once_then_devices_from_its_cache(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str,
    tmp_path: Path, stack: ExitStack,
) -> None:
    manifest = _sample_manifest()
    site = evc_topic_namespace
    cloud = _serve(stack, evc_cloud_broker, gateway_filter(Channel.MODEL, site=site),
                   _holding(manifest, sample_model_path()))
    gateway_cache = ArtifactCache(tmp_path / "gw")
    uplink = _fetcher(stack, evc_cloud_broker, GatewayTopic(site, "gw-1", Channel.MODEL),
                      gateway_cache)

    def from_gateway_cache(sha256: str) -> tuple[Manifest, Path] | None:
        path = gateway_cache.path(sha256)
        return None if path is None or sha256 != manifest.sha256 else (manifest, path)

    fog = _serve(stack, evc_fog_broker, device_filter(site, Channel.MODEL), from_gateway_cache)
    path = uplink.fetch(manifest, timeout_s=15)
    assert path.read_bytes() == sample_model_path().read_bytes()
    assert uplink.chunks_received == manifest.chunk_count
    assert uplink.bytes_received == manifest.size
    assert not uplink.refused

    for device in ("cam-1", "cam-2"):
        cache = ArtifactCache(tmp_path / device)
        receiver = DeviceTopic(site, device, Channel.HEARTBEAT)  # any channel names the device
        fetcher = _fetcher(stack, evc_fog_broker, receiver, cache)
        got = fetcher.fetch(manifest, timeout_s=15)
        assert got.read_bytes() == sample_model_path().read_bytes()
        assert got == cache.path(manifest.sha256)
        assert fetcher.chunks_received == manifest.chunk_count
    # The artifact crossed the uplink once; both devices were served from the fog.
    assert cloud.chunks_served == manifest.chunk_count
    assert fog.chunks_served == 2 * manifest.chunk_count
    assert fog.bytes_served == 2 * manifest.size
    assert uplink.fetch(manifest, timeout_s=1) == path  # already cached: nothing asked
    assert cloud.chunks_served == manifest.chunk_count


def test_an_interrupted_fetch_resumes_asking_only_for_the_missing_chunks(
    evc_fog_broker: Broker, evc_topic_namespace: str, tmp_path: Path,
    stack: ExitStack, raw_client_factory: Callable[..., RawClient],
) -> None:
    manifest = _sample_manifest()
    site, window = evc_topic_namespace, 8
    served_requests = [0]

    def first_request_only(sha256: str) -> tuple[Manifest, Path] | None:
        # The serving side goes away after answering one window of chunks.
        served_requests[0] += 1
        return (manifest, sample_model_path()) if served_requests[0] == 1 else None

    server = _serve(stack, evc_fog_broker, device_filter(site, Channel.MODEL), first_request_only)
    receiver = DeviceTopic(site, "cam-1", Channel.MODEL)
    first = _fetcher(stack, evc_fog_broker, receiver, ArtifactCache(tmp_path / "cache"))
    with pytest.raises(TransferError) as failed:
        first.fetch(manifest, timeout_s=2)
    assert failed.value.reason == "timeout"
    assert first.chunks_received == window
    assert first.refused["not_available"] >= 1
    first.stop()  # the process state is discarded; only the cache's files remain

    missing = ArtifactCache(tmp_path / "cache").partial(manifest).missing()
    assert missing == list(range(window, manifest.chunk_count))
    spy = raw_client_factory(evc_fog_broker)
    spy.subscribe(str(receiver))
    server.stop()
    _serve(stack, evc_fog_broker, device_filter(site, Channel.MODEL),
           _holding(manifest, sample_model_path()))
    cache = ArtifactCache(tmp_path / "cache")
    second = _fetcher(stack, evc_fog_broker, receiver, cache)
    path = second.fetch(manifest, timeout_s=15)

    assert path.read_bytes() == sample_model_path().read_bytes()
    assert second.chunks_received == len(missing)
    asked = {i for payload in spy.payloads() for i in chunk_request_from(payload).chunks}
    assert asked == set(missing)


def test_hostile_chunks_are_refused_by_reason_and_the_fetch_completes(
    evc_fog_broker: Broker, evc_topic_namespace: str, tmp_path: Path,
    stack: ExitStack, raw_client_factory: Callable[..., RawClient],
) -> None:
    manifest = _sample_manifest()
    site = evc_topic_namespace
    receiver = DeviceTopic(site, "cam-1", Channel.MODEL)
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = _fetcher(stack, evc_fog_broker, receiver, cache)
    fetch = _Background(fetcher, manifest, timeout_s=15)  # no server yet: only the attacker
    data = sample_model_path().read_bytes()
    chunk = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    other = "ab" * 32
    hostile = raw_client_factory(evc_fog_broker)
    topic = str(DeviceTopic(site, "cam-1", Channel.CHUNK))
    for payload in (
        encode_chunk(manifest.sha256, 0, chunk[0][:-1]),  # truncated
        encode_chunk(manifest.sha256, 1, chunk[2]),  # another chunk's bytes
        encode_chunk(manifest.sha256, manifest.chunk_count, chunk[0]),  # past the end
        encode_chunk(other, 0, chunk[0]),  # a chunk of another artifact
        b"\x93\x01garbage",  # not msgpack
    ):
        hostile.publish(topic, payload)
    expected = {
        "chunk_size": 1, "chunk_digest": 1, "chunk_index": 1, "unknown_artifact": 1,
        "malformed": 1,
    }
    wait_for(lambda: dict(fetcher.refused) == expected,
             message=lambda: f"refusals {expected}, got {dict(fetcher.refused)}")
    assert fetcher.chunks_received == 0
    assert cache.partial(manifest).missing() == list(range(manifest.chunk_count))

    _serve(stack, evc_fog_broker, device_filter(site, Channel.MODEL),
           _holding(manifest, sample_model_path()))
    path = fetch.join()
    assert path.read_bytes() == data
    assert fetcher.chunks_received == manifest.chunk_count
    assert dict(fetcher.refused) == expected


def test_a_tampered_artifact_never_completes(
    evc_fog_broker: Broker, evc_topic_namespace: str, tmp_path: Path,
    stack: ExitStack,
) -> None:
    manifest = _sample_manifest()
    site = evc_topic_namespace
    tampered = tmp_path / "tampered.onnx"
    shutil.copyfile(sample_model_path(), tampered)
    with tampered.open("r+b") as file:
        file.seek(5 * CHUNK_BYTES + 100)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0xFF]))
    _serve(stack, evc_fog_broker, device_filter(site, Channel.MODEL), _holding(manifest, tampered))
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = _fetcher(stack, evc_fog_broker, DeviceTopic(site, "cam-1", Channel.MODEL), cache)
    with pytest.raises(TransferError) as failed:
        fetcher.fetch(manifest, timeout_s=3)

    assert failed.value.reason == "timeout"
    assert fetcher.refused["chunk_digest"] >= 2  # refused, asked again, refused again
    assert set(fetcher.refused) == {"chunk_digest"}
    assert cache.partial(manifest).missing() == [5]  # every honest chunk kept for a retry
    assert cache.path(manifest.sha256) is None
    assert _completed(cache) == []


def test_a_manifest_whose_digest_lies_fails_with_digest(
    evc_fog_broker: Broker, evc_topic_namespace: str, tmp_path: Path,
    stack: ExitStack,
) -> None:
    manifest = _sample_manifest()
    site = evc_topic_namespace
    forged = manifest.model_copy(update={"sha256": "0" * 64})  # chunk digests still right
    _serve(stack, evc_fog_broker, device_filter(site, Channel.MODEL),
           _holding(forged, sample_model_path()))
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = _fetcher(stack, evc_fog_broker, DeviceTopic(site, "cam-1", Channel.MODEL), cache)
    with pytest.raises(TransferError) as failed:
        fetcher.fetch(forged, timeout_s=15)

    assert failed.value.reason == "digest"
    assert fetcher.chunks_received == manifest.chunk_count
    assert _completed(cache) == []
    assert list((cache.root / "partial").iterdir()) == []  # discarded, not kept for a retry


def test_the_fetch_completes_across_a_broker_restart(
    evc_fog_broker: Broker, evc_topic_namespace: str, tmp_path: Path,
    stack: ExitStack,
) -> None:
    manifest = _sample_manifest()
    site = evc_topic_namespace
    resumed = threading.Event()
    requests = [0]

    def stalls_after_one_window(sha256: str) -> tuple[Manifest, Path] | None:
        requests[0] += 1
        if requests[0] == 1 or resumed.is_set():
            return manifest, sample_model_path()
        return None

    _serve(stack, evc_fog_broker, device_filter(site, Channel.MODEL), stalls_after_one_window)
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = _fetcher(stack, evc_fog_broker, DeviceTopic(site, "cam-1", Channel.MODEL), cache)
    fetch = _Background(fetcher, manifest, timeout_s=20)
    wait_for(lambda: fetcher.chunks_received == 8, message="the first window of chunks")

    evc_fog_broker.restart()
    resumed.set()
    path = fetch.join()
    assert path.read_bytes() == sample_model_path().read_bytes()
    assert fetcher.connections >= 2  # it did reconnect and subscribe again
    assert fetcher.chunks_received == manifest.chunk_count
