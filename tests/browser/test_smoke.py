"""Chromium and Playwright work here: load a page from a local http.server and read it."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title></head>
<body><h1>crewnode smoke</h1><p id="js">no script yet</p>
<script>document.getElementById("js").textContent = "script ran";</script>
</body></html>"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def local_site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_page_loads_and_runs_script(page, local_site):
    response = page.goto(local_site)
    assert response is not None and response.status == 200
    assert page.locator("h1").inner_text() == "crewnode smoke"
    assert page.locator("#js").inner_text() == "script ran"
    assert page.title() == "smoke"
