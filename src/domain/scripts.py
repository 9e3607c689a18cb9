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

from guestagent.domain.metadata import InstanceMetadata, MetadataScript

KINDS = ("startup", "shutdown")
GCS_HTTP = "https://storage.googleapis.com"


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
    """The scripts to run in order, and the reasons scripts metadata asked for were refused."""
    script_keys(kind)
    notes = tuple(r.describe() for r in metadata.rejections_for("scripts"))
    return metadata.scripts.get(kind, ()), notes


def script_argv(shell: str, path: str) -> tuple[str, ...]:
    """`shell -c PATH`: the shell execs the file, so a #! line picks another interpreter.

    The path is quoted for the shell, in case run_dir holds spaces.
    """
    return (shell, "-c", shlex.quote(path))


def output_line(key: str, line: str) -> str:
    return f"{key}: {line}"


def exit_line(key: str, code: int) -> str:
    return f"{key} exit status {code}"
