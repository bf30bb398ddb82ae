"""The page at / in a real browser: Debian's headless Chromium, driven by Playwright, against the real stack (with
a token, a small upload limit and tracing on, so every path the page has is exercised). It takes a file picked or
dropped, waits for the three reconstructions of an image and of a clip to render, reads a 401 and a 413 as the
API's own sentences, and saves screenshots to build/test-output/page/ (HYBRID_TEST_OUTPUT to put them elsewhere)."""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from hybrid import samples
from service.local_stack import ROOT, Stack, StackError, running_stack
from service.trace_sink import TraceSink, running_sink

pytestmark = pytest.mark.integration

PIPELINES = ("hybrid", "vlm", "spatial")
MAX_UPLOAD = 200_000
TOKEN = secrets.token_urlsafe(16)
OUTPUT = Path(os.environ.get("HYBRID_TEST_OUTPUT", ROOT / "build" / "test-output")) / "page"
# Headless and closed to the network: without the background-networking flags Chromium's own connections (updates,
# sync, safe browsing) are refused here and it stalls; a fresh profile per run (Playwright's user data dir).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def sink() -> Iterator[TraceSink]:
    with running_sink() as started:
        yield started


@pytest.fixture(scope="module")
def page_stack(sink: TraceSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "HYBRID_API_TOKEN": TOKEN,
        "HYBRID_AUTH_METRICS": "true",  # the verdict too needs the token: the page must send it there as well
        "HYBRID_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "HYBRID_OTLP_TRACES_ENDPOINT": sink.url,  # the page shows each reply's trace id
    }
    try:
        with running_stack(tmp_path_factory.mktemp("page-stack") / "service.log", env) as started:
            # One request per pipeline first: the screenshots then show warm timings, not each model's first call.
            for pipeline in PIPELINES:
                warm = httpx.post(
                    f"{started.gateway_url}/reconstruct",
                    params={"pipeline": pipeline},
                    files={"file": ("warm.png", samples.png(224, 224, seed=1))},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=120,
                )
                assert warm.status_code == 200, warm.text
            yield started
    except StackError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: `make test` installs Debian's `chromium` package (make system-deps)"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext, page_stack: Stack) -> Iterator[Page]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))  # an uncaught exception in the page's script
    page.goto(f"{page_stack.gateway_url}/")
    yield page
    page.close()
    assert errors == [], errors


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("page-inputs")
    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)  # incompressible: ~1 MB
    oversize = io.BytesIO()
    Image.fromarray(noise).save(oversize, format="PNG")
    files = {"image.png": samples.png(224, 224), "clip.gif": samples.gif(5), "oversize.png": oversize.getvalue()}
    assert len(files["oversize.png"]) > 2 * MAX_UPLOAD
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def screenshot(page: Page, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    page.screenshot(path=path, full_page=True)
    assert Image.open(path).size[0] == 1280
    return path


def run(page: Page, file: Path) -> None:
    page.set_input_files("#file", file)
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("Done", timeout=RUN_TIMEOUT_MS)


def card(page: Page, pipeline: str) -> str:
    return f'.card[data-pipeline="{pipeline}"]'


def rendered(page: Page, pipeline: str) -> dict:
    """The reconstruction's <img>, decoded by the browser: its size and whether decoding succeeded."""
    return page.eval_on_selector(
        f"{card(page, pipeline)} .media img",
        "async img => { await img.decode(); return {complete: img.complete, width: img.naturalWidth, "
        "height: img.naturalHeight, box: img.getBoundingClientRect().width}; }",
    )


def test_the_page_is_served_with_its_own_policy(page_stack: Stack) -> None:
    base = page_stack.gateway_url
    reply = httpx.get(f"{base}/")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    policy = reply.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert httpx.get(f"{base}/static/page.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{base}/static/page.css").status_code == 200
    assert httpx.get(f"{base}/static/index.html").status_code == 404  # a fixed list, not a directory
    assert httpx.get(f"{base}/static/%2e%2e/settings.py").status_code == 404
    assert "/" not in httpx.get(f"{base}/openapi.json").json()["paths"]
    # The page's origin is allowed because it is the gateway's own; any other is still refused.
    foreign = httpx.post(
        f"{base}/reconstruct",
        files={"file": ("a.png", samples.png())},
        headers={"Origin": "http://elsewhere.example", "Authorization": f"Bearer {TOKEN}"},
    )
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in foreign.headers


def test_an_image_through_the_three_pipelines(page: Page, inputs: dict[str, Path]) -> None:
    # Without the token: each card says so, in the API's words.
    run(page, inputs["image.png"])
    for pipeline in PIPELINES:
        error = page.locator(f"{card(page, pipeline)} .error")
        expect(error).to_have_text(
            "A valid API token is needed (type it in the API token field): a valid bearer token is required."
        )
    expect(page.locator("#verdict .note")).to_contain_text("a valid bearer token is required")

    page.fill("#token", TOKEN)
    run(page, inputs["image.png"])
    expect(page.locator("#status")).to_have_text("Done.")
    for pipeline in PIPELINES:
        image = rendered(page, pipeline)
        assert image["complete"] and image["width"] > 0 and image["height"] > 0 and image["box"] > 0, (pipeline, image)
        assert page.locator(f"{card(page, pipeline)} .error").is_hidden()
        for stage in ("decode", "triton", "encode"):
            bar = page.locator(f'{card(page, pipeline)} .bar-row[data-stage="{stage}"] .bar')
            assert bar.bounding_box()["width"] > 0, (pipeline, stage)  # type: ignore[index]
        meta = page.locator(f"{card(page, pipeline)} .meta").inner_text()
        assert re.search(r"total [\d.]+ ms · 1 frame · \d+×\d+", meta), meta
        assert re.search(r"trace\s+[0-9a-f]{32}", meta), meta  # tracing is on in this stack
    original = page.eval_on_selector("#original .media img", "img => img.naturalWidth")
    assert original == 224
    # The verdict is read with the token now: a state of E-P2.6, not an error.
    expect(page.locator("#verdict .badge")).to_have_attribute(
        "data-verdict", re.compile("within_budget|over_budget|inconclusive|insufficient_samples"), timeout=15_000
    )
    expect(page.locator("#summary")).to_contain_text("hybrid")
    screenshot(page, "page.png")


def test_a_dropped_file_is_taken(page: Page, inputs: dict[str, Path]) -> None:
    data = list(inputs["clip.gif"].read_bytes())
    transfer = page.evaluate_handle(
        "bytes => { const t = new DataTransfer(); "
        "t.items.add(new File([new Uint8Array(bytes)], 'dropped.gif', {type: 'image/gif'})); return t; }",
        data,
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#original .meta")).to_contain_text("dropped.gif")
    assert (
        page.eval_on_selector("#original .media img", "async img => { await img.decode(); return img.naturalWidth; }")
        == 64
    )
    expect(page.locator("#status")).to_contain_text("dropped.gif chosen")


def test_a_clip_gives_animated_reconstructions(page: Page, inputs: dict[str, Path]) -> None:
    page.fill("#token", TOKEN)
    page.select_option("#frames", "9")
    page.fill("#seed", "3")
    run(page, inputs["clip.gif"])
    for pipeline in PIPELINES:
        image = rendered(page, pipeline)
        assert image["width"] > 0 and image["height"] > 0, (pipeline, image)
        expect(page.locator(f"{card(page, pipeline)} .meta")).to_contain_text("9 frames")
    screenshot(page, "page-clip.png")


def test_an_oversize_upload_reads_as_the_413_message(page: Page, inputs: dict[str, Path]) -> None:
    page.fill("#token", TOKEN)
    run(page, inputs["oversize.png"])
    size = inputs["oversize.png"].stat().st_size
    for pipeline in PIPELINES:
        error = page.locator(f"{card(page, pipeline)} .error")
        expect(error).to_be_visible()
        # The API's own message (the multipart request is the file plus its framing), led by what 413 means.
        expect(error).to_have_text(
            re.compile(rf"^The file is too large: the request has \d+ bytes; the limit is {MAX_UPLOAD}\.$")
        )
        stated = int(re.search(r"has (\d+) bytes", error.inner_text()).group(1))  # type: ignore[union-attr]
        assert size < stated < size + 1024
        assert page.locator(f"{card(page, pipeline)} .media img").count() == 0
    expect(page.locator("#status")).to_have_text("Done: 0 of 3 answered.")
    screenshot(page, "page-413.png")
