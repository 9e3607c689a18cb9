"""Platform detection: order, registry-order choice among probes, the total bound, the messages.

Every provider here is a fake, or a real one whose probe is replaced by a fake:
no test can reach a metadata address (and the unit conftest refuses sockets).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests

from guestagent.adapters.platforms import gce
from guestagent.adapters.platforms.detect import (
    CONFIGURED_REASON,
    Detection,
    DetectionFailed,
    describe,
    detect,
    detect_command_output,
    failure_reason,
    read_dmi,
)
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.config import Config, Core

Probe = Callable[[ProviderOptions, float], "str | None"]


@pytest.fixture(autouse=True)
def _no_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: no real probe may send a request from these tests."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unit test sent an HTTP request")

    monkeypatch.setattr(requests.Session, "send", refuse)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Hanging fakes wait on this; set at teardown so their daemon threads end."""
    event = threading.Event()
    yield event
    event.set()


def spec(
    name: str,
    *,
    dmi: Callable[[Mapping[str, str]], str | None] | None = None,
    local: Callable[[ProviderOptions], str | None] | None = None,
    probe: Probe | None = None,
) -> ProviderSpec:
    def no_open(options: ProviderOptions) -> Any:
        raise AssertionError("detection must not open a provider")

    return ProviderSpec(name=name, open=no_open, dmi=dmi, local=local, probe=probe)


def ec2_dmi(dmi: Mapping[str, str]) -> str | None:
    # The documented rule (PROTOCOLS.md): sys_vendor 'Amazon EC2' or product_version containing amazon.
    if dmi.get("sys_vendor") == "Amazon EC2":
        return "DMI sys_vendor is 'Amazon EC2'"
    if "amazon" in dmi.get("product_version", "").lower():
        return f"DMI product_version is {dmi['product_version']!r}"
    return None


def answers(reason: str, delay: float = 0.0) -> Probe:
    def probe(options: ProviderOptions, timeout: float) -> str:
        time.sleep(delay)
        return reason

    return probe


def fails(delay: float = 0.0, exc: Exception | None = None) -> Probe:
    def probe(options: ProviderOptions, timeout: float) -> str | None:
        time.sleep(delay)
        if exc is not None:
            raise exc
        return None

    return probe


def hangs(release: threading.Event) -> Probe:
    def probe(options: ProviderOptions, timeout: float) -> str | None:
        release.wait(30)
        return "too late"

    return probe


def forbidden(options: ProviderOptions, timeout: float) -> str | None:
    raise AssertionError("this probe must not run")


def write_dmi(root: Path, fields: Mapping[str, str]) -> str:
    base = root / "sys/class/dmi/id"
    base.mkdir(parents=True, exist_ok=True)
    for name, value in fields.items():
        (base / name).write_text(value + "\n")
    return str(root)


def options(root: str = "/nonexistent-root", **core: Any) -> ProviderOptions:
    return ProviderOptions(root=root, config=Config(Core=Core(**core)))


# -- read_dmi --------------------------------------------------------------------------------


def test_read_dmi_strips_and_skips_missing(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"sys_vendor": "  Amazon EC2 ", "product_name": "m5.large", "bios_vendor": ""})
    assert read_dmi(root) == {"sys_vendor": "Amazon EC2", "product_name": "m5.large"}


def test_read_dmi_of_a_machine_without_dmi(tmp_path: Path) -> None:
    assert read_dmi(str(tmp_path)) == {}


def test_read_dmi_is_bounded_and_skips_what_is_not_a_plain_file(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"product_name": "x" * 10_000})
    base = tmp_path / "sys/class/dmi/id"
    os.mkfifo(base / "sys_vendor")  # would block a plain open() forever
    (base / "product_uuid").mkdir()  # unreadable as a file
    (base / "board_vendor").symlink_to(base / "product_name")
    started = time.monotonic()
    dmi = read_dmi(root)
    assert time.monotonic() - started < 2
    assert dmi == {"product_name": "x" * 4096}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_read_dmi_skips_an_unreadable_uuid(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"product_uuid": "EC2E1916-9099-7CAF-FD21-012345678901", "sys_vendor": "QEMU"})
    (tmp_path / "sys/class/dmi/id/product_uuid").chmod(0)
    assert read_dmi(root) == {"sys_vendor": "QEMU"}


