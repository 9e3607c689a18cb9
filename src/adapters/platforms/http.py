"""What every HTTP metadata client shares: a session that ignores the environment,
one mapping of transport errors to MetadataUnavailable, and a JSON parse that a
hostile document cannot crash.

Each guards against something seen in the field: proxies from the
environment turning metadata requests into request storms (trust_env off),
captive portals answering 200 with HTML (callers check their platform's
header or content type before any parse), truncated bodies (urllib3
enforces Content-Length; the parse catches the rest), and deeply nested JSON
(domain.jsondoc bounds it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import requests

from guestagent.adapters import media
from guestagent.domain.jsondoc import JsonRefused, loads
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.metadata import MetadataUnavailable


def new_session(headers: Mapping[str, str] | None = None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies, no .netrc: metadata is always link-local
    if headers:
        session.headers.update(headers)
    return session


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    timeout: tuple[float, float],
    **kwargs: object,
) -> requests.Response:
    """One request; every transport failure becomes MetadataUnavailable with a plain reason."""
    try:
        return session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)  # type: ignore[arg-type]
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
        raise MetadataUnavailable("metadata response was cut short (truncated body)") from exc
    except requests.Timeout as exc:
        raise MetadataUnavailable(f"metadata server did not answer within {timeout[1]:g}s") from exc
    except requests.RequestException as exc:
        raise MetadataUnavailable(f"metadata server unreachable: {exc.__class__.__name__}") from exc


def json_body(response: requests.Response) -> object:
    try:
        return loads(response.content)
    except JsonRefused as exc:
        raise MetadataUnavailable(f"metadata body refused: {exc}") from exc


def parse_or_unavailable(
    parse: Callable[[object], InstanceMetadata], document: object, what: str | None = None
) -> InstanceMetadata:
    """Run a platform parser; a document it cannot read is treated like a server that is
    down (retried), and so is a bug in the parser: no thread of the agent dies of it.
    `what` names the source in the reason ("NoCloud seed directory ...")."""
    try:
        return parse(document)
    except ValueError as exc:
        reason = f"unusable metadata: {exc}" if what is None else f"{what} refused: {exc}"
        raise MetadataUnavailable(reason) from exc
    except Exception as exc:  # a parser crash must not kill the watcher
        raise MetadataUnavailable(
            f"{what or 'metadata'} could not be parsed ({exc.__class__.__name__})"
        ) from exc


# A body that trickles in may hold a pass (and SIGTERM) no longer than this.
BODY_DEADLINE = 30.0
# A 404's body (an error page) is read only to know the answer is whole.
NOT_FOUND_MAX = 64 * 1024
_CHUNK = 16 * 1024


class BodyTooLarge(MetadataUnavailable):
    """More than the caller's bound: refused whole, never cut (a cut key file is a lockout)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is larger than {limit} bytes")
        self.size = size
        self.limit = limit


def read_body(response: requests.Response, what: str, limit: int, deadline: float = BODY_DEADLINE) -> bytes:
    """At most `limit` bytes of a streamed answer (`stream=True`) within `deadline` seconds.

    `what` names the document in every message ("EC2 metadata public-keys/").
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(what, int(declared), limit)
    body = bytearray()
    give_up = time.monotonic() + deadline
    try:
        for chunk in response.iter_content(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(what, len(body), limit)
            if time.monotonic() > give_up:
                raise MetadataUnavailable(f"{what} took over {deadline:g}s to arrive")
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
        raise MetadataUnavailable(f"{what} was cut short (truncated body)") from exc
    except requests.RequestException as exc:
        raise MetadataUnavailable(f"{what}: {exc.__class__.__name__} while reading") from exc
    return bytes(body)


def shown_url(url: str) -> str:
    """A URL without its query or credentials (either may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def fetch_file(
    session: requests.Session,
    url: str,
    what: str,
    name: str,
    *,
    timeout: tuple[float, float],
    limit: int,
) -> tuple[bytes, str] | None:
    """GET one file: its body and Content-Type, or None on 404 (absent: the caller says
    whether that may be). `what` names it in every reason ("NoCloud seed user-data").
    Anything but 200 or 404, or a compressed body (not asked for), is MetadataUnavailable;
    a body over `limit` bytes is media.FileTooLarge (see read_files). A 404 counts only
    once its body arrived whole: one cut short is a broken answer, not "absent"."""
    response = request(session, "GET", url, timeout=timeout, stream=True)
    try:
        if response.status_code == 404:
            read_body(response, f"{what} (HTTP 404)", NOT_FOUND_MAX)
            return None
        if response.status_code != 200:
            raise MetadataUnavailable(f"{what} answered HTTP {response.status_code}")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise MetadataUnavailable(f"{what} came {encoding}-encoded (not asked for)")
        try:
            body = read_body(response, what, limit)
        except BodyTooLarge as exc:  # the callers hold only what this file feeds
            raise media.FileTooLarge(name, exc.size, exc.limit) from exc
        return body, response.headers.get("Content-Type", "")
    finally:
        response.close()
