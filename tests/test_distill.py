"""`emojimation distill` on 20 real FER2013 faces per class: it runs, resumes after a kill,
refuses mismatched settings, and writes a calibrated student with its int8 LiteRT export."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from core.emotions import EMOTIONS
from core.model_io import DEFAULT_MODEL_PATH, EmotionModel
from helpers_fer import build_small_fer, kill_after_epoch, run_cli
from training.distill import soft_targets


def _distill_args(data, teachers, out) -> list[object]:
    return ["distill", "--teachers", *teachers, "--data", data.split_root, "--split", "train", "--out", out,
            "--epochs", 3, "--width", 8, "--batch-size", 32, "--average-last", 2]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, fer_cache):
    """A run SIGKILLed once epoch 2 is reported, then the same command again: it resumes at epoch 3."""
    root = tmp_path_factory.mktemp("distill")
    data = build_small_fer(root, {e: 20 for e in EMOTIONS})
    second = root / "teacher-b.keras"  # a second teacher file (same weights: the mechanics are under test)
    shutil.copyfile(DEFAULT_MODEL_PATH, second)
    teachers = [DEFAULT_MODEL_PATH, second]
    out = root / "out"
    kill_after_epoch(_distill_args(data, teachers, out), 2, fer_cache, root)
    result = run_cli(*_distill_args(data, teachers, out), cache_dir=fer_cache, cwd=root, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    return data, teachers, out, result.stdout


def test_a_killed_run_resumes_where_it_stopped(distilled):
    _data, _teachers, out, stdout = distilled
    assert "resuming after epoch 2" in stdout
    assert "epoch 1/" not in stdout and "epoch 3/3" in stdout
    with (out / "history-distill.csv").open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3]


def test_the_student_is_calibrated_and_exported(distilled):
    data, teachers, out, _stdout = distilled
    info = json.loads((out / "emojimation_cnn.json").read_text())
    assert info["distilled_from"] == [str(t) for t in teachers]
    assert info["weights"] == "average of epochs 2-3" and info["flip_tta"] is False
    assert 0.05 < info["temperature"] < 20
    faces = np.stack([f.pixels for f in data.faces[:10]])
    for suffix in (".keras", ".tflite"):  # the int8 export the pipeline would run, and its source
        probs = EmotionModel(out / f"emojimation_cnn{suffix}").probabilities(faces)
        assert probs.shape == (10, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert len(list(out.glob("teacher-targets-*.npz"))) == 1  # computed once, reused on resume


def test_mismatched_settings_are_refused(distilled, fer_cache):
    data, teachers, out, _stdout = distilled
    args = _distill_args(data, teachers, out)
    args[args.index("--width") + 1] = 16
    result = run_cli(*args, cache_dir=fer_cache, cwd=out.parent, timeout=300)
    assert result.returncode == 1
    assert "other settings (width)" in result.stderr and "Traceback" not in result.stderr


def test_soft_targets_average_the_teachers_at_the_temperature():
    logits = np.array([[[2.0, 0, 0, 0, 0, 0, 0]], [[0, 2.0, 0, 0, 0, 0, 0]]], np.float32)
    soft = soft_targets(logits, temperature=2.0)
    one = np.exp([1.0, 0, 0, 0, 0, 0, 0]) / np.exp([1.0, 0, 0, 0, 0, 0, 0]).sum()
    np.testing.assert_allclose(soft[0, 0], (one[0] + one[1]) / 2, rtol=1e-5)
    np.testing.assert_allclose(soft[0, :2], soft[0, [1, 0]], rtol=1e-5)  # symmetric teachers
    assert np.isclose(soft.sum(), 1.0)


def test_a_teacher_that_is_not_a_keras_model_is_one_line(tmp_path, fer_cache):
    result = run_cli("distill", "--teachers", tmp_path / "missing.keras", "--out", tmp_path,
                     cache_dir=fer_cache, cwd=tmp_path)
    assert result.returncode == 1 and "a teacher must be a trained .keras model file" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_epoch_takes_every_face_and_as_many_of_its_crops_drawn_anew():
    from training.distill import epoch_crops

    faces = np.array([0, 0, 0, 0, 1, 1, 2, 5, 5, 5, 5])  # each crop's face
    seen = set()
    for seed in range(40):
        for per_face in (1, 2):
            picked = epoch_crops(faces, per_face, np.random.default_rng(seed))
            counts = np.bincount(faces[picked], minlength=6)
            assert (counts == np.minimum(np.bincount(faces, minlength=6), per_face)).all()
        seen |= set(epoch_crops(faces, 1, np.random.default_rng(seed)).tolist())
    assert seen == set(range(len(faces)))  # over the epochs every crop is drawn


def test_distill_learns_from_detector_crops(tmp_path, fer_cache, monkeypatch):
    """With --pairs (the fine-tune's detector crops: here 2 Haar crops of each face), an epoch is
    every training face plus one of its crops, and the run ends with a student. With --threads,
    as long runs are started: TensorFlow's pools are set before the teachers' logits use it."""
    from emojimation.finetune import prepare_pairs

    monkeypatch.setenv("EMOJIMATION_CACHE", str(fer_cache))
    data = build_small_fer(tmp_path, {e: 8 for e in EMOTIONS})
    pairs = prepare_pairs(data.split_root, "train", ["haar"], renders=2, seed=0, processes=1)
    out = tmp_path / "out"
    result = run_cli("distill", "--teachers", DEFAULT_MODEL_PATH, "--data", data.split_root, "--split", "train",
                     "--out", out, "--epochs", 1, "--width", 8, "--batch-size", 32, "--average-last", 1,
                     "--pairs", pairs, "--threads", 1, cache_dir=fer_cache, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    faces = 8 * len(EMOTIONS) - len(EMOTIONS)  # a hold-out of 5 %: one face per emotion at this size
    assert f"on {faces} faces and {faces} of their {2 * faces} detector crops an epoch" in result.stdout, result.stdout
    assert (out / "emojimation_cnn.tflite").exists()


def test_consistent_targets_are_the_teachers_mean_softmax_on_the_same_batch():
    """Consistent teaching: each teacher's softmax at the temperature, on the batch given (the
    student's augmented batch), averaged over the teachers."""
    import keras

    from core.model_io import softmax
    from training.distill import consistent_targets

    x = np.random.default_rng(0).uniform(0, 1, (4, 48, 48, 1)).astype(np.float32)
    first = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    second = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    got = np.asarray(consistent_targets([first, second], x, 4.0))
    expected = (softmax(first.predict(x, verbose=0) / 4.0) + softmax(second.predict(x, verbose=0) / 4.0)) / 2
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, np.asarray(consistent_targets([first, second], x[::-1].copy(), 4.0)))


