"""docker-compose.yml cannot run here (no Docker engine), so check what can be checked:
the file parses, the services wire together, and every path and setting it relies on
exists in the repo."""

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_and_their_order():
    assert set(SERVICES) == {"rabbitmq", "broker-users", "trainer", "serve"}
    assert SERVICES["broker-users"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    depends = SERVICES["serve"]["depends_on"]
    assert depends["broker-users"]["condition"] == "service_completed_successfully"
    assert depends["trainer"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in SERVICES["rabbitmq"] and "healthcheck" in SERVICES["serve"]
    assert SERVICES["serve"]["deploy"]["replicas"] >= 2


def broker_permissions() -> dict[str, dict[str, str]]:
    """The permissions broker-users grants, by user, as the regexes RabbitMQ will see."""
    script = SERVICES["broker-users"]["command"][-1]
    grants = re.findall(r"put permissions/%2F/(\w+)\s+'(\{.*?\})'", script, flags=re.S)
    return {user: json.loads(body) for user, body in grants}


def test_the_service_logs_in_as_its_own_least_privilege_user():
    url = urlparse(SERVICES["serve"]["environment"]["AMQP_URL"])
    assert url.hostname == "rabbitmq" and url.username == "serve"
    assert url.username != SERVICES["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"]
    serve, client = broker_permissions()["serve"], broker_permissions()["client"]
    for queue in ("serve_ex.requests", "serve_ex.dead", "amq.gen-abc"):
        assert re.fullmatch(serve["read"], queue) and re.fullmatch(serve["configure"], queue)
    assert re.fullmatch(serve["write"], "amq.default")
    # a client may publish through the default exchange and use its own reply queues,
    # and may not read the dead-letter queue or the requests, or touch the service's
    # queues or another user's reply queues; the service ties replies to their sender
    assert SERVICES["serve"]["environment"]["AMQP_REQUIRE_USER_ID"] == "true"
    assert re.fullmatch(client["write"], "amq.default")
    own = "serve_ex.reply.client.0f3c"
    assert re.fullmatch(client["read"], own) and re.fullmatch(client["configure"], own)
    for queue in ("serve_ex.dead", "serve_ex.requests", "serve_ex.reply.other.0f3c", "amq.gen-abc"):
        assert not re.fullmatch(client["read"], queue) and not re.fullmatch(client["configure"], queue)


def test_service_settings_are_ones_the_service_reads():
    documented = set(re.findall(r"\| `([A-Z_]+)`", (ROOT / "serve_ex/lib/serve_ex/config.ex").read_text()))
    assert set(SERVICES["serve"]["environment"]) <= documented


def test_models_volume_is_shared_from_trainer_to_service():
    model_dir = SERVICES["serve"]["environment"]["MODEL_DIR"]
    assert any(
        v.startswith("artifacts:") and v.split(":")[1] == model_dir for v in SERVICES["serve"]["volumes"]
    )
    assert "artifacts:/app/artifacts" in SERVICES["trainer"]["volumes"]


def test_dockerfiles_copy_paths_that_exist():
    for name in ("trainer", "serve"):
        dockerfile = ROOT / SERVICES[name]["build"]["dockerfile"]
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: {source}"


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the root) out of the build context."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if pattern.startswith("**/") and any(Path(p).match(bare) for p in parts):
            return True
        if path == pattern or path.startswith(pattern + "/"):
            return True
    return False


def test_the_build_context_leaves_host_build_outputs_out():
    for output in [".venv", "infer_rs/target", "serve_ex/_build", "serve_ex/deps", "serve_ex/priv/native",
                   ".git", "artifacts", "runs", "train/__pycache__/cli.cpython-311.pyc"]:  # fmt: skip
        assert ignored(output), output
    for name in ("trainer", "serve"):
        dockerfile = ROOT / SERVICES[name]["build"]["dockerfile"]
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert not ignored(
                        source.rstrip("/")
                    ), f"{dockerfile.name} copies {source}, which is ignored"


def test_the_trainer_image_installs_no_test_or_benchmark_tools():
    dockerfile = (ROOT / "train/Dockerfile").read_text()
    installed = re.findall(r"-r (\S+)", dockerfile)
    assert installed == ["train/requirements-train.txt"]
    pins = {line.split("==")[0] for line in (ROOT / installed[0]).read_text().splitlines() if "==" in line}
    assert pins and not pins & {"pytest", "ruff", "maturin", "fastapi", "uvicorn", "openai", "pika"}
