"""Import-cost measures of the agent's own processes (never of a program that embeds it).

Debian's python3-requests imports chardet beside charset_normalizer, and chardet's
language models stay in memory for a decoding the agent never asks for (metadata
bodies are read as bytes, never as `response.text`): 2.6 MiB of the settled daemon's
RSS and 43 modules on Debian 12 (docs/benchmarks.md). When chardet cannot be
imported, requests uses charset_normalizer for the same job, as it does wherever
chardet is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings


def skip_chardet() -> None:
    """Make `import chardet` fail in this process, before anything imports requests.

    Only when charset_normalizer is installed (requests needs one of the two), and
    never once chardet is loaded already.
    """
    if "chardet" in sys.modules or "requests" in sys.modules:
        return
    if importlib.util.find_spec("charset_normalizer") is None:
        return
    sys.modules["chardet"] = None  # type: ignore[assignment]
    # Debian's requests then warns that it found "chardet (None)" beside charset_normalizer,
    # once per process, on every console: the pairing is the one it supports without chardet.
    warnings.filterwarnings("ignore", message=r"urllib3 \(.*\) or chardet \(None\)")
