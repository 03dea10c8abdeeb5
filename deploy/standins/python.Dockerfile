# A stand-in for the official python:3.11-slim-bookworm image, for machines that cannot reach a
# container registry: Debian's own Python 3.11 on a Debian base made locally, e.g.
#
#   debootstrap --variant=minbase bookworm rootfs && tar -C rootfs -c . | docker import - emojimation-debian:bookworm
#   DOCKER_BUILDKIT=1 docker build --pull=false --build-arg DEBIAN_IMAGE=emojimation-debian:bookworm \
#       -t emojimation-python:3.11-bookworm -f deploy/standins/python.Dockerfile deploy/standins
#
# scripts/deploy-smoke.sh does this when no registry answers. Only what the official image gives
# the Dockerfile is needed: python3 with venv and pip, and CA certificates.
ARG DEBIAN_IMAGE=emojimation-debian:bookworm
# hadolint ignore=DL3006
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
