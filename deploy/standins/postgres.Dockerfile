# A stand-in for the official postgres image, for machines that cannot reach a container registry:
# Debian 12's PostgreSQL 15, started the way compose.yaml starts the official image (POSTGRES_DB,
# POSTGRES_USER, POSTGRES_PASSWORD_FILE, data in /var/lib/postgresql/data, pg_isready), as the
# postgres user, uid 999 like the official image. Built by scripts/deploy-smoke.sh:
#
#   DOCKER_BUILDKIT=1 docker build --pull=false --build-arg DEBIAN_IMAGE=emojimation-debian:bookworm \
#       -t emojimation-postgres:15-bookworm -f deploy/standins/postgres.Dockerfile deploy/standins
ARG DEBIAN_IMAGE=emojimation-debian:bookworm
# hadolint ignore=DL3006
FROM ${DEBIAN_IMAGE}
# The user first, with the official image's ids, so the package's files are owned by uid 999.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data \
    && chmod 3777 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER 999:999
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
