"""core.config: one loader for every command's settings (defaults < file < environment < flags),
the dashboard's and training's included, and the alert rules checked in the ground layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import (
    AggregatorConfig, AlertRule, DashboardConfig, DetectorConfig, FinetuneConfig, TrainConfig, load, read_monitor_file,
    rules_from_json,
)
from core.errors import ConfigError


def test_training_settings_come_from_file_then_environment_then_flags(tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text('[train]\nepochs = 5\nseed = 3\ndata = "faces"\nbatch-size = 8\n\n'
                        '[finetune]\ndetectors = ["haar"]\nconsistency = 2\n')
    environ = {"EMOJIMATION_SEED": "7", "EMOJIMATION_BATCH_SIZE": "16", "EMOJIMATION_LIMIT": "none"}
    config = load(TrainConfig, "train", str(settings), {"batch_size": 32, "out": "runs/a", "width": None},
                  environ=environ)
    assert (config.epochs, config.seed, config.batch_size) == (5, 7, 32)  # file, environment, flag
    assert config.data == Path("faces") and config.out == Path("runs/a")  # typed, from the file and a flag
    assert config.width == TrainConfig.width and config.limit is None  # a flag not given keeps the default
    finetune = load(FinetuneConfig, "finetune", str(settings), {}, environ={"EMOJIMATION_RENDERS": "3"})
    assert (finetune.detectors, finetune.consistency, finetune.renders) == (["haar"], 2.0, 3)


def test_training_settings_are_checked(tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text("[train]\nepochs = \"many\"\nlerning_rate = 0.1\n")
    with pytest.raises(ConfigError) as error:
        load(TrainConfig, "train", str(settings), environ={})
    assert "train.epochs: 'many' is not a valid int" in str(error.value)
    assert "unknown setting 'lerning_rate'" in str(error.value)  # every problem, in one message
    with pytest.raises(ConfigError, match="precision 'fast'"):
        load(TrainConfig, "train", None, environ={"EMOJIMATION_PRECISION": "fast"})


def test_dashboard_settings_keep_their_environment_names(tmp_path):
    settings = tmp_path / "dashboard.yaml"
    settings.write_text("dashboard:\n  host: 0.0.0.0\n  port: 9000\n")
    environ = {"EMOJIMATION_DASHBOARD_AUTH": "ann:pw", "EMOJIMATION_STORE": "sqlite:///x.db",
               "EMOJIMATION_AUTH": "not:read"}
    config = load(DashboardConfig, "dashboard", str(settings), {"port": 0, "no_auth": None}, environ=environ)
    assert config == DashboardConfig(store="sqlite:///x.db", host="0.0.0.0", port=0, auth="ann:pw", no_auth=False)
    assert load(DashboardConfig, "dashboard", environ={}) == DashboardConfig(host="127.0.0.1", port=8050)


def test_alert_rules_are_typed_and_checked_by_the_core(tmp_path):
    monitor = tmp_path / "monitor.toml"
    monitor.write_text('[[cameras]]\nurl = "rtsp://u:secret@cam/1"\n\n'
                       '[[alerts]]\nname = "joy"\nemotion = "happy"\nmin_prob = 0.6\n\n'
                       '[[alerts]]\nname = "x"\nemotion = "furious"\nmin_prob = 2\n')
    file, problems = read_monitor_file(str(monitor))
    assert file.cameras[0].name == "rtsp://u:***@cam/1"  # named without its password
    assert any("alerts[1].emotion: 'furious' is not one of" in p for p in problems)
    assert any("alerts[1].min_prob: must be between 0 and 1" in p for p in problems)
    assert rules_from_json('[{"name": "joy", "emotion": "happy", "min_prob": 0.6}]') == [
        AlertRule(name="joy", emotion="happy", min_prob=0.6)]
    # The aggregator's alert_rules setting is checked when its config is loaded, not when it runs.
    with pytest.raises(ConfigError, match="'furious' is not one of"):
        load(AggregatorConfig, "aggregator", environ={"EMOJIMATION_ALERT_RULES": '[{"name": "x", "emotion": "furious"}]'})


def test_min_track_frames_reaches_the_aggregator_from_analyse_and_monitor():
    """`--min-track-frames` (default 3) is typed and checked like every setting, and `analyse` and
    `monitor` hand it to the aggregator they start."""
    import threading

    from core.config import AnalyseConfig, Camera, MonitorConfig
    from core.process import config_overrides
    from emojimation.analysis import file_topology
    from emojimation.cli import build_parser
    from emojimation.monitor import Monitor, MonitorPlan

    assert AnalyseConfig().min_track_frames == MonitorConfig().min_track_frames == AggregatorConfig().min_track_frames == 3
    args = build_parser().parse_args(["analyse", "a.mp4", "--min-track-frames", "1"])
    analyse = load(AnalyseConfig, "analyse", None, config_overrides(args, AnalyseConfig), environ={})
    assert file_topology(analyse, ["a.mp4"]).aggregator.min_track_frames == 1
    args = build_parser().parse_args(["monitor", "cam.mp4", "--min-track-frames", "5"])
    monitor = load(MonitorConfig, "monitor", None, config_overrides(args, MonitorConfig), environ={})
    plan = MonitorPlan(monitor, [Camera(name="cam", url="cam.mp4")])
    assert Monitor(plan, supervisor=None, stop=threading.Event()).topology().aggregator.min_track_frames == 5
    with pytest.raises(ConfigError, match="min_track_frames must be at least 1, got 0"):
        load(AnalyseConfig, "analyse", None, {"min_track_frames": 0}, environ={})
    with pytest.raises(ConfigError, match="min_track_frames"):
        load(AggregatorConfig, "aggregator", None, environ={"EMOJIMATION_MIN_TRACK_FRAMES": "0"})


def test_search_every_reaches_the_detectors_of_analyse_and_monitor():
    """--search-every from the command line ends in the DetectorConfig both pipelines start,
    changes a file run's settings key (so --resume never mixes schedules), and 0 is refused."""
    import threading

    from core.config import AnalyseConfig, Camera, MonitorConfig
    from core.process import config_overrides
    from emojimation.analysis import file_topology, settings_key
    from emojimation.cli import build_parser
    from emojimation.monitor import Monitor, MonitorPlan

    assert AnalyseConfig().search_every == MonitorConfig().search_every == DetectorConfig().search_every == 2
    args = build_parser().parse_args(["analyse", "a.mp4", "--search-every", "3"])
    analyse = load(AnalyseConfig, "analyse", None, config_overrides(args, AnalyseConfig), environ={})
    assert file_topology(analyse, ["a.mp4"]).detector.search_every == 3
    assert settings_key(analyse) != settings_key(AnalyseConfig())
    args = build_parser().parse_args(["monitor", "cam.mp4", "--search-every", "1"])
    monitor = load(MonitorConfig, "monitor", None, config_overrides(args, MonitorConfig), environ={})
    plan = MonitorPlan(monitor, [Camera(name="cam", url="cam.mp4")])
    assert Monitor(plan, supervisor=None, stop=threading.Event()).topology().detector.search_every == 1
    with pytest.raises(ConfigError, match="search_every must be at least 1, got 0"):
        load(AnalyseConfig, "analyse", None, {"search_every": 0}, environ={})
