"""The headless-browser client (tests/_browser.py) that the HTML report tests render pages with.

Renders small self-contained pages in a real Chromium over the DevTools pipe: script-built table
rows and inline base64 PNGs must be in the rendered page, nothing may reach the network (an external
image is requested, recorded and fails to load), and a full-page screenshot is kept.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time

import pytest
from PIL import Image

from _browser import BrowserError, browser_or_skip, render

ROWS = [("sparsezip", "64", "0.812"), ("visionzip", "64", "0.797"), ("divprune", "128", "0.774")]
SIZES = [(40, 30), (96, 24)]  # natural sizes of the two inline images

PAGE_FACTS = """(() => ({
  rows: [...document.querySelectorAll('#results tbody tr')].map(
    tr => [...tr.querySelectorAll('td')].map(td => td.textContent.trim())),
  images: [...document.images].map(img => ({
    id: img.id, complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight})),
}))()"""


@pytest.fixture(autouse=True)
def _browser():
    browser_or_skip()


def _png_data_uri(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_renders_script_rows_and_inline_images(tmp_path):
    images = "\n".join(
        f'<img id="img{i}" alt="plot {i}" src="{_png_data_uri(size, color)}">'
        for i, (size, color) in enumerate(zip(SIZES, [(200, 30, 30), (30, 60, 200)], strict=True))
    )
    html = tmp_path / "page.html"
    html.write_text(
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>report</title>
<style>body {{ font-family: sans-serif; }} td, th {{ border: 1px solid #999; padding: 2px 8px; }}</style>
</head><body>
<h1>Results</h1>
<table id="results"><thead><tr><th>method</th><th>tokens</th><th>score</th></tr></thead><tbody></tbody></table>
<script>
  const rows = {json.dumps(ROWS)};
  const body = document.querySelector('#results tbody');
  for (const row of rows) {{
    const tr = body.insertRow();
    for (const cell of row) tr.insertCell().textContent = cell;
  }}
</script>
{images}
</body></html>
""",
        encoding="utf-8",
    )
    shot = tmp_path / "screenshot.png"
    start = time.monotonic()
    out = render(html, expression=PAGE_FACTS, screenshot_path=shot)
    print(f"render took {time.monotonic() - start:.2f}s")

    assert out["value"]["rows"] == [list(row) for row in ROWS]
    assert [(img["naturalWidth"], img["naturalHeight"]) for img in out["value"]["images"]] == SIZES
    for img in out["value"]["images"]:
        assert img["complete"] and img["naturalWidth"] > 0, img
    assert out["requests"] == []
    assert out["console_errors"] == []
    assert out["screenshot"] == str(shot)
    with Image.open(shot) as png:
        png.verify()
    with Image.open(shot) as png:
        assert png.format == "PNG"
        assert png.width == 1280
        assert png.height > 0
    print(f"screenshot: {shot}")


def test_external_image_is_recorded_and_blocked(tmp_path):
    """Requests are recorded and never leave: not even a server on this machine's loopback is reached.
    The "external" image is on a reserved name that can never resolve (RFC 2606 ``.invalid``), so nothing
    could leave the machine even if the blocking regressed."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = base64.b64decode(_png_data_uri((5, 5), (0, 0, 0)).split(",", 1)[1])
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    local = f"http://127.0.0.1:{server.server_address[1]}/local.png"
    html = tmp_path / "external.html"
    html.write_text(
        f'<!doctype html><html><body><img id="ext" src="https://blocked.invalid/x.png">'
        f'<img id="local" src="{local}"></body></html>',
        encoding="utf-8",
    )
    try:
        out = render(html, expression=PAGE_FACTS)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert "https://blocked.invalid/x.png" in out["requests"]
    assert local in out["requests"]
    for img in out["value"]["images"]:
        assert img["naturalWidth"] == 0, f"{img['id']} loaded: the network is not blocked"
    assert hits == [], "the page reached a server on 127.0.0.1"
    assert out["screenshot"] is None


def test_console_errors_and_failing_expression(tmp_path):
    html = tmp_path / "errors.html"
    html.write_text(
        "<!doctype html><html><body><script>console.error('boom', 42);</script>"
        "<script>throw new Error('kaboom');</script></body></html>",
        encoding="utf-8",
    )
    out = render(html, expression="new Promise(resolve => setTimeout(() => resolve(1 + 1), 10))")
    assert out["value"] == 2
    assert any("boom 42" in error for error in out["console_errors"]), out["console_errors"]
    assert any("kaboom" in error for error in out["console_errors"]), out["console_errors"]
    with pytest.raises(BrowserError, match="nope"):
        render(html, expression="(() => { throw new Error('nope'); })()")
