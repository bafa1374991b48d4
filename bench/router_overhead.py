"""What does routing cost per request, over calling LocalBackend directly?

Same model (digits-small), same one-image request, interleaved rounds. The
routed trees never leave the device here (a confident cascade, a fallback
whose primary answers), so the difference is the router's own work: context
checks, confidence, decisions and their trace.

    python bench/router_overhead.py [--repo model-repo]

Writes bench/results/router_overhead.json (top-level ``overhead_us``: the
largest per-request overhead among the trees; target <= 30 µs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, parse_bench_args, summary, write_result

from edgecloud import FunctionBackend, InferRequest, LocalBackend, ModelRepository
from edgecloud.routing import Cascade, Fallback, Guard, prefer_local
from edgecloud.zoo import build_zoo, datasets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--rounds", default=30, type=int)
    args = parse_bench_args(parser)
    repo = ModelRepository(args.repo)
    build_zoo(repo, ["digits-small"])
    local = LocalBackend(repo, intra_op_threads=1)
    never = FunctionBackend(lambda inputs: {}, name="unused-remote")
    trees: dict[str, Any] = {
        "LocalBackend (baseline)": local,
        "prefer_local(local, remote)": prefer_local(local, never),
        "Cascade(local, remote), confident": Cascade(local, never, threshold=0.0),
        "Guard(Cascade(local, Fallback(remote, local)))": Guard(
            Cascade(local, Fallback(never, local), threshold=0.0), rules={"personal": "local"}
        ),
    }
    image = datasets.digits("test").x[:1].copy()
    samples = interleaved(
        {name: (lambda t=tree: t.infer(InferRequest("digits-small", {"pixels": image})))
         for name, tree in trees.items()},
        rounds=args.rounds, per_round=2000,
    )  # fmt: skip
    base = summary(samples["LocalBackend (baseline)"])["median_us"]
    rows = []
    table = Table("tree", "µs per request", "router overhead µs",
                  title="one digits-small image, median of interleaved rounds")  # fmt: skip
    for name, times in samples.items():
        median = summary(times)["median_us"]
        rows.append({"tree": name, "median_us": median, "overhead_us": median - base})
        table.add_row(name, f"{median:.1f}", f"{median - base:+.1f}")
    Console().print(table)
    worst = max(r["overhead_us"] for r in rows)
    path = write_result(
        "router_overhead",
        {
            "benchmark": "router_overhead",
            "peer": "LocalBackend.infer called directly",
            "overhead_us": worst,
            "target_us": 30,
            "cases": rows,
            "machine": machine(),
        },
    )
    print(f"largest router overhead {worst:.1f} µs (target <= 30 µs); wrote {path}")


if __name__ == "__main__":
    main()
