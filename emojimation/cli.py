"""The `emojimation` command: thin argument parsing on top of the stages' `run(config)` entries.

Every stage command's flags are generated from its config dataclass (core.config),
so a setting has one name everywhere: `--max-batch` on the CLI, `max_batch` in the TOML
file, `EMOJIMATION_MAX_BATCH` in the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import zmq

from emojimation import __version__
from core import config as cfg
from core.errors import EmojimationError, database_errors, redact_url
from core.process import (
    EXIT_FAILED, EXIT_OK, EXIT_USAGE, HELP, add_dataclass_flags, add_stage_arguments, config_overrides, run_stage,
)

logger = logging.getLogger("emojimation")

STAGES: dict[str, tuple[str, type, str]] = {  # command -> (module run as `python -m`, config, help)
    "ingest": ("ingest", cfg.IngestConfig, "run the ingest stage alone"),
    "detector": ("detector", cfg.DetectorConfig, "run a detector worker alone"),
    "classifier": ("classifier", cfg.ClassifierConfig, "run a classifier worker alone"),
    "aggregator": ("aggregator", cfg.AggregatorConfig, "run the aggregator alone"),
    "relay": ("core.relay", cfg.RelayConfig, "forward messages between a pool of workers and a fixed address"),
}


def _stage_command(section: str, cls: type) -> Callable[[argparse.Namespace], int]:
    """`emojimation <stage>`: the same flags and start-up as `python -m <stage>` (core.process)."""

    def command(args: argparse.Namespace) -> int:
        import importlib

        module = STAGES[section][0]
        runner = importlib.import_module(module if module == "core.relay" else f"{module}.stage").run
        run_stage(section, cls, runner, args)

    return command


def cmd_keys(args: argparse.Namespace) -> int:
    from core.security import generate_keys

    for pair in generate_keys(args.dir, args.name):
        state = "created" if pair.created else "kept existing"
        print(f"{state} {pair.name} keys: {pair.public} (public), {pair.secret} (secret)")
    print(f"authorised clients: {Path(args.dir) / 'authorized'}/*.key")
    return EXIT_OK


def cmd_analyse(args: argparse.Namespace) -> int:
    from emojimation.zygote import Zygote, stage_environment

    overrides = config_overrides(args, cfg.AnalyseConfig)
    if args.every_frame and args.fps is not None:
        raise UsageError("--fps and --every-frame exclude each other")
    try:
        config = cfg.load(cfg.AnalyseConfig, "analyse", args.config, overrides)
    except EmojimationError as error:
        raise UsageError(str(error)) from None
    # The stages' zygote starts before anything else: its imports run on the other core while
    # this process imports the pipeline's code and probes the inputs (0.3-0.5 s off a short run).
    with Zygote(stage_environment()).warm() as zygote:
        from emojimation.analysis import analyse_command

        return analyse_command(config, zygote)


def cmd_monitor(args: argparse.Namespace) -> int:
    from emojimation.monitor import check_config_command, monitor_command, plan
    from core.runtime import setup_logging

    if args.check_config:
        return check_config_command(args.check_config)
    sources = list(args.sources or []) + list(args.name or [])
    result, problems = plan(sources, args.config, config_overrides(args, cfg.MonitorConfig))
    if problems:
        for problem in problems:
            print(f"emojimation: config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level, "emojimation.monitor", result.config.log_format)
    return monitor_command(result)


def _settings(cls: type, section: str, args: argparse.Namespace):
    """A command's config through the one loader (defaults < --config file < environment < flags);
    a bad setting is a usage error."""
    try:
        return cfg.load(cls, section, args.config, config_overrides(args, cls))
    except EmojimationError as error:
        raise UsageError(str(error)) from None


def cmd_train(args: argparse.Namespace) -> int:
    from training.train import run

    run(_settings(cfg.TrainConfig, "train", args))
    return EXIT_OK


def cmd_finetune(args: argparse.Namespace) -> int:
    from emojimation.finetune import finetune_command

    return finetune_command(_settings(cfg.FinetuneConfig, "finetune", args))


def cmd_distill(args: argparse.Namespace) -> int:
    from training.distill import run

    run(_settings(cfg.DistillConfig, "distill", args))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_command

    return evaluate_command(_settings(cfg.EvaluateConfig, "evaluate", args))


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

    train = sub.add_parser("train", help="train the emotion CNN on FER2013 (resumes automatically)")
    train.add_argument("--config", help="TOML settings file ([train] table)")
    add_dataclass_flags(train, cfg.TrainConfig)
    train.set_defaults(handler=cmd_train)

    finetune = sub.add_parser("finetune", help="fine-tune the model on its own detectors' crops (resumes automatically)")
    finetune.add_argument("--config", help="TOML settings file ([finetune] table)")
    add_dataclass_flags(finetune, cfg.FinetuneConfig)
    finetune.set_defaults(handler=cmd_finetune)

    distill = sub.add_parser("distill", help="train one smaller student on several teachers' soft answers "
                                             "(resumes automatically), then calibrate and export it")
    distill.add_argument("--config", help="TOML settings file ([distill] table)")
    add_dataclass_flags(distill, cfg.DistillConfig)
    distill.set_defaults(handler=cmd_distill)

    # Hand-made flags (a required --data, choices); defaults stay None so file and env settings apply.
    evaluate = sub.add_parser("evaluate", help="accuracy, macro-F1, per-class table and confusion matrix")
    evaluate.add_argument("--config", help="TOML settings file ([evaluate] table)")
    evaluate.add_argument("--data", required=True, help="emotion-folder root, split root, or fer2013.csv")
    evaluate.add_argument("--model", default=None, help=HELP["model"] + "; an ensemble is scored on the mean of "
                          "its members' calibrated probabilities")
    evaluate.add_argument("--split", default=None, help="split folder (default val) or CSV Usage (default PrivateTest)")
    evaluate.add_argument("--json", action="store_true", default=None,
                          help="print one JSON object on stdout, nothing else")
    evaluate.add_argument("--tta", choices=cfg.TTA_MODES, default=None, help="horizontal-flip TTA")
    evaluate.add_argument("--confusion-png", default=None,
                          help="where to save the confusion matrix picture (default ./confusion_matrix.png)")
    evaluate.add_argument("--precision", choices=cfg.PRECISIONS, default=None,
                          help="inference arithmetic (auto: bfloat16 where the CPU has it natively)")
    evaluate.set_defaults(handler=cmd_evaluate)

    from dashboard.cli import register as register_dashboard  # light: Dash loads on use

    register_dashboard(sub)

    for section, (_module, cls, text) in STAGES.items():
        stage = sub.add_parser(section, help=text)
        add_stage_arguments(stage, section, cls)
        stage.set_defaults(handler=_stage_command(section, cls))

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
