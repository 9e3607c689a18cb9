"""Clock skew: run `[Clock] sync_command` when the drift token changes (rules in domain.clock)."""

from __future__ import annotations

from guestagent.domain import clock as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import gce
from guestagent.ports.filesystem import UnsafePath
from guestagent.services.context import Context
from guestagent.services.subsystem import Outcome

SYNC_TIMEOUT = 60.0


def owns_machine(ctx: Context) -> bool:
    """Only an agent acting on "/" may step the clock: under --root (a sandbox, a test)
    the clock is the host's, and hwclock --hctosys would set it."""
    return ctx.owns_machine


class ClockSubsystem:
    name = "clock"

    def __init__(self) -> None:
        # The token last acted on. Memory spares a file read per pass; the file
        # carries it across restarts. `_loaded` tells "no record" from "not read yet".
        self._recorded: str | None = None
        self._loaded = False

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return domain.clock_enabled(ctx.config)

    def inputs(self, metadata: InstanceMetadata) -> object:
        return gce(metadata).clock_drift_token

    def recorded(self, ctx: Context) -> str | None:
        if not self._loaded:
            self._recorded = domain.parse_state(ctx.fs.read_text(domain.STATE_PATH))
            self._loaded = True
        return self._recorded

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        actions = domain.plan(
            gce(metadata).clock_drift_token, self.recorded(ctx), ctx.config.Clock.sync_command
        )
        if ctx.dry_run:
            return Outcome(self.name, tuple(a.describe() for a in actions))
        done: list[str] = []
        for action in actions:
            if isinstance(action, domain.RunSync) and not owns_machine(ctx):
                ctx.log.warning("clock: not run under root %s: %s", ctx.root, action.describe())
                continue
            if isinstance(action, domain.RunSync):
                result = ctx.runner.run(action.argv, timeout=SYNC_TIMEOUT)
                if not result.ok:
                    # Nothing recorded: the scheduler's retry runs the command again.
                    error = (
                        f"{action.describe()} failed: exit {result.returncode}: "
                        f"{result.stderr.strip()[:300]}"
                    )
                    ctx.log.error("clock: %s", error)
                    return Outcome(self.name, tuple(done), (error,))
            else:
                # Memory first: even if the file cannot be written, this process
                # must not resync again for the same token.
                self._recorded = action.token
                try:
                    ctx.fs.makedirs(domain.STATE_DIR, 0o755)
                    ctx.fs.write_atomic(action.path, domain.render_state(action.token), mode=0o644)
                except (OSError, UnsafePath) as exc:
                    # Not a failure of the subsystem: the clock is right, only a
                    # restart might resync once more.
                    ctx.log.warning("clock: cannot record drift token: %s", exc)
                    continue
            done.append(action.describe())
            ctx.log.info("clock: %s", action.describe())
        return Outcome(self.name, tuple(done))

