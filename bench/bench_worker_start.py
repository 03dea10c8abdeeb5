"""What one stage worker costs to start: seconds from exec to its "ready" report, resident
memory at that moment, and which heavy packages it loaded. Interleaved rounds, medians.

Each command is started as the supervisor starts it, with a status socket to report to;
the clock stops when the ready report arrives. Compare two ways of starting a worker, e.g.
the old `python -m emojimation classifier` from an older checkout against `python -m classifier`:
    .venv/bin/python -m bench.bench_worker_start --rounds 7
    .venv/bin/python -m bench.bench_worker_start --old-tree ../old-checkout   # adds the old command
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.messages import Status, StatusEvent, decode  # noqa: E402

HEAVY = ("tensorflow", "keras", "dash", "plotly", "pandas", "training", "emojimation")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def vector_flags() -> str:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
    return " ".join(f for f in wanted if f" {f}" in flags)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_once(command: list[str], cwd: Path, list_imports: bool = False) -> dict[str, float | list[str]]:
    """One start; with `list_imports` (an untimed extra run) also the heavy packages it imported."""
    with tempfile.TemporaryDirectory() as tmp:
        context = zmq.Context()
        status = context.socket(zmq.PULL)
        address = f"ipc://{tmp}/status.sock"
        status.bind(address)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        interpreter = [command[0], "-X", "importtime"] if list_imports else command[:1]
        process = subprocess.Popen([*interpreter, *command[1:], "--bind", f"ipc://{tmp}/out.sock", "--connect",
                                    f"ipc://{tmp}/in.sock", "--status", address], cwd=cwd, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while True:
                if not status.poll(60_000):
                    raise SystemExit(f"{' '.join(command)}: no ready report in 60 s: "
                                     f"{process.stderr.read().decode()[-500:] if process.poll() is not None else ''}")
                message = decode(status.recv_multipart())
                if isinstance(message, Status) and message.event == StatusEvent.READY:
                    break
            seconds = time.perf_counter() - started
            result: dict[str, float | list[str]] = {"seconds": seconds, "rss_mb": rss_mb(process.pid)}
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=10)
            status.close(0)
            context.term()
    if list_imports:  # lines "import time: self | cumulative | name"
        names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.decode().splitlines()
                 if line.startswith("import time:")}
        result["heavy"] = sorted(names & set(HEAVY))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--old-tree", type=Path, default=None,
                        help="an older checkout whose workers start as `python -m emojimation <stage>`")
    parser.add_argument("--stage", default="classifier", choices=["classifier", "detector"])
    args = parser.parse_args()
    commands = {f"python -m {args.stage}": ([sys.executable, "-m", args.stage], ROOT)}
    if args.old_tree:
        commands[f"python -m emojimation {args.stage} (old tree)"] = (
            [sys.executable, "-m", "emojimation", args.stage], args.old_tree.resolve())
    samples: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, (command, cwd) in commands.items():
            samples[name].append(start_once(command, cwd))
    report = {"cpu": cpu_model(), "flags": vector_flags(), "cores": os.cpu_count(), "rounds": args.rounds,
              "results": {name: {"start_s_median": round(statistics.median(s["seconds"] for s in runs), 3),
                                 "rss_mb_median": round(statistics.median(s["rss_mb"] for s in runs), 1),
                                 "heavy_packages_imported": start_once(*commands[name], list_imports=True)["heavy"]}
                          for name, runs in samples.items()}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
