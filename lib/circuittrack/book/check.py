"""Checking a built book as a reader meets it: every page opened in headless Chromium with the network off.

For each HTML page: no element loads anything from outside the build folder (script, stylesheet, image, frame
sources), every chart element holds a rendered ``svg`` or ``canvas``, no "Error loading script" text, no error in
the browser console (an uncaught exception, a failed load, a console error), math is typeset by the vendored
MathJax where the page has math, every numbered figure is referred to in the text (and every reference has its
figure), and a screenshot is written for a person to look at. :func:`drive_slider` moves a chart's checkpoint
slider in the browser and reports what is drawn at each position.
Chromium runs with every network request sent to a dead proxy, so a page that needed the internet would show
it. Debian's ``chromium`` package provides the browser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "install Debian's chromium package: apt-get install -y chromium"


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Loads(HTMLParser):
    """Every URL the page itself would load (not links a reader may click)."""

    ATTRS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src",
             "embed": "src", "link": "href"}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and a.get("rel") not in ("stylesheet", "preload", "icon", "modulepreload", "prefetch",
                                                     "shortcut icon", "manifest"):
            return
        name = self.ATTRS.get(tag)
        if name and a.get(name):
            self.urls.append(a[name])


class _Charts(HTMLParser):
    """For each chart element of a rendered page: whether an svg or canvas was drawn inside it."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.rendered: list[bool] = []
        self.depth = 0
        self.inside: int | None = None  # depth of the open chart element

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        self.depth += 1
        classes = (dict(attrs).get("class") or "").split()
        if self.inside is None and "circuittrack-chart" in classes:
            self.inside = self.depth
            self.rendered.append(False)
        elif self.inside is not None and tag in ("svg", "canvas"):
            self.rendered[-1] = True

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.inside == self.depth:
            self.inside = None
        self.depth -= 1


@dataclass
class PageReport:
    page: str
    external: list[str] = field(default_factory=list)  # URLs outside the build folder
    charts: int = 0
    charts_rendered: int = 0
    script_errors: int = 0
    console_errors: list[str] = field(default_factory=list)
    unfolded_code: int = 0  # code cells shown without a click (the book folds them behind "show code")
    stray_outputs: int = 0  # bare values a cell printed (a repr like '2.1'), which a reader should never see
    figures: list[str] = field(default_factory=list)  # numbered captions, in page order ("2.1", "4.1a", ...)
    unreferenced: list[str] = field(default_factory=list)  # figure numbers the text never names
    dangling: list[str] = field(default_factory=list)  # figure numbers the text names but no caption has
    early: list[str] = field(default_factory=list)  # figures named before the figure ahead of them is shown
    has_math: bool = False
    math_rendered: bool = False
    screenshot: str | None = None

    @property
    def problems(self) -> list[str]:
        out = [f"loads {u}" for u in self.external]
        if self.charts_rendered < self.charts:
            out.append(f"{self.charts - self.charts_rendered} of {self.charts} charts did not render")
        if self.script_errors:
            out.append("'Error loading script' on the page")
        out += [f"console error: {e}" for e in self.console_errors]
        if self.unfolded_code:
            out.append(f"{self.unfolded_code} code cells shown unfolded")
        if self.stray_outputs:
            out.append(f"{self.stray_outputs} code cells show a bare value (plain-text output): end them with a "
                       "call that displays, or with ';'")
        out += [f"Figure {n} is never referred to in the text" for n in self.unreferenced]
        out += [f"the text refers to Figure {n}, which the page does not have" for n in self.dangling]
        out += [f"the text first names Figure {n} before the figure ahead of it is shown (numbers swapped?)"
                for n in self.early]
        if self.has_math and not self.math_rendered:
            out.append("math is not typeset (MathJax did not run)")
        return out


#: Chromium's log line for a console message: ``...:INFO:CONSOLE:62] "message", source: URL (62)``.
_CONSOLE = re.compile(r':CONSOLE[:(]\d*\)?\] "(?P<msg>.*)", source: (?P<src>\S*)')
#: Console messages that are errors: uncaught exceptions, resources that failed to load, console.error output.
_CONSOLE_ERROR = re.compile(r"^(Uncaught\b|Failed to load\b|Error\b|\w*Error:|Access to .* blocked)")


def console_errors(log: str) -> list[str]:
    """The error messages among the console lines of Chromium's log (``--enable-logging=stderr``)."""
    out = []
    for line in log.splitlines():
        m = _CONSOLE.search(line)
        if m and _CONSOLE_ERROR.match(m.group("msg")):
            out.append(f"{m.group('msg')} ({m.group('src').rsplit('/', 1)[-1]})")
    return out


def stray_outputs(html: str) -> int:
    """Plain-text cell outputs: a chapter shows figures, tables and Markdown, so a plain one is a bare value a cell
    ended with (its repr), not something written for the reader."""
    return len(re.findall(r'class="output text_plain\b', html))


