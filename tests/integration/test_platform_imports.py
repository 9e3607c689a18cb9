"""Only the chosen platform's modules are imported: the CLI names platforms without
importing any, and detection by DMI imports the matching platform alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from guestagent.adapters.platforms.registry import NAMES

PROGRAM = textwrap.dedent(
    """
    import json, sys
    from guestagent.entrypoints import cli
    from guestagent.adapters.platforms.detect import detect
    from guestagent.adapters.platforms.spec import ProviderOptions
    from guestagent.domain.config import Config, Core

    def platform_modules():
        return sorted(m for m in sys.modules if ".platforms." in m and m.startswith("guestagent."))

    before = platform_modules()
    found = detect(ProviderOptions(root=sys.argv[1], config=Config(Core=Core(platform="auto"))), timeout=5)
    print(json.dumps({"found": found.spec.name, "before": before, "after": platform_modules()}))
    """
)


def test_the_cli_imports_no_platform_and_a_dmi_match_only_its_own(tmp_path: Path) -> None:
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_name").write_text("Google Compute Engine\n")
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(out.stdout)
    assert seen["before"] == [
        "guestagent.adapters.platforms.detect",
        "guestagent.adapters.platforms.registry",
        "guestagent.adapters.platforms.spec",
    ]
    assert seen["found"] == "gce"
    # The transport and the parser of GCE, and no other platform's module.
    platforms = {m for m in seen["after"] if m.rsplit(".", 1)[1] in NAMES}
    assert platforms == {"guestagent.adapters.platforms.gce", "guestagent.domain.platforms.gce"}
