"""Runs every benchmark, or those named: `python -m bench [NAME ...]`."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "startup": "bench.startup",
    "api": "bench.api",
    "engine": "bench.engine",
    "gateway": "bench.gateway",
    "metrics": "bench.metrics_pipeline",
    "starved": "bench.starved",
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(BENCHMARKS[name]).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
