"""EC2's transport (Ec2Metadata) against the simulator on loopback: tokens, faults, polling."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from guestagent.adapters.platforms import ec2 as transport
from guestagent.adapters.platforms.ec2 import Ec2Metadata, service_root
from guestagent.adapters.platforms.registry import provider
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.config import EC2, Config
from guestagent.domain.platforms.ec2 import Ec2Extras, ec2
from guestagent.ports.metadata import MetadataDisabled, MetadataUnavailable, Snapshot
from guestsim import Simulator, free_port
from tests.keys import ED25519_BOB

V2 = "ec2-v2-required.yaml"
V2_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5hAIq0z8t+k/HAgOga24TiQ6rtStbub0FDVOkA27Iz ec2-user@example"
TOKEN = "x-aws-ec2-metadata-token"
TTL = "x-aws-ec2-metadata-token-ttl-seconds"

Open = Callable[..., Ec2Metadata]


@pytest.fixture
def open_source() -> Iterator[Open]:
    opened: list[Ec2Metadata] = []

    def factory(sim: Simulator, clock: Callable[[], float] = time.monotonic, **settings: Any) -> Ec2Metadata:
        source = Ec2Metadata(
            f"http://127.0.0.1:{sim.port}/", settings=EC2(**settings), backoff_max=0.2, clock=clock
        )
        opened.append(source)
        return source

    yield factory
    for source in opened:
        source.close()


class Watcher:
    """Runs source.watch() in a thread; snapshots arrive in `seen`."""

    def __init__(self, source: Ec2Metadata, last_etag: str | None = None) -> None:
        self.source = source
        self.seen: queue.Queue[Snapshot] = queue.Queue()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(last_etag,), daemon=True)
        self.thread.start()

    def _run(self, last_etag: str | None) -> None:
        try:
            for snapshot in self.source.watch(last_etag):
                self.seen.put(snapshot)
        finally:
            self.ended.set()

    def next(self, timeout: float = 10.0) -> Snapshot:
        return self.seen.get(timeout=timeout)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.source.close()
        watcher.thread.join(timeout=10)
        assert not watcher.thread.is_alive(), "watch() did not end after close()"


def puts(sim: Simulator) -> list[dict[str, Any]]:
    return sim.requests(path="*/api/token", method="PUT")


def test_imdsv2_required(make_simulator: Any, open_source: Open) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    source = open_source(sim, token_ttl=600)
    md = source.get().metadata
    assert md.platform == "ec2"
    assert md.instance_id == "i-0abc1234def567890"
    assert md.hostname == "ip-172-31-5-10.eu-west-1.compute.internal"
    assert [(k.user, k.line) for k in md.ssh_keys] == [(None, V2_KEY)]
    [eth0] = md.network_interfaces
    assert (eth0.mac, eth0.ip, eth0.prefix_length) == ("0a:1b:2c:3d:4e:5f", "172.31.5.10", 20)
    assert md.user_data is None
    assert md.rejections == ()
    assert ec2(md) == Ec2Extras(
        region="eu-west-1",
        availability_zone="eu-west-1a",
        instance_type="t3.small",
        account_id="123456789012",
        image_id="ami-0123456789abcdef0",
    )
    [put] = puts(sim)
    assert put["headers"][TTL] == "600"
    gets = sim.requests(method="GET")
    assert gets
    assert all(r["headers"].get(TOKEN) for r in gets)
    assert not [r for r in sim.requests() if r["status"] == 401]
    # One walk is a handful of requests, and the token is reused by the next one.
    assert len(gets) <= 15
    sim.clear_requests()
    source.get()
    assert puts(sim) == []
    assert len(sim.requests()) == len(gets)


def test_expired_token_is_renewed_on_401(make_simulator: Any, open_source: Open) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    source = open_source(sim, token_ttl=60)
    first = source.get()
    sim.advance_clock(61)  # the server forgets the token; our clock still trusts it
    sim.clear_requests()
    again = source.get()
    assert again.metadata == first.metadata
    assert again.etag == first.etag
    log = sim.requests()
    assert [r["status"] for r in log[:3]] == [401, 200, 200]
    assert log[1]["method"] == "PUT"
    assert log[0]["path"] == log[2]["path"]  # the refused request is retried once
    assert len([r for r in log if r["status"] == 401]) == 1


def test_token_is_renewed_before_it_expires(make_simulator: Any, open_source: Open) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    now = [1000.0]
    source = open_source(sim, clock=lambda: now[0], token_ttl=100)
    source.get()
    now[0] += 70  # before 80% of the lifetime: kept
    source.get()
    assert len(puts(sim)) == 1
    now[0] += 15  # past 80%: a new one before the server would refuse the old one
    source.get()
    assert len(puts(sim)) == 2
    assert not [r for r in sim.requests() if r["status"] == 401]


def test_disabled_endpoint_stops_without_a_storm(
    make_simulator: Any, open_source: Open, watchers: list[Watcher]
) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    sim.set("imds/http-endpoint", "disabled", platform="ec2")
    source = open_source(sim, allow_imdsv1=True, poll_interval=0.01)  # 403 never falls back to v1
    with pytest.raises(MetadataDisabled):
        source.get()
    watcher = Watcher(source)
    watchers.append(watcher)
    assert watcher.ended.wait(5), "watch() kept going on a disabled endpoint"
    assert watcher.seen.empty()
    log = sim.requests()
    assert [r["method"] for r in log] == ["PUT", "PUT"]
    assert all(r["status"] == 403 for r in log)


def test_endpoint_disabled_while_watching_ends_the_watch(
    make_simulator: Any, open_source: Open, watchers: list[Watcher]
) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    watcher = Watcher(open_source(sim, poll_interval=0.05))
    watchers.append(watcher)
    watcher.next()
    sim.set("imds/http-endpoint", "disabled", platform="ec2")
    assert watcher.ended.wait(5)
    time.sleep(0.3)
    assert len([r for r in sim.requests() if r["status"] == 403]) == 1


def test_hop_limit_black_hole_fails_fast(make_simulator: Any, open_source: Open) -> None:
    sim = make_simulator("demo.yaml", platforms=("ec2",))
    sim.set("imds/hop-limit-exceeded", True, platform="ec2")
    source = open_source(sim)
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable, match="allow_imdsv1"):
        source.get()
    assert time.monotonic() - started < 15
    assert sim.requests(method="GET") == []  # IMDSv1 is off: nothing was read without a token


def test_hop_limit_falls_back_to_imdsv1_when_allowed(make_simulator: Any, open_source: Open) -> None:
    sim = make_simulator("demo.yaml", platforms=("ec2",))
    sim.set("imds/hop-limit-exceeded", True, platform="ec2")
    source = open_source(sim, allow_imdsv1=True)
    started = time.monotonic()
    md = source.get().metadata
    assert time.monotonic() - started < 15
    assert len(md.ssh_keys) == 3
    gets = sim.requests(method="GET")
    assert gets
    assert not any(TOKEN in r["headers"] for r in gets)
    source.get()  # no second wait on the black hole
    assert len(puts(sim)) == 1


def test_user_data_absent_is_none_and_present_is_bytes(make_simulator: Any, open_source: Open) -> None:
    bare = make_simulator({}, platforms=("ec2",))
    md = open_source(bare).get().metadata
    assert md.user_data is None
    assert md.ssh_keys == ()  # public-keys/ is not listed at all
    demo = make_simulator("demo.yaml", platforms=("ec2",))
    assert (open_source(demo).get().metadata.user_data or b"").startswith(b"#cloud-config\n")


@pytest.mark.parametrize("pattern", ["meta-data*", "meta-data/public-keys*", "api/token"])
def test_html_with_200_is_refused(make_simulator: Any, open_source: Open, pattern: str) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    sim.add_fault(pattern, kind="html")
    with pytest.raises(MetadataUnavailable, match=r"HTML|token"):
        open_source(sim).get()


def test_oversized_user_data_holds_only_what_reads_it(make_simulator: Any, open_source: Open) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    sim.set("user-data", "#!/bin/sh\n" + "x" * (16 * 1024), platform="ec2")
    md = open_source(sim).get().metadata
    assert md.user_data is None and md.ssh_keys  # the keys in the same snapshot still apply
    held = {(r.where, r.concerns) for r in md.rejections if r.holds}
    assert held == {("user-data", "scripts"), ("user-data", "firstboot")}
    assert all("larger than 16384" in r.reason for r in md.rejections if r.holds)


def test_truncated_body_is_refused(make_simulator: Any, open_source: Open) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    sim.add_fault("meta-data/public-keys/0/openssh-key", kind="truncate")
    with pytest.raises(MetadataUnavailable, match="cut short"):
        open_source(sim).get()


def test_a_404_cut_short_is_no_absent_file(make_simulator: Any, open_source: Open) -> None:
    # No user data (V2 has none): its 404, cut short, must not let a snapshot of the rest through.
    sim = make_simulator(V2, platforms=("ec2",))
    assert open_source(sim).get().metadata.user_data is None
    sim.add_fault("user-data", kind="truncate", fraction=0.3)
    with pytest.raises(MetadataUnavailable, match="cut short"):
        open_source(sim).get()


def test_watch_sees_a_changed_key_and_nothing_when_unchanged(
    make_simulator: Any, open_source: Open, watchers: list[Watcher]
) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    source = open_source(sim, poll_interval=0.05)
    watcher = Watcher(source)
    watchers.append(watcher)
    first = watcher.next()
    assert [k.line for k in first.metadata.ssh_keys] == [V2_KEY]
    sim.clear_requests()
    time.sleep(0.6)
    assert watcher.seen.empty()  # polled, unchanged: nothing new
    assert len(sim.requests(path="*/meta-data/")) >= 2
    assert puts(sim) == []  # the token outlives the polls
    sim.set("meta-data/public-keys", [{"name": "bob", "openssh-key": ED25519_BOB}], platform="ec2")
    changed = watcher.next()
    assert [(k.user, k.line) for k in changed.metadata.ssh_keys] == [(None, ED25519_BOB)]
    assert changed.etag != first.etag


def test_watch_from_a_known_tag_yields_nothing_until_a_change(
    make_simulator: Any, open_source: Open, watchers: list[Watcher]
) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    source = open_source(sim, poll_interval=0.05)
    known = source.get().etag
    watcher = Watcher(source, known)
    watchers.append(watcher)
    with pytest.raises(queue.Empty):
        watcher.next(timeout=0.5)
    sim.set("user-data", "#cloud-config\n", platform="ec2")
    assert watcher.next().metadata.user_data == b"#cloud-config\n"


def test_watch_rides_out_server_errors(
    make_simulator: Any, open_source: Open, watchers: list[Watcher]
) -> None:
    sim = make_simulator(V2, platforms=("ec2",))
    sim.add_fault("meta-data*", kind="status", status=503, count=3)
    watcher = Watcher(open_source(sim, poll_interval=0.05))
    watchers.append(watcher)
    assert watcher.next().metadata.instance_id == "i-0abc1234def567890"


def test_ipv6_base_address(make_simulator: Any) -> None:
    assert service_root("http://[fd00:ec2::254]/") == "http://[fd00:ec2::254]/latest/"
    assert service_root("http://169.254.169.254") == "http://169.254.169.254/latest/"
    sim = make_simulator(V2, platforms=("ec2",), host="::1")
    assert service_root(sim.url("ec2")) == sim.url("ec2")
    source = Ec2Metadata(f"http://[::1]:{sim.port}/")
    try:
        assert source.get().metadata.instance_id == "i-0abc1234def567890"
    finally:
        source.close()


def test_provider_spec_opens_and_probes(make_simulator: Any) -> None:
    spec = provider("ec2")
    assert spec is transport.PROVIDER
    assert spec.default_url == "http://169.254.169.254/"
    assert spec.dmi is not None and spec.dmi({"sys_vendor": "Amazon EC2"})
    sim = make_simulator(V2, platforms=("ec2",))
    options = ProviderOptions(url=f"http://127.0.0.1:{sim.port}/", config=Config(EC2=EC2(token_ttl=120)))
    source = spec.open(options)
    try:
        assert source.platform == "ec2"
        source.get()
        assert puts(sim)[0]["headers"][TTL] == "120"
    finally:
        source.close()
    assert spec.probe is not None
    assert spec.probe(options, 3.0)
    sim.set("imds/http-endpoint", "disabled", platform="ec2")
    assert "403" in (spec.probe(options, 3.0) or "")


def test_probe_is_bounded_when_nothing_answers(make_simulator: Any) -> None:
    assert transport.PROVIDER.probe is not None
    nobody = ProviderOptions(url=f"http://127.0.0.1:{free_port()}/")
    assert transport.PROVIDER.probe(nobody, 2.0) is None
    sim = make_simulator("demo.yaml", platforms=("ec2",))
    sim.set("imds/hop-limit-exceeded", True, platform="ec2")
    silent = ProviderOptions(url=f"http://127.0.0.1:{sim.port}/")
    started = time.monotonic()
    assert transport.PROVIDER.probe(silent, 1.0) is None
    assert time.monotonic() - started < 5
    v1 = ProviderOptions(url=silent.url, config=Config(EC2=EC2(allow_imdsv1=True)))
    assert transport.PROVIDER.probe(v1, 4.0)
