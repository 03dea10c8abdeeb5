#!/usr/bin/env bash
# The container deployment, built and run for real (docs/deploy.md, "What was run here"):
#
#   bash scripts/deploy-smoke.sh            # compose.yaml with Docker Compose
#   bash scripts/deploy-smoke.sh --swarm    # the same file as a one-node Docker Swarm stack
#
# Steps: install the engine if missing (Debian's docker.io and docker-compose), build the images
# (stand-ins for the official base images when they are not already present: nothing is ever
# pulled), start the stack with CurveZMQ keys, PostgreSQL, one looping file camera and the dashboard
# with basic auth, wait for the camera's rows in PostgreSQL and for its timeline on the dashboard,
# check that every container runs as a non-root user and that no generated secret is in an image,
# kill one classifier and check that rows keep arriving, scale the classifiers to 3 and check that
# each one receives work, then tear everything down (no container, network or volume left).
# One line per step; exit 0 only if every step held.
#
# Settings (environment):
#   EMOJIMATION_IMAGE            the image to build and run (default emojimation:0.1.0)
#   EMOJIMATION_BASE_IMAGE       Python base for the Dockerfile (default: python:3.11-slim-bookworm if
#                                present locally, else a stand-in built from Debian's python3)
#   EMOJIMATION_POSTGRES_IMAGE   PostgreSQL image (default: postgres:16-bookworm if present locally,
#                                else a stand-in built from Debian's postgresql-15)
#   EMOJIMATION_CA_BUNDLE        CA bundle given to pip as the build secret ca_bundle (default
#                                /etc/ssl/certs/ca-certificates.crt if it exists; "" for none)
#   EMOJIMATION_SMOKE_VIDEO      the camera's file (default ../shared/data/videos/megamind.avi)
#   EMOJIMATION_SMOKE_PORT       host port of the dashboard, on 127.0.0.1 (default 18050)
#   EMOJIMATION_SMOKE_TIMEOUT    seconds to wait for the first row (default 900)
# Needs root (or sudo) only to install the engine and to give secret files to the containers' uids.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=compose
for arg in "$@"; do
  case "$arg" in
    --swarm) MODE=swarm ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "usage: bash scripts/deploy-smoke.sh [--swarm]" >&2; exit 2 ;;
  esac
done

IMAGE=${EMOJIMATION_IMAGE:-emojimation:0.1.0}
DEBIAN_IMAGE=emojimation-debian:bookworm
PYTHON_STANDIN=emojimation-python:3.11-bookworm
POSTGRES_STANDIN=emojimation-postgres:15-bookworm
VIDEO=${EMOJIMATION_SMOKE_VIDEO:-$ROOT/../shared/data/videos/megamind.avi}
PORT=${EMOJIMATION_SMOKE_PORT:-18050}
FIRST_ROW_TIMEOUT=${EMOJIMATION_SMOKE_TIMEOUT:-900}
PROJECT=emojimation-smoke
CAMERA=smoke-door
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

FAILED=0
STARTED_DOCKERD=""
SWARM_INITIALISED=""
UP=""
SMOKE_ID="smoke-$$"
KEYS_DIR="$ROOT/keys/$SMOKE_ID"        # in the build context on purpose: .dockerignore must keep them out
SECRETS_DIR="$ROOT/secrets/$SMOKE_ID"
WORK=$(mktemp -d /tmp/emojimation-smoke.XXXXXX)
START=$SECONDS

say() { printf '%-4s %s\n' "$1" "$2"; }
ok() { say ok "$1"; }
fail() { say FAIL "$1"; FAILED=1; }
die() { fail "$1"; teardown; exit 1; }
elapsed() { echo "$(( SECONDS - $1 ))s"; }

