"""Training, evaluation and data loading (issue 2), on a few dozen real FER2013 faces.

The faces come from ../shared/data/fer2013 and are written by the tests into temporary
folders and a temporary fer2013.csv. Training runs are tiny (width 8, batch 16, 1-3 epochs).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from core.emotions import EMOTION_INDEX, EMOTIONS
from core.errors import DataError
from helpers_fer import (
    FER_ORDER,
    build_small_fer,
    decode_grey,
    cli_command,
    cli_env,
    pixels_text,
    run_cli,
    shared_files,
    write_fer_csv,
)
from training.data import load_csv, load_faces, load_folder, stratified_holdout
from training.train import MODEL_FILENAME, TrainConfig

TINY = ["--batch-size", 16, "--width", 8]


def _by_content(faces) -> dict[bytes, int]:
    return {f.pixels.tobytes(): f.label for f in faces}


def _sorted_pairs(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels in a canonical order (by label, then pixels), to compare sets."""
    order = sorted(range(len(labels)), key=lambda i: (int(labels[i]), images[i].tobytes()))
    return images[order], labels[order]


def _history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def _train_cmd(data: Path, out: Path, epochs: int, seed: int = 0) -> list[object]:
    return ["train", "--data", data, "--split", "train", "--out", out, "--epochs", epochs, "--seed", seed, *TINY]


