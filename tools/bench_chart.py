"""The PNG of `nox -s bench`: one panel per question, medians with min-max whiskers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"ours": "#1f77b4", "go": "#d62728", "floor": "#7f7f7f"}


def _bar(ax: Any, x: float, s: dict[str, Any] | None, colour: str, label: str | None, width: float) -> None:
    if not s or s.get("median") is None:
        return
    m = s["median"]
    ax.bar(x, m, width, color=colour, label=label,
           yerr=[[m - s["min"]], [s["max"] - m]], capsize=3)
    ax.annotate(f"{m:.3g}", (x, m), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                textcoords="offset points")


def chart(rep: dict[str, Any], path: Path) -> None:
    agents = rep["agents"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    sizes = list(rep["provision"])
    keys = [k for k in ("ours", "go", "floor") if k in agents]
    width = 0.8 / max(1, len(keys))
    for i, n in enumerate(sizes):
        for j, k in enumerate(keys):
            s = rep["provision"][n].get(k, {}).get("time_s")
            x = i + (j - (len(keys) - 1) / 2) * width
            _bar(ax, x, s, COLOURS[k], agents[k] if i == 0 else None, width)
    ax.set_xticks(range(len(sizes)), [f"N={n}" for n in sizes])
    ax.set_ylabel("seconds, exec -> last authorized_keys")
    ax.set_title("Cold provisioning (N users, 3 forwarded IPs)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    st = rep.get("steady", {})
    shown = [k for k in ("ours", "go", "pollfloor") if k in st]
    width = 0.8 / max(1, len(shown))
    for j, k in enumerate(shown):
        for i, metric in enumerate(("reaction_p50_ms", "reaction_p95_ms")):
            value = st[k][metric]
            if value is not None:
                x = i + (j - (len(shown) - 1) / 2) * width
                label = agents.get(k, k) if k != "pollfloor" else "floor: long poll + write"
                ax.bar(x, value, width, color=COLOURS.get(k, "#7f7f7f"), label=label if i == 0 else None)
                ax.annotate(f"{value:.1f}", (x, value), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([0, 1], ["p50", "p95"])
    ax.set_ylabel("ms, metadata change -> key on disk")
    ax.set_title("Reaction to one key change (N=50)")
    if st:
        ax.legend(fontsize=8)

    ax = axes[1][0]
    rows = [(agents[k], COLOURS[k], st[k]) for k in ("ours", "go") if k in st]
    greys = ("#bcbcbc", "#7f7f7f")
    rows += [(f"floor: {name}", greys[i % 2], f) for i, (name, f) in enumerate(rep.get("floors", {}).items())]
    metrics = ("rss_mib", "pss_mib", "anon_mib")
    width = 0.8 / max(1, len(rows))
    for j, (label, colour, values) in enumerate(rows):
        for i, metric in enumerate(metrics):
            _bar(ax, i + (j - (len(rows) - 1) / 2) * width, values.get(metric), colour,
                 label if i == 0 else None, width)
    ax.set_xticks(range(len(metrics)), ["RSS", "PSS", "anonymous"])
    ax.set_ylabel("MiB, settled daemon at N=50")
    ax.set_title("Footprint (Debian's python3 / Go binary)")
    if rows:
        ax.legend(fontsize=7)

    ax = axes[1][1]
    boot = rep.get("boot", {}).get("variants", {})
    for i, (name, v) in enumerate(boot.items()):
        _bar(ax, i, v.get("ssh_s"), COLOURS.get(name, "#7f7f7f"), None, 0.6)
    ax.set_xticks(range(len(boot)), list(boot) or ["(not run)"])
    ax.set_ylabel("seconds, QEMU start -> SSH login (TCG)")
    ax.set_title("Boot to SSH")
    fig.suptitle("guestagent vs google-guest-agent, same machine, interleaved runs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
