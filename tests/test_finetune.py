"""The detector-crop fine-tune (`emojimation finetune`), on 20 real FER2013 faces per class.

Real detectors (Haar and BlazeFace) cut the crops from synthetic frames; the shipped model is
fine-tuned on them through the CLI.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from core.emotions import EMOTIONS
from core.errors import DataError
from core.model_io import DEFAULT_MODEL_PATH, EmotionModel, softmax
from helpers_fer import build_small_fer, kill_after_epoch, run_cli
from training.data import load_faces, stratified_holdout
from training.detector_crops import load_pairs
from training.finetune import holdout_split


def _finetune_args(data, out) -> list[object]:
    # A strong pull (consistency 10, a high learning rate) so that a few steps show its effect.
    return ["finetune", "--data", data.split_root, "--split", "train", "--out", out, "--epochs", 4,
            "--renders", 2, "--consistency", 10, "--learning-rate", 1e-3, "--batch-size", 32]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, fer_cache):
    """A run SIGKILLed once epoch 2 is reported, then the same command again: it resumes at epoch 3."""
    root = tmp_path_factory.mktemp("finetune")
    data = build_small_fer(root, {e: 20 for e in EMOTIONS})
    out = root / "out"
    kill_after_epoch(_finetune_args(data, out), 2, fer_cache, root)
    result = run_cli(*_finetune_args(data, out), cache_dir=fer_cache, cwd=root, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    pairs_file = next(fer_cache.glob("detector-crops-v2-haar-blazeface-r2-s0-p*-train-*.npz"))
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
    assert "resuming after epoch 2" in stdout
    assert [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("epoch ")] == ["3/4", "4/4"]
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


def test_the_consistency_term_does_the_pulling(finetuned, fer_cache):
    """Cross-entropy on the crops alone also brings crop and face answers closer: the same run
    without the consistency term must leave them clearly further apart."""
    data, out, _stdout, pairs = finetuned
    control = out.parent / "control"
    args = _finetune_args(data, control)
    args[args.index("--consistency") + 1] = 0
    result = run_cli(*args, cache_dir=fer_cache, cwd=out.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    originals = load_faces(data.split_root, "train").images[pairs["index"]]
    pulled = _symmetric_kl(EmotionModel(out / "emojimation_cnn.keras"), originals, pairs["crops"])
    unpulled = _symmetric_kl(EmotionModel(control / "emojimation_cnn.keras"), originals, pairs["crops"])
    print(f"symmetric KL: consistency 10 {pulled:.3f}, consistency 0 {unpulled:.3f}")
    assert pulled < 0.7 * unpulled, (pulled, unpulled)


def test_finished_run_resumes_instead_of_training_again(finetuned, fer_cache):
    data, out, _stdout, _pairs = finetuned
    before = (out / "history-finetune.csv").read_text()
    result = run_cli(*_finetune_args(data, out), cache_dir=fer_cache, cwd=out.parent, timeout=300)
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


def test_changed_settings_do_not_resume_a_run_in_progress(finetuned, fer_cache):
    data, out, _stdout, _pairs = finetuned
    args = _finetune_args(data, out)
    args[args.index("--consistency") + 1] = 3
    result = run_cli(*args, cache_dir=fer_cache, cwd=out.parent, timeout=300)
    assert result.returncode == 1
    assert "other settings (consistency)" in result.stderr and "Traceback" not in result.stderr


def test_hold_out_is_the_start_models_own(tmp_path):
    """The fine-tune never trains on the faces the start model held out, whatever its own --seed."""
    labels = np.repeat(np.arange(7), 40)
    (tmp_path / "m.json").write_text(json.dumps({"train_config": {"seed": 3, "holdout_fraction": 0.1}}))
    train_idx, hold_idx = holdout_split(labels, tmp_path / "m.keras")
    expected_train, expected_hold = stratified_holdout(labels, 0.1, 3)
    np.testing.assert_array_equal(hold_idx, expected_hold)
    np.testing.assert_array_equal(train_idx, expected_train)
    assert not set(train_idx) & set(hold_idx)
    (tmp_path / "m.json").write_text(json.dumps({"train_config": {"seed": 3, "limit": 100}}))
    with pytest.raises(DataError, match="subset"):
        holdout_split(labels, tmp_path / "m.keras")


def test_refuses_to_overwrite_the_start_model(tmp_path, fer_cache):
    result = run_cli("finetune", "--pairs", tmp_path / "p.npz", "--out", tmp_path, "--start", tmp_path / "emojimation_cnn.keras",
                     cache_dir=fer_cache, cwd=tmp_path)
    assert result.returncode == 1 and "would overwrite the start model" in result.stderr


def test_crops_cache_follows_the_data_content(tmp_path, monkeypatch):
    """The cached crops are keyed by the faces themselves: editing a face in the same folder
    makes new crops instead of reusing crops of the old face."""
    from emojimation.finetune import prepare_pairs

    monkeypatch.setenv("EMOJIMATION_CACHE", str(tmp_path / "cache"))
    data = build_small_fer(tmp_path, {e: 1 for e in EMOTIONS})
    first = prepare_pairs(data.split_root, "train", ["haar"], renders=1, seed=0, processes=1)
    assert prepare_pairs(data.split_root, "train", ["haar"], renders=1, seed=0, processes=1) == first  # reused
    happy = next((data.split_root / "train" / "happy").iterdir())
    happy.write_bytes(next((data.split_root / "train" / "sad").iterdir()).read_bytes())
    second = prepare_pairs(data.split_root, "train", ["haar"], renders=1, seed=0, processes=1)
    assert second != first and first.exists() and second.exists()
    assert not np.array_equal(load_pairs(first)["crops"], load_pairs(second)["crops"])


def test_crops_cache_follows_the_crop_geometry(tmp_path, monkeypatch):
    """A new crop margin for a detector is a new cache file, not the crops cut the old way.
    (The crops themselves are cut in spawned workers, which import the shipped geometry, so this
    checks the key: the file the next run would reuse.)"""
    from core.preprocess import DETECTOR_CROPS, CropGeometry
    from emojimation.finetune import prepare_pairs

    monkeypatch.setenv("EMOJIMATION_CACHE", str(tmp_path / "cache"))
    data = build_small_fer(tmp_path, {e: 1 for e in EMOTIONS})
    first = prepare_pairs(data.split_root, "train", ["haar"], renders=1, seed=0, processes=1)
    monkeypatch.setitem(DETECTOR_CROPS, "haar", CropGeometry(margin=0.2, shift_y=0.0))
    second = prepare_pairs(data.split_root, "train", ["haar"], renders=1, seed=0, processes=1)
    assert second != first and first.exists() and second.exists()
    monkeypatch.setitem(DETECTOR_CROPS, "haar", CropGeometry(margin=0.0, shift_y=0.0))
    assert prepare_pairs(data.split_root, "train", ["haar"], renders=1, seed=0, processes=1) == first


def test_renders_use_real_backgrounds_and_new_light(tmp_path):
    """Half the renders (here all: share 1.0) sit on a window of a real picture, and the pasted
    face is lit anew: a gain and a gradient across it."""
    import cv2

    from training.detector_crops import RenderSettings, relight, render

    rng = np.random.default_rng(0)
    face = np.full((48, 48), 100, np.uint8)
    backdrop = np.full((300, 400), 200, np.uint8)  # a "photo" of one grey level
    frame, (x, y, size, _) = render(face, rng, RenderSettings(real_backgrounds=1.0, light_gain=(1.0, 1.0),
                                                              light_gradient=0.0), [backdrop])
    outside = np.ones(frame.shape, bool)
    outside[max(0, y - 8):y + size + 8, max(0, x - 8):x + size + 8] = False  # JPEG blocks bleed a little
    assert abs(float(np.median(frame[outside])) - 200) <= 2
    assert abs(float(np.median(frame[y:y + size, x:x + size])) - 100) <= 2  # unchanged light
    lit = relight(np.full((48, 48), 100, np.uint8), np.random.default_rng(1),
                  RenderSettings(light_gain=(0.6, 0.6), light_gradient=0.4))
    assert 40 <= lit.mean() <= 80  # darker overall ...
    assert lit.max() - lit.min() > 5  # ... and brighter on one side than the other
    # Synthetic fields when no real picture is given
    frame, _ = render(face, np.random.default_rng(2), RenderSettings(real_backgrounds=1.0))
    assert frame.ndim == 2 and cv2.countNonZero(frame) > 0


def test_backgrounds_load_from_photos_and_videos_and_a_named_missing_one_is_an_error(tmp_path):
    import subprocess

    import cv2

    from core.errors import ConfigError
    from emojimation.finetune import load_backgrounds

    cv2.imwrite(str(tmp_path / "photo.png"), np.full((1000, 800, 3), 90, np.uint8))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10:duration=5",
                    "-pix_fmt", "yuv420p", str(tmp_path / "clip.mp4")], check=True)
    pictures = load_backgrounds([tmp_path], required=True)
    assert sorted(p.shape for p in pictures) == [(240, 320)] * 3 + [(640, 512)]  # clip frames at 0, 2, 4 s; the photo scaled down
    assert all(p.ndim == 2 for p in pictures)  # grey
    assert load_backgrounds([tmp_path / "absent"], required=False) == []
    with pytest.raises(ConfigError, match="absent"):
        load_backgrounds([tmp_path / "absent"], required=True)
