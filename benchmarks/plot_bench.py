"""Re-plot (and re-tabulate) a saved ``compactnets bench --json`` run, e.g. by CPU time.

    PYTHONPATH=src python benchmarks/plot_bench.py benchmarks/results/bench_imagenet_1thread.json \
        docs/img/bench_imagenet_1thread.png --metric cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compactnets.deploy import bench_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--metric", choices=list(bench_report.METRICS), default="wall")
    args = parser.parse_args()
    rows, env = bench_report.rows_from_json(args.json.read_text())
    bench_report.plot(rows, env, args.png, args.metric)
    print(bench_report.environment_line(env))
    print(bench_report.format_table(rows, markdown=True, metric=args.metric))


if __name__ == "__main__":
    main()
