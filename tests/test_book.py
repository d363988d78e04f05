"""The book as a reader meets it: every notebook executed (smoke profile), the book built with warnings as errors,
every page opened in headless Chromium with the network off; screenshots under _build/screenshots/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from circuittrack.figures import circuit_graph
from circuittrack.figures.theme import TASK_TITLES
from circuittrack.sweeps.grid import load_grid
from circuittrack.sweeps.store import load_results
from circuittrack.book.check import (INSTALL_HINT, check_book, check_page, drive_slider, external_loads,
                                     figure_references, find_chromium, unfolded_code)
from circuittrack.book.notebooks import book_toc, list_notebooks, run_notebooks

REPO = Path(__file__).resolve().parents[1]


def toc_files(toc_path: Path = REPO / "_toc.yml") -> list[str]:
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    files += [c["file"] for c in toc.get("chapters", [])]
    return files


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The smoke profile's notebooks executed into a copy of the book's sources, then built."""
    site = tmp_path_factory.mktemp("site")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, site / name)
    shutil.copytree(REPO / "book", site / "book", ignore=shutil.ignore_patterns("executed"))
    report = run_notebooks("smoke", out_dir=site / "book" / "executed", store=site / "store", progress=False)
    build = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(site), "-W", "-q",
                            "--toc", str(book_toc("smoke", site))], capture_output=True, text=True)
    return site, report, build


