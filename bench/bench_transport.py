"""Throughput of separately started stages: TCP with CurveZMQ against IPC without, 1/2/4 classifiers.

For each case the stages are started one by one as on separate hosts (`python -m emojimation
aggregator|classifier|detector ...` with explicit addresses; TCP cases with `--curve-dir`),
then each round starts a new ingest that streams the same input, every frame. A round is
timed from ingest's "ready" report to the aggregator's last "done" report (both stamp the
time they were sent), so stage start-up is left out: this is the steady throughput of the
links and workers. CPU time is the kernel's count for every stage process over the round
(ingest's includes its ffmpeg decoder). Cases run transport-adjacent (TCP, then IPC, for
each worker count); medians over the rounds are reported.

    .venv/bin/python -m bench.bench_transport [--rounds 3] [--copies 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from core.messages import MessageError, Status, StatusEvent, decode
from core.security import generate_keys
from emojimation.supervisor import free_tcp_address

ROOT = Path(__file__).resolve().parents[1]
MEGAMIND = ROOT.parent / "shared" / "data" / "videos" / "megamind.avi"
DETECTORS = 2  # as `analyse` starts by default
CLK_TCK = os.sysconf("SC_CLK_TCK")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Case:
    transport: str  # "tcp+curve" | "ipc"
    workers: int
    fps: list[float] = field(default_factory=list)
    cpu_ms_per_frame: list[float] = field(default_factory=list)


class Pipeline:
    """Long-lived aggregator, classifiers and detectors for one case; one ingest per round."""

    def __init__(self, case: Case, work: Path, keys: Path, status: str, inbox: zmq.Socket) -> None:
        self.case, self.work, self.keys, self.status, self.inbox = case, work, keys, status, inbox
        self.processes: list[subprocess.Popen] = []
        self.seq = 0

    def address(self, name: str) -> str:
        return free_tcp_address() if self.case.transport.startswith("tcp") else f"ipc://{self.work / name}.sock"

    def spawn(self, *args: object) -> subprocess.Popen:
        extra = ["--curve-dir", str(self.keys)] if self.case.transport.startswith("tcp") else []
        process = subprocess.Popen([sys.executable, "-m", "emojimation", *map(str, args), "--status", self.status,
                                    *extra], env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=(self.work / "stages.log").open("ab"), start_new_session=True)
        self.processes.append(process)
        return process

    def reports(self, timeout_s: float, until, ingest: int | None = None) -> list[Status]:
        """Status reports until `until(reports)` is true; fails if a stage dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        seen: list[Status] = []
        while not until(seen):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.case}: timed out; see {self.work / 'stages.log'}")
            if ingest is not None:  # peek without reaping: its resource usage is read afterwards
                info = os.waitid(os.P_PID, ingest, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if info is not None and (info.si_code != os.CLD_EXITED or info.si_status != 0):
                    raise RuntimeError(f"{self.case}: ingest failed; see {self.work / 'stages.log'}")
            for process in self.processes:
                if process.poll() not in (None, 0):
                    raise RuntimeError(f"{self.case}: a stage exited with {process.returncode}; "
                                       f"see {self.work / 'stages.log'}")
            if self.inbox.poll(200):
                try:
                    message = decode(self.inbox.recv_multipart())
                except MessageError:
                    continue
                if isinstance(message, Status):
                    seen.append(message)
        return seen

    def start(self, store: str) -> None:
        classifiers = [self.address(f"classifier-{i}") for i in range(self.case.workers)]
        detectors = [self.address(f"detector-{i}") for i in range(DETECTORS)]
        self.ingest_address = self.address("ingest")
        self.spawn("aggregator", *sum((["--connect", a] for a in classifiers), []), "--store", store)
        for address in classifiers:
            self.spawn("classifier", *sum((["--connect", a] for a in detectors), []), "--bind", address)
        for address in detectors:
            self.spawn("detector", "--connect", self.ingest_address, "--bind", address)
        expected = 1 + self.case.workers + DETECTORS
        self.reports(120, lambda seen: sum(r.event == StatusEvent.READY for r in seen) >= expected)

    def round(self, inputs: list[Path]) -> tuple[float, float, int]:
        """One ingest of `inputs`: (frames/s, CPU ms per frame, frames)."""
        self.seq += 1
        stages = list(self.processes)
        cpu_before = sum(cpu_seconds(p.pid) for p in stages)
        ingest = subprocess.Popen([sys.executable, "-m", "emojimation", "ingest", "--bind", self.ingest_address,
                                   "--every-frame", "--stream-prefix", f"r{self.seq}", "--inputs",
                                   *map(str, inputs), "--status", self.status,
                                   *(["--curve-dir", str(self.keys)] if self.case.transport.startswith("tcp") else [])],
                                  env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=(self.work / "stages.log").open("ab"))

        def finished(seen: list[Status]) -> bool:
            return sum(r.event == StatusEvent.DONE and r.stage == "aggregator" for r in seen) >= len(inputs)

        try:
            seen = self.reports(300, finished, ingest=ingest.pid)
        except BaseException:
            ingest.kill()
            raise
        _, code, usage = os.wait4(ingest.pid, 0)
        ingest.returncode = os.waitstatus_to_exitcode(code)
        if ingest.returncode != 0:
            raise RuntimeError(f"{self.case}: ingest failed; see {self.work / 'stages.log'}")
        cpu = sum(cpu_seconds(p.pid) for p in stages) - cpu_before + usage.ru_utime + usage.ru_stime
        started = next(r.capture_time for r in seen if r.stage == "ingest" and r.event == StatusEvent.READY)
        ended = max(r.capture_time for r in seen if r.stage == "aggregator" and r.event == StatusEvent.DONE)
        frames = sum(int(r.detail.get("frames_analysed", 0)) for r in seen
                     if r.stage == "aggregator" and r.event == StatusEvent.DONE)
        return frames / (ended - started), 1000 * cpu / frames, frames

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(8)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=3, help="copies of megamind.avi per round (270 frames each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    cases = [Case(transport, workers) for workers in args.workers for transport in ("tcp+curve", "ipc")]
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        generate_keys(keys)
        inputs = []
        for i in range(args.copies):  # distinct files: a finished file would replace an earlier one's results
            inputs.append(work / f"megamind-{i}.avi")
            shutil.copyfile(MEGAMIND, inputs[-1])
        context = zmq.Context()
        inbox = context.socket(zmq.PULL)
        inbox.setsockopt(zmq.LINGER, 0)
        status = f"ipc://{work / 'status.sock'}"
        inbox.bind(status)
        started = time.monotonic()
        try:
            for case in cases:
                for attempt in (1, 2):  # a stage killed from outside (shared machine) costs one retry
                    case_dir = work / f"{case.transport}-{case.workers}-{attempt}"
                    case_dir.mkdir()
                    pipeline = Pipeline(case, case_dir, keys, status, inbox)
                    case.fps, case.cpu_ms_per_frame = [], []
                    try:
                        pipeline.start(f"sqlite:///{case_dir / 'results.db'}")
                        for _ in range(args.rounds):
                            fps, cpu, frames = pipeline.round(inputs)
                            case.fps.append(fps)
                            case.cpu_ms_per_frame.append(cpu)
                            print(f"{case.transport:10s} {case.workers} classifier(s): {frames} frames, "
                                  f"{fps:6.1f} frames/s, {cpu:5.2f} CPU ms/frame", file=sys.stderr, flush=True)
                        break
                    except RuntimeError as error:
                        if attempt == 2:
                            raise
                        print(f"retrying the case: {error}", file=sys.stderr, flush=True)
                    finally:
                        pipeline.stop()
                        while inbox.poll(0):  # reports from this case must not leak into the next
                            inbox.recv_multipart()
        finally:
            inbox.close()
            context.term()
    print(f"\n{args.rounds} rounds of {args.copies} x megamind.avi (720x528, every frame), {DETECTORS} detectors, "
          f"{os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s in all, load average at the end "
          f"{os.getloadavg()[0]:.1f}; medians\n")
    print("| classifiers | TCP + Curve frames/s | IPC frames/s | Curve / IPC | TCP + Curve CPU ms/frame | IPC CPU ms/frame |")
    print("|---|---|---|---|---|---|")
    by_key = {(c.transport, c.workers): c for c in cases}
    for workers in args.workers:
        tcp, ipc = by_key["tcp+curve", workers], by_key["ipc", workers]
        t_fps, i_fps = statistics.median(tcp.fps), statistics.median(ipc.fps)
        print(f"| {workers} | {t_fps:.1f} | {i_fps:.1f} | {t_fps / i_fps:.2f} | "
              f"{statistics.median(tcp.cpu_ms_per_frame):.2f} | {statistics.median(ipc.cpu_ms_per_frame):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps([c.__dict__ for c in cases], indent=1))


if __name__ == "__main__":
    main()
