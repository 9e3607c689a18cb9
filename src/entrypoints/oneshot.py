"""What the one-shot commands (run, plan, scripts) share: options from flags, one snapshot."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from guestagent.adapters.gce_metadata import Backoff
from guestagent.entrypoints.composition import Options
from guestagent.ports.metadata import MetadataSource, MetadataUnavailable, Snapshot


def options_from(args: argparse.Namespace, dry_run: bool) -> Options:
    return Options(
        metadata_url=args.metadata_url,
        config=args.config,
        root=args.root,
        backoff_max=args.backoff_max,
        netns=args.netns,
        dry_run=dry_run,
    )


def fetch_with_deadline(source: MetadataSource, wait: float, log: logging.Logger) -> Snapshot:
    """One snapshot, retrying with backoff for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    backoff = Backoff(cap=5.0)
    while True:
        try:
            return source.get()
        except MetadataUnavailable as exc:
            delay = backoff.next_delay()
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s; retrying in %.1fs", exc, delay)
            time.sleep(delay)


def snapshot_or_report(
    args: argparse.Namespace, source: MetadataSource, log: logging.Logger
) -> Snapshot | None:
    """The snapshot, or None after telling the user on stderr why there is none."""
    try:
        return fetch_with_deadline(source, args.wait, log)
    except MetadataUnavailable as exc:
        print(f"guestagent: no metadata from {args.metadata_url}: {exc}", file=sys.stderr)
        return None
    finally:
        source.close()