# -- DMI decides -----------------------------------------------------------------------------


def providers_for_dmi() -> tuple[ProviderSpec, ...]:
    return (
        attrs.evolve(gce.PROVIDER, probe=fails()),
        spec("ec2", dmi=ec2_dmi, probe=fails()),
        spec("nocloud", local=lambda o: None),
    )


@pytest.mark.parametrize(
    ("fields", "name", "reason"),
    [
        ({"product_name": "Google Compute Engine", "sys_vendor": "Google"}, "gce",
         "DMI product_name is 'Google Compute Engine'"),
        ({"sys_vendor": "Amazon EC2", "product_name": "t3.micro"}, "ec2", "DMI sys_vendor is 'Amazon EC2'"),
        ({"sys_vendor": "Xen", "product_version": "4.11.amazon"}, "ec2", "DMI product_version is '4.11.amazon'"),
        ({"sys_vendor": "QEMU", "product_name": "Standard PC (i440FX + PIIX, 1996)"}, None,
         "no DMI match (sys_vendor='QEMU', product_name='Standard PC (i440FX + PIIX, 1996)')"),
        ({}, None, "no DMI match (no DMI fields readable)"),
    ],
)
def test_dmi_table(tmp_path: Path, fields: dict[str, str], name: str | None, reason: str) -> None:
    opts = options(write_dmi(tmp_path, fields))
    if name is None:
        with pytest.raises(DetectionFailed) as failed:
            detect(opts, providers_for_dmi(), timeout=2)
        assert reason in str(failed.value)
        return
    found = detect(opts, providers_for_dmi(), timeout=2)
    assert (found.spec.name, found.reason) == (name, reason)


def test_dmi_decides_before_local_media_and_probes(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"sys_vendor": "Amazon EC2"})
    providers = (
        spec("nocloud", local=lambda o: "seed found", probe=forbidden),
        spec("ec2", dmi=ec2_dmi, probe=forbidden),
    )
    assert detect(options(root), providers, timeout=2).spec.name == "ec2"


def test_first_dmi_match_in_registry_order_wins(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"sys_vendor": "QEMU"})
    providers = (
        spec("a", dmi=lambda d: None),
        spec("b", dmi=lambda d: "b says so"),
        spec("c", dmi=lambda d: "c says so"),
    )
    found = detect(options(root), providers, timeout=2)
    assert (found.spec.name, found.reason) == ("b", "b says so")


def test_a_dmi_hint_that_raises_is_recorded(tmp_path: Path) -> None:
    def broken(dmi: Mapping[str, str]) -> str | None:
        raise KeyError("oops")

    root = write_dmi(tmp_path, {"sys_vendor": "QEMU"})
    with pytest.raises(DetectionFailed, match=r"no DMI match \(sys_vendor='QEMU'; bad: 'oops'\)"):
        detect(options(root), (spec("bad", dmi=broken),), timeout=1)


# -- configured platform ---------------------------------------------------------------------


def test_configured_platform_wins_over_dmi(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"product_name": "Google Compute Engine"})
    providers = providers_for_dmi()
    found = detect(options(root, platform="ec2"), providers, timeout=2)
    assert found == Detection(providers[1], CONFIGURED_REASON)


def test_configured_platform_from_the_real_registry_probes_nothing() -> None:
    found = detect(options(platform="gce"))
    assert found == Detection(gce.PROVIDER, "configured in [Core] platform")


def test_configured_platform_that_does_not_exist() -> None:
    with pytest.raises(DetectionFailed, match=r"'azure' is not a known platform; known: auto, gce, ec2"):
        detect(options(platform="azure"), providers_for_dmi()[:2])


