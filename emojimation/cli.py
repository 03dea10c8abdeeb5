"""The `emojimation` command: thin argument parsing on top of the stages' `run(config)` entries.

Every stage command's flags are generated from its config dataclass (core.config),
so a setting has one name everywhere: `--max-batch` on the CLI, `max_batch` in the TOML
file, `EMOJIMATION_MAX_BATCH` in the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable

import zmq

from emojimation import __version__
from core import config as cfg
from core.errors import EmojimationError, database_errors, redact_url

logger = logging.getLogger("emojimation")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HELP = {
    "connect": "upstream output address to connect to (repeatable)",
    "bind": "address this stage binds its output on",
    "status": "supervisor status address (optional)",
    "input": "video files, images or folders of images",
    "detector": f"face detector backend ({', '.join(cfg.DETECTORS)})",
    "store": "results database URL (default sqlite under $EMOJIMATION_HOME)",
    "model": "model file, .keras or .tflite (default: the shipped models/emojimation_cnn.tflite in the pipeline, .keras elsewhere)",
    "listen": "address this stage's input binds on, for upstream workers that --push to it",
    "push": "address(es) this stage's output connects to, e.g. a relay or an aggregator's --listen (repeatable)",
    "curve_dir": "CurveZMQ keys folder (`emojimation keys generate DIR`): encrypt and authenticate every tcp:// link",
    "metrics_port": "serve Prometheus metrics on this port at /metrics (default 0: off)",
    "metrics_host": "address the metrics server binds (default 127.0.0.1)",
    "log_format": "text | json (one JSON object per line)",
}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()) -> None:
    """One flag per config field; defaults stay None so file and env settings can apply."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        origin = typing.get_origin(kind)
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=HELP.get(f.name))
        elif origin is list:
            if f.name == "connect":
                parser.add_argument(flag, action="append", default=None, metavar="ADDR", help=HELP.get(f.name))
            elif f.name == "push":  # `--push A --push B` and `--push A B` both work
                parser.add_argument(flag, action="extend", nargs="+", default=None, metavar="ADDR",
                                    help=HELP.get(f.name))
            else:
                parser.add_argument(flag, nargs="+", default=None, dest=f.name, help=HELP.get(f.name))
        else:
            base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
            parser.add_argument(flag, type=base if base in (int, float) else str, default=None,
                                help=HELP.get(f.name) or f"(default {f.default!r})"
                                if f.default is not dataclasses.MISSING else HELP.get(f.name))


