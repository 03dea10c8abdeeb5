"""The detector-crop fine-tune (`emojimation finetune`), on 20 real FER2013 faces per class.

Real detectors (Haar and BlazeFace) cut the crops from synthetic frames; the shipped model is
fine-tuned on them through the CLI.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from emojimation.emotions import EMOTIONS
from emojimation.model_io import DEFAULT_MODEL_PATH, EmotionModel, softmax
from helpers_fer import build_small_fer, run_cli
from training.data import load_faces
from training.detector_crops import load_pairs


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, fer_cache):
    root = tmp_path_factory.mktemp("finetune")
    data = build_small_fer(root, {e: 20 for e in EMOTIONS})
    out = root / "out"
    # A strong pull (consistency 10, a high learning rate) so that a few steps show its effect.
    result = run_cli("finetune", "--data", data.split_root, "--split", "train", "--out", out, "--epochs", 4,
                     "--renders", 2, "--consistency", 10, "--learning-rate", 1e-3, "--batch-size", 32,
                     cache_dir=fer_cache, cwd=root, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    pairs_file = next(fer_cache.glob("detector-crops-haar-blazeface-r2-s0-train-*.npz"))
    return data, out, result.stdout, load_pairs(pairs_file)


def test_every_face_gets_a_crop_per_render_and_detector(finetuned):
    data, _out, _stdout, pairs = finetuned
    faces = load_faces(data.split_root, "train")
    assert list(pairs["names"]) == ["haar", "blazeface"]
    assert pairs["crops"].shape == (len(faces) * 2 * 2, 48, 48) and pairs["crops"].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(pairs["index"]), np.full(len(faces), 4))
    # The detectors really ran: most pasted faces are found (misses get a jittered box instead).
    for d in range(2):
        assert pairs["found"][pairs["detector"] == d].mean() > 0.5
    # A crop is the same face reframed, not another face: it is closer to its own face than to the others.
    own = [np.abs(pairs["crops"][k].astype(int) - faces.images[i]).mean() for k, i in enumerate(pairs["index"])]
    other = [np.abs(pairs["crops"][k].astype(int) - faces.images[(i + 1) % len(faces)]).mean()
             for k, i in enumerate(pairs["index"])]
    assert np.median(own) < 0.7 * np.median(other)


def _symmetric_kl(model: EmotionModel, faces: np.ndarray, crops: np.ndarray) -> float:
    """The fine-tune's consistency term, on the raw logits it optimises (no temperature)."""
    p, q = softmax(model.logits(faces)), softmax(model.logits(crops))
    return float(((p - q) * (np.log(p) - np.log(q))).sum(axis=1).mean())


def test_finetune_pulls_crop_answers_towards_face_answers(finetuned):
    data, out, stdout, pairs = finetuned
    faces = load_faces(data.split_root, "train")
    with (out / "history-finetune.csv").open() as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4]
    meta = json.loads((out / "emojimation_cnn.json").read_text())
    assert meta["finetune"]["config"]["consistency"] == 10
    assert 0.2 < meta["temperature"] < 5
    originals = faces.images[pairs["index"]]
    before = _symmetric_kl(EmotionModel(DEFAULT_MODEL_PATH), originals, pairs["crops"])
    after = _symmetric_kl(EmotionModel(out / "emojimation_cnn.keras"), originals, pairs["crops"])
    assert after < 0.7 * before, (before, after)
    assert "saved" in stdout


def test_finished_run_resumes_instead_of_training_again(finetuned, fer_cache):
    data, out, _stdout, _pairs = finetuned
    before = (out / "history-finetune.csv").read_text()
    result = run_cli("finetune", "--data", data.split_root, "--split", "train", "--out", out, "--epochs", 4,
                     "--renders", 2, "--consistency", 10, "--learning-rate", 1e-3, "--batch-size", 32,
                     cache_dir=fer_cache, cwd=out.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch 4" in result.stdout
    assert not any(line.startswith("epoch ") for line in result.stdout.splitlines())
    assert (out / "history-finetune.csv").read_text() == before


def test_missing_crops_file_is_one_line(tmp_path, fer_cache):
    result = run_cli("finetune", "--pairs", tmp_path / "none.npz", "--out", tmp_path / "out", cache_dir=fer_cache,
                     cwd=tmp_path)
    assert result.returncode != 0
    assert "none.npz: no detector-crops file" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
