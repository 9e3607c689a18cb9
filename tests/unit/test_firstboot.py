"""First-boot scripts: the pure plan (stamps, #!, changed scripts, instances) and the subsystem
against in-memory ports (a fake script runner, the in-memory filesystem)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import pytest

from guestagent.domain import firstboot as fb
from guestagent.domain.config import Config, FirstBoot, MetadataScripts
from guestagent.domain.metadata import InstanceMetadata, MetadataScript
from guestagent.ports.scripts import ScriptResult
from guestagent.services.context import Context
from guestagent.services.firstboot import FirstBootSubsystem
from tests.fakes import FixedClock, InMemoryFileSystem, InMemoryUsers, RecordingRunner

SCRIPT = "#!/bin/sh\necho first boot\n"


def meta(*bodies: str, instance: str = "i-1", user_data: bytes | None = None, platform: str = "cpio") -> InstanceMetadata:
    scripts = tuple(MetadataScript(key="firstboot.sh" if i == 0 else f"firstboot-{i}.sh", is_url=False, value=b,
                                   scope="cpio device") for i, b in enumerate(bodies))  # fmt: skip
    return InstanceMetadata(
        platform=platform, instance_id=instance, scripts={"firstboot": scripts} if scripts else {}, user_data=user_data
    )


def script(body: str = SCRIPT, key: str = "firstboot.sh") -> fb.FirstBootScript:
    return fb.FirstBootScript(key, body.encode(), "cpio device")


# ------------------------------------------------------------------ pure: what runs


def test_absent_stamp_runs() -> None:
    planned = fb.plan("i-1", [script()], ())
    assert [a.script.key for a in planned.actions] == ["firstboot.sh"]
    assert planned.actions[0].describe() == "run firstboot.sh (cpio device) once for instance i-1"


def test_present_stamp_does_not_run() -> None:
    stamps = fb.parse_stamps(fb.with_stamp(None, fb.stamp_for("i-1", script())))
    planned = fb.plan("i-1", [script()], stamps)
    assert planned.actions == () and [s.key for s in planned.done] == ["firstboot.sh"]


def test_a_changed_script_runs_again() -> None:
    stamps = fb.parse_stamps(fb.with_stamp(None, fb.stamp_for("i-1", script())))
    planned = fb.plan("i-1", [script(SCRIPT + "echo more\n")], stamps)
    assert len(planned.actions) == 1


def test_a_new_instance_runs_it_again() -> None:
    # A clone of the image: same script, another identity.
    stamps = fb.parse_stamps(fb.with_stamp(None, fb.stamp_for("i-1", script())))
    assert len(fb.plan("i-2", [script()], stamps).actions) == 1


def test_attempted_in_this_process_waits_for_the_next_start() -> None:
    stamp = fb.stamp_for("i-1", script())
    planned = fb.plan("i-1", [script()], (), attempted=frozenset({stamp}))
    assert planned.actions == ()
    assert planned.notes == ("firstboot.sh (cpio device) failed earlier in this process: it runs again next start",)


def test_no_instance_id_runs_nothing() -> None:
    planned = fb.plan("", [script()], ())
    assert planned.actions == () and "no instance id" in planned.notes[0]


def test_not_a_script_is_refused_with_a_reason() -> None:
    scripts, notes = fb.wanted(meta("echo no interpreter line\n", SCRIPT), run_user_data=False)
    assert [s.key for s in scripts] == ["firstboot-1.sh"]
    assert notes == (
        "firstboot.sh (cpio device) refused: a first-boot script must start with an interpreter line such as #!/bin/sh",
    )


def test_user_data_only_when_switched_on_and_only_a_script() -> None:
    md = meta(SCRIPT, user_data=b"#!/bin/bash\necho user\n")
    assert [s.key for s in fb.wanted(md, run_user_data=False)[0]] == ["firstboot.sh"]
    scripts, notes = fb.wanted(md, run_user_data=True)
    assert [(s.key, s.scope) for s in scripts] == [("firstboot.sh", "cpio device"), ("user-data", "user data")]
    assert notes == ()
    scripts, notes = fb.wanted(meta(user_data=b"#cloud-config\n"), run_user_data=True)
    assert scripts == () and "user data is not a script" in notes[0]


def test_url_scripts_are_not_first_boot_scripts() -> None:
    md = InstanceMetadata(platform="x", instance_id="i", scripts={"firstboot": (
        MetadataScript("firstboot-url", True, "https://example.com/s.sh", "instance"),)})  # fmt: skip
    scripts, notes = fb.wanted(md, run_user_data=False)
    assert scripts == () and "a URL, not run" in notes[0]


def test_the_same_script_twice_runs_once() -> None:
    assert len(fb.plan("i", [script(), script()], ()).actions) == 1


def test_stamp_file_round_trip_and_hostile_lines() -> None:
    odd = fb.Stamp("a" * 64, "first boot.sh", "id with spaces/and\nnewline")
    text = fb.with_stamp(fb.with_stamp(None, fb.stamp_for("i-1", script())), odd)
    assert text.startswith(fb.STAMP_HEADER)
    assert fb.parse_stamps(text) == (fb.stamp_for("i-1", script()), odd)
    garbage = text + "not a stamp\nzz" + "0" * 62 + " k i\n" + "a" * 64 + " only-two\n"
    assert fb.parse_stamps(garbage) == fb.parse_stamps(text)
    assert fb.with_stamp(text, odd) == text  # recorded once


def test_stamp_file_is_bounded() -> None:
    stamps = [fb.Stamp(f"{i:064x}", "k", "i") for i in range(fb.MAX_STAMPS + 10)]
    kept = fb.parse_stamps(fb.render_stamps(stamps))
    assert len(kept) == fb.MAX_STAMPS and kept[-1] == stamps[-1]  # the oldest go


# ------------------------------------------------------------------ the subsystem on fakes


@attrs.define
class FakeScripts:
    """The ScriptRunner port: answers `exit_code` (or `result`), records what ran."""

    exit_code: int = 0
    result: ScriptResult | None = None
    output: tuple[str, ...] = ("hello",)
    ran: list[tuple[str, bytes, str, float | None]] = attrs.field(factory=list)

    def run_script(self, body: bytes, *, name: str, shell: str, run_dir: str, timeout: float | None,
                   on_line: Callable[[str], None]) -> ScriptResult:  # fmt: skip
        self.ran.append((name, body, shell, timeout))
        for line in self.output:
            on_line(line)
        return self.result if self.result is not None else ScriptResult(self.exit_code)


def context(fs: InMemoryFileSystem, *, root: str = "/", dry_run: bool = False, **firstboot: object) -> Context:
    config = Config(FirstBoot=FirstBoot(**firstboot), MetadataScripts=MetadataScripts(default_shell="/bin/sh"))  # type: ignore[arg-type]
    return Context(config=config, fs=fs, runner=RecordingRunner(), users=InMemoryUsers(fs), clock=FixedClock(),
                   root=root, dry_run=dry_run, log=logging.getLogger("test.firstboot"))  # fmt: skip


def test_runs_once_and_records_after_exit_0(caplog: pytest.LogCaptureFixture) -> None:
    fs, runner = InMemoryFileSystem(), FakeScripts()
    subsystem = FirstBootSubsystem(runner)
    caplog.set_level(logging.INFO)
    outcome = subsystem.reconcile(context(fs), meta(SCRIPT))
    assert outcome.ok and outcome.actions == ("run firstboot.sh (cpio device) once for instance i-1",)
    assert runner.ran == [("firstboot.sh", SCRIPT.encode(), "/bin/sh", None)]
    assert "firstboot.sh: hello" in caplog.text and "firstboot.sh exit status 0" in caplog.text
    assert fs.entry(fb.STAMP_PATH) is not None and fs.entry(fb.STAMP_PATH).mode == 0o600  # type: ignore[union-attr]
    # A new process (the next boot) finds the stamp: nothing runs.
    again = FirstBootSubsystem(runner).reconcile(context(fs), meta(SCRIPT))
    assert again.ok and again.actions == () and len(runner.ran) == 1


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (ScriptResult(1), "firstboot.sh failed (firstboot.sh exit status 1)"),
        (ScriptResult(None, timed_out=True), "killed: still running after 5s"),
        (ScriptResult(None, error="could not start /bin/sh: No such file"), "could not start"),
    ],
)
def test_a_failed_run_is_not_recorded_and_runs_at_the_next_start(result: ScriptResult, reason: str) -> None:
    fs, runner = InMemoryFileSystem(), FakeScripts(result=result)
    subsystem = FirstBootSubsystem(runner)
    outcome = subsystem.reconcile(context(fs, timeout=5.0), meta(SCRIPT))
    assert not outcome.ok and reason in outcome.failures[0] and "runs again at the next start" in outcome.failures[0]
    assert fs.entry(fb.STAMP_PATH) is None
    assert runner.ran[0][3] == 5.0
    # The scheduler's retry in the same process does not run it again...
    assert subsystem.reconcile(context(fs), meta(SCRIPT)).ok and len(runner.ran) == 1
    # ...the next process (boot) does.
    runner.result = None
    assert FirstBootSubsystem(runner).reconcile(context(fs), meta(SCRIPT)).ok and len(runner.ran) == 2
    assert fs.entry(fb.STAMP_PATH) is not None


def test_a_script_without_interpreter_line_never_runs(caplog: pytest.LogCaptureFixture) -> None:
    fs, runner = InMemoryFileSystem(), FakeScripts()
    subsystem = FirstBootSubsystem(runner)
    outcome = subsystem.reconcile(context(fs), meta("echo hi\n"))
    assert outcome.ok and outcome.actions == () and runner.ran == []
    subsystem.reconcile(context(fs), meta("echo hi\n"))
    assert caplog.text.count("must start with an interpreter line") == 1  # said once per process


def test_dry_run_and_sandbox_list_without_running_or_recording() -> None:
    fs, runner = InMemoryFileSystem(), FakeScripts()
    dry = FirstBootSubsystem(runner).reconcile(context(fs, dry_run=True), meta(SCRIPT))
    assert dry.actions == ("run firstboot.sh (cpio device) once for instance i-1",)
    sandbox = FirstBootSubsystem(runner).reconcile(context(fs, root="/tmp/sandbox"), meta(SCRIPT))
    assert sandbox.actions == ("list firstboot.sh (cpio device) without running it (sandbox root)",)
    assert runner.ran == [] and fs.entry(fb.STAMP_PATH) is None


def test_disabled_and_inputs() -> None:
    fs = InMemoryFileSystem()
    subsystem = FirstBootSubsystem(FakeScripts())
    assert subsystem.enabled(context(fs), meta(SCRIPT))
    assert not subsystem.enabled(context(fs, enabled=False), meta(SCRIPT))
    assert subsystem.inputs(meta(SCRIPT)) == subsystem.inputs(meta(SCRIPT))
    assert subsystem.inputs(meta(SCRIPT)) != subsystem.inputs(meta(SCRIPT + "#\n"))
    assert subsystem.inputs(meta(SCRIPT)) != subsystem.inputs(meta(SCRIPT, user_data=b"#!/bin/sh\n"))


def test_without_a_runner_it_fails_and_records_nothing() -> None:
    fs = InMemoryFileSystem()
    outcome = FirstBootSubsystem().reconcile(context(fs), meta(SCRIPT))
    assert "no script runner" in outcome.failures[0] and fs.entry(fb.STAMP_PATH) is None


def test_user_data_runs_when_switched_on() -> None:
    fs, runner = InMemoryFileSystem(), FakeScripts()
    FirstBootSubsystem(runner).reconcile(context(fs, run_user_data=True), meta(user_data=b"#!/bin/sh\necho u\n"))
    assert [name for name, *_ in runner.ran] == ["user-data"]
