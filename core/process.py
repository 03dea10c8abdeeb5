"""A stage process from the outside: its command line, its environment, its start-up.

Every stage (`python -m ingest`, `python -m detector`, `python -m classifier`,
`python -m aggregator`, `python -m core.relay`) and the `emojimation <stage>` command build their
flags from the stage's config dataclass here, so a setting has one name everywhere: `--max-batch`
on the command line, `max_batch` in the TOML file, `EMOJIMATION_MAX_BATCH` in the environment.
The supervisor turns a typed config back into that command line with `stage_command`, which
puts secrets (store URLs with passwords, camera URLs, webhook URLs) in the child's environment,
never in its argv: `ps` shows argv to every local user.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn

from core import config as cfg
from core.errors import EmojimationError, database_errors, redact_url
from core.security import InsecureBindError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Fields whose values may hold credentials: passed as EMOJIMATION_<FIELD> by `stage_command`.
SECRET_FIELDS = frozenset({"store", "camera", "alert_rules"})
HELP = {
    "connect": "upstream output address to connect to (repeatable)",
    "bind": "address this stage binds its output on",
    "status": "supervisor status address (optional)",
    "input": "video files, images or folders of images",
    "detector": f"face detector backend ({', '.join(cfg.DETECTORS)})",
    "store": "results database URL (default sqlite under $EMOJIMATION_HOME)",
    "model": "model file, .keras or .tflite (default: the shipped models/emojimation_cnn.tflite); `ensemble`: "
             "the shipped ensemble (models/ensemble.json); several files, comma-separated (A,B,C): an ensemble of them",
    "listen": "address this stage's input binds on, for upstream workers that --push to it",
    "push": "address(es) this stage's output connects to, e.g. a relay or an aggregator's --listen (repeatable)",
    "curve_dir": "CurveZMQ keys folder (`emojimation keys generate DIR`): encrypt and authenticate every tcp:// link",
    "metrics_port": "serve Prometheus metrics on this port at /metrics (default 0: off)",
    "metrics_host": "address the metrics server binds (default 127.0.0.1)",
    "log_format": "text | json (one JSON object per line)",
    "min_track_frames": "fewest analysed frames a face must be followed for to get a track of its own "
                        "(default 3; 1 = every face)",
    "live_view": "keep each camera's newest annotated frame in the store for the dashboard (off by default: "
                 "it stores images of faces)",
}
StageRunner = Callable[[Any, threading.Event], int]


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: frozenset[str] | set[str] = frozenset()
                        ) -> None:
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
                                help=HELP.get(f.name) or f"(default {_shown(f.default)})"
                                if f.default is not dataclasses.MISSING else HELP.get(f.name))


def _shown(default: object) -> str:
    """A default as a user would type it: a path as a path, not PosixPath('...')."""
    return str(default) if isinstance(default, Path) else repr(default)


def config_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags the user gave (not None) that are fields of `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def add_stage_arguments(parser: argparse.ArgumentParser, section: str, cls: type) -> None:
    parser.add_argument("--config", help=f"TOML settings file ([{section}] table)")
    parser.add_argument("--log-level", default="WARNING")
    add_dataclass_flags(parser, cls)


def run_stage(section: str, cls: type, runner: StageRunner, args: argparse.Namespace) -> NoReturn:
    """Load the stage's config, set up logging and signals, run it, and exit at once.

    Bad settings are one line on stderr and exit 2; a failure the stage did not handle (a
    database, disk or socket error) is one line and exit 1, never a traceback."""
    try:
        config = cfg.load(cls, section, args.config, config_overrides(args, cls))
    except EmojimationError as error:
        _exit_with_line(str(error), EXIT_USAGE)
    # Imported here, not at the top: the `emojimation` command imports this module too, and
    # the runtime's imports (NumPy, OpenCV, the messages) would delay every command's start.
    from core.runtime import setup_logging, stop_event_on_signals

    setup_logging(args.log_level, f"emojimation.{section}", getattr(config, "log_format", "text"))
    try:
        code = runner(config, stop_event_on_signals())
    except InsecureBindError as error:  # a setting the operator must change: a usage error
        _exit_with_line(str(error), EXIT_USAGE)
    except EmojimationError as error:
        _exit_with_line(str(error), EXIT_FAILED)
    except (OSError, *database_errors()) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        _exit_with_line(redact_url(lines[0]), EXIT_FAILED)
    _exit(code)


def stage_main(section: str, cls: type, runner: StageRunner, argv: list[str] | None = None) -> NoReturn:
    """`python -m <stage>`: the stage's own parser, importing nothing but the stage and the ground."""
    parser = argparse.ArgumentParser(prog=f"python -m {section}", description=f"run the {section} stage")
    add_stage_arguments(parser, section, cls)
    run_stage(section, cls, runner, parser.parse_args(argv))


def stage_command(module: str, config: Any) -> tuple[list[str], dict[str, str]]:
    """(argv after the interpreter, environment) that start `module` with `config`: the inverse
    of the stage's parser. Only fields that differ from their defaults are written; secrets
    go to the environment (`SECRET_FIELDS`)."""
    argv, env = ["-m", module], {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default:
            continue
        if f.name in SECRET_FIELDS:
            env[cfg.ENV_PREFIX + f.name.upper()] = str(value)
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []  # a False that differs from a True default cannot be said
        elif isinstance(value, list):
            if f.name == "connect":
                for item in value:
                    argv += [flag, str(item)]
            elif value:
                argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv, env


def _exit_with_line(text: str, code: int) -> NoReturn:
    print(f"emojimation: error: {text}", file=sys.stderr)  # the same first words as every command's errors
    _exit(code)


def _exit(code: int) -> NoReturn:
    """Sockets are closed and results flushed by now. Skip the interpreter's teardown, which
    takes seconds once TensorFlow is loaded, so a stopped stage is gone at once."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
