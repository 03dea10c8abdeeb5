"""`emojimation analyse --every-frame` against fer's `Video.analyze` on the same files.

Each case is a fresh process (tree), timed wall-clock, with CPU time from the kernel's
accounting of the whole tree and peak memory sampled every 50 ms two ways: the largest sum of
the tree's resident sets (RSS: a page shared by several processes counts in each), and the
largest sum of their proportional set sizes (PSS: a shared page counts once in all, split
among its sharers; what the tree takes from the machine). Cases are interleaved round by
round; medians are reported. `--old-tree DIR` adds our pipeline from another checkout (run
with PYTHONPATH=DIR), interleaved with the rest, to compare two versions side by side;
`--variant NAME=ARGS` adds it with other `analyse` arguments, to compare two settings.

    .venv/bin/python -m bench.bench_analyse --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_worker_start import cpu_model, vector_flags  # noqa: E402
SHARED = ROOT.parent / "shared" / "data"
PRODUCT_PYTHON = ROOT / ".venv" / "bin" / "python"
FER_PYTHON = ROOT / ".bench-venv" / "bin" / "python"


def make_wolfgang_clip(path: Path) -> Path:
    """60 s of a real face: WolfgangLanger_Pexels.mp4 (640x360, 23.976 fps, 19.7 s) looped."""
    if not path.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "3", "-i",
                        str(SHARED / "videos" / "WolfgangLanger_Pexels.mp4"), "-t", "60", "-an", "-c:v", "libx264",
                        "-crf", "20", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def make_720p_clip(path: Path) -> Path:
    """60 s of 1280x720 at 30 fps with a face in every frame: megamind.avi scaled and looped."""
    if not path.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "6", "-i", str(SHARED / "videos" / "megamind.avi"),
                        "-t", "60", "-vf", "scale=1280:720,fps=30", "-an", "-c:v", "libx264", "-crf", "20", "-preset",
                        "veryfast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def process_name(pid: int) -> str:
    """A process's role: the module of `python -m X`, else its command's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if len([part for part in argv if part]) == 1:  # a forked stage's title (emojimation.zygote): one string
        argv = argv[0].split()
    if not argv[0]:
        return ""
    if b"-m" in argv[:-1]:
        name = argv[argv.index(b"-m") + 1].decode()
        return "supervisor" if name == "emojimation" else name
    return Path(argv[0].decode()).name if len(argv) > 1 and not argv[0].endswith(b"python") else \
        Path(argv[min(1, len(argv) - 1)].decode()).name


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (0 if it is gone or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_sample(root_pid: int) -> tuple[int, dict[int, float], int]:
    """Sum of resident memory of a process and all its descendants, each one's CPU seconds so
    far, and the sum of their proportional set sizes."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    total, frontier, seen, pss = 0, [root_pid], {}, 0
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        pss += pss_bytes(pid)
        seen[pid] = cpu.get(pid, 0.0)
        frontier += [child for child, parent in parents.items() if parent == pid]
    return total, seen, pss


def tree_rss_bytes(root_pid: int) -> int:
    return tree_sample(root_pid)[0]


def measure(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=env)
    peak, peak_pss = [0], [0]
    cpu: dict[int, float] = {}  # the last CPU seconds seen per process (sampled: the last 50 ms are missed)
    names: dict[int, str] = {}

    def sample() -> None:
        while process.poll() is None:
            rss, seen, pss = tree_sample(process.pid)
            peak[0], peak_pss[0] = max(peak[0], rss), max(peak_pss[0], pss)
            cpu.update(seen)
            for pid in seen:  # read each time: a child just forked still shows its parent's command
                name = process_name(pid)
                if name not in ("", "?"):  # (an exited child's command line reads empty)
                    names[pid] = name
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    sampler.join()
    if status != 0:
        raise RuntimeError(f"{command[:4]} failed with status {status}")
    by_role: dict[str, float] = {}
    for pid, seconds in cpu.items():
        by_role[names.get(pid, "?")] = by_role.get(names.get(pid, "?"), 0.0) + seconds
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak[0] / 2**20,
            "peak_pss_mb": peak_pss[0] / 2**20,
            "stdout": stdout, "cpu_by_process": {k: round(v, 2) for k, v in sorted(by_role.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--detectors", nargs="+", default=["blazeface", "blazeface-full"],
                        help="our detectors to run, each as its own case")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--videos", nargs="+", choices=["megamind", "wolfgang", "720p"],
                        default=["megamind", "wolfgang", "720p"], help="which files to run (default all three)")
    parser.add_argument("--ours-only", action="store_true", help="skip fer (e.g. to profile our processes)")
    parser.add_argument("--old-tree", type=Path, default=None,
                        help="also run our pipeline from this checkout (PYTHONPATH), interleaved, as another case")
    parser.add_argument("--no-fer-lean", action="store_true", help="run fer with its defaults only")
    parser.add_argument("--extra", nargs="*", default=[], help="more `analyse` arguments for our cases")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="also run our pipeline with these extra `analyse` arguments, interleaved, as a case "
                             "of its own (e.g. --variant 'search2=--search-every 2'; repeatable)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="emojimation-bench-"))
    videos = {}
    if "megamind" in args.videos:
        videos["megamind.avi (720x528, 270 frames)"] = SHARED / "videos" / "megamind.avi"
    if "wolfgang" in args.videos:
        videos["WolfgangLanger_Pexels looped, 640x360 24 fps 60 s (1439 frames)"] = \
            make_wolfgang_clip(scratch / "wolfgang60.mp4")
    if "720p" in args.videos:
        videos["megamind 1280x720 30 fps 60 s (1800 frames)"] = make_720p_clip(scratch / "megamind720.mp4")
    frames = {name: int(json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "json", str(path)], capture_output=True, text=True).stdout)
        ["streams"][0]["nb_read_frames"]) for name, path in videos.items()}
    def ours(detector: str, variant: list[str] = ()):
        return lambda path: [str(PRODUCT_PYTHON), "-m", "emojimation", "analyse", str(path), "--every-frame",
                             "--detector", detector, "--workers", str(args.workers), "--no-progress", "--json",
                             "--out", str(scratch / "out"), "--store", f"sqlite:///{scratch}/bench.db", *args.extra,
                             *variant]

    cases = {f"emojimation ({detector})": ours(detector) for detector in args.detectors}
    for spec in args.variant:
        label, equals, arguments = spec.partition("=")
        if not equals or not label:
            parser.error(f"--variant {spec!r}: give NAME=ARGS, e.g. 'search2=--search-every 2'")
        for detector in args.detectors:
            cases[f"emojimation ({detector}) {label}"] = ours(detector, shlex.split(arguments))
    environments: dict[str, dict[str, str]] = {}
    if args.old_tree:
        for detector in args.detectors:
            name = f"emojimation ({detector}) from {args.old_tree}"
            cases[name] = ours(detector)
            environments[name] = {**os.environ, "PYTHONPATH": str(args.old_tree.resolve())}
    if not args.ours_only:
        cases["fer Video.analyze (defaults)"] = lambda path: [str(FER_PYTHON), str(ROOT / "bench" / "fer_video.py"),
                                                              str(path)]
    if not args.ours_only and not args.no_fer_lean:
        cases["fer Video.analyze (lean)"] = lambda path: [str(FER_PYTHON), str(ROOT / "bench" / "fer_video.py"),
                                                          str(path), "--lean"]
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for video, path in videos.items():
            for case, command in cases.items():
                result = measure(command(path), scratch, environments.get(case))
                output = json.loads(result.pop("stdout"))
                result["faces"] = output["faces"] if "faces" in output else output["inputs"][0]["faces"]
                runs.setdefault((video, case), []).append(result)
                print(video, case, {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()},
                      file=sys.stderr, flush=True)
    report = []
    for (video, case), results in runs.items():
        wall = statistics.median(r["wall_s"] for r in results)
        report.append({"video": video, "case": case, "frames": frames[video], "wall_s": round(wall, 2),
                       "frames_per_s": round(frames[video] / wall, 1),
                       "cpu_s": round(statistics.median(r["cpu_s"] for r in results), 1),
                       "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in results)),
                       "peak_pss_mb": round(statistics.median(r["peak_pss_mb"] for r in results)),
                       "faces": statistics.median(r["faces"] for r in results), "rounds": len(results),
                       "cpu_by_process": {name: round(statistics.median(r["cpu_by_process"].get(name, 0.0)
                                                                         for r in results), 2)
                                          for name in results[0]["cpu_by_process"]}})
    print(json.dumps({"cpu": f"{cpu_model()} ({os.cpu_count()} vCPUs; {vector_flags()})", "cases": report}, indent=2))


if __name__ == "__main__":
    main()
