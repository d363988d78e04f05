#!/usr/bin/env bash
# Refresh the vendored JavaScript from the npm registry. The book loads vega, vega-lite, vega-embed and MathJax
# from here (copied verbatim into _build/html by `html_extra_path`), so no page reaches the internet.
# Versions: keep vega-lite on the major version Altair emits (altair 6 -> vega-lite 6).
set -euo pipefail
cd "$(dirname "$0")" && mkdir -p _vendor && cd _vendor
tmp=$(mktemp -d)
(cd "$tmp" && npm pack --silent mathjax@3.2.2 vega@6.4.0 vega-lite@6.4.3 vega-embed@7.3.0 >/dev/null)
for f in "$tmp"/*.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
rm -rf vega mathjax && mkdir -p vega mathjax/output/chtml/fonts
for p in vega vega-lite vega-embed; do
  cp "$tmp"/$p-[0-9]*/package/build/$p.min.js vega/
  cp "$tmp"/$p-[0-9]*/package/LICENSE vega/LICENSE-$p
done
cp "$tmp"/mathjax-*/package/es5/tex-mml-chtml.js mathjax/
cp -r "$tmp"/mathjax-*/package/es5/output/chtml/fonts/woff-v2 mathjax/output/chtml/fonts/
cp "$tmp"/mathjax-*/package/LICENSE mathjax/LICENSE
rm -rf "$tmp"
du -sh vega mathjax
