"""What a bench run reports: the machine line, the table (text or Markdown), JSON, CSV and the latency-vs-MACs
plot of :func:`~compactnets.deploy.bench.run_bench`'s rows, and the rows back from a saved JSON.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path

from . import DeployError
from .bench import BACKENDS, BenchRow


def environment_line(env: dict) -> str:
    """The machine line above a table: CPU and its vector extensions, threads, library versions."""
    flags = "/".join(env["cpu_flags"]) or "no AVX2"
    return (
        f"{env['cpu']} ({flags}), {env['threads']} thread(s), torch {env['torch']}, oneDNN {env['onednn'] or '?'}, "
        f"onnxruntime {env['onnxruntime'] or '-'}, openvino {env.get('openvino') or '-'}, {env['dtype']} weights"
    )


TABLE_COLUMNS = (
    ("model", "model", "{}"),
    ("backend", "backend", "{}"),
    ("precision", "precision", "{}"),
    ("params", "params (M)", "{:.2f}"),
    ("macs", "MACs (M)", "{:.1f}"),
    ("latency_ms_median", "median ms", "{:.2f}"),
    ("latency_ms_p90", "p90 ms", "{:.2f}"),
    ("latency_ms_min", "min ms", "{:.2f}"),
    ("cpu_ms_median", "cpu ms", "{:.2f}"),
    ("throughput_ips", "img/s", "{:.0f}"),
    ("gmacs_per_s", "GMAC/s", "{:.1f}"),
    ("best", "best", "{}"),
)


# What "latency" means in the best-backend mark and the plot: the wall-clock median (the convention), or the
# CPU-time median (steadier on a shared machine: with one thread, the latency an idle core would give).
METRICS = {"wall": "latency_ms_median", "cpu": "cpu_ms_median"}


def _best_backends(rows: list[BenchRow], metric: str = "wall") -> dict[str, str]:
    best, key = {}, METRICS[metric]
    for row in rows:
        if row.model not in best or getattr(row, key) < getattr(best[row.model], key):
            best[row.model] = row
    return {model: row.backend for model, row in best.items()}


def _cells(row: BenchRow, best: dict[str, str]) -> list[str]:
    values = row.as_dict()
    values["params"] /= 1e6
    values["macs"] /= 1e6
    values["best"] = "*" if best[row.model] == row.backend else ""
    return ["-" if values[key] is None else fmt.format(values[key]) for key, _, fmt in TABLE_COLUMNS]


def format_table(rows: list[BenchRow], markdown: bool = False, metric: str = "wall") -> str:
    """One line per (model, backend); ``*`` marks each model's fastest backend at batch 1 (by ``metric``)."""
    best = _best_backends(rows, metric)
    header = [title for _, title, _ in TABLE_COLUMNS]
    body = [_cells(r, best) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in body]
    return "\n".join(lines)


def to_json(rows: list[BenchRow], env: dict) -> str:
    return json.dumps({"environment": env, "results": [r.as_dict() for r in rows]}, indent=2)


def to_csv(rows: list[BenchRow], env: dict) -> str:
    """One row per (model, backend), the environment repeated on each row (a CSV has no header block)."""
    buffer = io.StringIO()
    env_columns = {"cpu": env["cpu"], "threads": env["threads"], "torch": env["torch"],
                   "onnxruntime": env["onnxruntime"], "openvino": env.get("openvino"),  # absent before openvino
                   "onednn": env["onednn"]}  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=[*rows[0].as_dict(), *env_columns])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row.as_dict(), **env_columns})
    return buffer.getvalue()


def rows_from_json(text: str) -> tuple[list[BenchRow], dict]:
    """The rows and environment of a :func:`to_json` output (to re-plot or re-tabulate a run)."""
    data = json.loads(text)
    # runs from before the precision column computed everything in float32
    return [BenchRow(**{"precision": "f32", **r}) for r in data["results"]], data["environment"]


def plot(rows: list[BenchRow], env: dict, out: str | Path, metric: str = "wall") -> None:
    """Batch-1 median latency (``metric``: wall or CPU time) against MACs, log-log: one marker per (model,
    backend), labelled with the model."""
    key = METRICS[metric]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DeployError("--plot needs matplotlib: pip install 'compactnets[plot]'") from e
    markers = dict(zip(BACKENDS, "os^DvPX", strict=False))
    sources = {"tv": "tab:gray", "timm": "tab:brown"}
    fig, ax = plt.subplots(figsize=(10, 7), dpi=120)
    for backend in dict.fromkeys(r.backend for r in rows):
        subset = [r for r in rows if r.backend == backend]
        colors = [sources.get(r.model.split(":")[0], "tab:blue") if ":" in r.model else "tab:blue" for r in subset]
        ax.scatter(
            [r.macs / 1e6 for r in subset],
            [getattr(r, key) for r in subset],
            marker=markers.get(backend, "o"),
            facecolors=colors if backend == "eager" else "none",
            edgecolors=colors,
            label=backend,
            s=40,
        )
        for r in subset:
            ax.annotate(r.model, (r.macs / 1e6, getattr(r, key)), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs (millions, batch 1)")
    ax.set_ylabel(f"batch-1 median latency (ms, {'CPU time' if metric == 'cpu' else 'wall clock'})")
    wrapped = "\n".join(textwrap.wrap(environment_line(env), 150))  # one line overflows the figure
    ax.set_title(f"Latency vs MACs: blue compactnets, gray torchvision, brown timm\n{wrapped}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="backend")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
