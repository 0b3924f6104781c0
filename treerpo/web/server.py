"""`treerpo serve`: a read-only local web app over the store.

Pages: `/` the runs, `/runs/NAME` a run's report (train curves and steps, generate trees, eval
records), `/trees` the stored trees, `/trees/ID` a tree page. Anything else is 404, an unknown
run or tree id too; only GET and HEAD are answered (every other method is 405), and no handler
writes to the store.

The standard library's `ThreadingHTTPServer` is enough here: one user on localhost, pages
rendered whole on the server (no streaming, no websockets, no sessions), a thread per request
reading the store through its own SQLAlchemy session. It adds no dependency and stops on
Ctrl-C like any blocking loop.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from html import unescape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

from treerpo.errors import BadInputError
from treerpo.store import browse, repository
from treerpo.store.database import Store
from treerpo.web.markup import content_security_policy, esc, page
from treerpo.web.report import render_run_report
from treerpo.web.tree_page import load_token_pieces, render_tree_page

# Trees listed on /trees (newest last); a run's page lists its own.
MAX_LISTED_TREES = 2000


class NotFound(Exception):
    """The path names no page, or a run or tree that is not in the store."""


def run_href(name: str) -> str:
    return "/runs/" + quote(name, safe="")


def tree_href(tree_id: int) -> str:
    return f"/trees/{tree_id}"


class StorePages:
    """Renders the app's pages from the store; `render(path)` returns (status, html)."""

    def __init__(self, store: Store, *, tokenizers: bool = True) -> None:
        self.store = store
        self.tokenizers = tokenizers
        self.where = store.url.render_as_string(hide_password=True)

    def nav(self) -> str:
        return ('<nav class="top"><a href="/">runs</a><a href="/trees">trees</a>'
                f'<span class="muted">treerpo serve · read-only · {esc(self.where)}</span></nav>')

    def render(self, path: str) -> str:
        parts = [unquote(part) for part in urlsplit(path).path.split("/") if part]
        if not parts:
            return self.runs_page()
        if parts == ["trees"]:
            return self.trees_page()
        if len(parts) == 2 and parts[0] == "runs":
            try:
                return render_run_report(self.store, parts[1], tree_href=tree_href,
                                         run_href=run_href, nav=self.nav())
            except BadInputError as error:
                raise NotFound(str(error)) from error
        if len(parts) == 2 and parts[0] == "trees" and parts[1].isascii() and parts[1].isdigit():
            return self.tree_page(int(parts[1]))
        raise NotFound(f"no page at {path}")

    def runs_page(self) -> str:
        rows = []
        for run in reversed(repository.list_runs(self.store)):  # newest first
            size = {"train": f"{run.steps} steps · {run.trees} trees",
                    "eval": f"{run.records} records"}.get(run.kind, f"{run.trees} trees")
            rows.append(
                f'<tr><td class="text"><a href="{esc(run_href(run.name))}">{esc(run.name)}</a>'
                f'</td><td class="text">{esc(run.kind)}</td><td class="text">{esc(run.model)}'
                f'</td><td class="text">{esc(run.status)}</td><td>{esc(size)}</td>'
                f'<td class="text">{run.started_at.strftime("%Y-%m-%d %H:%M")}</td></tr>')
        body = ('<h1>Runs</h1><table class="data" id="runs"><thead><tr>'
                '<th class="text">run</th><th class="text">kind</th><th class="text">model</th>'
                '<th class="text">status</th><th>size</th><th class="text">started</th></tr>'
                f"</thead><tbody>{''.join(rows)}</tbody></table>")
        if not rows:
            body += '<p class="muted">The store has no runs yet.</p>'
        return page(title="treerpo · runs", body=body, nav=self.nav())

    def trees_page(self) -> str:
        summaries = repository.list_trees(self.store)
        shown = summaries[-MAX_LISTED_TREES:]
        rows = "".join(
            f'<tr><td><a href="{tree_href(tree.tree_id)}">{tree.tree_id}</a></td>'
            f'<td class="text"><a href="{esc(run_href(tree.run_name))}">{esc(tree.run_name)}'
            f'</a></td><td class="text usertext">{esc(_short(tree.problem))}</td>'
            f"<td>{tree.num_nodes}</td><td>{tree.num_leaves}</td><td>{tree.num_tokens}</td>"
            f"<td>{'–' if tree.mean_reward is None else f'{tree.mean_reward:.3f}'}</td></tr>"
            for tree in shown)
        note = (f'<p class="muted">the newest {len(shown)} of {len(summaries)} trees</p>'
                if len(shown) < len(summaries) else "")
        body = (f"<h1>Trees</h1>{note}<table class=\"data\" id=\"trees\"><thead><tr>"
                '<th>tree</th><th class="text">run</th><th class="text">problem</th>'
                "<th>nodes</th><th>leaves</th><th>tokens</th><th>mean reward</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")
        return page(title="treerpo · trees", body=body, nav=self.nav())

    def tree_page(self, tree_id: int) -> str:
        try:
            tree = repository.load_tree(self.store, tree_id)
            origin = browse.tree_origin(self.store, tree_id)
        except BadInputError as error:
            raise NotFound(str(error)) from error
        pieces = load_token_pieces(tree, tokenizer_name=origin.model if self.tokenizers
                                   else None)
        return render_tree_page(tree, origin=origin, pieces=pieces, nav=self.nav(),
                                run_href=run_href)


def _short(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def make_handler(pages: StorePages, *, log: Callable[[str], None]):
    class Handler(BaseHTTPRequestHandler):
        server_version = "treerpo"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 (the standard library's spelling)
            self._answer(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(send_body=False)

        def _refuse(self) -> None:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, _message_page(
                "405 method not allowed", "treerpo serve is read-only: only GET and HEAD."),
                send_body=True, extra={"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

        def _answer(self, *, send_body: bool) -> None:
            try:
                html = pages.render(self.path)
                status = HTTPStatus.OK
            except NotFound as error:
                html, status = _message_page("404 not found", str(error)), HTTPStatus.NOT_FOUND
            except Exception as error:  # one bad page must not stop the server
                log(f"error on {self.path}: {type(error).__name__}: {error}\n"
                    + traceback.format_exc())
                html = _message_page("500 error", f"{type(error).__name__}: {error}")
                status = HTTPStatus.INTERNAL_SERVER_ERROR
            self._send(status, html, send_body=send_body)

        def _send(self, status: HTTPStatus, html: str, *, send_body: bool,
                  extra: dict[str, str] | None = None) -> None:
            payload = html.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Content-Security-Policy", _csp_of(html))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            log(f"{self.address_string()} {format % args}")

    return Handler


_META_CSP = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">')


def _csp_of(html: str) -> str:
    """The policy `markup.page` put in the page's head (it allows exactly the page's own
    script), sent as a header too; the strictest one if the page has none."""
    match = _META_CSP.search(html, 0, 2000)
    return unescape(match.group(1)) if match else content_security_policy(None)


def _message_page(title: str, message: str) -> str:
    return page(title=f"treerpo · {title}",
                body=f"<h1>{esc(title)}</h1><p>{esc(message)}</p><p><a href=\"/\">runs</a></p>")


def make_server(store: Store, *, host: str, port: int, tokenizers: bool = True,
                log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
                ) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port), not yet serving."""
    pages = StorePages(store, tokenizers=tokenizers)
    server = ThreadingHTTPServer((host, port), make_handler(pages, log=log))
    server.daemon_threads = True
    return server
