"""Metadata scripts: which ones run, in what order, from where. Pure; the running is elsewhere.

Order (documented in docs/config-setup.md and tested): for each kind, the
`<kind>-script-url` script runs first, then the inline `<kind>-script`, as
the Python agent's README states. (Google's Go runner does the opposite;
its README still says URL first, and we follow the README users read.)
Each key is looked up on the instance first, then on the project, on its
own: an instance `startup-script` does not hide a project `startup-script-url`.
"""

from __future__ import annotations

import shlex
from urllib.parse import quote, urlsplit

import attrs

from guestagent.domain.metadata import InstanceMetadata

KINDS = ("startup", "shutdown")
GCS_HTTP = "https://storage.googleapis.com"


@attrs.frozen
class MetadataScript:
    key: str  # the metadata key, e.g. "startup-script-url"; also the log prefix
    is_url: bool
    value: str  # the download URL (already mapped from gs://) or the script text
    scope: str  # "instance" or "project": where the key was found

    def describe(self) -> str:
        # The query may hold a signed-URL token: never part of a log line.
        where = f" from {self.value.split('?')[0]}" if self.is_url else ""
        return f"run {self.key} ({self.scope} metadata){where}"


def script_keys(kind: str) -> tuple[str, str]:
    """The keys of one kind, in the order their scripts run."""
    if kind not in KINDS:
        raise ValueError(f"unknown script kind {kind!r}; expected one of {', '.join(KINDS)}")
    return (f"{kind}-script-url", f"{kind}-script")


def download_url(url: str) -> str:
    """The http(s) URL to fetch: `gs://bucket/object` becomes the public GCS endpoint.

    Anything that is not gs, http or https is refused (file:// would read the
    guest's own files, which metadata has no business asking for).
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme == "gs":
        bucket, obj = parts.netloc, parts.path.lstrip("/")
        if not bucket or not obj:
            raise ValueError("gs:// URL needs a bucket and an object")
        return f"{GCS_HTTP}/{bucket}/{quote(obj, safe='/~')}"
    if parts.scheme in ("http", "https") and parts.netloc:
        return text
    raise ValueError("only gs://, http:// and https:// script URLs are supported")


def select_scripts(
    metadata: InstanceMetadata, kind: str
) -> tuple[tuple[MetadataScript, ...], tuple[str, ...]]:
    """The scripts to run in order, and notes about keys that were refused."""
    scripts: list[MetadataScript] = []
    notes: list[str] = []
    for key in script_keys(kind):
        if key in metadata.instance_attributes:
            value, scope = metadata.instance_attributes[key], "instance"
        elif key in metadata.project_attributes:
            value, scope = metadata.project_attributes[key], "project"
        else:
            continue
        if not value.strip():
            continue
        if key.endswith("-url"):
            try:
                scripts.append(MetadataScript(key, True, download_url(value), scope))
            except ValueError as exc:
                notes.append(f"{key}: {exc}")
            continue
        scripts.append(MetadataScript(key, False, value, scope))
    return tuple(scripts), tuple(notes)


def script_argv(shell: str, path: str) -> tuple[str, ...]:
    """`shell -c PATH`: the shell execs the file, so a #! line picks another interpreter.

    The path is quoted for the shell, in case run_dir holds spaces.
    """
    return (shell, "-c", shlex.quote(path))


def output_line(key: str, line: str) -> str:
    return f"{key}: {line}"


def exit_line(key: str, code: int) -> str:
    return f"{key} exit status {code}"
