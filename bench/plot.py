"""Draw the README's picture from the benches' JSON: time to flat against the bound and the two
baselines per workload, a timeline of one kill, and the scale curve.

Usage: python bench/plot.py --ttf ttf.json [--ttf more.json] [--scale scale.json]
       --out docs/numbers.png

Needs matplotlib (the `bench` extra: pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

KIND_STYLE = {"cancel": ("o", "tab:red"), "read": ("s", "tab:blue")}


def median(values: Sequence[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.median(kept) if kept else float("nan")


def bars(ax: Any, ttf: dict[str, Any]) -> None:
    """Per workload: ours (cold, warm), the bound, the user script, the naive baseline."""
    labels = ["bound", "ours", "ours, no probe", "user script\n(ccxt)", "naive\nbaseline"]
    colours = ["tab:gray", "tab:green", "tab:olive", "tab:orange", "tab:purple"]
    results = ttf["results"]
    width = 0.8 / len(labels)
    for w, r in enumerate(results):
        cold = [x["time_to_flat_ms"] for x in r["runs"] if not x.get("warm")]
        warm = [x["time_to_flat_ms"] for x in r["runs"] if x.get("warm")]
        script = [x for x in r.get("script", []) if x.get("enable_rate_limit")]
        values = [
            r["bound"]["ms"],
            median(cold),
            median(warm) if warm else float("nan"),
            median([x["ms"] for x in script]) if script else float("nan"),
            median([s * 1000 for s in r["baseline_s"]]) if r["baseline_s"] else float("nan"),
        ]
        not_flat = bool(script) and not all(x["flat"] for x in script)
        for i, value in enumerate(values):
            if value != value:
                continue
            x = w + (i - (len(labels) - 1) / 2) * width
            hatch = "//" if i == 3 and not_flat else None
            ax.bar(
                x,
                value,
                width,
                color=colours[i],
                hatch=hatch,
                edgecolor="black" if hatch else None,
                label=labels[i],
            )
            text = f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"
            if i == 3 and not_flat:
                text += "\nnot flat"
            ax.text(x, value * 1.08, text, ha="center", va="bottom", fontsize=6.5, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([f"{r['workload']}: {r['orders']} orders" for r in results])
    ax.set_ylabel("time to flat, ms (log)")
    ax.set_title(f"Time to flat, R = {ttf['rtt_ms']:.0f} ms (median)")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")
    ax.set_ylim(top=ax.get_ylim()[1] * 20)


def timeline(ax: Any, ttf: dict[str, Any]) -> None:
    """The median cold kill on the first workload: each request as it reached the venue."""
    r = ttf["results"][0]
    cold = sorted(
        (x for x in r["runs"] if not x.get("warm") and x.get("timeline")),
        key=lambda x: x["time_to_flat_ms"],
    )
    if not cold:
        return
    run = cold[len(cold) // 2]
    accounts = sorted({row[0] for row in run["timeline"]})
    for kind, (marker, colour) in KIND_STYLE.items():
        xs = [row[1] for row in run["timeline"] if row[2] == kind]
        ys = [accounts.index(row[0]) for row in run["timeline"] if row[2] == kind]
        ax.scatter(xs, ys, marker=marker, color=colour, label=f"{kind} sent", s=28, alpha=0.8)
    stages = run["stages"]
    for name, style, label in (
        ("journaled", ":", "journaled"),
        ("verified", "-", "flat"),
    ):
        if name in stages:
            ax.axvline(stages[name], linestyle=style, color="black", linewidth=1)
            ax.text(stages[name], len(accounts) - 0.4, f" {label}", fontsize=7, va="top")
    ax.axvline(r["bound"]["ms"], linestyle="--", color="tab:gray", linewidth=1)
    ax.text(r["bound"]["ms"], -0.6, " bound", fontsize=7, color="tab:gray")
    ax.set_yticks(range(len(accounts)))
    ax.set_yticklabels(accounts, fontsize=8)
    ax.set_ylim(-0.8, len(accounts) - 0.2)
    ax.set_xlabel("ms since the alert was produced")
    ax.set_title(f"One kill on {r['workload']} (median run): requests per account", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def scale(ax: Any, data: dict[str, Any]) -> None:
    rows = data["rows"]
    n = [r["accounts"] for r in rows]
    ax.plot(n, [r["ttf_ms"] for r in rows], "o-", color="tab:green", label="time to flat")
    ax.plot(n, [r["bound_ms"] for r in rows], "--", color="tab:gray", label="bound")
    ax.plot(n, [r["bound_ms"] * 1.5 for r in rows], ":", color="tab:gray", label="1.5x bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(n)
    ax.set_xticklabels([str(x) for x in n])
    ax.set_xlabel("accounts in one daemon")
    ax.set_ylabel("time to flat, ms (log)")
    twin = ax.twinx()
    twin.plot(n, [r["peak_rss_mb"] for r in rows], "s-", color="tab:brown", label="RSS peak, MB")
    twin.plot(
        n, [r["idle_cpu_pct"] * 10 for r in rows], "^-", color="tab:pink", label="idle CPU x10, %"
    )
    twin.set_ylabel("MB  /  % of a core x10")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(
        lines[0] + more[0],
        lines[1] + more[1],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
    )
    ax.set_title("Scale: one daemon, 5 symbols x 10 orders per account", fontsize=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ttf",
        required=True,
        action="append",
        help="bench/time_to_flat.py --json output (again for more files: workloads are joined)",
    )
    parser.add_argument("--scale", help="bench/scale.py --json output")
    parser.add_argument("--out", default="docs/numbers.png")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ttf = orjson.loads(Path(args.ttf[0]).read_bytes())
    for more in args.ttf[1:]:
        ttf["results"] += orjson.loads(Path(more).read_bytes())["results"]
    order = {"S": 0, "L": 1}
    ttf["results"].sort(key=lambda r: order.get(r["workload"], 9))
    scaled = orjson.loads(Path(args.scale).read_bytes()) if args.scale else None
    fig = plt.figure(figsize=(12, 8), dpi=110)
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1])
    bars(fig.add_subplot(grid[0, 0]), ttf)
    if scaled is not None:
        scale(fig.add_subplot(grid[0, 1]), scaled)
    timeline(fig.add_subplot(grid[1, :]), ttf)
    fig.suptitle(f"killswitch: time to flat on the simulator ({ttf['machine']})", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
