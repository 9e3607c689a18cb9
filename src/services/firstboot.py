"""First-boot scripts as a subsystem: each script once per instance, recorded after exit 0.

The plan is pure (guestagent.domain.firstboot); here the stamp file is read
and written through the FileSystem port and scripts run through the
ScriptRunner port, their output logged line by line with the script's key
as prefix and their exit status after, as metadata scripts are.

A script is arbitrary code run as root: with a sandbox root (ctx.owns_machine
False) the scripts are listed and nothing runs, as `guestagent scripts` does;
with --dry-run they are listed too. Neither records a stamp.

Runner: the one given to the constructor, else the context's `script_runner`
(the composition root's; see the module's report), else none: the scripts are
then reported as failures (nothing can run them), never recorded.
"""

from __future__ import annotations

import hashlib
import logging
import re

from guestagent.domain import firstboot as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.scripts import exit_line, output_line
from guestagent.ports.filesystem import UnsafePath
from guestagent.ports.scripts import ScriptResult, ScriptRunner
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class _LineLogger:
    """Handed to the runner: one log record per output line, prefixed with the key."""

    def __init__(self, log: logging.Logger, key: str) -> None:
        self.log = log
        self.key = key

    def __call__(self, line: str) -> None:
        self.log.info("%s", output_line(self.key, line))


def _file_name(key: str) -> str:
    return _UNSAFE_NAME.sub("_", key) or "firstboot"


def _failure(script: domain.FirstBootScript, result: ScriptResult, timeout: float) -> str | None:
    """Why the run does not count as completed, or None when it exited 0."""
    if result.error is not None:
        return f"{script.key}: {result.error}"
    if result.timed_out or result.exit_code is None:
        return f"{script.key} killed: still running after {timeout:g}s ([FirstBoot] timeout)"
    if result.exit_code != 0:
        return f"{script.key} failed ({exit_line(script.key, result.exit_code)})"
    return None


class FirstBootSubsystem:
    name = "firstboot"
    # The daemon runs it only after READY: a long script must not hold sshd back.
    after_ready = True

    def __init__(self, runner: ScriptRunner | None = None) -> None:
        self._runner = runner
        self._warnings = WarnOnce("firstboot: ")
        # Scripts run (and failed) in this process: they wait for the next start.
        self._attempted: set[domain.Stamp] = set()

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return ctx.config.FirstBoot.enabled

    def inputs(self, metadata: InstanceMetadata) -> object:
        data = metadata.user_data
        return (
            metadata.instance_id,
            metadata.scripts.get(domain.KIND, ()),
            None if data is None else hashlib.sha256(data).hexdigest(),
        )

    def runner(self, ctx: Context) -> ScriptRunner | None:
        if self._runner is not None:
            return self._runner
        return ctx.script_runner

    def plan(self, ctx: Context, metadata: InstanceMetadata) -> domain.FirstBootPlan:
        """What a pass would run; raises OSError/UnsafePath when the stamp file cannot be read."""
        scripts, notes = domain.wanted(metadata, ctx.config.FirstBoot.run_user_data)
        stamps = domain.parse_stamps(ctx.fs.read_text(domain.STAMP_PATH))
        planned = domain.plan(metadata.instance_id, scripts, stamps, frozenset(self._attempted))
        return domain.FirstBootPlan(planned.actions, notes + planned.notes, planned.done)

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        try:
            planned = self.plan(ctx, metadata)
        except (OSError, UnsafePath, UnicodeError) as exc:
            message = f"cannot read {domain.STAMP_PATH}: {exc}; no first-boot script run"
            ctx.log.error("firstboot: %s", message)
            return Outcome(self.name, failures=(message,))
        for note in planned.notes:
            self._warnings.warn(ctx.log, note)
        for script in planned.done:
            ctx.log.info("firstboot: %s completed earlier for this instance", script.describe())
        if not planned.actions:
            return Outcome(self.name)
        if ctx.dry_run:
            return Outcome(self.name, tuple(action.describe() for action in planned.actions))
        if not ctx.owns_machine:
            listed = []
            for action in planned.actions:
                ctx.log.info(
                    "firstboot: sandbox root %s: listing, not running, %s (it would run on this machine)",
                    ctx.root,
                    action.script.describe(),
                )
                listed.append(f"list {action.script.describe()} without running it (sandbox root)")
            return Outcome(self.name, tuple(listed))
        runner = self.runner(ctx)
        if runner is None:
            message = "no script runner is wired: first-boot scripts cannot run"
            ctx.log.error("firstboot: %s", message)
            return Outcome(self.name, failures=(message,))
        journal = ApplyJournal(ctx.log, "firstboot: ")
        for action in planned.actions:
            self._run(ctx, runner, action, journal)
        done, failures = journal.result()
        return Outcome(self.name, tuple(done), tuple(failures))

    def _run(
        self, ctx: Context, runner: ScriptRunner, action: domain.RunScript, journal: ApplyJournal
    ) -> None:
        script = action.script
        settings = ctx.config.FirstBoot
        scripts = ctx.config.MetadataScripts
        self._attempted.add(action.stamp)
        ctx.log.info("firstboot: running %s", script.describe())
        result = runner.run_script(
            script.body,
            name=_file_name(script.key),
            shell=scripts.default_shell,
            run_dir=scripts.run_dir,
            timeout=settings.timeout or None,
            on_line=_LineLogger(ctx.log, script.key),
        )
        if result.exit_code is not None and result.error is None:
            ctx.log.info("%s", exit_line(script.key, result.exit_code))
        failed = _failure(script, result, settings.timeout)
        if failed is not None:
            journal.failed(f"{failed}: not recorded, it runs again at the next start")
            return
        try:
            text = ctx.fs.read_text(domain.STAMP_PATH)
            new = domain.with_stamp(text, action.stamp)
            ctx.fs.write_atomic(domain.STAMP_PATH, new, mode=domain.STAMP_MODE)
        except (OSError, UnsafePath, UnicodeError) as exc:
            journal.failed(
                f"{script.key} completed but could not be recorded in {domain.STAMP_PATH} ({exc}): "
                "it runs again at the next start"
            )
            return
        journal.did(action)