def test_consistent_teaching_runs_without_cached_answers_and_is_a_resume_setting(tmp_path, fer_cache):
    """--consistent: the teachers answer every batch, so no teacher answers are cached; a run in
    progress without it is not resumed with it (nor the other way)."""
    data = build_small_fer(tmp_path, {e: 8 for e in EMOTIONS})
    out = tmp_path / "out"
    args = ["distill", "--teachers", DEFAULT_MODEL_PATH, "--data", data.split_root, "--split", "train", "--out", out,
            "--epochs", 1, "--width", 8, "--batch-size", 32, "--average-last", 1, "--threads", 1]
    result = run_cli(*args, "--consistent", cache_dir=fer_cache, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the teachers answering every augmented batch" in result.stdout
    assert (out / "emojimation_cnn.tflite").exists() and not list(out.glob("teacher-targets-*.npz"))
    state = out / "checkpoints-distill" / "state.json"
    saved = json.loads(state.read_text())
    saved["epoch"] = 1  # a run "in progress" at epoch 1 of 1 ...
    state.write_text(json.dumps(saved))
    refused = run_cli(*args, cache_dir=fer_cache, cwd=tmp_path, timeout=300)  # ... resumed without --consistent
    assert refused.returncode == 1 and "other settings (consistent)" in refused.stderr, refused.stderr