# -- local media -----------------------------------------------------------------------------


def test_local_media_wins_over_probes() -> None:
    providers = (
        spec("gce", probe=forbidden),
        spec("nocloud", local=lambda o: f"seed directory under {o.root}", probe=forbidden),
    )
    found = detect(options("/sandbox"), providers, timeout=2)
    assert (found.spec.name, found.reason) == ("nocloud", "seed directory under /sandbox")


def test_local_hints_in_registry_order_and_a_raising_one_is_skipped() -> None:
    def broken(o: ProviderOptions) -> str | None:
        raise OSError("cannot read /dev/sr0")

    providers = (
        spec("configdrive", local=broken),
        spec("cpio", local=lambda o: None),
        spec("nocloud", local=lambda o: "nocloud seed"),
        spec("later", local=lambda o: "also here"),
    )
    assert detect(options(), providers, timeout=2).spec.name == "nocloud"


def test_a_hanging_local_hint_is_bounded(release: threading.Event) -> None:
    def stuck(o: ProviderOptions) -> str | None:
        release.wait(30)
        return "too late"

    started = time.monotonic()
    with pytest.raises(DetectionFailed, match=r"no local media \(slow: timed out\)"):
        detect(options(), (spec("slow", local=stuck),), timeout=0.5)
    assert time.monotonic() - started < 5


# -- probes ----------------------------------------------------------------------------------


def test_earlier_registered_probe_wins_even_when_it_answers_later() -> None:
    providers = (spec("gce", probe=answers("gce answered", delay=0.3)), spec("ec2", probe=answers("ec2 answered")))
    found = detect(options(), providers, timeout=5)
    assert (found.spec.name, found.reason) == ("gce", "gce answered")


def test_later_probe_wins_once_earlier_ones_failed() -> None:
    providers = (
        spec("gce", probe=fails(delay=0.2)),
        spec("ec2", probe=answers("ec2 answered")),
        spec("azure", probe=answers("azure answered")),
    )
    assert detect(options(), providers, timeout=5).spec.name == "ec2"


def test_a_hanging_earlier_probe_is_waited_for_only_while_time_remains(release: threading.Event) -> None:
    providers = (spec("gce", probe=hangs(release)), spec("ec2", probe=answers("ec2 answered")))
    started = time.monotonic()
    found = detect(options(), providers, timeout=0.5)
    elapsed = time.monotonic() - started
    assert found.spec.name == "ec2"
    assert 0.4 < elapsed < 5


def test_probes_run_concurrently() -> None:
    providers = (
        *(spec(f"p{i}", probe=fails(delay=0.4)) for i in range(5)),
        spec("last", probe=answers("last answered", delay=0.4)),
    )
    started = time.monotonic()
    assert detect(options(), providers, timeout=10).spec.name == "last"
    assert time.monotonic() - started < 2  # six 0.4 s probes one after another would take 2.4 s


def test_probes_get_the_time_that_is_left() -> None:
    seen: list[float] = []

    def probe(o: ProviderOptions, timeout: float) -> str:
        seen.append(timeout)
        return "ok"

    detect(options(), (spec("gce", probe=probe),), timeout=3)
    assert len(seen) == 1
    assert 0 < seen[0] <= 3


def test_the_whole_detection_is_bounded(release: threading.Event) -> None:
    providers = (spec("gce", probe=hangs(release)), spec("ec2", probe=hangs(release)))
    started = time.monotonic()
    with pytest.raises(DetectionFailed, match=r"probes: gce: timed out, ec2: timed out"):
        detect(options(), providers, timeout=0.5)
    assert time.monotonic() - started < 5


def test_default_bound_is_core_detect_timeout(release: threading.Event) -> None:
    started = time.monotonic()
    with pytest.raises(DetectionFailed, match=r"limit 0.5s"):
        detect(options(detect_timeout=0.5), (spec("gce", probe=hangs(release)),))
    assert time.monotonic() - started < 5


