"""One look for every figure of the book, interactive and offline, and each figure saved as SVG and PNG.

* Theme ``circuittrack``: the paper's axis names, tokens seen on a log axis, one colour per model in order of
  size (dark for small models, warm for large), readable fonts.
* Renderer ``book``: the chart as a ``<div>`` plus a ``vegaEmbed`` call. The book vendors vega, vega-lite and
  vega-embed (``book/_vendor``), so a page loads nothing from the internet; in JupyterLab the ``svg`` renderer
  is the offline choice.
* :func:`save` writes ``<stem>.svg``, ``<stem>.png`` (vl-convert, no browser) and ``<stem>.keys.txt`` (the
  store keys read) next to the executed notebook.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import altair as alt

THEME = "circuittrack"
RENDERER = "book"

#: Colours for models in order of size; a suite with n models uses the first n (Pythia has 8, toy 3).
MODEL_PALETTE = ("#1b3a6b", "#2166ac", "#4393c3", "#35978f", "#80b33a", "#e0a31b", "#e06a1b", "#b2182b")

#: The paper's axis names.
AXIS_TITLES = {"tokens": "Tokens seen", "logit_diff": "Logit difference", "prob_diff": "Probability difference",
               "circuit_edges": "Circuit size (edges)", "circuit_nodes": "Circuit size (nodes)",
               "faithfulness": "Faithfulness", "jaccard": "Jaccard similarity", "n": "Edges in circuit",
               "accuracy": "Accuracy", "params": "Parameters"}

TASK_TITLES = {"ioi": "IOI", "greater-than": "Greater-Than", "gendered-pronoun": "Gendered Pronoun",
               "sva": "Subject-Verb Agreement"}


def _theme() -> dict:
    font = "Helvetica Neue, Helvetica, Arial, sans-serif"
    return {"config": {
        "font": font,
        "view": {"continuousWidth": 250, "continuousHeight": 170, "stroke": "#ccc"},
        "axis": {"labelFontSize": 11, "titleFontSize": 12, "gridColor": "#eee", "titleFontWeight": "normal"},
        "header": {"labelFontSize": 12, "titleFontSize": 12},
        "legend": {"labelFontSize": 11, "titleFontSize": 12, "orient": "bottom", "direction": "horizontal"},
        "title": {"fontSize": 13, "anchor": "start", "fontWeight": "normal"},
        "line": {"strokeWidth": 1.8},
        "point": {"size": 28, "filled": True},
    }}


def _book_renderer(spec: dict, **metadata) -> dict:
    """SVG, not canvas: every drawn mark is an element (with its ARIA label) that readers' tools and the book's
    browser test can find; the embedded view is kept in ``window.circuittrackViews[div id]``."""
    div = "vega-" + uuid.uuid4().hex[:12]
    html = (f'<div id="{div}" class="circuittrack-chart"></div><script type="text/javascript">'
            f'vegaEmbed("#{div}", {json.dumps(spec)}, {{"mode": "vega-lite", "actions": false, "renderer": "svg"}})'
            f'.then(r => {{(window.circuittrackViews = window.circuittrackViews || {{}})["{div}"] = r.view;}})'
            '.catch(console.error);</script>')
    return {"text/html": html, "text/plain": "<circuittrack chart>"}


def use_book_theme(renderer: str = RENDERER) -> None:
    """Enable the theme and a renderer (``book`` for the executed notebooks; ``svg`` works in JupyterLab)."""
    alt.theme.register(THEME, enable=True)(_theme)
    alt.renderers.register(RENDERER, _book_renderer)
    alt.renderers.enable(renderer)
    alt.data_transformers.disable_max_rows()


def model_colours(n: int) -> list[str]:
    """``n`` colours spread evenly over the palette, smallest model first (3 models: blue, green, red)."""
    k = len(MODEL_PALETTE)
    if not 1 <= n <= k:
        raise ValueError(f"{n} models but the palette has {k} colours")
    return [MODEL_PALETTE[round(i * (k - 1) / (n - 1))] if n > 1 else MODEL_PALETTE[0] for i in range(n)]


def model_scale(models: list[str]) -> alt.Scale:
    """Colour scale with ``models`` (given in order of size) mapped to the palette in that order."""
    return alt.Scale(domain=list(models), range=model_colours(len(models)))


def tokens_axis(title: str = AXIS_TITLES["tokens"]) -> alt.X:
    """Tokens seen on a log axis (step 0, with no tokens, cannot be drawn on it: callers drop it)."""
    return alt.X("tokens:Q", scale=alt.Scale(type="log", nice=False), title=title,
                 axis=alt.Axis(format="~s", tickCount=5))


def figures_dir() -> Path:
    """Where saved figures go: ``figures/`` next to the running notebook (its working directory; the executed
    notebooks run in book/executed/)."""
    return Path.cwd() / "figures"


def save(chart: alt.TopLevelMixin, stem: str, keys_text: str | None = None, folder: Path | None = None) -> Path:
    """Write ``<stem>.svg`` and ``<stem>.png`` (rasterised from that SVG) and ``<stem>.keys.txt``; returns the SVG
    path. The spec is not validated against the Vega-Lite schema here (Altair validates it when the chart is
    shown, which :meth:`~circuittrack.figures.source.Source.figure` does next; validation is most of
    ``to_dict``'s time), and Vega-Lite itself refuses what it cannot draw."""
    import vl_convert as vlc

    folder = Path(folder or figures_dir())
    folder.mkdir(parents=True, exist_ok=True)
    spec = chart.to_dict(validate=False)
    svg = folder / f"{stem}.svg"
    text = vlc.vegalite_to_svg(spec)
    svg.write_text(text)
    (folder / f"{stem}.png").write_bytes(vlc.svg_to_png(text, scale=2))  # the same image, without running vega again
    if keys_text is not None:
        (folder / f"{stem}.keys.txt").write_text(keys_text)
    return svg


#: Column headings the book's tables show.
COLUMN_TITLES = {"task": "Task", "model": "Model", "models": "Models", "pearson_r": "Pearson r",
                 "reached": "circuit found", "not_reached": "not reached by the cap",
                 "undefined": "undefined (task not done)", "claim": "Claim", "item": "Item", "paper": "Paper",
                 "this run": "This run", "verdict": "Verdict", "why": "Why"}


def table(df, digits: int = 2, uuid: str | None = None):
    """A table as the book shows it: task names spelled out, readable headings, no index, rounded numbers.
    ``uuid``: fixed ids for its cells (``T_<uuid>_row<i>_col<j>``), so that other pages can link to a row."""
    shown = df.reset_index() if df.index.name or df.index.names[0] is not None else df
    if "task" in shown.columns:
        shown = shown.assign(task=shown["task"].map(lambda t: TASK_TITLES.get(t, t)))
    shown = shown.rename(columns=COLUMN_TITLES)
    shown.columns.name = None
    style = shown.style.hide(axis="index").format(precision=digits, na_rep="-")
    return style.set_uuid(uuid) if uuid else style
