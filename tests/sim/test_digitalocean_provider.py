"""DigitalOcean's transport (DigitalOceanMetadata) against the simulator on loopback: the v1.json
document, polling, faults, the detection probe, and the link-local bootstrap's decisions
(with the in-memory netlink: the real kernel side is in tests/integration)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.adapters.platforms import digitalocean as transport
from guestagent.adapters.platforms.detect import detect
from guestagent.adapters.platforms.digitalocean import DigitalOceanMetadata, document_url
from guestagent.adapters.platforms.registry import PROVIDERS, provider
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.config import Config, DigitalOcean
from guestagent.domain.nics import Link
from guestagent.domain.platforms.digitalocean import digitalocean, link_local_address
from guestagent.ports.metadata import MetadataUnavailable, Snapshot
from guestsim import Simulator, free_port
from tests.fake_netlink import FakeNetlink

STATIC = "static-network.yaml"
ROOT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5hAIq0z8t+k/HAgOga24TiQ6rtStbub0FDVOkA27Iz alice@laptop"
DOC = "/metadata/v1.json"
MAC0, MAC1 = "52:54:00:12:34:56", "52:54:00:12:34:57"
BOOT = link_local_address(MAC0)

Open = Callable[..., DigitalOceanMetadata]


@pytest.fixture
def open_source() -> Iterator[Open]:
    opened: list[DigitalOceanMetadata] = []

    def factory(url: str, **kwargs: Any) -> DigitalOceanMetadata:
        settings = DigitalOcean(**kwargs.pop("settings", {}))
        source = DigitalOceanMetadata(url, settings=settings, backoff_max=0.2, **kwargs)
        opened.append(source)
        return source

    yield factory
    for source in opened:
        source.close()


@pytest.fixture
def sim(make_simulator: Callable[..., Simulator]) -> Simulator:
    return make_simulator(STATIC, platforms=("digitalocean",))


class Watcher:
    """Runs source.watch() in a thread; snapshots arrive in `seen`."""

    def __init__(self, source: DigitalOceanMetadata, last_etag: str | None = None) -> None:
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

    def next(self, timeout: float = 20.0) -> Snapshot:
        return self.seen.get(timeout=timeout)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.source.close()
        watcher.thread.join(timeout=20)
        assert not watcher.thread.is_alive(), "watch() did not end after close()"


# -- the document -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://169.254.169.254/metadata/v1.json", "http://169.254.169.254/metadata/v1.json"),
        ("http://169.254.169.254/metadata/v1/", "http://169.254.169.254/metadata/v1.json"),
        ("http://169.254.169.254/metadata/v1", "http://169.254.169.254/metadata/v1.json"),
        ("http://169.254.169.254/", "http://169.254.169.254/metadata/v1.json"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/metadata/v1.json"),
    ],
)
def test_document_url(given: str, expected: str) -> None:
    assert document_url(given) == expected


def test_get_reads_the_droplet(sim: Simulator, open_source: Open) -> None:
    source = open_source(sim.url("digitalocean"))  # the text tree's base: v1.json is beside it
    snapshot = source.get()
    md = snapshot.metadata
    assert md.platform == "digitalocean"
    assert md.instance_id == str(sim.get("droplet_id", platform="digitalocean"))
    assert md.hostname == "static-vm"
    assert [(k.user, k.line) for k in md.ssh_keys] == [(None, ROOT_KEY)]
    assert md.dns_servers == ("192.0.2.53", "2001:db8::53")
    public, private = md.network_interfaces
    assert public.mac == MAC0 and public.static
    assert public.addresses == ("198.51.100.10/20", "2001:db8::10/64")
    assert (public.gateway, public.gateway6) == ("198.51.100.1", "2001:db8::1")
    assert private.mac == MAC1 and private.addresses == ("10.10.0.10/16",) and private.gateway is None
    extras = digitalocean(md)
    assert extras is not None
    assert extras.region == "nyc3"
    assert extras.anchor_ipv4 == "192.0.2.10/24"  # the platform's: not among the addresses
    assert extras.floating_ip is None and not extras.dhcp_enabled
    assert md.rejections == ()
    [request] = sim.requests(path=DOC)
    assert request["method"] == "GET"
    # Same content, same tag.
    assert source.get().etag == snapshot.etag


def test_the_registry_opens_it_from_provider_options(sim: Simulator) -> None:
    spec = provider("digitalocean")
    assert spec is transport.PROVIDER and spec.default_url == transport.DEFAULT_URL
    config = Config(DigitalOcean=DigitalOcean(poll_interval=3.0))
    source = spec.open(ProviderOptions(url=sim.url("digitalocean"), config=config, backoff_max=1.0))
    try:
        assert isinstance(source, DigitalOceanMetadata)
        assert source.settings.poll_interval == 3.0 and source.bootstrap is None  # no netlink given
        assert source.get().metadata.hostname == "static-vm"
    finally:
        source.close()


def test_wrong_types_in_interfaces_hold_the_network(sim: Simulator, open_source: Open) -> None:
    sim.set("interfaces/public/0/ipv4/netmask", 20, platform="digitalocean")
    md = open_source(sim.url("digitalocean")).get().metadata
    assert {(r.concerns, r.holds) for r in md.rejections} == {
        ("network", True),
        ("nics", True),
        ("hostname", True),
    }
    assert [n.mac for n in md.network_interfaces] == [MAC1]


# -- following changes ------------------------------------------------------------------------------


def test_watch_yields_changes_only(sim: Simulator, open_source: Open, watchers: list[Watcher]) -> None:
    source = open_source(sim.url("digitalocean"), settings={"poll_interval": 0.1})
    first = source.get()
    watcher = Watcher(source, first.etag)
    watchers.append(watcher)
    # Unchanged polls yield nothing.
    assert sim.wait_for(lambda s: len(s.requests(path=DOC)) >= 4, timeout=20)
    assert watcher.seen.empty()
    sim.set("hostname", "renamed", platform="digitalocean")
    changed = watcher.next()
    assert changed.metadata.hostname == "renamed" and changed.etag != first.etag
    sim.set("public_keys", [], platform="digitalocean")
    assert watcher.next().metadata.ssh_keys == ()


def test_watch_rides_out_faults(sim: Simulator, open_source: Open, watchers: list[Watcher]) -> None:
    source = open_source(sim.url("digitalocean"), settings={"poll_interval": 0.1})
    sim.add_fault(DOC, "sequence", steps=[503, "reset", "truncate", "html", "ok"])
    watcher = Watcher(source)
    watchers.append(watcher)
    assert watcher.next().metadata.hostname == "static-vm"
    outcomes = [r["status"] for r in sim.requests(path=DOC)][:5]
    assert outcomes[0] == 503 and outcomes[-1] == 200


def test_close_ends_a_watch_promptly(sim: Simulator, open_source: Open) -> None:
    source = open_source(sim.url("digitalocean"), settings={"poll_interval": 3600})
    watcher = Watcher(source)
    watcher.next()
    started = time.monotonic()
    source.close()
    assert watcher.ended.wait(20)
    assert time.monotonic() - started < 20


# -- refused answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "says"),
    [
        ("status", {"status": 404}, "HTTP 404"),
        ("status", {"status": 500}, "HTTP 500"),
        ("html", {}, "HTML"),
        ("truncate", {"fraction": 0.5}, "cut short|truncated"),
        ("reset", {}, "unreachable"),
        ("body", {"body": "<html>portal</html>", "content_type": "text/plain"}, "HTML"),
        ("body", {"body": "[" * 5000 + "]" * 5000}, "nested"),
        ("body", {"body": "[]"}, "not a JSON object"),
        ("body", {"body": '{"hostname": "x"}'}, "droplet_id"),
        ("body", {"body": "not json"}, "JSON"),
    ],
)
def test_refused_answers_are_unavailable(
    sim: Simulator, open_source: Open, kind: str, params: dict[str, Any], says: str
) -> None:
    sim.add_fault(DOC, kind, **params)
    with pytest.raises(MetadataUnavailable, match=says):
        open_source(sim.url("digitalocean")).get()


def test_oversized_user_data_holds_only_what_reads_it(sim: Simulator, open_source: Open) -> None:
    """Far over DigitalOcean's 64 KiB (and over a MiB): the document is still read, its keys
    apply, and only what reads user data holds."""
    sim.set("user_data", "#!/bin/sh\n" + "#" * (2 * 1024 * 1024), platform="digitalocean")
    md = open_source(sim.url("digitalocean")).get().metadata
    assert [k.line for k in md.ssh_keys] == [ROOT_KEY]
    assert md.user_data is None
    assert {(r.where, r.concerns) for r in md.rejections if r.holds} == {
        ("user_data", "scripts"),
        ("user_data", "firstboot"),
    }


def test_a_document_over_the_bound_is_refused(
    sim: Simulator, open_source: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "DOCUMENT_MAX", 64 * 1024)
    sim.set("user_data", "x" * (64 * 1024), platform="digitalocean")
    with pytest.raises(MetadataUnavailable, match="larger than"):
        open_source(sim.url("digitalocean")).get()


def test_a_silent_server_costs_the_request_timeout_only(sim: Simulator, open_source: Open) -> None:
    sim.add_fault(DOC, "blackhole")
    source = open_source(sim.url("digitalocean"), request_timeout=(1.0, 1.0))
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable):
        source.get()
    assert time.monotonic() - started < 30


# -- detection ----------------------------------------------------------------------------------------


def test_probe_recognises_the_service(sim: Simulator) -> None:
    reason = transport._probe(ProviderOptions(url=sim.url("digitalocean")), 10.0)
    assert reason is not None and "DigitalOcean" in reason and f":{sim.port}" in reason


def test_probe_says_no_to_other_services(make_simulator: Callable[..., Simulator]) -> None:
    gce = make_simulator("demo.yaml", platforms=("gce", "ec2"))
    assert transport._probe(ProviderOptions(url=f"http://127.0.0.1:{gce.port}/"), 10.0) is None
    gce.add_fault("*", "html")
    assert transport._probe(ProviderOptions(url=f"http://127.0.0.1:{gce.port}/"), 10.0) is None


def test_probe_of_nothing_is_bounded() -> None:
    started = time.monotonic()
    assert transport._probe(ProviderOptions(url=f"http://127.0.0.1:{free_port()}/"), 5.0) is None
    assert transport._probe(ProviderOptions(url="http://127.0.0.1:1/"), 0.0) is None
    assert time.monotonic() - started < 30


def test_dmi_finds_a_droplet(tmp_path: Path) -> None:
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("DigitalOcean\n")
    (dmi / "product_name").write_text("Droplet\n")
    found = detect(ProviderOptions(root=str(tmp_path)), PROVIDERS, timeout=10)
    assert found.spec.name == "digitalocean" and "DigitalOcean" in found.reason


# -- the link-local bootstrap (in-memory netlink) ------------------------------------------------------

LO = Link(index=1, name="lo", mac="00:00:00:00:00:00", up=True, ipv4=("127.0.0.1",))


def droplet_links(up: bool = False) -> FakeNetlink:
    return FakeNetlink(
        [LO, Link(index=3, name="eth1", mac=MAC1, up=up), Link(index=2, name="eth0", mac=MAC0, up=up)]
    )


def test_no_address_yet_gets_a_temporary_one_until_the_own_ones_are_up(
    sim: Simulator, open_source: Open, caplog: pytest.LogCaptureFixture
) -> None:
    netlink = droplet_links()
    caplog.set_level(logging.INFO)
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink)
    source.get()
    # The first Ethernet NIC is brought up and carries the MAC-derived address.
    assert netlink.calls == ["up eth0", f"addr add {BOOT} eth0"]
    assert netlink.link("eth0").ipv4 == (BOOT.split("/")[0],)
    source.get()  # still no address of its own: the temporary one stays
    assert netlink.calls == ["up eth0", f"addr add {BOOT} eth0"]
    # The network configuration puts the droplet's own addresses on: the next answer drops ours.
    netlink.add_address("eth0", "198.51.100.10/20")
    source.get()
    assert netlink.calls[-1] == f"addr del {BOOT} eth0"
    assert netlink.link("eth0").ipv4 == ("198.51.100.10",)
    source.get()
    assert netlink.calls[-1] == f"addr del {BOOT} eth0"  # nothing more
    assert f"put the temporary address {BOOT} on eth0" in caplog.text
    assert "removed the temporary address" in caplog.text


def test_close_removes_the_temporary_address_and_adds_none_after(sim: Simulator, open_source: Open) -> None:
    netlink = droplet_links(up=True)
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink)
    source.get()
    source.close()
    assert netlink.calls == [f"addr add {BOOT} eth0", f"addr del {BOOT} eth0"]
    assert netlink.closed == 1
    source.get()  # a late request (a watch thread still finishing) adds no address again
    assert netlink.calls[-1] == f"addr del {BOOT} eth0"


def test_an_address_left_by_a_killed_run_is_adopted_and_removed(sim: Simulator, open_source: Open) -> None:
    netlink = droplet_links(up=True)
    netlink.add_address("eth0", BOOT)
    netlink.add_address("eth0", "198.51.100.10/20")
    netlink.calls.clear()
    open_source(sim.url("digitalocean"), netlink=lambda: netlink).get()
    assert netlink.calls == [f"addr del {BOOT} eth0"]


def test_own_addresses_that_do_not_reach_the_service_bring_the_address_back_for_good(
    sim: Simulator, open_source: Open
) -> None:
    netlink = droplet_links(up=True)
    netlink.add_address("eth0", "198.51.100.10/20")
    netlink.calls.clear()
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink)
    source.get()
    assert netlink.calls == []  # the droplet's own network is up: nothing to add
    sim.add_fault(DOC, "reset", count=1)
    with pytest.raises(MetadataUnavailable):
        source.get()
    source.get()
    source.get()
    assert netlink.calls == [f"addr add {BOOT} eth0"]  # and kept while the source is open
    source.close()
    assert netlink.calls[-1] == f"addr del {BOOT} eth0"


def test_an_http_error_is_not_a_network_problem(sim: Simulator, open_source: Open) -> None:
    netlink = droplet_links(up=True)
    netlink.add_address("eth0", "198.51.100.10/20")
    netlink.calls.clear()
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink)
    sim.add_fault(DOC, "status", status=503, count=1)
    with pytest.raises(MetadataUnavailable):
        source.get()
    source.get()
    assert netlink.calls == []


def test_netlink_failures_are_logged_once_and_the_request_still_goes_out(
    sim: Simulator, open_source: Open, caplog: pytest.LogCaptureFixture
) -> None:
    netlink = droplet_links(up=True)
    netlink.fail_on.add(BOOT)
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink)
    with caplog.at_level(logging.WARNING):
        source.get()
        source.get()
    assert caplog.text.count("adding the temporary address") == 1
    assert len(sim.requests(path=DOC)) == 2


def test_switched_off_by_configuration(sim: Simulator, open_source: Open) -> None:
    netlink = droplet_links()
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink, settings={"link_local": False})
    source.get()
    source.close()
    assert source.bootstrap is None and netlink.calls == []


def test_no_ethernet_link_at_all(sim: Simulator, open_source: Open) -> None:
    netlink = FakeNetlink([LO])
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink)
    assert source.get().metadata.hostname == "static-vm"
    assert netlink.calls == []


def test_the_provider_passes_its_netlink_on(sim: Simulator) -> None:
    netlink = droplet_links(up=True)
    options = ProviderOptions(url=sim.url("digitalocean"), netlink=lambda: netlink)
    source = provider("digitalocean").open(options)
    try:
        source.get()
    finally:
        source.close()
    assert netlink.calls == [f"addr add {BOOT} eth0", f"addr del {BOOT} eth0"]


def test_a_netlink_in_another_namespace_is_not_used(
    sim: Simulator, open_source: Open, caplog: pytest.LogCaptureFixture
) -> None:
    # Requests go out from this process's own namespace: an address put elsewhere would not help.
    netlink = FakeNetlink(droplet_links().links(), netns="gdo-nowhere")
    source = open_source(sim.url("digitalocean"), netlink=lambda: netlink)
    with caplog.at_level(logging.WARNING):
        assert source.get().metadata.hostname == "static-vm"
    assert netlink.calls == []
    assert "ip netns exec gdo-nowhere" in caplog.text