def unfolded_code(html: str) -> int:
    """Code cells a reader sees without a click: cell inputs not inside a "hide above-input" toggle."""
    return max(0, html.count('class="cell_input') - len(re.findall(r'<details class="[^"]*\bhide above-input\b', html)))


_CAPTION = re.compile(r"<strong>Figure (\d+\.\d+)([a-z]?)[:.]")
_NUMBER = r"\d+\.\d+(?:[a-z]\b)?"
_REFERENCE = re.compile(rf"\bFigures? ({_NUMBER}(?:(?:, | and | or |-){_NUMBER})*)")


def figure_references(html: str) -> tuple[list[str], list[str], list[str]]:
    """The page's numbered figures (captions ``<strong>Figure 2.1: ...``; panels 4.1a, 4.1b share a number), the
    numbers its text never names, and the numbers it names without such a caption. Scripts (chart specs) and
    tags are left out of the text; a caption's own label is not a reference."""
    figures = [n + letter for n, letter in _CAPTION.findall(html)]
    text = re.sub(r"<script\b.*?</script>", " ", html, flags=re.S)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", _CAPTION.sub(" ", text)))
    named = {re.sub("[a-z]$", "", n) for ref in _REFERENCE.findall(text) for n in re.findall(_NUMBER, ref)}
    numbers = list(dict.fromkeys(re.sub("[a-z]$", "", f) for f in figures))
    return figures, [n for n in numbers if n not in named], sorted(named - set(numbers))


def early_references(html: str) -> list[str]:
    """Figure numbers the text first names ahead of the figures: between two figures it may introduce the next
    ones in a run (2.4, then 2.4 and 2.5 together), not one further on while the next is unnamed (two numbers
    swapped, a figure moved). A chapter's opening overview (before any figure) may name any of them."""
    text = re.sub(r"<script\b.*?</script>", " ", html, flags=re.S)
    text = _CAPTION.sub(lambda m: f" \x00{m.group(1)}\x00 ", text)
    text = re.sub(r"<[^>]+>", " ", text)
    parts = re.split(r"\x00", text)
    order = list(dict.fromkeys(p for p in parts if re.fullmatch(r"\d+\.\d+", p)))
    named: set[str] = set()
    early: list[str] = []
    shown = 0
    for part in parts:
        if re.fullmatch(r"\d+\.\d+", part):
            shown = max(shown, order.index(part) + 1)
            continue
        here = {re.sub("[a-z]$", "", n) for ref in _REFERENCE.findall(re.sub(r"\s+", " ", part))
                for n in re.findall(_NUMBER, ref)}
        new = here - named
        named |= here
        if shown == 0:
            continue
        run = shown  # the figures this text introduces: a run from the next one to be shown
        while run < len(order) and order[run] in here:
            run += 1
        early += [n for n in sorted(new) if n in order and order.index(n) >= run]
    return early


def external_loads(html: str) -> list[str]:
    parser = _Loads()
    parser.feed(html)
    return [u for u in parser.urls if re.match(r"^(https?:)?//", u)]


def check_page(chromium: str, page: Path, root: Path, shots: Path | None) -> PageReport:
    """Open one page of the built book (file://) and inspect what Chromium rendered."""
    rel = str(page.relative_to(root))
    report = PageReport(rel, external=external_loads(page.read_text(errors="replace")))
    source = page.read_text(errors="replace")
    report.has_math = bool(re.search(r'class="[^"]*\bmath\b', source))
    report.unfolded_code = unfolded_code(source)
    report.stray_outputs = stray_outputs(source)
    report.figures, report.unreferenced, report.dangling = figure_references(source)
    report.early = early_references(source)
    dom, log = _chromium(chromium, page, ["--dump-dom", "--enable-logging=stderr", "--v=0"])
    report.console_errors = console_errors(log)
    charts = _Charts()
    charts.feed(dom)
    report.charts, report.charts_rendered = len(charts.rendered), sum(charts.rendered)
    report.script_errors = dom.count("Error loading script")
    report.math_rendered = "<mjx-container" in dom
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
        out = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
        _chromium(chromium, page, [f"--screenshot={out}", "--window-size=1280,12000"])
        report.screenshot = str(out) if out.exists() else None
    return report


