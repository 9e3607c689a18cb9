"""Metadata scripts: ordering and precedence (pure), and run_scripts with fake runner/fetcher."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.domain import scripts
from guestagent.domain.config import Config, MetadataScripts
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.ports.scripts import FetchError, ScriptResult
from guestagent.services.context import Context
from guestagent.services.scripts import run_scripts
from tests.fakes import FixedClock, RecordingRunner
from tests.gce_metadata import from_attributes


def _meta(instance: dict[str, str], project: dict[str, str] | None = None) -> InstanceMetadata:
    return from_attributes(instance, project)


def test_url_script_runs_before_inline_script() -> None:
    found, notes = scripts.select_scripts(
        _meta({"startup-script": "echo hi", "startup-script-url": "gs://b/s.sh"}), "startup"
    )
    assert [s.key for s in found] == ["startup-script-url", "startup-script"]
    assert notes == ()


def test_each_key_prefers_instance_over_project_on_its_own() -> None:
    found, _ = scripts.select_scripts(
        _meta(
            {"startup-script": "echo instance"},
            {"startup-script": "echo project", "startup-script-url": "https://x/p.sh"},
        ),
        "startup",
    )
    assert [(s.key, s.scope, s.value) for s in found] == [
        ("startup-script-url", "project", "https://x/p.sh"),
        ("startup-script", "instance", "echo instance"),
    ]


def test_empty_instance_value_hides_project_but_runs_nothing() -> None:
    found, _ = scripts.select_scripts(_meta({"shutdown-script": "  "}, {"shutdown-script": "x"}), "shutdown")
    assert found == ()


def test_kinds_do_not_mix() -> None:
    meta = _meta({"startup-script": "a", "shutdown-script": "b"})
    assert [s.value for s in scripts.select_scripts(meta, "shutdown")[0]] == ["b"]
    with pytest.raises(ValueError, match="unknown script kind"):
        scripts.select_scripts(meta, "reboot")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("gs://bucket/dir/run.sh", "https://storage.googleapis.com/bucket/dir/run.sh"),
        ("gs://bucket/a b.sh", "https://storage.googleapis.com/bucket/a%20b.sh"),
        (" https://storage.googleapis.com/b/o \n", "https://storage.googleapis.com/b/o"),
        ("http://127.0.0.1:8080/s.sh", "http://127.0.0.1:8080/s.sh"),
    ],
)
def test_download_url(url: str, expected: str) -> None:
    assert scripts.download_url(url) == expected


@pytest.mark.parametrize("url", ["file:///etc/shadow", "gs://bucket", "ftp://x/y", "not a url"])
def test_download_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any refusal; the message is tested elsewhere
        scripts.download_url(url)


def test_script_argv_quotes_only_when_needed() -> None:
    assert scripts.script_argv("/bin/bash", "/tmp/x/startup-script") == (
        "/bin/bash",
        "-c",
        "/tmp/x/startup-script",
    )
    assert scripts.script_argv("/bin/sh", "/run dir/s")[2] == "'/run dir/s'"


# ---- run_scripts with fakes


@attrs.define
class FakeRunner:
    """Plays the script runner: 'fail' in the body exits 3, 'sleep' times out."""

    clock: FixedClock
    ran: list[tuple[str, bytes, float | None]] = attrs.field(factory=list)

    def run_script(
        self,
        body: bytes,
        *,
        name: str,
        shell: str,
        run_dir: str,
        timeout: float | None,
        on_line: Callable[[str], None],
    ) -> ScriptResult:
        self.ran.append((name, body, timeout))
        on_line(f"ran {body.decode()}")
        if b"sleep" in body:
            assert timeout is not None
            self.clock.advance(timeout)
            return ScriptResult(None, timed_out=True)
        self.clock.advance(1)
        return ScriptResult(3 if b"fail" in body else 0)


@attrs.define
class FakeFetcher:
    bodies: dict[str, bytes]

    def fetch(self, url: str, timeout: float) -> bytes:
        if url not in self.bodies:
            raise FetchError("download failed: HTTP 404")
        return self.bodies[url]


def _no_commands(argv: tuple[str, ...]) -> CommandResult | None:
    raise AssertionError("scripts run through the ScriptRunner port only")


def _ctx(tmp_path: Path, clock: FixedClock, **opts: object) -> Context:
    fs = LocalFileSystem(str(tmp_path))
    return Context(
        config=Config(MetadataScripts=MetadataScripts(**opts)),  # type: ignore[arg-type]
        fs=fs,
        runner=RecordingRunner(respond=_no_commands, which={}),
        users=PasswdFiles(fs),
        clock=clock,
    )


URL_META = _meta({"startup-script-url": "gs://b/first.sh", "startup-script": "echo second"})


def test_runs_in_order_and_logs_each_line_and_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock(monotonic=100.0)
    runner = FakeRunner(clock)
    fetcher = FakeFetcher({"https://storage.googleapis.com/b/first.sh": b"echo first"})
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(_ctx(tmp_path, clock), URL_META, "startup", runner=runner, fetcher=fetcher)
    assert code == 0
    assert [(n, b) for n, b, _ in runner.ran] == [
        ("startup-script-url", b"echo first"),
        ("startup-script", b"echo second"),
    ]
    assert runner.ran[0][2] is None  # startup scripts have no time limit
    messages = [r.getMessage() for r in caplog.records]
    assert "startup-script-url: ran echo first" in messages
    assert "startup-script: ran echo second" in messages
    assert messages.index("startup-script-url exit status 0") < messages.index(
        "startup-script: ran echo second"
    )


def test_failing_or_unfetchable_script_never_stops_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock(monotonic=100.0)
    runner = FakeRunner(clock)
    meta = _meta({"startup-script-url": "https://nowhere/x.sh", "startup-script": "fail"})
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(_ctx(tmp_path, clock), meta, "startup", runner=runner, fetcher=FakeFetcher({}))
    assert code == 1
    assert [n for n, _, _ in runner.ran] == ["startup-script"]
    messages = [r.getMessage() for r in caplog.records]
    assert "startup-script exit status 3" in messages
    assert any("could not fetch https://nowhere/x.sh" in m for m in messages)


def test_shutdown_scripts_share_one_time_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock(monotonic=100.0)
    runner = FakeRunner(clock)
    meta = _meta({"shutdown-script-url": "https://h/a.sh", "shutdown-script": "echo late"})
    fetcher = FakeFetcher({"https://h/a.sh": b"sleep 1000"})
    ctx = _ctx(tmp_path, clock, shutdown_timeout=30)
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(ctx, meta, "shutdown", runner=runner, fetcher=fetcher)
    assert code == 1
    assert runner.ran == [("shutdown-script-url", b"sleep 1000", 30.0)]
    messages = [r.getMessage() for r in caplog.records]
    assert any("shutdown-script-url killed" in m for m in messages)
    assert any("shutdown-script not run" in m for m in messages)


@pytest.mark.parametrize("kind", ["startup", "shutdown"])
def test_disabled_kind_runs_nothing(tmp_path: Path, kind: str) -> None:
    clock = FixedClock(monotonic=100.0)
    runner = FakeRunner(clock)
    meta = _meta({f"{kind}-script": "echo x"})
    code = run_scripts(
        _ctx(tmp_path, clock, **{kind: False}), meta, kind, runner=runner, fetcher=FakeFetcher({})
    )
    assert (code, runner.ran) == (0, [])


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    clock = FixedClock(monotonic=100.0)
    runner = FakeRunner(clock)
    ctx = attrs.evolve(_ctx(tmp_path, clock), dry_run=True)
    assert run_scripts(ctx, URL_META, "startup", runner=runner, fetcher=FakeFetcher({})) == 0
    assert runner.ran == []


def test_no_scripts_is_success(tmp_path: Path) -> None:
    clock = FixedClock(monotonic=100.0)
    assert run_scripts(_ctx(tmp_path, clock), _meta({}), "startup", runner=FakeRunner(clock),
                       fetcher=FakeFetcher({})) == 0  # fmt: skip
