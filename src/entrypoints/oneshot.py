"""What the one-shot commands (run, plan, scripts, detect) share: options from flags, wiring, one snapshot."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from guestagent.domain.backoff import Backoff
from guestagent.entrypoints.bootstrap import Agent, Options, bootstrap
from guestagent.ports.metadata import MetadataDisabled, MetadataSource, MetadataUnavailable, Snapshot


def options_from(args: argparse.Namespace, dry_run: bool) -> Options:
    return Options(
        metadata_url=args.metadata_url,
        platform=args.platform,
        config=args.config,
        root=args.root,
        backoff_max=getattr(args, "backoff_max", 30.0),
        netns=args.netns,
        dry_run=dry_run,
    )


def agent_or_report(args: argparse.Namespace, dry_run: bool) -> Agent | None:
    """The wired agent, or None after telling the user on stderr why there is none."""
    try:
        return bootstrap(options_from(args, dry_run))
    except ValueError as exc:
        print(f"guestagent: {exc}", file=sys.stderr)
        return None


def fetch_with_deadline(source: MetadataSource, wait: float, log: logging.Logger) -> Snapshot:
    """One snapshot, retrying with backoff for up to `wait` seconds (not when disabled)."""
    deadline = time.monotonic() + wait
    backoff = Backoff(cap=5.0)
    said: str | None = None
    while True:
        try:
            return source.get()
        except MetadataDisabled:
            raise
        except MetadataUnavailable as exc:
            delay = backoff.next_delay()
            if time.monotonic() + delay > deadline:
                raise
            if str(exc) != said:  # one line per kind of failure, not one per retry
                log.warning("%s; retrying for up to %.0fs", exc, wait)
                said = str(exc)
            time.sleep(delay)


def snapshot_or_report(args: argparse.Namespace, agent: Agent) -> Snapshot | None:
    """The snapshot, or None after telling the user on stderr why there is none."""
    try:
        return fetch_with_deadline(agent.source, args.wait, agent.ctx.log)
    except MetadataUnavailable as exc:
        where = args.metadata_url or agent.platform.default_url or "its local media"
        print(f"guestagent: no {agent.platform.name} metadata from {where}: {exc}", file=sys.stderr)
        return None
    finally:
        agent.source.close()