# --- the engine ------------------------------------------------------------------------------------
engine() {
  local need=""
  command -v dockerd >/dev/null || need=1
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need=1
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      docker.io docker-compose >/dev/null || die "engine: apt-get install docker.io docker-compose failed"
  fi
  if ! docker info >/dev/null 2>&1; then
    # Started here with its registry proxy pointing at a closed local port: whatever happens, this
    # daemon cannot pull an image from a public registry.
    $SUDO env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
      nohup dockerd >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "engine: dockerd did not start ($(tail -1 "$WORK/dockerd.log"))"
  fi
  # BuildKit builds (the Dockerfile mounts the CA bundle as a build secret): the buildx plugin, or
  # Debian's docker 20.10 client, whose builder is built in (a newer client without buildx refuses).
  if docker buildx version >/dev/null 2>&1; then
    BUILD=(env DOCKER_BUILDKIT=1 docker build)
  elif [ -x /usr/bin/docker ] && [ "$(/usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)" -lt 23 ]; then
    BUILD=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
  else
    die "engine: no BuildKit builder (install docker-buildx, or Debian's docker.io client)"
  fi
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose); COMPOSE_UP_FLAGS=(--pull never --no-build)
  else
    COMPOSE=(docker-compose); COMPOSE_UP_FLAGS=(--no-build)  # 1.x: never pulls an image it has
  fi
  ok "engine: $(docker version --format 'server {{.Server.Version}}, {{.Server.Os}}' 2>/dev/null), storage $(docker info --format '{{.Driver}}'), $("${COMPOSE[@]}" version --short 2>/dev/null | head -1 | sed 's/^/compose /')"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# --- images --------------------------------------------------------------------------------------
