"""Run the peer, `fer.classes.Video(path).analyze(FER(), display=False)`, and print what it found.

Runs in the benchmark environment (bench/setup_fer_env.sh) from a scratch working folder
(fer writes its output folders there). `--lean` turns off fer's frame saving, video
writing, annotation and zipping, so only detection and classification are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video")
    parser.add_argument("--lean", action="store_true")
    args = parser.parse_args()
    from fer.classes import Video
    from fer.fer import FER

    detector = FER()
    counts = {"frames": 0, "faces": 0}
    detect = detector.detect_emotions

    def counting(frame, *a, **k):  # instrumentation only: counts what fer returns
        faces = detect(frame, *a, **k)
        counts["frames"] += 1
        counts["faces"] += len(faces)
        return faces

    detector.detect_emotions = counting
    options = {"save_frames": False, "save_video": False, "annotate_frames": False, "zip_images": False} \
        if args.lean else {}
    started = time.perf_counter()
    Video(args.video).analyze(detector, display=False, **options)
    print(json.dumps({**counts, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
