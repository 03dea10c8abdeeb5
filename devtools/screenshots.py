"""Screenshots of every dashboard page for the docs: `python -m devtools.screenshots [--out DIR]`.

Builds a demo store (the real pipeline on the shared sample clip with thumbnails and the annotated
video, a synthetic one-hour source, a live camera source still receiving rows with a newest frame
as `monitor --live-view` keeps it, a few events), serves the app on a
free loopback port in a thread, and saves full-page PNGs taken by headless Chromium (Debian's
`chromium` and `chromium-driver`; Selenium comes with `dash[testing]`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from devtools.dashboard_demo import emotion_walk, write_demo_events, write_synthetic_source
from core.store import FaceRow, Store

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "videos" / "megamind.avi"
WIDTH = 1400
CHROMIUM = "/usr/bin/chromium"


def build_demo_store(folder: Path) -> tuple[str, dict[str, int]]:
    """The store the screenshots show; returns (URL, ids by role)."""
    url = f"sqlite:///{folder / 'demo.db'}"
    subprocess.run([sys.executable, "-m", "emojimation", "analyse", str(SAMPLE), "--store", url,
                    "--out", str(folder / "out"), "--no-progress", "--thumbnails", "--annotate"],
                   cwd=PROJECT_ROOT, check=True)
    # The live camera's newest frame: a frame of the annotated video, scaled as a camera preview is.
    still = folder / "live.jpg"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "6", "-i", str(folder / "out" / "megamind.annotated.mp4"),
                    "-frames:v", "1", "-vf", "scale=640:-2", "-q:v", "3", str(still)], check=True)
    with Store(url) as store:
        sample = int(store.sources()["id"].iloc[0])
        hour = write_synthetic_source(store, duration_s=3600.0, fps=10.0, tracks=5, name="meeting-1h.mp4", seed=4)
        live = store.create_source("camera", "rtsp://127.0.0.1:8554/lobby", "lobby camera", "live", source_fps=10.0)
        rng = np.random.default_rng(2)
        probs, smoothed = emotion_walk(900, 10.0, rng)
        rows = [FaceRow(frame=i, time_s=i / 10, captured_at=time.time() - 90 + i / 10, track_id=1,
                        box=(300.0, 120.0, 140.0, 140.0), score=0.9, probs=probs[i], smoothed=smoothed[i])
                for i in range(900)]
        store.add_faces(live, rows, {"frames_analysed": 900, "frames_with_faces": 900, "faces": 900})
        write_demo_events(store, live)
        from PIL import Image

        with Image.open(still) as image:
            store.put_live_frame(live, still.read_bytes(), *image.size)
    return url, {"sample": sample, "hour": hour, "live": live}


def serve(app: Any) -> tuple[str, Any]:
    """Serve the Flask app on a free loopback port in a daemon thread; returns (base URL, server)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--hide-scrollbars", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", f"--window-size={WIDTH},900", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options)


def shoot(driver: Any, url: str, ready_css: str, path: Path, settle_s: float = 1.5, max_height: int = 3000,
          script: str = "") -> None:
    """Open `url`, wait for `ready_css`, run `script` (if any), resize to the page height, save a PNG."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(WIDTH, 900)
    driver.get(url)
    WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ready_css)))
    if script:
        driver.execute_script(script)
    time.sleep(settle_s)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(WIDTH, min(max(height, 600), max_height))
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    _shrink(path)
    print(f"wrote {path}")


def _shrink(path: Path) -> None:
    """256-colour PNG: a page has few colours, and the docs stay light (Pillow comes with matplotlib)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from dashboard.app import create_app

    with tempfile.TemporaryDirectory(prefix="emojimation-screens-") as temp:
        url, sources = build_demo_store(Path(temp))
        base, server = serve(create_app(url, upload_dir=Path(temp) / "uploads"))
        driver = browser()
        try:
            with Store(url) as store:
                track = int(store.tracks(sources["sample"])["track_id"].iloc[0])
            graph = ".js-plotly-plot .main-svg"
            shoot(driver, f"{base}/", "#sources-table table", args.out / "sources.png")
            # The player paused at 6.2 s: the cursor stands there on every track.
            seek = ("const v = document.getElementById('timeline-video'); v.muted = true; "
                    "const go = () => { v.currentTime = 6.2; }; if (v.readyState >= 1) { go(); } "
                    "else { v.addEventListener('loadedmetadata', go, {once: true}); }")
            shoot(driver, f"{base}/source/{sources['sample']}", f"{graph}", args.out / "timeline.png",
                  settle_s=3.0, script=seek)
            shoot(driver, f"{base}/source/{sources['hour']}", graph, args.out / "timeline-1h.png", settle_s=3.0)
            shoot(driver, f"{base}/source/{sources['live']}", graph, args.out / "timeline-live.png")
            shoot(driver, f"{base}/track/{sources['sample']}/{track}", graph, args.out / "track.png")
            shoot(driver, f"{base}/events", "#events-table table", args.out / "events.png")
            shoot(driver, f"{base}/upload", "#upload-drop", args.out / "upload.png")
        finally:
            driver.quit()
            server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
