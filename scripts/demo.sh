#!/usr/bin/env bash
# The main job: install what is needed, then analyse the bundled sample video.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
SAMPLE=${1:-../shared/data/videos/megamind.avi}
OUT=${OUT:-out/sample}
.venv/bin/emojimation analyse "$SAMPLE" --out "$OUT" --annotate --thumbnails
echo "Serving the dashboard for the analysed sample; press Ctrl-C to stop." >&2
exec .venv/bin/emojimation dashboard
