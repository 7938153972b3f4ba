"""docker-compose.yml cannot run here (no Docker engine), so check what can be checked:
the file parses, the services wire together, and every path and setting it relies on
exists in the repo."""

import re
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_and_their_order():
    assert set(SERVICES) == {"rabbitmq", "trainer", "serve"}
    depends = SERVICES["serve"]["depends_on"]
    assert depends["rabbitmq"]["condition"] == "service_healthy"
    assert depends["trainer"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in SERVICES["rabbitmq"]


def test_the_service_logs_in_as_the_broker_user():
    url = urlparse(SERVICES["serve"]["environment"]["AMQP_URL"])
    broker = SERVICES["rabbitmq"]["environment"]
    assert (url.username, url.password) == (broker["RABBITMQ_DEFAULT_USER"], broker["RABBITMQ_DEFAULT_PASS"])
    assert url.hostname == "rabbitmq"


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
