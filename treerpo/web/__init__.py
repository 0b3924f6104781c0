"""Trees and runs as web pages: `inspect --html`, `report --html` and `serve`.

- `markup`: escaping of model and dataset text, JSON embedded in a page, the page shell.
- `charts`: inline SVG line charts and histograms (axes, units, one mark per point).
- `tree_page`: one tree as a self-contained page (data + inline script + inline style).
- `report`: a run as a page: train curves and step table, generate and eval summaries.
- `server`: the read-only local web app over the store (standard library HTTP server).

Pages are self-contained (no network, no CDN): style and script are inlined from `static/`.
Every string a model or a dataset supplied reaches the browser either HTML-escaped by
`markup.esc` or as JSON data that the page's script only ever puts into text nodes.
"""
