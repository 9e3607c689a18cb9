"""`guestagent scripts startup|shutdown`: fetch and run the metadata scripts of one kind."""

from __future__ import annotations

import logging

from guestagent.domain import scripts as domain
from guestagent.domain.metadata import InstanceMetadata, MetadataScript
from guestagent.ports.scripts import FetchError, ScriptFetcher, ScriptResult, ScriptRunner
from guestagent.services.context import Context

FETCH_TIMEOUT = 60.0


def _enabled(ctx: Context, kind: str) -> bool:
    section = ctx.config.MetadataScripts
    return section.startup if kind == "startup" else section.shutdown


def run_scripts(
    ctx: Context,
    metadata: InstanceMetadata,
    kind: str,
    *,
    runner: ScriptRunner,
    fetcher: ScriptFetcher,
) -> int:
    """Run every `kind` script in order; 0 when all ran and exited 0, else 1.

    A script that cannot be fetched, fails or times out is logged and the
    next one still runs. Shutdown scripts share one time budget,
    `[MetadataScripts] shutdown_timeout`, because the platform stops the VM
    after its own grace period whether they finished or not.
    """
    domain.script_keys(kind)  # refuses an unknown kind before anything runs
    log = ctx.log
    if not _enabled(ctx, kind):
        log.info("%s scripts disabled by [MetadataScripts] %s = false", kind, kind)
        return 0
    scripts, notes = domain.select_scripts(metadata, kind)
    for note in notes:
        log.error("%s", note)
    if not scripts:
        log.info("no %s scripts in metadata", kind)
        return 1 if notes else 0
    config = ctx.config.MetadataScripts
    deadline = ctx.clock.monotonic() + config.shutdown_timeout if kind == "shutdown" else None
    ok = not notes
    for script in scripts:
        if ctx.dry_run:
            log.info("would %s", script.describe())
            continue
        remaining = None if deadline is None else deadline - ctx.clock.monotonic()
        if remaining is not None and remaining <= 0:
            log.error("%s not run: shutdown_timeout of %ss used up", script.key, config.shutdown_timeout)
            ok = False
            continue
        log.info("found %s in %s metadata", script.key, script.scope)
        body = _body(ctx, script, fetcher, remaining)
        if body is None:
            ok = False
            continue
        remaining = None if deadline is None else max(0.0, deadline - ctx.clock.monotonic())
        result = runner.run_script(
            body,
            name=script.key,
            shell=config.default_shell,
            run_dir=config.run_dir,
            timeout=remaining,
            on_line=_LineLogger(log, script.key),
        )
        ok = _report(log, script, result, remaining) and ok
    return 0 if ok else 1


def _body(
    ctx: Context, script: MetadataScript, fetcher: ScriptFetcher, remaining: float | None
) -> bytes | None:
    if not script.is_url:
        return script.value.encode("utf-8", "surrogateescape")
    timeout = FETCH_TIMEOUT if remaining is None else min(FETCH_TIMEOUT, remaining)
    try:
        return fetcher.fetch(script.value, timeout)
    except FetchError as exc:
        # The URL may carry a signed token in its query; log the object, not the query.
        ctx.log.error("%s: could not fetch %s: %s", script.key, script.value.split("?")[0], exc)
        return None


class _LineLogger:
    """Callable handed to the runner: one log record per output line."""

    def __init__(self, log: logging.Logger, key: str) -> None:
        self.log = log
        self.key = key

    def __call__(self, line: str) -> None:
        self.log.info("%s", domain.output_line(self.key, line))


def _report(
    log: logging.Logger, script: MetadataScript, result: ScriptResult, timeout: float | None
) -> bool:
    if result.error is not None:
        log.error("%s: %s", script.key, result.error)
        return False
    if result.timed_out or result.exit_code is None:
        log.error("%s killed: still running after %.0fs (shutdown_timeout)", script.key, timeout or 0)
        return False
    log.info("%s", domain.exit_line(script.key, result.exit_code))
    return result.exit_code == 0
