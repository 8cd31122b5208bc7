"""Notebook 05 used as a person would: JupyterLab on 127.0.0.1, headless Chromium, run all, move the sparsity
slider with the keyboard, check that the figure and the kernel state followed, save a screenshot."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server with private config/runtime dirs, serving a tiny-scale copy of notebook 05."""
    import papermill
    import psutil

    root = tmp_path / "root"
    root.mkdir()
    papermill.execute_notebook(str(ROOT / "notebooks" / "05_sparsity_explorer.ipynb"),
                               str(root / "05_sparsity_explorer.ipynb"), parameters={"scale": "tiny"},
                               prepare_only=True, progress_bar=False)
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "PYTHONPATH": str(ROOT)}
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.allow_root=True",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(root))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail("JupyterLab did not start")
        time.sleep(0.5)
    try:
        yield base, token, root
    finally:
        procs = [server]
        try:
            procs += psutil.Process(server.pid).children(recursive=True)  # kernels included
        except psutil.Error:
            pass
        try:
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=5)
            server.wait(timeout=15)
        except Exception:
            pass
        for p in procs:
            try:
                p.kill()
            except (psutil.Error, ProcessLookupError, OSError):
                pass


KERNEL_IDLE = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle'; }"""

EXECUTE = """async (code) => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = k.requestExecute({code}); let out = '';
  future.onIOPub = (msg) => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
  await future.done; return out; }"""

STATE = "import json; print(json.dumps([sparsity_explorer.slider.value, sparsity_explorer.accuracy]))"

BARS = """() => { const plots = [...document.querySelectorAll('.js-plotly-plot')];
  return plots.length ? JSON.stringify(plots[0].data.map(t => Array.from(t.y || []))) : null; }"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by scripts/setup_env.sh")
def test_sparsity_slider_drives_the_figure_and_the_kernel(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token, root = jupyterlab
    shot = tmp_path / "screenshots"
    shot.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/05_sparsity_explorer.ipynb?token={token}", timeout=120_000)
            page.wait_for_function(KERNEL_IDLE, timeout=120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            handle = page.locator(".widget-slider .noUi-handle").first
            handle.wait_for(timeout=240_000)
            page.wait_for_function(KERNEL_IDLE, timeout=240_000)
            page.wait_for_function(f"() => ({BARS})() !== null", timeout=60_000)
            before_bars = page.evaluate(BARS)
            before = json.loads(page.evaluate(EXECUTE, STATE))
            handle.scroll_into_view_if_needed()
            handle.focus()
            for _ in range(40):  # 40 steps of 0.005: +0.2 sparsity
                page.keyboard.press("ArrowRight")
            # ipywidgets sends one change at a time and holds back the newest value until the kernel reports idle,
            # so an idle kernel does not mean it has seen the last key press: ask it until it has.
            deadline = time.time() + 120
            while True:
                after = json.loads(page.evaluate(EXECUTE, STATE))
                if abs(after[0] - (before[0] + 0.2)) < 1e-6 or time.time() > deadline:
                    break
                page.wait_for_timeout(500)
            page.wait_for_function(f"(old) => ({BARS})() !== old", arg=before_bars, timeout=30_000)
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            # read the state again once the figure has changed: the value above can arrive before the kernel's
            # update of the last move has finished computing the accuracy
            after = json.loads(page.evaluate(EXECUTE, STATE))
            after_bars = page.evaluate(BARS)
            page.screenshot(path=str(shot / "05_sparsity_explorer.png"), full_page=True)
        finally:
            browser.close()
    assert after[0] == pytest.approx(before[0] + 0.2, abs=1e-6)  # the kernel saw the keyboard moves
    assert after[1] != before[1]  # and re-evaluated the pruned network
    kept_before = sum(sum(t) for t in json.loads(before_bars))
    kept_after = sum(sum(t) for t in json.loads(after_bars))
    assert 0 < kept_after < kept_before  # the keep-ratio bars in the page went down
    assert (shot / "05_sparsity_explorer.png").stat().st_size > 10_000