@pytest.mark.slow
def test_every_notebook_runs_and_writes_its_figures(built_book):
    site, report, _ = built_book
    assert report.failed == []
    from circuittrack.book.notebooks import check_selection

    ran = [p.stem for p in check_selection(None, profile="smoke")]
    assert sorted(n for n, _ in report.executed) == ran
    assert ran == [p.stem for p in list_notebooks() if p.stem != "08_architectures"]  # the families profile's
    figures = site / "book" / "executed" / "figures"
    for stem in ("figure1_task_behaviour", "circuit_size_edges", "edge_stability", "size_against_model",
                 "whole_curve_cpr"):
        assert (figures / f"{stem}.svg").read_text().lstrip().startswith("<svg")
        assert (figures / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        keys = (figures / f"{stem}.keys.txt").read_text().split()
        assert keys and all(len(k) == 20 for k in keys)  # the store keys the figure read


@pytest.mark.slow
def test_the_book_builds_without_warnings_and_loads_nothing_from_outside(built_book):
    site, _, build = built_book
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    html = site / "_build" / "html"
    files = toc_files(book_toc("smoke", site))
    assert "book/executed/06_seeds" in files and files.index("book/executed/06_seeds") + 1 == \
        files.index("book/executed/07_compared_with_paper")  # the seeds chapter comes with seed variants
    for f in files:
        page = html / f"{f}.html"
        assert page.exists(), f"{f} was not built"
        assert external_loads(page.read_text()) == [], f"{f} loads from the internet"
    assert (html / "vega" / "vega-embed.min.js").exists() and (html / "mathjax" / "tex-mml-chtml.js").exists()


def test_the_external_load_check_sees_cdn_scripts_and_ignores_links():
    page = ('<script src="https://cdn.jsdelivr.net/npm/vega@6"></script><script src="../vega/vega.min.js"></script>'
            '<link rel="stylesheet" href="//fonts.example/x.css"><a href="https://arxiv.org/abs/2407.10827">paper</a>')
    assert external_loads(page) == ["https://cdn.jsdelivr.net/npm/vega@6", "//fonts.example/x.css"]


def test_the_page_check_sees_console_errors_and_unfolded_code(tmp_path):
    """A script declaring a constant twice (what Jupyter Book's thebe setup did on every page) and an exception are
    console errors; a code cell outside a "show code" toggle is unfolded code."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium: {INSTALL_HINT} (CI installs it, so CI always runs this test)")
    page = tmp_path / "p.html"
    page.write_text('<html><body><p>text</p><script>const X = 1;</script><script>const X = 2;</script>'
                    '<script>console.log("fine"); throw new TypeError("boom")</script>'
                    '<div class="cell_input docutils container">code</div>'
                    '<details class="admonition hide above-input"><div class="cell_input">hidden</div></details>'
                    '</body></html>')
    report = check_page(chromium, page, tmp_path, None)
    assert any("Identifier 'X' has already been declared" in e for e in report.console_errors), report
    assert any("TypeError: boom" in e for e in report.console_errors) and not any("fine" in e for e in
                                                                                 report.console_errors)
    assert report.unfolded_code == 1 and len(report.problems) == 3
    clean = tmp_path / "q.html"
    clean.write_text('<html><body><script>console.log("[PST]: Changed to auto mode")</script></body></html>')
    assert check_page(chromium, clean, tmp_path, None).problems == []
    assert unfolded_code('<div class="cell_input">a</div>') == 1


def test_the_figure_check_sees_references_that_run_ahead_of_the_figures():
    from circuittrack.book.check import early_references

    cap = "<p><strong>Figure {}: T.</strong></p>"
    ok = ("<p>Figures 2.1 and 2.3 are the overview.</p>" + cap.format("2.1") + "<p>Figure 2.2 next.</p>"
          + cap.format("2.2") + "<p>Figure 2.3, and back to Figure 2.1.</p>" + cap.format("2.3a") + cap.format("2.3b"))
    assert early_references(ok) == []
    swapped = (cap.format("2.1") + "<p>Figure 2.3 draws circuits.</p>" + cap.format("2.2") + "<p>Figure 2.2 sizes.</p>"
               + cap.format("2.3"))
    assert early_references(swapped) == ["2.3"]
    after = Path("/tmp/after/_build/html/book/executed/02_circuits_over_training.html")
    if after.exists():  # the build this check was written after: its viewer section named 2.8 for 2.7
        assert early_references(after.read_text()) == ["2.8"]


def test_the_page_check_sees_bare_values_a_cell_printed():
    from circuittrack.book.check import stray_outputs

    page = ('<div class="cell_output docutils container"><div class="output text_plain highlight-myst-ansi '
            'notranslate"><div class="highlight"><pre><span></span>\'2.1\'</pre></div></div></div>'
            '<div class="output text_html"><table></table></div>')
    assert stray_outputs(page) == 1 and stray_outputs(page.replace("text_plain", "text_markdown")) == 0


def test_the_figure_check_sees_unreferenced_figures_and_dangling_references():
    page = ("<p>Figure 2.1 shows sizes; see Figures 2.3a and 2.4 and the paper's Figure 4 B.</p>"
            "<p><strong>Figure 2.1: Size.</strong> Source: ...</p><p><strong>Figure 2.2: Nodes.</strong></p>"
            "<p><strong>Figure 2.3a: One.</strong></p><p><strong>Figure 2.3b: Two.</strong></p>"
            '<script>{"title": "Figure 2.2 in a spec is not text"}</script>')
    figures, unreferenced, dangling = figure_references(page)
    assert figures == ["2.1", "2.2", "2.3a", "2.3b"]
    assert unreferenced == ["2.2"] and dangling == ["2.4"]
    assert figure_references("<p>Figure\n 1.1</p><strong>Figure 1.1: A.</strong>")[1:] == ([], [])


@pytest.mark.slow
def test_every_page_renders_in_headless_chromium_offline(built_book):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium: {INSTALL_HINT} (CI installs it, so CI always runs this test)")
    site, _, build = built_book
    assert build.returncode == 0
    shots = REPO / "_build" / "screenshots"
    reports = {r.page: r for r in check_book(site / "_build" / "html", shots=shots, chromium=chromium)}
    for f in toc_files():
        assert f"{f}.html" in reports
    for page, r in reports.items():
        assert r.problems == [], f"{page}: {r.problems}"
        assert r.screenshot is not None and Path(r.screenshot).stat().st_size > 10_000
    assert reports["book/executed/01_task_behaviour.html"].charts == 1
    viewers = len(circuit_graph.drawable(_stored_edges(site), ["toy-s"]))
    assert viewers >= 1
    assert reports["book/executed/02_circuits_over_training.html"].charts == 7 + viewers
    assert reports["book/executed/04_ioi_algorithm.html"].figures[:2] == ["4.1a", "4.2"]  # Figure 4A for toy-s
    methods = reports["book/methods.html"]
    assert methods.has_math and methods.math_rendered  # the vendored MathJax typeset the equations


def _stored_edges(site: Path):
    """The circuit edges of the smoke book's store, one job per checkpoint (the whole dataset: half 0)."""
    grid = load_grid(REPO / "grids" / "smoke.yaml")
    keys = [j.key for j in grid.jobs if j.analysis == "circuit" and j.params.get("half") == 0]
    return load_results("circuit", "edges", store=site / "store", keys=keys)


@pytest.mark.slow
def test_the_circuit_viewers_slider_moved_in_chromium_draws_the_stored_circuits(built_book):
    """Chapter 2 as a reader meets it: each viewer's slider moved to its first and last checkpoint draws exactly
    the edges the store holds for that model, task and step (the view's scenegraph and the SVG agree)."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium: {INSTALL_HINT} (CI installs it, so CI always runs this test)")
    site, _, build = built_book
    assert build.returncode == 0
    edges = _stored_edges(site)
    titles = {v: k for k, v in TASK_TITLES.items()}
    report = drive_slider(chromium, site / "_build" / "html" / "book" / "executed" / "02_circuits_over_training.html",
                          [0, -1])
    assert report and all("error" not in r for r in report), report
    assert len(report) == 2 * len(circuit_graph.drawable(edges, ["toy-s"]))
    for r in report:
        task, model = re.match(r"(.+) circuit of (\S+) at step", r["title"]).groups()
        d = edges[(edges["model"] == model) & (edges["task"] == titles[task]) & (edges["step"] == r["step"])]
        assert sorted(r["scene"]) == sorted(r["svg"]) == sorted(d["source"] + "->" + d["target"]), r["title"]
    first, last = report[0], report[1]
    assert first["step"] == int(edges[edges["task"] == "ioi"]["step"].min()) and last["step"] == 3200


@pytest.mark.slow
def test_the_intros_verdicts_link_to_rows_of_the_claims_table(built_book):
    site, _, build = built_book
    assert build.returncode == 0
    html = site / "_build" / "html" / "book"
    intro, claims = (html / "intro.html").read_text(), (html / "executed" / "07_compared_with_paper.html").read_text()
    links = re.findall(r'href="executed/07_compared_with_paper.html#([^"]+)"', intro)
    assert links and "Verdicts of this run:" in intro
    ids = set(re.findall(r'id="([^"]+)"', claims))
    assert all(a in ids for a in links) and len(set(links)) == len(links)
    assert len(links) == len(re.findall(r'<td id="T_claims_row\d+_col0"', claims))  # every row, once


@pytest.mark.slow
def test_a_chapter_reruns_with_papermill_on_part_of_a_grid_as_the_rerun_page_says(tmp_path):
    out = tmp_path / "out.ipynb"
    papermill = str(Path(sys.executable).parent / "papermill")
    chapter = str(REPO / "notebooks" / "01_task_behaviour.ipynb")
    narrowed = (f"{{grid: grids/smoke.yaml, models: [toy-s], tasks: [ioi], checkpoints: [3200], "
                f"store: {tmp_path / 'store'}}}")
    done = subprocess.run([papermill, chapter, str(out), "-y", narrowed],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 results: 1 models x 1 checkpoints x 1 tasks" in out.read_text()
    assert (tmp_path / "figures" / "figure1_task_behaviour.svg").exists()
    bad = subprocess.run([papermill, chapter, str(tmp_path / "bad.ipynb"), "-y",
                          "{grid: grids/smoke.yaml, models: [toy-xl]}"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "models toy-xl not in this grid; valid: toy-s" in bad.stderr + bad.stdout


def test_the_default_book_leaves_the_seeds_chapter_out_and_the_seeds_profile_adds_it(tmp_path):
    from circuittrack.book.notebooks import check_selection

    assert book_toc("toy", REPO) == REPO / "_toc.yml" and "book/executed/06_seeds" not in toc_files()
    shutil.copy(REPO / "_toc.yml", tmp_path / "_toc.yml")
    expected = toc_files()
    expected.insert(expected.index("book/executed/07_compared_with_paper"), "book/executed/06_seeds")
    assert toc_files(book_toc("seeds", tmp_path)) == expected
    assert "06_seeds" not in [p.stem for p in check_selection(None, profile="toy")]
    assert "06_seeds" in [p.stem for p in check_selection(None, profile="seeds")]


def test_the_families_profile_adds_the_architectures_chapter_and_only_it_runs_it(tmp_path):
    from circuittrack.book.notebooks import check_selection
    from circuittrack.errors import InvalidInput

    shutil.copy(REPO / "_toc.yml", tmp_path / "_toc.yml")
    expected = toc_files()
    expected.insert(expected.index("book/executed/07_compared_with_paper"), "book/executed/08_architectures")
    assert toc_files(book_toc("families", tmp_path)) == expected
    stems = [p.stem for p in check_selection(None, profile="families")]
    assert "08_architectures" in stems and "06_seeds" not in stems
    assert "08_architectures" not in [p.stem for p in check_selection(None, profile="toy")]
    with pytest.raises(InvalidInput, match="valid profiles for it: families"):
        check_selection(["08_architectures"], profile="toy")