def check_book(html_root: Path, shots: Path | None = None, chromium: str | None = None) -> list[PageReport]:
    """Check every page of a built book (``_build/html``); screenshots into ``shots``."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found ({', '.join(CHROMIUM_NAMES)}); {INSTALL_HINT}")
    html_root = Path(html_root)
    shots = Path(shots) if shots is not None else None
    pages = sorted(p for p in html_root.rglob("*.html")
                   if not p.name.startswith(("genindex", "search")) and "_static" not in p.parts
                   and "_sources" not in p.parts)
    return [check_page(chromium, p, html_root, shots) for p in pages]


def _chromium(chromium: str, page: Path, extra: list[str]) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
               "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               "--allow-file-access-from-files", *extra, page.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        return done.stdout, done.stderr


#: Injected into a copy of a page by :func:`drive_slider`: for every chart with a ``checkpoint`` slider, moves it to
#: each position (as a reader does: the input's value, then an ``input`` event), waits for the view, and records
#: the shown step, the edges in the view's scenegraph and those the SVG draws (their ARIA labels).
_SLIDER_SCRIPT = """
<script>
(async () => {
  const wait = ms => new Promise(r => setTimeout(r, ms));
  const report = [];
  const scene = (node, name, acc) => {
    if (!node) return acc;
    if (node.marktype && node.name === name) { for (const it of node.items) acc.push(it.datum.edge); return acc; }
    for (const it of (node.items || [])) scene(it, name, acc);
    return acc;
  };
  try {
    const n = document.querySelectorAll('.circuittrack-chart').length;
    for (let i = 0; i < 200 && Object.keys(window.circuittrackViews || {}).length < n; i++) await wait(50);
    for (const [id, view] of Object.entries(window.circuittrackViews || {})) {
      const input = document.querySelector('#' + id + ' input[name="checkpoint"]');
      if (!input) continue;
      for (const pos of POSITIONS) {
        const at = pos < 0 ? Number(input.max) + 1 + pos : pos;
        const t0 = performance.now();
        input.value = String(at);
        input.dispatchEvent(new Event('input', {bubbles: true}));
        await view.runAsync();
        const ms = performance.now() - t0;
        const svg = [...document.querySelectorAll('#' + id + ' g.circuit_edges_0_marks [aria-label]')]
          .map(e => e.getAttribute('aria-label'));
        const title = document.querySelector('#' + id + ' .role-title-text');
        report.push({chart: id, position: at, checkpoint: view.signal('checkpoint'), step: view.signal('step'),
                     title: title ? title.textContent : null, ms: ms,
                     scene: scene(view.scenegraph().root, 'circuit_edges_0_marks', []), svg: svg});
      }
    }
  } catch (e) { report.push({error: String(e)}); }
  const out = document.createElement('pre');
  out.id = 'circuittrack-slider-report';
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
})();
</script>
"""


def drive_slider(chromium: str, page: Path, positions: list[int]) -> list[dict]:
    """Open ``page`` in headless Chromium (offline) and move every checkpoint slider on it to each of
    ``positions`` (indexes into the slider's checkpoints; -1 the last). One dict per chart and position:
    ``chart`` (its div id), ``position``, ``checkpoint`` and ``step`` (the view's signals after the move),
    ``title`` (the drawn title's first line), ``ms`` (from moving the slider to the redrawn view),
    ``scene`` (edge names in the view's scenegraph) and ``svg`` (the ARIA labels of the drawn edge elements);
    ``{"error": ...}`` if the page's script failed. The page is copied beside itself (relative paths keep
    working) and the copy removed."""
    import html as html_lib
    import json

    page = Path(page)
    text = page.read_text(errors="replace")
    script = _SLIDER_SCRIPT.replace("POSITIONS", json.dumps([int(p) for p in positions]))
    copy = page.with_name(f".slider-{page.name}")
    copy.write_text(text.replace("</body>", script + "</body>") if "</body>" in text else text + script)
    try:
        dom, _ = _chromium(chromium, copy, ["--dump-dom"])
    finally:
        copy.unlink(missing_ok=True)
    m = re.search(r'<pre id="circuittrack-slider-report"[^>]*>(.*?)</pre>', dom, flags=re.S)  # the theme adds attributes
    if m is None:
        return [{"error": "the page's slider script did not finish (no report in the DOM)"}]
    return json.loads(html_lib.unescape(m.group(1)))


def main(argv: list[str] | None = None) -> int:
    """``python -m circuittrack.book.check HTML_DIR [SCREENSHOT_DIR]``: exit 1 if a page has a problem."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m circuittrack.book.check HTML_DIR [SCREENSHOT_DIR]", file=sys.stderr)
        return 2
    if find_chromium() is None:
        print(f"circuittrack: pages not checked: no Chromium ({INSTALL_HINT})", file=sys.stderr)
        return 0
    reports = check_book(Path(args[0]), Path(args[1]) if len(args) > 1 else None)
    bad = [r for r in reports if r.problems]
    for r in reports:
        print(f"{'PROBLEM' if r.problems else 'ok'}  {r.page}: {r.charts_rendered}/{r.charts} charts"
              + (", math typeset" if r.math_rendered else "") + "".join(f"; {p}" for p in r.problems))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
