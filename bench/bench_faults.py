"""What fault tolerance costs and buys (issue 14).

1. Throughput: `emojimation analyse --every-frame` on megamind.avi, frames/s (frames analysed
   / elapsed_s of summary.json), for this tree, this tree with the acknowledgement link switched
   off (`now-without-acks`: the cost of acks alone), and older checkouts given with --old-tree
   (e.g. one from before heartbeats). Interleaved rounds, medians.
2. Recovery: during `analyse --every-frame --workers 2` of a 180 s 320x180 clip, SIGKILL a
   detector, classifier or aggregator (in turn) every `--kill-every` seconds, while sampling
   the store's stored-frame count every 50 ms. For each kill, the time from the kill to the
   end of the longest pause in stored rows before the next kill (at most 20 s): when rows
   flow again.
3. Hang (monitor): one looped camera at 5 fps; once its face rows are stored, SIGSTOP the
   shared classifier (never resumed) and time until a face row captured after the stop is
   stored: the heartbeat timeout, the kill and restart, and the first batch (target 15 s).

    .venv/bin/python -m bench.bench_faults --rounds 5 --old-tree before-acks=/tmp/head
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_worker_start import cpu_model, vector_flags  # noqa: E402
from bench.synthetic import SHARED_DATA  # noqa: E402
from core.store import Store  # noqa: E402

MEGAMIND = SHARED_DATA / "videos" / "megamind.avi"
STAGES = ("detector", "classifier", "aggregator")
WITHOUT_ACKS = "now-without-acks"
# `emojimation` with file runs' acknowledgement link off (ingest then only sends, as before acks).
NO_ACKS_MAIN = ("import dataclasses, sys; import emojimation.analysis as a; topology = a.file_topology; "
                "a.file_topology = lambda *x, **k: dataclasses.replace(topology(*x, **k), acknowledged=False); "
                "from emojimation.cli import main; sys.exit(main())")


def analyse(tree: Path, args: list[str], work: Path, acks: bool = True, **popen: object) -> subprocess.Popen:
    entry = ["-m", "emojimation"] if acks else ["-c", NO_ACKS_MAIN]
    return subprocess.Popen([sys.executable, *entry, "analyse", "--no-progress", *args], cwd=tree,
                            env={**os.environ, "EMOJIMATION_HOME": str(work)}, **popen)


def throughput(tree: Path, work: Path, acks: bool = True) -> float:
    out = work / "out"
    process = analyse(tree, [str(MEGAMIND), "--every-frame", "--out", str(out), "--store",
                             f"sqlite:///{work}/s.db"], work, acks, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=600)
    if process.returncode:
        raise SystemExit(f"{tree}: analyse failed: {stderr.decode()[-500:]}")
    summary = json.loads((out / "summary.json").read_text())
    return summary["inputs"][0]["frames_analysed"] / summary["elapsed_s"]


def stage_pids(supervisor: int, stage: str) -> list[int]:
    """The pids of `stage`'s processes: the supervisor's grandchildren, forked by its zygote."""
    processes: dict[int, tuple[int, list[bytes]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            processes[int(entry.name)] = (ppid, argv[0].split() if len([a for a in argv if a]) == 1 else argv)
    zygotes = {pid for pid, (ppid, argv) in processes.items() if ppid == supervisor and b"emojimation.zygote" in argv}
    return sorted(pid for pid, (ppid, argv) in processes.items() if ppid in zygotes and stage.encode() in argv[1:4])


def stored(store: str) -> int:
    try:
        with Store(store, migrate=False) as opened:
            return int(opened.sources()["frames_analysed"].sum())
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def recovery(work: Path, kill_every_s: float) -> dict[str, list[float]]:
    clip = work / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "9", "-i",
                    str(SHARED_DATA / "videos" / "WolfgangLanger_Pexels.mp4"), "-t", "180", "-vf", "scale=320:180",
                    "-an", "-c:v", "libx264", "-preset", "veryfast", str(clip)], check=True)
    store = f"sqlite:///{work}/faults.db"
    process = analyse(ROOT, [str(clip), "--every-frame", "--workers", "2", "--out", str(work / "faults"),
                             "--store", store], work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, int]] = []
    kills: list[tuple[float, str]] = []
    while stored(store) == 0:
        time.sleep(0.05)
    next_kill = time.monotonic() + kill_every_s
    while process.poll() is None:
        now = time.monotonic()
        samples.append((now, stored(store)))
        if now >= next_kill:
            stage = STAGES[len(kills) % len(STAGES)]
            pids = stage_pids(process.pid, stage)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                kills.append((now, stage))
            next_kill = now + kill_every_s
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit("the recovery run failed")
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for (at, stage), until in zip(kills, [*(t for t, _ in kills[1:]), float("inf")]):
        after = [(t, n) for t, n in samples if at <= t < min(until, at + 20)]
        changes = [t for (t, n), (_, before) in zip(after[1:], after) if n > before]
        if not changes:
            continue
        gaps = [(b - a, b) for a, b in zip([at, *changes], changes)]
        times[stage].append(max(gaps)[1] - at)
    return times


def faces_captured_after(store: str, after: float) -> int:
    try:
        with Store(store, migrate=False) as opened:
            sources = opened.sources()
            return sum(int((opened.faces(int(i), columns=["captured_at"]).captured_at > after).sum())
                       for i in sources.id)
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def monitor_hang(work: Path, timeout_s: float = 120.0) -> float:
    """Seconds from SIGSTOP of the monitor's classifier to the first face row captured after it."""
    store = f"sqlite:///{work}/hang.db"
    process = subprocess.Popen([sys.executable, "-m", "emojimation", "monitor", f"cam={MEGAMIND}", "--loop",
                                "--fps", "5", "--store", store, "--log-level", "WARNING"], cwd=ROOT,
                               env={**os.environ, "EMOJIMATION_HOME": str(work)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hung = 0
    try:
        deadline = time.monotonic() + timeout_s
        while faces_captured_after(store, 0.0) == 0:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the monitor stored no face row")
            time.sleep(0.2)
        hung = stage_pids(process.pid, "classifier")[0]
        os.kill(hung, signal.SIGSTOP)
        stopped_at, started = time.time(), time.monotonic()
        while faces_captured_after(store, stopped_at) == 0:
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"no rows {timeout_s:.0f} s after the classifier hung")
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        if hung:
            try:
                os.kill(hung, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old-tree", action="append", default=[], metavar="NAME=DIR",
                        help="an older checkout to compare with (repeatable)")
    parser.add_argument("--kill-every", type=float, default=8.0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--hang-rounds", type=int, default=3, help="monitor hang measurements (0 = skip)")
    args = parser.parse_args()
    trees = {"now": ROOT, WITHOUT_ACKS: ROOT,
             **{name: Path(path) for name, path in (item.split("=", 1) for item in args.old_tree)}}
    print(f"CPU: {cpu_model()} ({os.cpu_count()} vCPUs; {vector_flags()}); load {os.getloadavg()[0]:.1f}")
    if not args.skip_throughput:
        fps: dict[str, list[float]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                with tempfile.TemporaryDirectory() as tmp:
                    fps[name].append(throughput(tree, Path(tmp), acks=name != WITHOUT_ACKS))
                print(f"round {round_ + 1} {name}: {fps[name][-1]:.1f} frames/s", flush=True)
        for name, values in fps.items():
            print(f"{name}: median {statistics.median(values):.1f} frames/s over {len(values)} runs "
                  f"({', '.join(f'{v:.1f}' for v in values)})")
    times: dict[str, list[float]] = {}
    if not args.skip_recovery:
        with tempfile.TemporaryDirectory() as tmp:
            times = recovery(Path(tmp), args.kill_every)
    every = [t for values in times.values() for t in values]
    for stage, values in times.items():
        if values:
            print(f"kill {stage}: rows again after median {statistics.median(values):.1f} s "
                  f"({', '.join(f'{v:.1f}' for v in values)})")
    if every:
        print(f"all kills: median {statistics.median(every):.1f} s over {len(every)} kills")
    hangs = []
    for _ in range(args.hang_rounds):
        with tempfile.TemporaryDirectory() as tmp:
            hangs.append(monitor_hang(Path(tmp)))
    if hangs:
        print(f"monitor, classifier SIGSTOPped: rows again after median {statistics.median(hangs):.1f} s "
              f"({', '.join(f'{v:.1f}' for v in hangs)})")


if __name__ == "__main__":
    main()
