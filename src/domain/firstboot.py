"""First-boot scripts: run once per instance, recorded only once they succeeded. Pure.

Where they come from: metadata.scripts["firstboot"] (the CPIO device's
firstboot.sh; other platforms' run-once scripts as they come), then, with
`[FirstBoot] run_user_data = true`, user data that is a script.

The rules, as the illumos metadata agent states them for firstboot.sh:

- A script must start with `#!` (an interpreter line); anything else is
  refused with a reason, never guessed at.
- It runs once per instance: the stamp file (STAMP_PATH) records, per line,
  the SHA-256 of the script, its key and the instance id. A script whose
  line is there is not run again; a changed script (new digest) or a new
  instance (a clone of the image, new id) runs.
- The line is written only after the script exited 0. A script that fails,
  is killed, or is cut short by a crash or power loss runs again the next
  time the agent starts (in practice: the next boot), so scripts must be
  idempotent. Within one process a script that failed is not retried:
  re-running it every few minutes would repeat whatever it broke.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import quote, unquote

import attrs

from guestagent.domain.metadata import InstanceMetadata

STAMP_PATH = "/var/lib/guestagent/firstboot"
STAMP_MODE = 0o600
STAMP_HEADER = "# guestagent first-boot scripts that completed (exit 0): sha256 key instance-id\n"
# The record only ever grows by one line per script per instance; old lines go first.
MAX_STAMPS = 256
KIND = "firstboot"
USER_DATA_KEY = "user-data"
SHEBANG = b"#!"


@attrs.frozen
class FirstBootScript:
    key: str  # also the log prefix and the script's file name
    body: bytes = attrs.field(repr=False)
    scope: str  # where it came from, for logs ("cpio device", "user data")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def describe(self) -> str:
        return f"{self.key} ({self.scope})"


@attrs.frozen
class Stamp:
    """One completed script: its digest, its key and the instance it ran on."""

    digest: str
    key: str
    instance_id: str

    def line(self) -> str:
        return f"{self.digest} {quote(self.key, safe='')} {quote(self.instance_id, safe='')}\n"


def stamp_for(instance_id: str, script: FirstBootScript) -> Stamp:
    return Stamp(script.digest, script.key, instance_id)


def parse_stamps(text: str | None) -> tuple[Stamp, ...]:
    """The stamp file's lines, in order; comments and lines that do not parse are ignored
    (a torn or hand-edited file at worst runs a script again, it never hides one)."""
    stamps: list[Stamp] = []
    for line in (text or "").splitlines():
        words = line.split()
        if len(words) != 3 or line.startswith("#"):
            continue
        digest, key, instance = words
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            continue
        stamps.append(Stamp(digest, unquote(key), unquote(instance)))
    return tuple(stamps)


def render_stamps(stamps: Iterable[Stamp]) -> str:
    unique = list(dict.fromkeys(stamps))[-MAX_STAMPS:]
    return STAMP_HEADER + "".join(stamp.line() for stamp in unique)


def with_stamp(text: str | None, stamp: Stamp) -> str:
    """The stamp file's new text once `stamp`'s script completed."""
    return render_stamps((*parse_stamps(text), stamp))


def is_script(body: bytes) -> bool:
    return body.startswith(SHEBANG)


def wanted(
    metadata: InstanceMetadata, run_user_data: bool
) -> tuple[tuple[FirstBootScript, ...], tuple[str, ...]]:
    """The first-boot scripts metadata asks for, in the order they run, and notes about
    the ones refused (each worth one log line)."""
    scripts: list[FirstBootScript] = []
    notes: list[str] = []
    for given in metadata.scripts.get(KIND, ()):
        if given.is_url:
            notes.append(f"{given.key} ({given.scope}): a URL, not run (first-boot scripts are inline)")
            continue
        scripts.append(
            FirstBootScript(given.key, given.value.encode("utf-8", "surrogateescape"), given.scope)
        )
    if run_user_data and metadata.user_data is not None:
        scripts.append(FirstBootScript(USER_DATA_KEY, metadata.user_data, "user data"))
    out: list[FirstBootScript] = []
    for script in scripts:
        if is_script(script.body):
            out.append(script)
        elif script.key == USER_DATA_KEY:
            notes.append(
                "user data is not a script (it does not start with #!): not run as a first-boot script"
            )
        else:
            notes.append(
                f"{script.describe()} refused: a first-boot script must start with an interpreter "
                "line such as #!/bin/sh"
            )
    return tuple(out), tuple(notes)


@attrs.frozen
class RunScript:
    script: FirstBootScript
    stamp: Stamp

    def describe(self) -> str:
        return f"run {self.script.describe()} once for instance {self.stamp.instance_id}"


@attrs.frozen
class FirstBootPlan:
    actions: tuple[RunScript, ...] = ()
    notes: tuple[str, ...] = ()
    # Scripts whose stamp is there: completed on an earlier run.
    done: tuple[FirstBootScript, ...] = ()


def plan(
    instance_id: str,
    scripts: Iterable[FirstBootScript],
    stamps: Iterable[Stamp],
    attempted: frozenset[Stamp] = frozenset(),
) -> FirstBootPlan:
    """Run each script whose stamp is absent; `attempted` are the ones this process already
    ran (and saw fail): they wait for the next start of the agent."""
    recorded = set(stamps)
    actions: list[RunScript] = []
    notes: list[str] = []
    done: list[FirstBootScript] = []
    if not instance_id.strip():
        listed = tuple(scripts)
        if listed:
            notes.append("no instance id in metadata: first-boot scripts not run (nothing to key them on)")
        return FirstBootPlan((), tuple(notes), ())
    for script in scripts:
        stamp = stamp_for(instance_id, script)
        if stamp in recorded:
            done.append(script)
        elif stamp in attempted:
            notes.append(f"{script.describe()} failed earlier in this process: it runs again next start")
        elif all(a.stamp != stamp for a in actions):
            actions.append(RunScript(script, stamp))
    return FirstBootPlan(tuple(actions), tuple(notes), tuple(done))
