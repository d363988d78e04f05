"""The circuit viewer at Pythia-2.8b size in headless Chromium: spec size, first draw and slider moves.

A synthetic circuit over training on Pythia-2.8b's graph (32 layers x 32 heads): 1,600 edges at each of 150
checkpoints, a quarter of them replaced from one checkpoint to the next. The chart is embedded as the book embeds
it (vendored vega, SVG renderer) and the slider moved as a reader moves it (``book.check.drive_slider``): to the
first, a middle and the last checkpoint, then back. Reports the spec's bytes, the page's time to the first
drawn viewer and the time of a slider move (input event to redrawn view), and checks that each drawing has the
checkpoint's 1,600 edges. Headless Chromium runs the page on virtual time, so the page's own clock does not see
the work: a move's time is the wall-clock difference between a run that moves the slider K times and one that
only loads the page, divided by K. Target (printed, not asserted): a slider move under 500 ms on 2 CPU cores.
Run as ``make bench`` (skipped without Chromium).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from circuittrack.book.check import INSTALL_HINT, _chromium, drive_slider, find_chromium
from circuittrack.circuits.graph import Graph
from circuittrack.figures import circuit_graph, theme

REPO = Path(__file__).resolve().parents[1]


def synthetic_edges(n_layers: int, n_heads: int, n_edges: int, n_steps: int, churn: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    pool = [tuple(n.split("->")) for n in Graph(n_layers, n_heads, True).edge_names()]
    cur = rng.choice(len(pool), n_edges, replace=False)
    rows = []
    for k in range(n_steps):
        step = 1000 * (k + 1)
        scores = rng.normal(0, 1, n_edges)
        for rank, (i, s) in enumerate(zip(cur, scores)):
            rows.append((step, *pool[i], float(s), rank))
        swap = rng.choice(n_edges, int(churn * n_edges), replace=False)
        fresh = np.setdiff1d(rng.choice(len(pool), 4 * len(swap), replace=False), cur)[:len(swap)]
        cur = cur.copy()
        cur[swap] = fresh
    df = pd.DataFrame(rows, columns=["step", "source", "target", "score", "greedy_rank"])
    return df.assign(model="pythia-2.8b-shape", task="ioi", key="k" + df["step"].astype(str))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=1600)
    ap.add_argument("--checkpoints", type=int, default=150)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print(f"bench_viewer: skipped, no Chromium ({INSTALL_HINT})")
        return 0
    t = time.perf_counter()
    edges = synthetic_edges(32, 32, args.edges, args.checkpoints, 0.25)
    view = circuit_graph.circuit_over_training(edges, "pythia-2.8b-shape", "ioi", 32, 32)
    spec = view.to_dict()
    build_s = time.perf_counter() - t
    theme.use_book_theme()
    vendor = REPO / "book" / "_vendor" / "vega"
    scripts = "".join(f'<script src="{(vendor / n).as_uri()}"></script>'
                      for n in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"))
    n = args.checkpoints
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "viewer.html"
        page.write_text(f"<html><head>{scripts}</head><body>{theme._book_renderer(spec)['text/html']}</body></html>")
        t = time.perf_counter()
        _chromium(chromium, page, ["--dump-dom"])
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        drive_slider(chromium, page, [])
        base_s = time.perf_counter() - t
        positions = [0, n // 2, n - 1, n // 3, 1, n - 2, 2 * n // 3, 3, n // 4, n - 5]
        t = time.perf_counter()
        report = drive_slider(chromium, page, positions)
        moves_s = time.perf_counter() - t
    if any("error" in r for r in report):
        print(json.dumps(report)[:2000])
        return 1
    per_move = 1000 * max(moves_s - base_s, 0.0) / len(positions)
    drawn_ok = len(report) == len(positions) and all(len(r["svg"]) == args.edges == len(r["scene"]) for r in report)
    result = {"edges": args.edges, "checkpoints": n, "spec_mb": round(len(json.dumps(spec)) / 1e6, 2),
              "spec_build_s": round(build_s, 2), "page_load_s": round(load_s, 2), "moves": len(positions),
              "move_ms": round(per_move, 1), "every_drawing_has_all_edges": drawn_ok}
    print(json.dumps(result, indent=1))
    print(f"{'PASS' if per_move < 500 else 'FAIL'}: a slider move takes {per_move:.0f} ms (target < 500 ms)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if drawn_ok else 1


if __name__ == "__main__":
    sys.exit(main())
