"""A Sphinx extension for the book: no thebe scripts on its pages.

Jupyter Book 1.x always loads ``sphinx_thebe``, which adds its configuration script once per
``env-before-read-docs`` event, so a page can carry ``const THEBE_JS_URL = ...`` twice and the browser logs
"Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared". Thebe (live code cells) needs a
kernel server on the internet, which the offline book never has, so its scripts and stylesheet are dropped from
every page. Listed in ``_config.yml`` under ``sphinx.extra_extensions``.
"""

from __future__ import annotations


def _is_thebe(asset) -> bool:
    name = str(getattr(asset, "filename", "") or "")
    body = str(getattr(asset, "attributes", {}).get("body", ""))
    return "thebe" in name.lower() or "THEBE_JS_URL" in body


def drop_thebe(app, pagename, templatename, context, doctree) -> None:
    """Remove sphinx-thebe's scripts and stylesheet from the page about to be written."""
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [a for a in context[key] if not _is_thebe(a)]


def setup(app):
    app.connect("html-page-context", drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