images() {
  local t ca_secret=() base postgres
  CA_BUNDLE=${EMOJIMATION_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
  [ -n "$CA_BUNDLE" ] && [ -s "$CA_BUNDLE" ] && ca_secret=(--secret "id=ca_bundle,src=$CA_BUNDLE")
  base=${EMOJIMATION_BASE_IMAGE:-}
  postgres=${EMOJIMATION_POSTGRES_IMAGE:-}
  if [ -z "$base" ] && have_image python:3.11-slim-bookworm; then base=python:3.11-slim-bookworm; fi
  if [ -z "$postgres" ] && have_image postgres:16-bookworm; then postgres=postgres:16-bookworm; fi
  if { [ -z "$base" ] || [ -z "$postgres" ]; } && ! have_image "$DEBIAN_IMAGE"; then
    t=$SECONDS
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
    $SUDO debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
      || die "image $DEBIAN_IMAGE: debootstrap failed ($(tail -1 "$WORK/debootstrap.log"))"
    $SUDO tar -C "$WORK/rootfs" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null || die "image $DEBIAN_IMAGE: docker import failed"
    $SUDO rm -rf "$WORK/rootfs"
    ok "image $DEBIAN_IMAGE: debootstrap minbase + docker import in $(elapsed $t)"
  fi
  if [ -z "$base" ]; then
    t=$SECONDS
    "${BUILD[@]}" --pull=false --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" -t "$PYTHON_STANDIN" \
      -f deploy/standins/python.Dockerfile deploy/standins >"$WORK/build-python.log" 2>&1 \
      || die "image $PYTHON_STANDIN: build failed (see $WORK/build-python.log)"
    base=$PYTHON_STANDIN
    ok "image $PYTHON_STANDIN (stand-in for python:3.11-slim-bookworm) in $(elapsed $t)"
  fi
  if [ -z "$postgres" ]; then
    t=$SECONDS
    "${BUILD[@]}" --pull=false --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" -t "$POSTGRES_STANDIN" \
      -f deploy/standins/postgres.Dockerfile deploy/standins >"$WORK/build-postgres.log" 2>&1 \
      || die "image $POSTGRES_STANDIN: build failed (see $WORK/build-postgres.log)"
    postgres=$POSTGRES_STANDIN
    ok "image $POSTGRES_STANDIN (stand-in for postgres:16-bookworm) in $(elapsed $t)"
  fi
  t=$SECONDS
  "${BUILD[@]}" --pull=false --build-arg "BASE_IMAGE=$base" "${ca_secret[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || die "image $IMAGE: build failed (see $WORK/build.log: $(tail -3 "$WORK/build.log" | tr '\n' ' '))"
  ok "image $IMAGE from $base in $(elapsed $t), $(( $(docker image inspect --format '{{.Size}}' "$IMAGE") / 1000000 )) MB${ca_secret:+ (CA bundle as build secret)}"
  export EMOJIMATION_IMAGE=$IMAGE EMOJIMATION_POSTGRES_IMAGE=$postgres
}

# --- keys, passwords, the camera ------------------------------------------------------------------
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

prepare() {
  # The passwords exist before the build (see main), inside the build context: the image check
  # below proves .dockerignore kept them out.
  mkdir -p "$KEYS_DIR" "$SECRETS_DIR" || die "prepare: cannot create $KEYS_DIR"
  random_hex 24 >"$SECRETS_DIR/postgres_password"
  printf '*:*:*:emojimation:%s\n' "$(cat "$SECRETS_DIR/postgres_password")" >"$SECRETS_DIR/pgpass"
  DASHBOARD_AUTH="smoke:$(random_hex 12)"
  chmod 600 "$SECRETS_DIR"/*
}

keys_and_camera() {
  [ -f "$VIDEO" ] || die "camera: $VIDEO not found (EMOJIMATION_SMOKE_VIDEO)"
  # CurveZMQ keys, written by the image's own `emojimation keys generate`, as its user.
  $SUDO chown 10001:10001 "$KEYS_DIR"
  docker run --rm --pull never --network none --user 10001:10001 -v "$KEYS_DIR:/keys" "$IMAGE" \
    emojimation keys generate /keys/curve >"$WORK/keys.log" 2>&1 || die "keys: emojimation keys generate failed: $(tail -1 "$WORK/keys.log")"
  # Plain Compose bind-mounts secret files as they are: give them to the uids that read them
  # (Swarm applies compose.yaml's uid/gid/mode instead).
  $SUDO chown 999:999 "$SECRETS_DIR/postgres_password"
  $SUDO chown 10001:10001 "$SECRETS_DIR/pgpass"
  cat >"$WORK/monitor.toml" <<EOF
[monitor]
fps = 5

[[cameras]]
name = "$CAMERA"
url = "/videos/$(basename "$VIDEO")"
loop = true
EOF
  chmod 644 "$WORK/monitor.toml"; chmod 755 "$WORK"
  export EMOJIMATION_KEYS="$KEYS_DIR/curve" EMOJIMATION_SECRETS="$SECRETS_DIR" EMOJIMATION_DASHBOARD_AUTH="$DASHBOARD_AUTH" \
    EMOJIMATION_SMOKE_CONFIG="$WORK/monitor.toml" EMOJIMATION_SMOKE_VIDEOS="$(cd "$(dirname "$VIDEO")" && pwd)" \
    EMOJIMATION_KEYS_VERSION="$$" EMOJIMATION_CONFIG_VERSION="$$"
  ok "keys: CurveZMQ keys by the image's \`emojimation keys generate\`, database and dashboard passwords, camera $CAMERA = $(basename "$VIDEO") (looping)"
}

# --- the stack --------------------------------------------------------------------------------------
compose_cmd() { "${COMPOSE[@]}" --project-name "$PROJECT" --project-directory "$ROOT" -f compose.yaml -f deploy/smoke/compose.smoke.yaml "$@"; }

containers() {  # running containers of the stack, optionally of one service
  if [ "$MODE" = swarm ]; then
    docker ps -q --filter "label=com.docker.stack.namespace=$PROJECT" ${1:+--filter "label=com.docker.swarm.service.name=${PROJECT}_$1"}
  else
    docker ps -q --filter "label=com.docker.compose.project=$PROJECT" ${1:+--filter "label=com.docker.compose.service=$1"}
  fi
}

up() {
  local t=$SECONDS missing=""
  for image in "$EMOJIMATION_IMAGE" "$EMOJIMATION_POSTGRES_IMAGE"; do have_image "$image" || missing+=" $image"; done
  [ -z "$missing" ] || die "up: images not present locally (nothing is pulled):$missing"
  if [ "$MODE" = swarm ]; then
    if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
      docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >"$WORK/swarm.log" 2>&1 \
        || die "swarm: docker swarm init failed: $(tail -1 "$WORK/swarm.log")"
      SWARM_INITIALISED=1
      # Swarm makes its ingress network in the background; leaving before it exists leaves it stale.
      for _ in $(seq 30); do docker network inspect ingress >/dev/null 2>&1 && break; sleep 1; done
    fi
    local node; node=$(docker node ls -q --filter role=manager | head -1)
    docker node update --label-add emojimation.backend=true --label-add emojimation.cameras=true "$node" >/dev/null \
      || die "swarm: cannot label node $node"
    ok "swarm: one-node swarm, node labelled emojimation.backend and emojimation.cameras"
    export EMOJIMATION_DASHBOARD_PUBLISH=$PORT  # on this node (mode: host), every interface: Swarm takes no IP
    UP=1
    docker stack deploy --resolve-image never -c compose.yaml -c deploy/smoke/compose.smoke.yaml \
      -c deploy/smoke/compose.swarm.yaml "$PROJECT" \
      >"$WORK/up.log" 2>&1 || die "up: docker stack deploy failed: $(tail -2 "$WORK/up.log" | tr '\n' ' ')"
  else
    export EMOJIMATION_DASHBOARD_PUBLISH=127.0.0.1:$PORT
    UP=1
    compose_cmd up -d "${COMPOSE_UP_FLAGS[@]}" >"$WORK/up.log" 2>&1 \
      || die "up: ${COMPOSE[*]} up failed: $(grep -v '^WARNING' "$WORK/up.log" | tail -2 | tr '\n' ' ')"
  fi
  UP_AT=$SECONDS
  ok "up: $MODE stack $PROJECT started in $(elapsed $t) ($(containers | wc -l) containers so far)"
}

psql_value() {
  local pg; pg=$(containers postgres | head -1)
  [ -n "$pg" ] && docker exec "$pg" psql -U emojimation -d emojimation -tAc "$1" 2>/dev/null | head -1
}

face_rows() {
  local n; n=$(psql_value "SELECT count(*) FROM faces f JOIN sources s ON s.id = f.source_id WHERE s.name = '$CAMERA'")
  echo "${n:-0}"
}

first_row() {
  local n=0
  while [ $(( SECONDS - UP_AT )) -lt "$FIRST_ROW_TIMEOUT" ]; do
    n=$(face_rows)
    [ "$n" -gt 0 ] 2>/dev/null && break
    sleep 3
  done
  [ "$n" -gt 0 ] 2>/dev/null || die "first row: no face row of camera $CAMERA in PostgreSQL after ${FIRST_ROW_TIMEOUT}s ($(stack_state))"
  FIRST_ROW_S=$(( SECONDS - UP_AT ))
  ok "first row: camera $CAMERA's face rows in PostgreSQL ${FIRST_ROW_S}s after up ($n rows)"
}

stack_state() {
  if [ "$MODE" = swarm ]; then docker stack ps "$PROJECT" --format '{{.Name}} {{.CurrentState}} {{.Error}}' 2>&1 | head -20 | tr '\n' ';'
  else compose_cmd ps 2>&1 | tail -n +3 | awk '{print $1, $(NF-1), $NF}' | tr '\n' ';'; fi
}

dashboard() {
  local id out t=$SECONDS
  id=$(psql_value "SELECT id FROM sources WHERE name = '$CAMERA' ORDER BY id DESC LIMIT 1")
  [ -n "$id" ] || die "dashboard: no source row for $CAMERA"
  for _ in $(seq 60); do
    out=$(python3 deploy/smoke/dashboard_timeline.py "http://127.0.0.1:$PORT" "$DASHBOARD_AUTH" "$id" "$CAMERA" 2>&1) && break
    sleep 3
  done
  [ "${out#timeline}" != "$out" ] || die "dashboard: http://127.0.0.1:$PORT/source/$id: $out"
  ok "dashboard: 127.0.0.1:$PORT refuses without auth (401), serves /source/$id with auth: $out"
}

metric() {  # metric NAME CONTAINER: a stage's counter, read from its own /metrics inside the container
  docker exec "$2" python -c "import os, urllib.request; print(urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['EMOJIMATION_METRICS_PORT'], timeout=5).read().decode())" 2>/dev/null \
    | awk -v name="$1" '$1 ~ "^"name"(\\{|$)" {sum += $2} END {printf "%d\n", sum}'
}

non_root() {
  local c bad="" n=0 uids
  for c in $(containers); do
    n=$((n + 1))
    uids=$(docker top "$c" -o uid,pid 2>/dev/null | tail -n +2 | awk "{print \$1}" | sort -u | tr "\\n" " ")
    if [ -z "$uids" ] || [[ " $uids" == *" 0 "* ]]; then bad+=" $(docker inspect -f '{{.Name}}' "$c"):[${uids}]"; fi
  done
  [ -z "$bad" ] || die "non-root: processes running as root in:$bad"
  ok "non-root: every process of the $n containers runs as a non-root uid"
}

no_secrets_in_images() {
  local patterns="$WORK/secret-patterns" image hits=""
  { cat "$SECRETS_DIR/postgres_password" 2>/dev/null || $SUDO cat "$SECRETS_DIR/postgres_password"; echo
    echo "${DASHBOARD_AUTH#*:}"
    $SUDO sh -c "cat '$KEYS_DIR'/curve/*.key_secret" | sed -n 's/^ *secret-key = "\(.*\)"/\1/p'; } | grep -v '^$' >"$patterns"
  [ "$(wc -l <"$patterns")" -ge 4 ] || die "secrets: expected the password, the dashboard password and 2 secret keys, got $(wc -l <"$patterns")"
  for image in "$EMOJIMATION_IMAGE" "$EMOJIMATION_POSTGRES_IMAGE"; do
    if docker history --no-trunc "$image" | grep -qFf "$patterns"; then hits+=" $image(history)"; fi
    if docker image inspect "$image" | grep -qFf "$patterns"; then hits+=" $image(config)"; fi
    local c; c=$(docker create --pull never "$image" true)
    if docker export "$c" | grep -aqFf "$patterns"; then hits+=" $image(files)"; fi
    docker rm -v "$c" >/dev/null
  done
  [ -z "$hits" ] || die "secrets: a generated secret is in:$hits"
  ok "secrets: none of the $(wc -l <"$patterns") generated secrets is in the history, config or files of $EMOJIMATION_IMAGE or $EMOJIMATION_POSTGRES_IMAGE (passwords were in the build context)"
}

kill_classifier() {
  local victim before after pid deadline name
  victim=$(containers classifier | head -1)
  [ -n "$victim" ] || die "kill: no running classifier"
  name=$(docker inspect -f '{{.Name}}' "$victim")
  pid=$(docker inspect -f '{{.State.Pid}}' "$victim")
  before=$(face_rows)
  $SUDO kill -KILL "$pid" || die "kill: cannot kill $name (pid $pid)"
  deadline=$(( SECONDS + 180 ))
  after=$before
  while [ $SECONDS -lt $deadline ]; do
    sleep 5
    after=$(face_rows)
    [ "$after" -gt $(( before + 20 )) ] && break
  done
  [ "$after" -gt $(( before + 20 )) ] || die "kill: after killing $name, face rows went from $before to only $after in 180s"
  sleep 5
  ok "kill: $name killed (SIGKILL to its init), face rows kept arriving ($before -> $after); classifiers running now: $(containers classifier | wc -l) ($(restarted "$victim"))"
}

restarted() {
  if [ "$MODE" = swarm ]; then echo "Swarm replaces the task"
  else echo "restart count of the killed one: $(docker inspect -f '{{.RestartCount}}' "$1" 2>/dev/null || echo gone)"; fi
}

scale_classifiers() {
  local t=$SECONDS c counts deadline all
  if [ "$MODE" = swarm ]; then
    docker service scale "${PROJECT}_classifier=3" >"$WORK/scale.log" 2>&1 || die "scale: docker service scale failed: $(tail -1 "$WORK/scale.log")"
  else
    compose_cmd up -d "${COMPOSE_UP_FLAGS[@]}" --no-recreate --scale classifier=3 >"$WORK/scale.log" 2>&1 \
      || die "scale: ${COMPOSE[*]} up --scale classifier=3 failed: $(tail -1 "$WORK/scale.log")"
  fi
  deadline=$(( SECONDS + 300 ))
  while [ $SECONDS -lt $deadline ]; do
    sleep 5
    all=1; counts=""
    [ "$(containers classifier | wc -l)" -eq 3 ] || { all=0; continue; }
    for c in $(containers classifier); do
      n=$(metric emojimation_frames_in_total "$c"); n=${n:-0}
      counts+=" $(docker inspect -f '{{.Name}}' "$c" | sed 's|^/||')=$n"
      [ "$n" -gt 0 ] || all=0
    done
    [ "$all" = 1 ] && break
  done
  [ "$all" = 1 ] || die "scale: not every classifier received work within 300s:${counts:- $(containers classifier | wc -l) running}"
  ok "scale: 3 classifiers in $(elapsed $t), each received frames (emojimation_frames_in_total):$counts"
}

# --- teardown ---------------------------------------------------------------------------------------
teardown() {
  local left t=$SECONDS
  if [ -n "$UP" ]; then
    if [ "$MODE" = swarm ]; then
      docker stack rm "$PROJECT" >/dev/null 2>&1
      for _ in $(seq 90); do [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$PROJECT")" ] && break; sleep 2; done
      for _ in $(seq 30); do [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$PROJECT")" ] && break; sleep 2; done
      docker volume ls -q --filter "label=com.docker.stack.namespace=$PROJECT" | xargs -r docker volume rm >/dev/null 2>&1
    else
      compose_cmd down --volumes --remove-orphans --timeout 30 >"$WORK/down.log" 2>&1
    fi
  fi
  if [ -n "$SWARM_INITIALISED" ]; then
    docker swarm leave --force >/dev/null 2>&1
    # The networks Swarm made: ingress goes with the swarm, docker_gwbridge (with the routing
    # mesh's sandbox still attached) stays unless removed.
    for _ in $(seq 30); do [ -z "$(docker network ls -q --filter driver=overlay)" ] && break; sleep 1; done
    docker network disconnect -f docker_gwbridge gateway_ingress-sbox >/dev/null 2>&1
    docker network rm docker_gwbridge >/dev/null 2>&1
    SWARM_LEFT=$(docker network ls -q --filter driver=overlay; docker network ls -q --filter name=docker_gwbridge)
  fi
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"; docker ps -aq --filter "label=com.docker.stack.namespace=$PROJECT"
         docker network ls -q --filter "name=$PROJECT"; docker volume ls -q --filter "name=$PROJECT"; echo "${SWARM_LEFT:-}")
  $SUDO rm -rf "$KEYS_DIR" "$SECRETS_DIR" "$WORK"
  rmdir "$ROOT/keys" "$ROOT/secrets" 2>/dev/null
  if [ -n "$STARTED_DOCKERD" ]; then $SUDO kill "$STARTED_DOCKERD" 2>/dev/null; wait "$STARTED_DOCKERD" 2>/dev/null; fi
  left=$(echo "$left" | grep -v '^$')
  if [ -n "$left" ]; then
    fail "teardown: left behind: $(echo "$left" | tr '\n' ' ')"
  else
    ok "teardown: no container, network or volume of $PROJECT left$([ -n "$SWARM_INITIALISED" ] && echo ', swarm left')$([ -n "$STARTED_DOCKERD" ] && echo ', dockerd stopped') ($(elapsed $t))"
  fi
}

trap 'fail "interrupted"; teardown; exit 130' INT TERM

engine
prepare
images
keys_and_camera
up
first_row
dashboard
non_root
no_secrets_in_images
kill_classifier
scale_classifiers
teardown
if [ "$FAILED" = 0 ]; then
  ok "deploy smoke test ($MODE) passed in $(elapsed $START)"
else
  fail "deploy smoke test ($MODE)"
fi
exit "$FAILED"