def _overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _stage_command(section: str, cls: type, runner: Callable[[Any, Any], int]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from core.runtime import setup_logging, stop_event_on_signals

        config = cfg.load(cls, section, args.config, _overrides(args, cls))
        setup_logging(args.log_level, f"emojimation.{section}", getattr(config, "log_format", "text"))
        code = runner(config, stop_event_on_signals())
        # Sockets are closed and results flushed by now. Skip the interpreter's teardown, which
        # takes seconds once TensorFlow is loaded, so a stopped stage is gone at once.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    return command


def _run_ingest(config, stop) -> int:
    from ingest import run

    return run(config, stop)


def _run_detector(config, stop) -> int:
    from detector import run

    return run(config, stop)


def _run_classifier(config, stop) -> int:
    from classifier import run

    return run(config, stop)


def _run_aggregator(config, stop) -> int:
    from aggregator import run

    return run(config, stop)


def _run_relay(config, stop) -> int:
    from core.relay import run

    return run(config, stop)


def cmd_keys(args: argparse.Namespace) -> int:
    from core.security import generate_keys

    for pair in generate_keys(args.dir, args.name):
        state = "created" if pair.created else "kept existing"
        print(f"{state} {pair.name} keys: {pair.public} (public), {pair.secret} (secret)")
    print(f"authorised clients: {Path(args.dir) / 'authorized'}/*.key")
    return EXIT_OK


def cmd_analyse(args: argparse.Namespace) -> int:
    from emojimation.analysis import analyse_command

    overrides = _overrides(args, cfg.AnalyseConfig)
    if args.every_frame and args.fps is not None:
        raise UsageError("--fps and --every-frame exclude each other")
    try:
        config = cfg.load(cfg.AnalyseConfig, "analyse", args.config, overrides)
    except EmojimationError as error:
        raise UsageError(str(error)) from None
    return analyse_command(config)


def cmd_monitor(args: argparse.Namespace) -> int:
    from emojimation.monitor import check_config_command, monitor_command, plan
    from core.runtime import setup_logging

    if args.check_config:
        return check_config_command(args.check_config)
    sources = list(args.sources or []) + list(args.name or [])
    result, problems = plan(sources, args.config, _overrides(args, cfg.MonitorConfig))
    if problems:
        for problem in problems:
            print(f"emojimation: config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level, "emojimation.monitor", result.config.log_format)
    return monitor_command(result)


def cmd_train(args: argparse.Namespace) -> int:
    from training.train import TrainConfig, run

    overrides = {k: v for k, v in vars(args).items()
                 if k in {f.name for f in dataclasses.fields(TrainConfig)} and v is not None}
    for key in ("data", "out"):
        if key in overrides:
            overrides[key] = Path(overrides[key])
    run(TrainConfig(**overrides))
    return EXIT_OK


def cmd_finetune(args: argparse.Namespace) -> int:
    from emojimation.finetune import finetune_command
    from training.finetune import FinetuneConfig

    overrides = _overrides(args, FinetuneConfig)
    for key in ("pairs", "start", "data", "out"):
        if key in overrides:
            overrides[key] = Path(overrides[key])
    return finetune_command(FinetuneConfig(**overrides))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_command

    return evaluate_command(args.data, args.model, args.split, args.json, args.tta, args.confusion_png,
                            args.precision)


class UsageError(EmojimationError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emojimation", description="Facial emotion timelines from video.")
    parser.add_argument("--version", action="version", version=f"emojimation {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    analyse = sub.add_parser("analyse", aliases=["analyze"], help="analyse video files, images or image folders")
    analyse.add_argument("inputs", nargs="+", metavar="INPUT", help=HELP["input"])
    analyse.add_argument("--config", help="TOML settings file ([analyse] table)")
    add_dataclass_flags(analyse, cfg.AnalyseConfig, skip={"inputs", "progress"})
    analyse.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    analyse.set_defaults(handler=cmd_analyse)

    monitor = sub.add_parser("monitor", help="analyse live cameras (RTSP, HTTP, webcams) until Ctrl-C")
    monitor.add_argument("sources", nargs="*", metavar="SOURCE",
                         help="camera: rtsp://..., http(s)://... (MJPEG, HLS), /dev/videoN or an index, or a "
                              "file (with --loop: a simulated camera); NAME=URL names it")
    monitor.add_argument("--name", action="append", metavar="NAME=URL", help="a named camera (repeatable)")
    monitor.add_argument("--config", help="TOML or YAML file: [monitor] settings, [[cameras]], [[alerts]]")
    monitor.add_argument("--check-config", metavar="FILE", help="validate FILE, report every problem, and exit")
    monitor.add_argument("--log-level", default="INFO")
    add_dataclass_flags(monitor, cfg.MonitorConfig, skip={"sources"})
    monitor.set_defaults(handler=cmd_monitor)

    from training.train import TrainConfig  # light: TensorFlow is imported inside run()

    train = sub.add_parser("train", help="train the emotion CNN on FER2013 (resumes automatically)")
    add_dataclass_flags(train, TrainConfig)
    train.set_defaults(handler=cmd_train)

    from training.finetune import FinetuneConfig

    finetune = sub.add_parser("finetune", help="fine-tune the model on its own detectors' crops (resumes automatically)")
    add_dataclass_flags(finetune, FinetuneConfig)
    finetune.set_defaults(handler=cmd_finetune)

    evaluate = sub.add_parser("evaluate", help="accuracy, macro-F1, per-class table and confusion matrix")
    evaluate.add_argument("--data", required=True, help="emotion-folder root, split root, or fer2013.csv")
    evaluate.add_argument("--model", default=None, help=HELP["model"])
    evaluate.add_argument("--split", default=None, help="split folder (default val) or CSV Usage (default PrivateTest)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    evaluate.add_argument("--tta", choices=["auto", "on", "off"], default="auto", help="horizontal-flip TTA")
    evaluate.add_argument("--confusion-png", default=None,
                          help="where to save the confusion matrix picture (default ./confusion_matrix.png)")
    evaluate.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                          help="inference arithmetic (auto: bfloat16 where the CPU has it natively)")
    evaluate.set_defaults(handler=cmd_evaluate)

    from dashboard.cli import register as register_dashboard  # light: Dash loads on use

    register_dashboard(sub)

    for section, cls, runner, text in (
        ("ingest", cfg.IngestConfig, _run_ingest, "run the ingest stage alone"),
        ("detector", cfg.DetectorConfig, _run_detector, "run a detector worker alone"),
        ("classifier", cfg.ClassifierConfig, _run_classifier, "run a classifier worker alone"),
        ("aggregator", cfg.AggregatorConfig, _run_aggregator, "run the aggregator alone"),
        ("relay", cfg.RelayConfig, _run_relay, "forward messages between a pool of workers and a fixed address"),
    ):
        stage = sub.add_parser(section, help=text)
        stage.add_argument("--config", help=f"TOML settings file ([{section}] table)")
        stage.add_argument("--log-level", default="WARNING")
        add_dataclass_flags(stage, cls)
        stage.set_defaults(handler=_stage_command(section, cls, runner))

    keys = sub.add_parser("keys", help="CurveZMQ keys for encrypted, authenticated links between hosts")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = keys_sub.add_parser("generate", help="create DIR/server.key(_secret), DIR/client.key(_secret) and "
                                                    "DIR/authorized/ (existing keys are kept)")
    generate.add_argument("dir", metavar="DIR", help="keys folder (created if missing)")
    generate.add_argument("--name", default=None, help="also create DIR/NAME.key(_secret), an extra authorised "
                                                       "client pair for another host")
    generate.set_defaults(handler=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as error:
        parser.error(str(error))
    except EmojimationError as error:
        print(f"emojimation: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("emojimation: interrupted", file=sys.stderr)
        return 130
    except (OSError, zmq.ZMQError, *database_errors()) as error:  # disks, permissions, sockets, database
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print(f"emojimation: error: {redact_url(lines[0])}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED
