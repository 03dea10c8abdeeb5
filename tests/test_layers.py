"""The layers hold: every import statement of the project points down, never sideways between stages.

Layers (README, "Code layout"):
  ground  core/                                   imports no other project package
  stages  ingest/ detector/ classifier/ aggregator/ dashboard/ training/
                                                  import the ground and themselves only
  roof    emojimation/                            may import anything below; nothing imports it
  top     bench/ devtools/ tests/                 may import anything; nothing in the product imports them

Every `import` and `from ... import` is read with `ast`, at module level and inside functions,
so a lazy import inside a function cannot hide a wrong-way dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUND = "core"
STAGES = ("ingest", "detector", "classifier", "aggregator", "dashboard", "training")
ROOF = "emojimation"
TOP = ("bench", "devtools", "tests")
PROJECT_PACKAGES = (GROUND, *STAGES, ROOF, *TOP)


def allowed(importer: str, imported: str) -> bool:
    """May a module of top-level package `importer` import one of package `imported`?"""
    if importer == imported or imported not in PROJECT_PACKAGES:
        return True
    if importer == GROUND:
        return False
    if importer in STAGES:
        return imported == GROUND
    if importer == ROOF:
        return imported not in TOP
    return True  # bench, devtools and tests sit on top of everything


def imported_packages(source: str, module: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in `source`; relative imports resolve to `module`'s package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, module.split(".")[0] if node.level else (node.module or "").split(".")[0]))
    return found


def violations(root: Path = ROOT) -> list[str]:
    problems = []
    for package in PROJECT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for line, imported in imported_packages(path.read_text(), module):
                if not allowed(package, imported):
                    problems.append(f"{path.relative_to(root)}:{line}: {package} must not import {imported}")
    return problems


def test_every_import_points_down():
    assert violations() == []


def test_the_checker_sees_wrong_way_imports(tmp_path):
    """The check can fail: a stage importing another stage inside a function, the ground importing
    the roof, and the roof importing a benchmark are each reported."""
    for package, source in {
        "core": "def f():\n    from emojimation import cli\n",
        "classifier": "import os\n\ndef f():\n    import detector.backends\n",
        "emojimation": "from bench import synthetic\n",
        "dashboard": "from . import app\nfrom core import store\n",  # both fine
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "module.py").write_text(source)
    assert violations(tmp_path) == [
        "core/module.py:2: core must not import emojimation",
        "classifier/module.py:4: classifier must not import detector",
        "emojimation/module.py:1: emojimation must not import bench",
    ]


def _run_fresh(code: str) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet); its stdout."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_a_classifier_worker_imports_only_its_stage_and_the_ground():
    """`python -m classifier` with the shipped LiteRT model loads neither TensorFlow, Dash,
    training, another stage nor the roof (what a worker process costs in start-up and memory)."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['classifier', '--help']\n"
        "try:\n"
        "    runpy.run_module('classifier', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "from core.model_io import EmotionModel\n"
        "EmotionModel().probabilities(__import__('numpy').zeros((2, 48, 48), 'uint8'))\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'dash', 'training',"
        " 'detector', 'ingest', 'aggregator', 'dashboard', 'emojimation'})\n"
        "print('LOADED', bad)\n"
    )
    stdout = _run_fresh(probe)
    assert "LOADED []" in stdout, stdout[-2000:]


def test_the_aggregator_opens_a_file_source_without_pandas_and_the_cli_without_the_runtime():
    """Start-up costs measured in docs/benchmarks.md 3a-4: pandas (0.65 s of CPU) stays out of
    the aggregator, which reads its run's source row when a stream starts, and the `emojimation`
    command's own module does not import the stages' runtime (NumPy, OpenCV, the messages)."""
    probe = (
        "import sys, tempfile\n"
        "import emojimation.cli\n"
        "print('CLI', sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'cv2', 'pandas'}))\n"
        "from core.store import Store\n"
        "store = Store(f'sqlite:///{tempfile.mkdtemp()}/r.db')\n"
        "sid = store.create_source('video', '/v.mp4', 'v', 'analysing', options={'run': 'r1'})\n"
        "row = store.run_source('/v.mp4', 'r1')\n"
        "assert row['id'] == sid and store.latest_run(['/v.mp4'])['id'] == sid, row\n"
        "assert store.run_source('/v.mp4', 'other') is None\n"
        "print('STORE', 'pandas' in sys.modules)\n"
    )
    stdout = _run_fresh(probe)
    assert "CLI []" in stdout and "STORE False" in stdout, stdout
