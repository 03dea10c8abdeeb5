"""Live monitoring cost and capacity: 4, 8, 16 and 24 simulated cameras at 5 fps (docs/benchmarks.md).

Each camera is megamind.avi played in real time on a loop (`--loop`: PyAV reads it at its
own rate, as a camera would send it). Each case runs `emojimation monitor --json` for
`--seconds`, then SIGINT; the monitor's own summary gives, per camera, the capture -> stored
latency percentiles (over face rows) and the frames analysed and dropped, and how many the
camera's ingest dropped because the pipeline was full (dropped at the front; both as shares of
the frames analysed or dropped). The table's p95 is the worst camera's. CPU is the kernel's account of the whole process tree (the
monitor waits for its children, so their times roll up), as a share of the machine's cores.
The CPU model and its vector flags are printed first.

Usage: .venv/bin/python -m bench.bench_monitor [--cameras 4 8 16 24] [--seconds 40] [--rounds 2]
       [--monitor-args "--queue-messages 64"]   # extra flags for every monitor run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_worker_start import cpu_model, vector_flags
from bench.synthetic import SHARED_DATA

CLIP = SHARED_DATA / "videos" / "megamind.avi"


def run_case(cameras: int, seconds: float, fps: float, extra: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as folder:
        env = {**os.environ, "EMOJIMATION_HOME": folder}
        sources = [f"cam{i}={CLIP}" for i in range(cameras)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "emojimation", "monitor", *sources, "--loop", "--fps", str(fps), "--json",
             "--store", f"sqlite:///{folder}/bench.db", "--log-level", "WARNING", "--status-every-s", "3600",
             *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(seconds)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if process.returncode != 0:
            raise RuntimeError(f"monitor failed: {err[-800:]}")
        summary = json.loads(out)["cameras"]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    analysed = sum(c["frames_analysed"] for c in summary)
    dropped = sum(c["frames_dropped"] for c in summary)
    at_ingest = sum(c.get("frames_dropped_at_ingest", 0) for c in summary)
    return {
        "cameras": cameras,
        "frames_analysed": analysed,
        "frames_dropped": dropped,
        "dropped_rate": dropped / max(1, analysed + dropped),
        "dropped_at_ingest": at_ingest,
        "dropped_at_ingest_rate": at_ingest / max(1, analysed + dropped),
        "dropped_per_camera": [c["frames_dropped"] for c in summary],
        # Over the cameras with face rows (a camera starved of every frame has none: see cameras_without_rows).
        "latency_p50_ms": statistics.median(p50) if (p50 := [c["latency_p50_ms"] for c in summary
                                                            if c["latency_p50_ms"] is not None]) else float("nan"),
        "latency_p95_ms": max((c["latency_p95_ms"] for c in summary if c["latency_p95_ms"] is not None),
                              default=float("nan")),
        "cameras_without_rows": sum(c["latency_p95_ms"] is None for c in summary),
        "analysed_fps": analysed / wall,
        "cpu_share": cpu_s / wall / (os.cpu_count() or 1),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, nargs="+", default=[4, 8, 16, 24])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--monitor-args", default="", help="extra flags for every monitor run (one string)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); vector flags: {vector_flags() or 'none of avx2/avx512'}")
    extra = shlex.split(args.monitor_args)
    results: dict[int, list[dict]] = {n: [] for n in args.cameras}
    for round_ in range(args.rounds):  # interleaved: each round runs every case once
        for n in args.cameras:
            result = run_case(n, args.seconds, args.fps, extra)
            results[n].append(result)
            print(json.dumps({"round": round_, **result}), file=sys.stderr)
    print(f"| cameras | frames analysed/s | p50 latency (ms) | p95 latency (ms, worst camera) | dropped "
          f"| dropped at ingest | CPU (of {os.cpu_count()} cores) |")
    print("|---|---|---|---|---|---|---|")
    for n, runs in results.items():
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]
                  if key not in ("cameras", "dropped_per_camera")}
        print(f"| {n} | {median['analysed_fps']:.1f} | {median['latency_p50_ms']:.0f} | "
              f"{median['latency_p95_ms']:.0f} | {100 * median['dropped_rate']:.1f} % | "
              f"{100 * median['dropped_at_ingest_rate']:.1f} % | {100 * median['cpu_share']:.0f} % |")


if __name__ == "__main__":
    main()
