"""Script downloads over http(s) with requests: bounded size, a few retries."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import requests

from guestagent.ports.scripts import FetchError

MAX_BYTES = 32 * 1024 * 1024
CONNECT_TIMEOUT = 10.0


class HttpScriptFetcher:
    def __init__(
        self,
        attempts: int = 3,
        retry_delay: float = 1.0,
        session: requests.Session | None = None,
    ) -> None:
        # Retries: at boot the network may come up a moment after the runner starts.
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.session = session or requests.Session()

    def fetch(self, url: str, timeout: float) -> bytes:
        if urlsplit(url).scheme not in ("http", "https"):
            raise FetchError("only http and https URLs can be fetched")
        deadline = time.monotonic() + timeout
        last = "no attempt made"
        for attempt in range(self.attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return self._get(url, left)
            except _Retry as exc:
                last = str(exc)
            except requests.RequestException as exc:
                last = type(exc).__name__
            if attempt + 1 < self.attempts:
                time.sleep(min(self.retry_delay * 2**attempt, max(0.0, deadline - time.monotonic())))
        raise FetchError(f"download failed: {last}")

    def _get(self, url: str, timeout: float) -> bytes:
        with self.session.get(
            url, timeout=(min(CONNECT_TIMEOUT, timeout), timeout), stream=True
        ) as response:
            status = response.status_code
            if status >= 500 or status == 429:
                raise _Retry(f"HTTP {status}")
            if status != 200:
                raise FetchError(f"download failed: HTTP {status}")
            body = bytearray()
            for chunk in response.iter_content(64 * 1024):
                body += chunk
                if len(body) > MAX_BYTES:
                    raise FetchError(f"script larger than {MAX_BYTES} bytes")
            return bytes(body)


class _Retry(Exception):
    pass