def _check_train(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"training failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


# ---------------------------------------------------------------------------------------------
# Loaders


def test_label_order_is_fer2013s():
    assert EMOTIONS == FER_ORDER
    assert EMOTION_INDEX["sad"] == 4 and EMOTION_INDEX["neutral"] == 6


def test_folder_loader_labels_in_fer2013_order(small_fer, fer_cache, monkeypatch):
    monkeypatch.setenv("EMOJIMATION_CACHE", str(fer_cache))
    faces = load_faces(small_fer.split_root, "train")
    train = small_fer.by_usage("Training")
    assert faces.images.shape == (len(train), 48, 48) and faces.images.dtype == np.uint8
    assert faces.labels.dtype == np.int64
    # Every class has a different count, so any permutation of the labels shows here.
    assert faces.class_counts().tolist() == [3, 4, 5, 6, 7, 8, 9]
    expected = _by_content(train)
    got = {img.tobytes(): int(lab) for img, lab in zip(faces.images, faces.labels)}
    assert got == expected  # same pixels (PNG decoded as is) and each with its folder's label
    sad = next(f for f in train if f.emotion == "sad")
    neutral = next(f for f in train if f.emotion == "neutral")
    assert got[sad.pixels.tobytes()] == 4  # alphabetical order would give 5
    assert got[neutral.pixels.tobytes()] == 6  # alphabetical order would give 4

    # An emotion-folder root (no split level), here of JPEGs, and the split root's val/ agree.
    flat = load_faces(small_fer.flat_root)
    val = load_faces(small_fer.split_root, "val")
    assert flat.class_counts().tolist() == [2] * 7
    for loaded in (flat, val):
        assert {img.tobytes(): int(lab) for img, lab in zip(loaded.images, loaded.labels)} == \
            _by_content(small_fer.by_usage("PublicTest"))


def test_folder_loader_caches_decoded_faces(small_fer, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMOJIMATION_CACHE", str(cache))
    first = load_folder(small_fer.flat_root)
    assert len(list(cache.glob("faces-*.npz"))) == 1
    again = load_folder(small_fer.flat_root)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    # A changed image is a different data set: no stale cache hit.
    tree = tmp_path / "tree"
    shutil.copytree(small_fer.flat_root, tree)
    load_folder(tree)
    victim = sorted((tree / "happy").iterdir())[0]
    replacement = sorted((tree / "sad").iterdir())[0]
    shutil.copyfile(replacement, victim)
    changed = load_folder(tree)
    sad_pixels = {img.tobytes() for img, lab in zip(changed.images, changed.labels) if lab == 4}
    happy_pixels = {img.tobytes() for img, lab in zip(changed.images, changed.labels) if lab == 3}
    assert sad_pixels & happy_pixels, "the replaced happy image must be re-decoded"


def test_split_root_needs_a_split_and_checks_classes(small_fer, tmp_path, fer_cache, monkeypatch):
    monkeypatch.setenv("EMOJIMATION_CACHE", str(fer_cache))
    with pytest.raises(DataError, match="--split"):
        load_faces(small_fer.split_root)
    with pytest.raises(DataError, match="no split folder 'test'"):
        load_faces(small_fer.split_root, "test")
    partial = tmp_path / "partial"
    shutil.copytree(small_fer.flat_root / "happy", partial / "happy")
    assert load_faces(partial).class_counts().tolist() == [0, 0, 0, 2, 0, 0, 0]  # evaluation may lack classes
    with pytest.raises(DataError, match="missing emotion folders: angry, disgust, fear, sad, surprise, neutral"):
        load_faces(partial, require_all=True)  # training may not
    shutil.copytree(partial, tmp_path / "splits" / "train")
    (tmp_path / "splits" / "train" / "happy_faces").mkdir()
    with pytest.raises(DataError, match="happy_faces: not an emotion folder"):
        load_faces(tmp_path / "splits", "train")  # a typo is an error, not a silently dropped class


def test_csv_loader_matches_folders_and_selects_usage(small_fer, fer_cache, monkeypatch):
    monkeypatch.setenv("EMOJIMATION_CACHE", str(fer_cache))
    for split, usage, folder_split in (("train", "Training", "train"), ("Training", "Training", "train"),
                                       ("val", "PublicTest", "val"), ("PublicTest", "PublicTest", "val")):
        from_csv = load_faces(small_fer.csv_path, split)
        from_folder = load_faces(small_fer.split_root, folder_split)
        assert len(from_csv) == len(small_fer.by_usage(usage)), split
        # Pixel for pixel and label for label, the CSV and the folder form are the same data set.
        csv_images, csv_labels = _sorted_pairs(from_csv.images, from_csv.labels)
        dir_images, dir_labels = _sorted_pairs(from_folder.images, from_folder.labels)
        np.testing.assert_array_equal(csv_images, dir_images)
        np.testing.assert_array_equal(csv_labels, dir_labels)
    private = load_faces(small_fer.csv_path, "PrivateTest")
    assert sorted(private.labels.tolist()) == list(range(7))
    assert {img.tobytes(): int(lab) for img, lab in zip(private.images, private.labels)} == \
        _by_content(small_fer.by_usage("PrivateTest"))
    assert len(load_faces(small_fer.csv_path, "test")) == 7  # alias of PrivateTest
    assert len(load_csv(small_fer.csv_path)) == len(small_fer.faces)  # no usage: every row
    with pytest.raises(DataError, match="unknown split"):
        load_faces(small_fer.csv_path, "holdout")


def test_csv_loader_reads_labels_from_the_emotion_column(tmp_path):
    face = shared_files("val", "surprise", 1)[0]
    pixels = decode_grey(face)
    path = write_fer_csv(tmp_path / "fer2013.csv", [(4, pixels_text(pixels), "Training"),
                                                    (6, pixels_text(pixels[::-1]), "Training")])
    faces = load_faces(path, "train")
    assert faces.labels.tolist() == [4, 6]
    np.testing.assert_array_equal(faces.images[0], pixels)
    np.testing.assert_array_equal(faces.images[1], pixels[::-1])


def test_stratified_holdout_takes_every_class_and_is_seeded():
    labels = np.repeat(np.arange(7), [3, 4, 5, 6, 7, 8, 40])
    train, hold = stratified_holdout(labels, 0.1, seed=3)
    assert np.intersect1d(train, hold).size == 0
    assert np.union1d(train, hold).tolist() == list(range(len(labels)))
    assert np.bincount(labels[hold], minlength=7).tolist() == [1, 1, 1, 1, 1, 1, 4]
    again_train, again_hold = stratified_holdout(labels, 0.1, seed=3)
    assert again_hold.tolist() == hold.tolist() and again_train.tolist() == train.tolist()
    assert stratified_holdout(labels, 0.1, seed=4)[1].tolist() != hold.tolist()


# ---------------------------------------------------------------------------------------------
# Training


EPOCHS = 3


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """20 faces per class (133 to train on, 9 steps per epoch): a kill lands inside an epoch."""
    return build_small_fer(tmp_path_factory.mktemp("train-data"), {e: 20 for e in EMOTIONS})


@pytest.fixture(scope="module")
def seed0_run(train_data, fer_cache, tmp_path_factory):
    """One tiny training run through the CLI (seed 0), shared by the tests that inspect it."""
    out = tmp_path_factory.mktemp("run") / "seed0"
    result = run_cli(*_train_cmd(train_data.split_root, out, EPOCHS, seed=0), cache_dir=fer_cache,
                     cwd=out.parent, timeout=240)
    return out, _check_train(result)


@pytest.fixture(scope="module")
def killed_run(train_data, fer_cache, tmp_path_factory):
    """The same command as seed0_run, SIGKILLed once epoch 1 is reported, then started again.

    Returns (out, lines printed before the kill, the killed run's exit code, the second run's stdout).
    """
    tmp = tmp_path_factory.mktemp("killed")
    out = tmp / "run"
    command = cli_command(*_train_cmd(train_data.split_root, out, EPOCHS, seed=0))
    with open(tmp / "killed.stderr", "w") as stderr:
        proc = subprocess.Popen(command, cwd=tmp, env=cli_env(fer_cache), stdout=subprocess.PIPE, stderr=stderr,
                                text=True)
        watchdog = threading.Timer(240, proc.kill)
        watchdog.start()
        seen = []
        try:
            for line in proc.stdout:
                seen.append(line)
                if line.startswith("epoch 1/"):
                    os.kill(proc.pid, signal.SIGKILL)  # epoch 1 is finished and saved; epoch 2 is running
                    break
            seen += proc.stdout.readlines()
            proc.wait(timeout=60)
        finally:
            watchdog.cancel()
    if proc.returncode != -signal.SIGKILL:
        seen.append((tmp / "killed.stderr").read_text()[-3000:])
    resumed = subprocess.run(command, cwd=tmp, env=cli_env(fer_cache), capture_output=True, text=True, timeout=240)
    return out, seen, proc.returncode, _check_train(resumed)


def test_short_run_writes_a_loadable_model(seed0_run, small_fer):
    out, stdout = seed0_run
    lines = stdout.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    assert not any("resuming" in ln for ln in lines)
    model_path = out / MODEL_FILENAME
    meta = json.loads((out / "emojimation_cnn.json").read_text())
    assert meta["labels"] == list(FER_ORDER)
    assert isinstance(meta["temperature"], float) and 0.0 < meta["temperature"] < 100.0
    assert meta["train_config"]["seed"] == 0 and meta["train_config"]["width"] == 8
    # The shipped weights are chosen on the hold-out slice: best epoch or the last epochs' average.
    assert meta["weights"] in ("best epoch 1", "best epoch 2", "best epoch 3", "average of epochs 1-3")
    assert any(ln.startswith("hold-out accuracy: best epoch") for ln in lines)

    history = _history(out)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    for row in history:
        for key in ("loss", "accuracy", "holdout_loss", "holdout_accuracy"):
            assert np.isfinite(float(row[key])), (key, row)
    png = (out / "learning_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    from core.model_io import EmotionModel

    model = EmotionModel(model_path)
    assert model.info.temperature == pytest.approx(meta["temperature"])
    # The shipped model computes in float32 even when training used mixed bfloat16.
    assert {layer.compute_dtype for layer in model.keras_model.layers} == {"float32"}
    faces = np.stack([f.pixels for f in small_fer.by_usage("PublicTest")])
    probs = model.probabilities(faces)
    assert probs.shape == (len(faces), 7) and probs.dtype == np.float32
    assert np.all(probs >= 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    one = model.probabilities(faces[0])  # a single (48, 48) face
    np.testing.assert_allclose(one[0], probs[0], rtol=1e-4, atol=1e-6)


def test_same_seed_same_first_epoch_loss(seed0_run, killed_run, train_data, fer_cache, tmp_path):
    # Two processes ran the same command with --seed 0: seed0_run, and killed_run (whose epoch-1
    # row was written before the kill). A third runs it with --seed 1.
    other = tmp_path / "seed1"
    _check_train(run_cli(*_train_cmd(train_data.split_root, other, EPOCHS, seed=1), cache_dir=fer_cache,
                         cwd=tmp_path, timeout=240))
    first = float(_history(seed0_run[0])[0]["loss"])
    again = float(_history(killed_run[0])[0]["loss"])
    assert again == pytest.approx(first, rel=1e-5, abs=0), "the same --seed must repeat the first epoch"
    assert float(_history(other)[0]["loss"]) != pytest.approx(first, rel=1e-3), \
        "a different --seed must give a different run"


def test_run_killed_mid_epoch_resumes_at_the_next_epoch(killed_run):
    out, seen, returncode, stdout = killed_run
    killed_output = "".join(seen)
    assert returncode == -signal.SIGKILL, f"the run was not killed:\n{killed_output}"
    finished = [int(ln.split()[1].split("/")[0]) for ln in seen if ln.startswith("epoch ")]
    assert finished == [1], killed_output

    assert "resuming after epoch 1" in stdout
    epochs = [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("epoch ")]
    assert epochs == ["2/3", "3/3"], stdout  # epoch 1 is not trained again
    history = _history(out)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    # The optimizer's step count came back too: epoch 2 ends the 2-epoch warm-up at the peak rate
    # (starting over would show the end-of-epoch-1 rate, about half of it).
    assert float(history[1]["learning_rate"]) == pytest.approx(TrainConfig().learning_rate, rel=1e-3)
    assert (out / MODEL_FILENAME).is_file() and (out / "learning_curve.png").is_file()


def test_kill_after_history_row_before_backup_reruns_that_epoch(seed0_run, train_data, fer_cache, tmp_path):
    """The narrow window of a kill at the end of an epoch: its history row is written, its backup is not."""
    out = tmp_path / "run"
    shutil.copytree(seed0_run[0], out)
    backup = out / "checkpoints" / "backup"
    # Keras's double checkpoint keeps the previous epoch's backup as *.bkp: put it back in place.
    for name in ("latest.weights.h5", "training_metadata.json"):
        assert (backup / f"{name}.bkp").is_file(), f"expected Keras's double checkpoint files in {backup}"
        os.replace(backup / f"{name}.bkp", backup / name)
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == EPOCHS - 1
    assert [int(r["epoch"]) for r in _history(out)] == [1, 2, 3]

    result = run_cli(*_train_cmd(train_data.split_root, out, EPOCHS, seed=0), cache_dir=fer_cache, cwd=tmp_path,
                     timeout=240)
    stdout = _check_train(result)
    assert f"resuming after epoch {EPOCHS - 1}" in stdout
    assert [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("epoch ")] == ["3/3"]
    assert [int(r["epoch"]) for r in _history(out)] == [1, 2, 3]  # epoch 3 once, not twice


# ---------------------------------------------------------------------------------------------
# Evaluation


# Planned predictions for the two val faces of each class (true -> predicted).
PLANNED = {
    "angry": ["angry", "angry"],
    "disgust": ["angry", "disgust"],
    "fear": ["fear", "sad"],
    "happy": ["happy", "happy"],
    "sad": ["neutral", "neutral"],
    "surprise": ["surprise", "happy"],
    "neutral": ["neutral", "neutral"],
}
EXPECTED_CONFUSION = [  # rows true, columns predicted, FER2013 order
    [2, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0],
    [0, 0, 1, 0, 1, 0, 0],
    [0, 0, 0, 2, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 2],
    [0, 0, 0, 1, 0, 1, 0],
    [0, 0, 0, 0, 0, 0, 2],
]
EXPECTED_PER_CLASS = {  # precision, recall, f1, support, worked out by hand from the matrix
    "angry": (2 / 3, 1.0, 0.8, 2),
    "disgust": (1.0, 0.5, 2 / 3, 2),
    "fear": (1.0, 0.5, 2 / 3, 2),
    "happy": (2 / 3, 1.0, 0.8, 2),
    "sad": (0.0, 0.0, 0.0, 2),
    "surprise": (1.0, 0.5, 2 / 3, 2),
    "neutral": (0.5, 1.0, 2 / 3, 2),
}


def _lookup_model(path: Path, faces: list, predicted: list[int], strength: list[float] | None = None) -> None:
    """A real Keras model that predicts `predicted[i]` for `faces[i]` (nearest stored face),
    with logit `strength[i]` (default 1) for that class and 0 for the others.

    Layers: scores_t = x.t - |t|^2/2 (largest for the stored face equal to x), a sharp
    softmax over the stored faces, then a 0/1 matrix summing them into their planned class.
    """
    import keras

    templates = np.stack([f.pixels.reshape(-1).astype(np.float64) / 255.0 for f in faces])
    assign = np.zeros((len(faces), 7), dtype=np.float32)
    assign[np.arange(len(faces)), predicted] = 1.0 if strength is None else strength
    inputs = keras.Input((48, 48, 1), name="face")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    scores = keras.layers.Dense(len(faces), name="match")(x)
    weights = keras.layers.Softmax()(scores)
    logits = keras.layers.Dense(7, use_bias=False, name="assign")(weights)
    model = keras.Model(inputs, logits)
    model.get_layer("match").set_weights([templates.T.astype(np.float32),
                                          (-0.5 * (templates ** 2).sum(axis=1)).astype(np.float32)])
    model.get_layer("assign").set_weights([assign])
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps({"labels": list(FER_ORDER), "temperature": 1.0,
                                                     "flip_tta": False, "input_size": 48}))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras
def test_evaluate_json_on_a_known_answer(small_fer, fer_cache, tmp_path):
    val = small_fer.by_usage("PublicTest")
    predicted = []
    for emotion in FER_ORDER:
        faces = [f for f in val if f.emotion == emotion]
        assert len(faces) == 2
        predicted += [FER_ORDER.index(p) for p in PLANNED[emotion]]
    ordered = [f for emotion in FER_ORDER for f in val if f.emotion == emotion]
    model = tmp_path / "lookup.keras"
    _lookup_model(model, ordered, predicted)

    png = tmp_path / "confusion.png"
    # The split root, with the default split (val).
    proc = run_cli("evaluate", "--data", small_fer.split_root, "--model", model, "--json", "--confusion-png", png,
                   cache_dir=fer_cache, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"--json must print exactly one line on stdout, got:\n{proc.stdout}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    assert set(result) == {"n", "accuracy", "macro_f1", "per_class", "confusion", "labels"}
    assert result["labels"] == list(FER_ORDER)
    assert result["n"] == 14
    assert result["confusion"] == EXPECTED_CONFUSION
    assert result["accuracy"] == pytest.approx(9 / 14)
    assert result["macro_f1"] == pytest.approx(sum(v[2] for v in EXPECTED_PER_CLASS.values()) / 7)
    assert list(result["per_class"]) == list(FER_ORDER)
    for emotion, (precision, recall, f1, support) in EXPECTED_PER_CLASS.items():
        row = result["per_class"][emotion]
        assert set(row) == {"precision", "recall", "f1", "support"}
        assert row["precision"] == pytest.approx(precision), emotion
        assert row["recall"] == pytest.approx(recall), emotion
        assert row["f1"] == pytest.approx(f1), emotion
        assert row["support"] == support and isinstance(row["support"], int), emotion
    assert png.read_bytes().startswith(b"\x89PNG")

    # The CSV form of the same faces (its PublicTest rows) gives the same answer.
    from training.evaluate import evaluate

    from_csv, _, _, _ = evaluate(str(small_fer.csv_path), str(model), "PublicTest")
    assert from_csv == result


# ---------------------------------------------------------------------------------------------
# One-line errors


def _complete_tree(root: Path, skip: str | None = None) -> Path:
    """An emotion-folder tree with two faces per class (except `skip`)."""
    for emotion in EMOTIONS:
        if emotion == skip:
            continue
        (root / emotion).mkdir(parents=True)
        for src in shared_files("val", emotion, 2):
            shutil.copyfile(src, root / emotion / src.name)
    return root


def _bad_data(kind: str, root: Path) -> tuple[Path, str]:
    """(data path, a fragment the error message must contain)."""
    if kind == "missing folder":
        return root / "no_such_fer2013", "no_such_fer2013"
    if kind == "empty class":
        tree = _complete_tree(root / "tree", skip="fear")
        (tree / "fear").mkdir()
        return tree, "fear"
    if kind == "unreadable image":
        tree = _complete_tree(root / "tree")
        (tree / "sad" / "broken.png").write_bytes(b"this is not a PNG file\n" * 10)
        return tree, "broken.png"
    if kind == "malformed csv row":
        faces = [(FER_ORDER.index(e), f) for e in EMOTIONS for f in shared_files("val", e, 2)]
        rows = [(label, pixels_text(decode_grey(f)), usage) for label, f in faces
                for usage in ("Training", "PrivateTest")]
        short = " ".join(pixels_text(decode_grey(faces[0][1])).split()[:-1])  # 2303 pixels
        rows.insert(3, (3, short, "Training"))
        rows.insert(5, (3, short, "PrivateTest"))
        return write_fer_csv(root / "fer2013.csv", rows), "malformed row"
    raise AssertionError(kind)


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("kind", ["missing folder", "empty class", "unreadable image", "malformed csv row"])
def test_data_errors_are_one_line(kind, command, tmp_path, fer_cache):
    data, fragment = _bad_data(kind, tmp_path)
    if command == "train":
        args = ["train", "--data", data, "--out", tmp_path / "out", "--epochs", 1, *TINY]
    else:
        args = ["evaluate", "--data", data, "--model", tmp_path / "unused.keras", "--json"]
    result = run_cli(*args, cache_dir=fer_cache, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("emojimation: error:"), lines[0]
    assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "out" / MODEL_FILENAME).exists()


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras
def test_evaluate_an_ensemble_of_models(small_fer, fer_cache, tmp_path):
    """`--model A,B` scores the mean of the members' calibrated probabilities: two lookup models
    that each answer half the faces right (confident where right, unsure elsewhere) make an
    ensemble right on all of them; one missing member is a one-line error."""
    val = small_fer.by_usage("PublicTest")
    ordered = [f for emotion in FER_ORDER for f in val if f.emotion == emotion]
    truth = [FER_ORDER.index(f.emotion) for f in ordered]
    wrong = [(label + 1) % 7 for label in truth]
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    even = [i % 2 == 0 for i in range(len(ordered))]
    _lookup_model(first, ordered, [t if e else w for e, t, w in zip(even, truth, wrong)],
                  [3.0 if e else 1.0 for e in even])
    _lookup_model(second, ordered, [w if e else t for e, t, w in zip(even, truth, wrong)],
                  [1.0 if e else 3.0 for e in even])
    from training.evaluate import evaluate

    alone, _, _, _ = evaluate(small_fer.split_root, str(first))
    assert alone["accuracy"] == pytest.approx(0.5)
    both, ece_raw, ece, source = evaluate(small_fer.split_root, f"{first},{second}")
    assert "ensemble of 2 models" in source
    assert both["accuracy"] == pytest.approx(1.0) and both["n"] == 14
    assert 0 <= ece_raw <= 1 and 0 <= ece <= 1
    same, _, _, _ = evaluate(small_fer.split_root, f"{first},{first}")
    assert same == alone
    proc = run_cli("evaluate", "--data", small_fer.split_root, "--model", f"{first},{tmp_path / 'gone.keras'}",
                   "--json", cache_dir=fer_cache, cwd=tmp_path, timeout=180)
    assert proc.returncode != 0 and "gone.keras" in proc.stderr and "Traceback" not in proc.stderr


def test_model_lists_keep_a_comma_in_a_file_name_and_refuse_empty_members(tmp_path):
    from core.errors import ModelError
    from core.model_io import ENSEMBLE_MANIFEST, default_model, model_members

    odd = tmp_path / "model,v2.keras"
    odd.write_bytes(b"")
    assert model_members(str(odd)) == [odd]  # an existing file is one model, comma or not
    assert model_members("a.keras, b.keras") == [Path("a.keras"), Path("b.keras")]
    assert model_members("") == [default_model()] and model_members(None) == [default_model()]  # the shipped model
    members = model_members("ensemble")  # the shipped ensemble: every member is a file
    assert len(members) >= 2 and all(m.is_file() and m.parent.is_relative_to(ENSEMBLE_MANIFEST.parent)
                                      for m in members)
    for bad in ("a.keras,,b.keras", ",", "a.keras,"):
        with pytest.raises(ModelError, match="empty name"):
            model_members(bad)


@pytest.mark.parametrize("manifest", ['{"members": []}', '{"members": [1]}', '{"members": "ab"}', "{", "{}"])
def test_a_broken_ensemble_manifest_is_one_clear_error(tmp_path, monkeypatch, manifest):
    import core.model_io as model_io
    from core.errors import ModelError

    broken = tmp_path / "ensemble.json"
    broken.write_text(manifest)
    monkeypatch.setattr(model_io, "ENSEMBLE_MANIFEST", broken)
    with pytest.raises(ModelError, match="ensemble"):
        model_io.model_members("ensemble")


def test_a_tflite_model_keeps_its_weights_when_the_file_goes_away(tmp_path):
    """Interpreters for new batch sizes are made on first use, from the bytes read at load: a
    classifier whose model file was replaced or removed since keeps answering the same."""
    from core.model_io import DEFAULT_MODEL_PATH, EmotionModel

    copy = tmp_path / "model.tflite"
    shutil.copyfile(DEFAULT_MODEL_PATH.with_suffix(".tflite"), copy)
    shutil.copyfile(DEFAULT_MODEL_PATH.with_suffix(".json"), copy.with_suffix(".json"))
    faces = np.random.default_rng(0).integers(0, 256, (13, 48, 48), dtype=np.uint8)
    model = EmotionModel(copy)
    first = model.probabilities(faces[:1])
    copy.unlink()
    every = model.probabilities(faces)  # 13 = 8 + 4 + 1: two sizes made now
    assert np.allclose(every[:1], first, atol=1e-5)
    assert every.shape == (13, 7) and np.allclose(every.sum(axis=1), 1, atol=1e-4)