def test_a_probe_that_raises_is_a_failed_probe() -> None:
    providers = (
        spec("gce", probe=fails(exc=RuntimeError("probe bug"))),
        spec("ec2", probe=answers("ec2 answered")),
    )
    assert detect(options(), providers, timeout=2).spec.name == "ec2"
    with pytest.raises(DetectionFailed, match=r"probes: gce: probe bug"):
        detect(options(), providers[:1], timeout=2)


def test_a_clock_past_the_deadline_starts_no_probes() -> None:
    ticks = iter([0.0])

    def clock() -> float:
        return next(ticks, 100.0)

    providers = (spec("nocloud", local=lambda o: "seed"), spec("gce", probe=forbidden))
    with pytest.raises(DetectionFailed) as failed:
        detect(options(), providers, timeout=1, clock=clock)
    assert "nocloud: not checked, out of time" in str(failed.value)
    assert "probes: not started, out of time" in str(failed.value)


# -- messages, logging, the command ----------------------------------------------------------


def test_nothing_found_lists_what_was_tried(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)",
                                "product_uuid": "0f5a2c4e-0000-0000-0000-000000000000"})
    providers = (
        attrs.evolve(gce.PROVIDER, probe=fails(exc=TimeoutError())),
        spec("ec2", dmi=ec2_dmi, probe=fails(exc=ConnectionRefusedError(111, "Connection refused"))),
        spec("nocloud", local=lambda o: None),
        spec("quiet", probe=fails()),
    )
    with pytest.raises(DetectionFailed) as failed:
        detect(options(root), providers, timeout=2)
    message = str(failed.value)
    assert (
        "no DMI match (sys_vendor='QEMU', product_name='Standard PC (Q35 + ICH9, 2009)'); "
        "no local media (nocloud: none found); "
        "probes: gce: timed out, ec2: connection refused, quiet: not found"
    ) in message
    assert "0f5a2c4e" not in message
    assert message.startswith("no platform detected within ")
    assert "[Core] platform" in message
    assert len(failed.value.tried) == 3
    assert isinstance(failed.value, ValueError)


def test_nothing_to_try_at_all() -> None:
    with pytest.raises(DetectionFailed, match=r"no DMI match \(no DMI fields readable\); "
                                              r"no local media hints; no network probes"):
        detect(options(), (spec("bare"),), timeout=1)


def test_one_log_line_says_what_and_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_dmi(tmp_path, {"sys_vendor": "Amazon EC2"})
    with caplog.at_level(logging.DEBUG, logger="guestagent"):
        detect(options(root), providers_for_dmi(), timeout=2)
    assert [r.getMessage() for r in caplog.records] == ["platform ec2: DMI sys_vendor is 'Amazon EC2'"]


def test_describe_and_command_output(tmp_path: Path) -> None:
    root = write_dmi(tmp_path, {"product_name": "Google Compute Engine"})
    found = Detection(gce.PROVIDER, "DMI product_name is 'Google Compute Engine'")
    assert describe(found) == "gce\tDMI product_name is 'Google Compute Engine'"
    assert detect_command_output(options(root), providers_for_dmi(), timeout=2) == (0, describe(found))
    code, text = detect_command_output(options(), (spec("gce", probe=fails()),), timeout=1)
    assert code == 2
    assert "probes: gce: not found" in text


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (TimeoutError("timed out"), "timed out"),
        (RuntimeError(""), "RuntimeError"),
        (ValueError("bad answer"), "bad answer"),
    ],
)
def test_failure_reason(exc: Exception, reason: str) -> None:
    assert failure_reason(exc) == reason


def test_failure_reason_looks_through_wrappers() -> None:
    class Wrapper(Exception):
        pass

    def wrapped() -> Wrapper:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            return Wrapper(Exception("pool", inner))

    assert failure_reason(wrapped()) == "connection refused"
    assert failure_reason(Wrapper("no cause")) == "no cause"
