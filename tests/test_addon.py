"""The Home Assistant add-on (addon/, repository.yaml) and its option mapping (wyoming_qwen3tts/addon.py).

The Supervisor skips an add-on whose config.yaml it cannot validate, logging a warning nobody sees: the add-on
simply is not in the store. So the files are checked here against the add-on configuration rules
(developers.home-assistant.io "Add-on configuration"), with the patterns the Supervisor validates with
(supervisor/addons/validate.py, supervisor/addons/options.py, supervisor/validate.py), transcribed below.

No container is built here (no Docker in CI): the Dockerfile is parsed instead, and its install steps are checked
against pyproject.toml (the ggml pin) and the README's install; the start command of run.sh is run for real with
an options file (`--addon-options ... --version`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from wyoming.client import AsyncClient
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from wyoming_qwen3tts import __main__ as server_main
from wyoming_qwen3tts import __version__, addon
from wyoming_qwen3tts.addon import AddonOptionsError, load_addon_options, merge_args, options_to_args

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "addon"
# read with patterns, not tomllib: the package supports Python 3.10
PYPROJECT_TEXT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
PROJECT_VERSION = re.search(r'(?m)^version\s*=\s*"([^"]+)"', PYPROJECT_TEXT)[1]
BUILD_REQUIRES = re.search(r'(?m)^requires\s*=\s*\[(.*)\]', PYPROJECT_TEXT)[1]

# --- the Supervisor's rules -------------------------------------------------------------------------------------
# schema element grammar (supervisor/addons/options.py RE_SCHEMA_ELEMENT; int/float bounds may be negative)
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool"
    r"|email"
    r"|url"
    r"|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)
RE_SLUG = re.compile(r"^[a-z0-9_]+$")   # stricter than the Supervisor's [-_.A-Za-z0-9]+: URI- and hostname-safe
ARCHES = {"armhf", "armv7", "aarch64", "amd64", "i386"}
RE_DOCKER_PORT = re.compile(r"^\d+(?:/tcp|/udp)?$")
RE_VOLUME = re.compile(r"^(data|config|ssl|addons|backup|share|media|homeassistant_config|all_addon_configs"
                       r"|addon_config)(?::(rw|ro))?$")
MAP_TYPES = {"data", "config", "ssl", "addons", "backup", "share", "media", "homeassistant_config",
             "all_addon_configs", "addon_config"}
RE_SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
RE_DISCOVERY = re.compile(r"^[a-z0-9_]+$")
RE_DOCKER_IMAGE_BUILD = re.compile(r"^([a-zA-Z\-\.:\d{}]+/)*?([\-\w{}]+)/([\-\w{}]+)(:[\.\-\w{}]+)?$")
REQUIRED_KEYS = ("name", "version", "slug", "description", "arch")
STARTUP = {"initialize", "system", "services", "application", "once"}
BOOT = {"auto", "manual", "manual_only"}
COMPILERS = re.compile(r"\b(build-essential|build-base|gcc|g\+\+|clang|cmake|make|cython|python3-dev|"
                       r"libc6?-dev|musl-dev)\b", re.IGNORECASE)


def load_yaml(path: Path):
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def config() -> dict:
    return load_yaml(ADDON / "config.yaml")


@pytest.fixture(scope="module")
def build() -> dict:
    return load_yaml(ADDON / "build.yaml")


@pytest.fixture(scope="module")
def translations() -> dict:
    return load_yaml(ADDON / "translations" / "en.yaml")


@pytest.fixture(scope="module")
def repository() -> dict:
    return load_yaml(ROOT / "repository.yaml")


def ggml_pin() -> str:
    """The libggml-python version pyproject.toml pins, the same for building and running."""
    pins = re.findall(r'"libggml-python==([^"]+)"', PYPROJECT_TEXT)
    assert len(pins) == 2 and pins[0] == pins[1], "pyproject.toml must pin one libggml-python in both places"
    assert f'"libggml-python=={pins[0]}"' in BUILD_REQUIRES
    return pins[0]


# --- schema values ----------------------------------------------------------------------------------------------
def schema_elements(schema: dict):
    """(key, element string) for every element of SCHEMA, nested lists and dicts included (depth <= 2)."""
    for key, value in schema.items():
        if isinstance(value, str):
            yield key, value
        elif isinstance(value, list):
            assert len(value) == 1, f"schema {key}: a list holds exactly one element type"
            inner = value[0]
            if isinstance(inner, dict):
                assert all(isinstance(v, str) for v in inner.values()), f"schema {key}: nested too deep"
                yield from ((f"{key}[].{k}", v) for k, v in inner.items())
            else:
                assert isinstance(inner, str), f"schema {key}: a list of lists is not allowed"
                yield f"{key}[]", inner
        elif isinstance(value, dict):
            assert all(isinstance(v, str) for v in value.values()), f"schema {key}: nested too deep"
            yield from ((f"{key}.{k}", v) for k, v in value.items())
        else:
            pytest.fail(f"schema {key}: {value!r} is neither a type string, a list nor a dict")


def is_optional(element) -> bool:
    return isinstance(element, str) and element.endswith("?")


def check_value(element: str, value) -> str | None:
    """Why VALUE does not fit the schema ELEMENT, or None (what the Supervisor checks when the add-on starts)."""
    m = RE_SCHEMA_ELEMENT.match(element)
    assert m, element
    kind = element.rstrip("?").split("(", 1)[0]
    if kind == "bool":
        return None if isinstance(value, bool) else "not a bool"
    if kind in ("int", "float", "port"):
        ok_type = (int,) if kind != "float" else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            return f"not a {kind}"
        low, high = ((1, 65535) if kind == "port" else
                     (m[f"{kind[0]}_min"], m[f"{kind[0]}_max"]))
        if low is not None and value < float(low) or high is not None and value > float(high):
            return f"out of range {low}..{high}"
        return None
    if not isinstance(value, str):
        return "not a string"
    if kind in ("str", "password"):
        low, high = m[f"{kind[0]}_min"], m[f"{kind[0]}_max"]
        if low is not None and len(value) < int(low) or high is not None and len(value) > int(high):
            return "length out of range"
        return None
    if kind == "list":
        return None if value in m["list"].split("|") else f"not one of {m['list']}"
    if kind == "match":
        return None if re.match(m["match"], value) else "does not match"
    if kind == "url":
        return None if urlparse(value).scheme in ("http", "https") else "not a URL"
    if kind == "email":
        return None if "@" in value else "not an e-mail address"
    return None


# --- config.yaml ------------------------------------------------------------------------------------------------
def test_config_required_keys(config):
    missing = [k for k in REQUIRED_KEYS if not config.get(k)]
    assert not missing, f"config.yaml lacks {missing}"
    for key in ("name", "version", "slug", "description"):
        assert isinstance(config[key], str), f"{key} must be a string (quote a version like 1.0)"
    assert config["name"] == "Qwen3-TTS"


def test_config_slug(config):
    assert RE_SLUG.match(config["slug"]), config["slug"]
    assert config["slug"] == "qwen3tts"


def test_config_version_is_the_package_version(config):
    assert config["version"] == PROJECT_VERSION == __version__


def test_config_arch(config):
    assert isinstance(config["arch"], list) and config["arch"]
    assert set(config["arch"]) <= ARCHES, set(config["arch"]) - ARCHES
    assert sorted(config["arch"]) == ["aarch64", "amd64"]
    assert len(set(config["arch"])) == len(config["arch"])


def test_config_optional_keys(config):
    assert config["init"] is False, "init: false (the base images run s6-overlay as init)"
    assert config.get("startup", "application") in STARTUP
    assert config.get("boot", "auto") in BOOT
    url = urlparse(config["url"])
    assert url.scheme == "https" and url.netloc, config["url"]
    assert all(isinstance(p, str) and p for p in config.get("backup_exclude", []))
    assert "image" not in config, "no prebuilt image: the Supervisor builds the Dockerfile"


def test_config_ports(config):
    ports = config["ports"]
    assert isinstance(ports, dict)
    for container, host in ports.items():
        assert isinstance(container, str) and RE_DOCKER_PORT.match(container), container
        assert host is None or (isinstance(host, int) and not isinstance(host, bool) and 1 <= host <= 65535), host
    assert ports == {"10200/tcp": 10200}
    assert addon.ADDON_URI == "tcp://0.0.0.0:10200"


def test_config_discovery_and_services(config):
    assert isinstance(config["discovery"], list)
    assert all(isinstance(d, str) and RE_DISCOVERY.match(d) for d in config["discovery"]), config["discovery"]
    assert config["discovery"] == ["wyoming"]
    assert isinstance(config["services"], list)
    assert all(isinstance(s, str) and RE_SERVICE.match(s) for s in config["services"]), config["services"]
    assert config["services"] == ["mqtt:want"]


def test_config_map(config):
    entries = {}
    paths = set()
    for entry in config["map"]:
        if isinstance(entry, str):
            m = RE_VOLUME.match(entry)
            assert m, f"map entry {entry!r} is invalid"
            entry = {"type": m[1], "read_only": m[2] != "rw"}
        assert isinstance(entry, dict) and set(entry) <= {"type", "read_only", "path"}, entry
        assert entry.get("type") in MAP_TYPES, entry
        assert isinstance(entry.get("read_only", True), bool), entry
        if "path" in entry:
            assert isinstance(entry["path"], str) and entry["path"].startswith("/") and entry["path"] != "/"
            assert entry["path"] not in paths, f"map path {entry['path']} used twice"
            paths.add(entry["path"])
        assert entry["type"] not in entries, f"map type {entry['type']} listed twice"
        entries[entry["type"]] = entry
    assert set(entries) == {"share", "media"}
    assert entries["media"].get("read_only", True) is False, "announcements are written to /media"
    # the default folders lie in the mapped folders
    assert config["options"]["voices_dir"].startswith("/share/")
    assert config["options"]["announce_dir"].startswith("/media/")


def test_schema_elements_follow_the_grammar(config):
    schema = config["schema"]
    assert isinstance(schema, dict) and schema
    for key, element in schema_elements(schema):
        m = RE_SCHEMA_ELEMENT.match(element)
        assert m, f"schema {key}: {element!r} is not a valid type"
        if m["list"] is not None:
            choices = m["list"].split("|")
            assert all(choices) and len(set(choices)) == len(choices), f"schema {key}: bad choices {choices}"
        if m["match"] is not None:
            re.compile(m["match"])
        for low, high in (("i_min", "i_max"), ("f_min", "f_max"), ("s_min", "s_max"), ("p_min", "p_max")):
            if m[low] is not None and m[high] is not None:
                assert float(m[low]) <= float(m[high]), f"schema {key}: empty range {element}"


def test_every_option_has_a_schema_and_every_required_schema_an_option(config):
    options, schema = config["options"], config["schema"]
    assert set(options) <= set(schema), f"options without a schema: {set(options) - set(schema)}"
    required = {k for k, v in schema.items() if not is_optional(v) and not isinstance(v, list)}
    assert required <= set(options), f"required options without a default: {required - set(options)}"
    # optional ones ("?") have no default: a default would make them required
    assert not [k for k in options if is_optional(schema[k])], "an optional option has a default"
    lists = [k for k, v in schema.items() if isinstance(v, list)]
    assert set(lists) <= set(options), "list options need a default ([] for none)"


def test_option_defaults_fit_the_schema(config):
    for key, value in config["options"].items():
        element = config["schema"][key]
        if isinstance(element, list):
            assert isinstance(value, list), key
            for item in value:
                assert check_value(element[0], item) is None, (key, item)
        else:
            assert check_value(element, value) is None, (key, value, check_value(element, value))


def test_addon_module_agrees_with_config(config):
    schema = config["schema"]
    assert addon.DEFAULT_OPTIONS == config["options"]
    assert set(addon.OPTIONAL_OPTIONS) == {k for k, v in schema.items() if is_optional(v)}

    def choices(key):
        return tuple(RE_SCHEMA_ELEMENT.match(schema[key])["list"].split("|"))

    assert choices("model") == tuple(addon.MODELS)
    assert set(addon.MODELS.values()) == {f"Qwen/Qwen3-TTS-12Hz-{m}" for m in choices("model")}
    assert choices("quantization") == addon.QUANTIZATIONS
    assert choices("language") == addon.LANGUAGES
    assert schema["threads"] == f"int(0,{addon.MAX_THREADS})"
    # the schema's pattern for announce targets and the mapping's accept the same strings
    pattern = RE_SCHEMA_ELEMENT.match(schema["announce_targets"][0])["match"]
    for s in ("kitchen=tcp://192.168.1.40:10700", "Living_Room-2=tcp://satellite.local:10700",
              "x=tcp://host:1", "kitchen=tcp://192.168.1.40", "kitchen=udp://h:1", "=tcp://h:1",
              "kitchen=tcp://h:1/x", "a b=tcp://h:1", "kitchen=tcp://h:123456"):
        assert bool(re.match(pattern, s)) == bool(addon.TARGET_RE.match(s)), s


def test_server_quantizations_and_languages():
    parser = server_main.build_parser()
    quant = next(a for a in parser._actions if a.dest == "quant")
    assert set(addon.QUANTIZATIONS) <= set(quant.choices)
    from wyoming_qwen3tts.voices import ISO_TO_MODEL

    assert set(addon.LANGUAGES) == {"auto", *ISO_TO_MODEL}


# --- translations -----------------------------------------------------------------------------------------------
def test_translations(config, translations):
    assert set(translations) <= {"configuration", "network"}
    conf = translations["configuration"]
    assert set(conf) == set(config["schema"]), (f"missing: {set(config['schema']) - set(conf)}; "
                                                f"unknown: {set(conf) - set(config['schema'])}")
    for key, entry in conf.items():
        assert isinstance(entry, dict), key
        assert isinstance(entry.get("name"), str) and entry["name"].strip(), f"{key}: no name"
        assert isinstance(entry.get("description"), str) and entry["description"].strip(), f"{key}: no description"
        assert set(entry) <= {"name", "description", "fields"}, key
    assert {k.lower() for k in translations["network"]} == {k.lower() for k in config["ports"]}
    assert all(isinstance(v, str) and v for v in translations["network"].values())


# --- build.yaml, repository.yaml --------------------------------------------------------------------------------
def test_build_yaml(config, build):
    assert set(build) <= {"build_from", "args", "labels", "squash", "codenotary"}
    build_from = build["build_from"]
    assert set(build_from) == set(config["arch"])
    for arch, image in build_from.items():
        assert RE_DOCKER_IMAGE_BUILD.match(image), image
        assert image.startswith(f"ghcr.io/home-assistant/{arch}-base"), image
    assert len({image.split("/")[-1].split("-", 1)[1] for image in build_from.values()}) == 1, \
        "the same base image for every arch"
    for section in ("args", "labels"):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in build.get(section, {}).items()), section


def test_repository_yaml(config, repository, build):
    assert isinstance(repository.get("name"), str) and repository["name"]
    assert urlparse(repository["url"]).scheme == "https"
    assert isinstance(repository.get("maintainer"), str) and repository["maintainer"]
    # one project URL everywhere: the store, the add-on's page, the source the image is built from
    assert config["url"].startswith(repository["url"] + "/")
    assert build["args"]["QWEN3TTS_REPOSITORY"] == repository["url"]
    assert repository["url"] in (ADDON / "DOCS.md").read_text(encoding="utf-8")


def test_addon_documents_exist(config):
    for name in ("DOCS.md", "README.md", "CHANGELOG.md"):
        text = (ADDON / name).read_text(encoding="utf-8")
        assert text.strip(), name
    assert f"## {config['version']}" in (ADDON / "CHANGELOG.md").read_text(encoding="utf-8")
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    for option in config["schema"]:
        assert option in docs or option.split("_")[0] in docs, f"DOCS.md does not mention {option}"
    for variable in ("MQTT_HOST", "MQTT_PORT", "MQTT_USER", "MQTT_PASSWORD", "MQTT_SSL"):
        assert variable in docs and variable in (ADDON / "run.sh").read_text(encoding="utf-8")


# --- run.sh -----------------------------------------------------------------------------------------------------
def test_run_sh_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (CI installs it: .ci/run)")
        pytest.skip("shellcheck is not installed")
    r = subprocess.run([shellcheck, "--severity=style", str(ADDON / "run.sh")], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_run_sh_starts_the_server_and_announces_it(config):
    text = (ADDON / "run.sh").read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/with-contenv bashio\n")
    assert os.access(ADDON / "run.sh", os.X_OK), "run.sh must be executable"
    execs = [line.strip() for line in text.splitlines() if line.strip().startswith("exec ")]
    assert execs == ["exec python3 -m wyoming_qwen3tts --addon-options /data/options.json"]
    # discovery as the official Wyoming add-ons do it, on the published port
    port = int(next(iter(config["ports"])).split("/")[0])
    assert re.search(r"bashio::discovery ['\"]wyoming['\"]", text)
    assert f'uri "tcp://$(hostname):{port}"' in text
    assert f"/dev/tcp/127.0.0.1/{port}" in text
    # the Supervisor's MQTT service, only when announcements are on
    assert "bashio::config.true 'mqtt'" in text and "bashio::services.available 'mqtt'" in text
    for prop in ("host", "port", "username", "password", "ssl"):
        assert f"bashio::services mqtt '{prop}'" in text


# --- Dockerfile -------------------------------------------------------------------------------------------------
def dockerfile_stages() -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """(instructions before the first FROM, [instructions of each stage]); an instruction is (KEYWORD, rest),
    continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ADDON / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if raw.strip().startswith("#"):   # a comment, also between continuation lines
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), " ".join(rest.split())))
        current = ""
    head, stages = [], []
    for keyword, rest in lines:
        if keyword == "FROM":
            stages.append([(keyword, rest)])
        elif stages:
            stages[-1].append((keyword, rest))
        else:
            head.append((keyword, rest))
    return head, stages


def expand(text: str, variables: dict[str, str]) -> str:
    for _ in range(5):
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)
    return text


def stage_args(stage, build) -> dict[str, str]:
    """ARG values of a stage: build.yaml's args win over the Dockerfile's defaults (as in a Supervisor build)."""
    variables = {"BUILD_VERSION": load_yaml(ADDON / "config.yaml")["version"], "BUILD_ARCH": "amd64"}
    for keyword, rest in stage:
        if keyword == "ARG":
            name, sep, default = rest.partition("=")
            if name in build.get("args", {}):
                variables[name] = build["args"][name]
            elif sep:
                variables[name] = expand(default.strip('"'), variables)
            else:
                variables.setdefault(name, f"${{{name}}}")
    return variables


def pip_installs(stage, variables) -> list[list[str]]:
    """The requirement arguments of every `pip install` in the stage's RUN instructions, variables expanded."""
    installs = []
    for keyword, rest in stage:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(expand(command, variables))
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install" or \
                    words[:4] == ["python3", "-m", "pip", "install"]:
                args = words[words.index("install") + 1:]
                installs.append([a for a in args if not a.startswith("-")])
    return installs


def test_dockerfile_builds_from_the_base_image():
    head, stages = dockerfile_stages()
    assert ("ARG", "BUILD_FROM") in head, "ARG BUILD_FROM before the first FROM"
    assert len(stages) >= 2, "a build stage with the compiler and a final stage without"
    for stage in stages:
        assert re.match(r"^\$\{?BUILD_FROM\}?(\s+AS\s+\w+)?$", stage[0][1], re.IGNORECASE), stage[0]


def test_dockerfile_installs_ggml_and_the_package_as_the_readme_does(build):
    _, stages = dockerfile_stages()
    build_stage = stages[0]
    installs = pip_installs(build_stage, stage_args(build_stage, build))
    flat = [req for install in installs for req in install]
    pin = ggml_pin()
    assert f"libggml-python=={pin}" in flat, installs
    packages = [req for req in flat if req.startswith("wyoming-qwen3tts @ ")]
    assert len(packages) == 1, installs
    assert flat.index(f"libggml-python=={pin}") < flat.index(packages[0]), "ggml first, then the package"
    version = load_yaml(ADDON / "config.yaml")["version"]
    assert packages[0] == (f"wyoming-qwen3tts @ {build['args']['QWEN3TTS_REPOSITORY']}"
                           f"/archive/refs/tags/v{version}.tar.gz")
    # the README installs the same way: the package with pip, ggml from the same pinned libggml-python
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install ." in readme and f"libggml-python=={pin}" in readme


def test_dockerfile_final_stage_has_no_compiler():
    _, stages = dockerfile_stages()
    final = stages[-1]
    assert re.search(r"\bAS\b", final[0][1], re.IGNORECASE) is None, "the last stage is the image"
    for keyword, rest in final:
        if keyword == "RUN":
            for command in re.split(r"&&|;", rest):
                if re.search(r"\b(apt-get|apt|apk)\s+(install|add)\b", command):
                    assert not COMPILERS.search(command), f"the final stage installs a compiler: {command}"
                assert "pip install" not in command or "--no-index" in command, \
                    "the final stage must not build anything with pip"
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert any(re.match(r"--from=\w+ /opt/venv /opt/venv$", c) for c in copies), copies
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert re.search(r'PATH="/opt/venv/bin:', env), "run.sh's python3 must be the virtual environment's"
    assert ("COPY", "run.sh /") in final
    assert final[-1] == ("CMD", '["/run.sh"]')
    # the build stage is where the compiler is
    build_runs = " ".join(rest for keyword, rest in stages[0] if keyword == "RUN")
    assert COMPILERS.search(build_runs)


# --- the option mapping -----------------------------------------------------------------------------------------
DEFAULT_ARGS = ["--uri=tcp://0.0.0.0:10200", "--data-dir=/data", "--model=Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
                "--quant=auto", "--voices-dir=/share/qwen3tts/voices"]
SUPERVISOR = {"host": "core-mosquitto", "port": 1883, "username": "addons", "password": "s3cret", "ssl": False}


def test_defaults(config):
    assert options_to_args(config["options"], None) == DEFAULT_ARGS
    assert options_to_args({}, None) == DEFAULT_ARGS   # missing keys take the defaults
    # MQTT off: the Supervisor's broker is not used
    assert options_to_args(config["options"], SUPERVISOR) == DEFAULT_ARGS


@pytest.mark.parametrize("options, expected", [
    ({"model": "0.6B-CustomVoice"}, ["--model=Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"]),
    ({"model": "1.7B-CustomVoice"}, ["--model=Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"]),
    ({"model": "0.6B-Base"}, ["--model=Qwen/Qwen3-TTS-12Hz-0.6B-Base"]),
    ({"model": "1.7B-Base"}, ["--model=Qwen/Qwen3-TTS-12Hz-1.7B-Base"]),
    ({"model": "1.7B-VoiceDesign"}, ["--model=Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"]),
    ({"quantization": "q4_k"}, ["--quant=q4_k"]),
    ({"quantization": "f16"}, ["--quant=f16"]),
    ({"quantization": "bf16"}, ["--quant=bf16"]),
    ({"voice": "vivian"}, ["--voice=vivian"]),
    ({"voice": "  "}, []),
    ({"language": "de"}, ["--language=de"]),
    ({"language": "auto"}, []),
    ({"threads": 3}, ["--threads=3"]),
    ({"threads": 0}, []),
    ({"streaming": False}, ["--no-streaming"]),
    ({"streaming": True}, []),
    ({"voices_dir": "/share/voices"}, ["--voices-dir=/share/voices"]),
    ({"voices_dir": ""}, []),
    ({"debug_logging": True}, ["--debug"]),
])
def test_each_option(options, expected):
    args = options_to_args(options, None)
    names = {a.split("=", 1)[0] for a in expected} | ({"--voices-dir"} if "voices_dir" in options else set())
    assert [a for a in args if a.split("=", 1)[0] in names] == expected
    # everything else stays as by default
    assert [a for a in args if a.split("=", 1)[0] not in names] == \
        [a for a in DEFAULT_ARGS if a.split("=", 1)[0] not in names]


def parse(args: list[str]):
    return server_main.build_parser().parse_args(args)


def test_every_option_reaches_the_server():
    options = {
        "model": "1.7B-Base", "quantization": "q4_k", "voice": "anna", "language": "ja", "threads": 5,
        "streaming": False, "voices_dir": "/share/v", "mqtt": True, "mqtt_host": "broker.lan", "mqtt_port": 8884,
        "mqtt_username": "tts", "mqtt_password": "-pw with spaces=", "mqtt_topic_prefix": "home/tts",
        "announce_targets": ["kitchen=tcp://10.0.0.5:10700", "office=tcp://sat.local:10701"],
        "announce_default": "office", "announce_dir": "/media/ann", "announce_keep": 5, "announce_keep_days": 0,
        "announce_max_age": 30, "announce_allow_uri": True, "debug_logging": True,
    }
    assert set(options) == set(addon.DEFAULT_OPTIONS) | set(addon.OPTIONAL_OPTIONS)
    a = parse(options_to_args(options, SUPERVISOR))
    assert (a.uri, a.data_dir, a.model, a.quant) == ("tcp://0.0.0.0:10200", Path("/data"),
                                                     "Qwen/Qwen3-TTS-12Hz-1.7B-Base", "q4_k")
    assert (a.voice, a.language, a.threads, a.no_streaming, a.voices_dir, a.debug) == \
        ("anna", "ja", 5, True, Path("/share/v"), True)
    assert (a.mqtt_host, a.mqtt_port, a.mqtt_username, a.mqtt_password, a.mqtt_tls, a.mqtt_topic_prefix) == \
        ("broker.lan", 8884, "tts", "-pw with spaces=", False, "home/tts")
    assert a.announce_target == [("kitchen", "tcp://10.0.0.5:10700"), ("office", "tcp://sat.local:10701")]
    assert (a.announce_default, a.announce_dir) == ("office", Path("/media/ann"))
    assert (a.announce_keep, a.announce_keep_days, a.announce_max_age, a.announce_allow_uri) == (5, 0, 30, True)


def test_announcement_defaults_are_the_servers():
    a = parse(options_to_args({"mqtt": True, "mqtt_host": "b"}, None))
    p = server_main.build_parser()
    assert (a.announce_keep, a.announce_keep_days, a.announce_max_age, a.announce_allow_uri) == \
        tuple(p.get_default(k) for k in ("announce_keep", "announce_keep_days", "announce_max_age",
                                         "announce_allow_uri"))


def test_announcement_options_need_mqtt():
    options = {"announce_targets": ["kitchen=tcp://10.0.0.5:10700"], "announce_default": "kitchen"}
    assert options_to_args(options, SUPERVISOR) == DEFAULT_ARGS


def mqtt_part(options, supervisor):
    return [a for a in options_to_args({"mqtt": True, "announce_dir": "", **options}, supervisor)
            if a.startswith("--mqtt-")]


def test_mqtt_from_the_supervisor():
    assert mqtt_part({}, SUPERVISOR) == ["--mqtt-host=core-mosquitto", "--mqtt-port=1883", "--mqtt-username=addons",
                                         "--mqtt-password=s3cret", "--mqtt-topic-prefix=qwen3tts"]
    assert mqtt_part({}, {**SUPERVISOR, "ssl": True, "port": 8883})[:2] == ["--mqtt-host=core-mosquitto",
                                                                           "--mqtt-port=8883"]
    assert "--mqtt-tls" in mqtt_part({}, {**SUPERVISOR, "ssl": True})
    # the user's own port or login with the Supervisor's broker
    assert mqtt_part({"mqtt_port": 1884}, SUPERVISOR)[1] == "--mqtt-port=1884"
    assert mqtt_part({"mqtt_username": "me", "mqtt_password": "mine"}, SUPERVISOR)[2:4] == \
        ["--mqtt-username=me", "--mqtt-password=mine"]
    assert mqtt_part({"mqtt_username": "me"}, SUPERVISOR)[2:4] == ["--mqtt-username=me", "--mqtt-topic-prefix=qwen3tts"]
    # an empty host is no host
    assert mqtt_part({"mqtt_host": " "}, SUPERVISOR)[0] == "--mqtt-host=core-mosquitto"


def test_mqtt_own_broker_ignores_the_supervisor():
    assert mqtt_part({"mqtt_host": "broker.lan"}, SUPERVISOR) == ["--mqtt-host=broker.lan",
                                                                 "--mqtt-topic-prefix=qwen3tts"]
    assert mqtt_part({"mqtt_host": "broker.lan", "mqtt_port": 1999, "mqtt_username": "u", "mqtt_password": "p"},
                     None) == ["--mqtt-host=broker.lan", "--mqtt-port=1999", "--mqtt-username=u",
                               "--mqtt-password=p", "--mqtt-topic-prefix=qwen3tts"]


def test_supervisor_mqtt_from_env():
    env = {"MQTT_HOST": "core-mosquitto", "MQTT_PORT": "1883", "MQTT_USER": "addons", "MQTT_PASSWORD": "pw",
           "MQTT_SSL": "false"}
    assert addon.supervisor_mqtt_from_env(env) == {"host": "core-mosquitto", "port": 1883, "username": "addons",
                                                   "password": "pw", "ssl": False}
    assert addon.supervisor_mqtt_from_env({**env, "MQTT_SSL": "true"})["ssl"] is True
    assert addon.supervisor_mqtt_from_env({**env, "MQTT_PORT": ""})["port"] is None
    assert addon.supervisor_mqtt_from_env({"MQTT_HOST": ""}) is None
    assert addon.supervisor_mqtt_from_env({}) is None
    with pytest.raises(AddonOptionsError, match="MQTT_PORT"):
        addon.supervisor_mqtt_from_env({**env, "MQTT_PORT": "null"})


def write_options(tmp_path: Path, options) -> Path:
    path = tmp_path / "options.json"
    path.write_text(json.dumps(options), encoding="utf-8")
    return path


def test_load_addon_options_reads_the_supervisor_env(tmp_path, monkeypatch):
    voices = tmp_path / "voices"
    voices.mkdir()
    monkeypatch.setenv("MQTT_HOST", "core-mosquitto")
    monkeypatch.setenv("MQTT_PORT", "1883")
    monkeypatch.setenv("MQTT_USER", "addons")
    monkeypatch.setenv("MQTT_PASSWORD", "pw")
    monkeypatch.setenv("MQTT_SSL", "false")
    args = load_addon_options(write_options(tmp_path, {**addon.DEFAULT_OPTIONS, "voices_dir": str(voices),
                                                       "mqtt": True}))
    assert f"--voices-dir={voices}" in args
    assert ["--mqtt-host=core-mosquitto", "--mqtt-port=1883", "--mqtt-username=addons", "--mqtt-password=pw"] == \
        [a for a in args if a.startswith(("--mqtt-host", "--mqtt-port", "--mqtt-user", "--mqtt-pass"))]
    monkeypatch.delenv("MQTT_HOST")
    with pytest.raises(AddonOptionsError, match="Mosquitto broker add-on"):
        load_addon_options(write_options(tmp_path, {"voices_dir": str(voices), "mqtt": True}))


def test_load_addon_options_leaves_out_a_missing_voices_folder(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("MQTT_HOST", raising=False)
    with caplog.at_level(logging.WARNING, logger="wyoming_qwen3tts.addon"):
        args = load_addon_options(write_options(tmp_path, {"voices_dir": str(tmp_path / "none")}))
    assert not [a for a in args if a.startswith("--voices-dir")]
    assert "does not exist" in caplog.text and str(tmp_path / "none") in caplog.text


@pytest.mark.parametrize("options, message", [
    ({"model": "2B-CustomVoice"}, "model: '2B-CustomVoice' is not one of 0.6B-CustomVoice"),
    ({"quantization": "q2_k"}, "quantization: 'q2_k' is not one of auto, q8_0, q4_k, f16, bf16"),
    ({"language": "xx"}, "language: 'xx' is not one of auto"),
    ({"threads": -1}, "threads: -1 is not a whole number"),
    ({"threads": "4"}, "threads: '4' is not a whole number"),
    ({"threads": True}, "threads: True is not a whole number"),
    ({"streaming": "yes"}, "streaming: 'yes' is not true or false"),
    ({"debug_logging": 1}, "debug_logging: 1 is not true or false"),
    ({"voice": 3}, "voice: 3 is not a string"),
    ({"voices_dir": "voices"}, "voices_dir: 'voices' is not an absolute path"),
    ({"mqtt": True, "mqtt_host": "b", "mqtt_port": 70000}, "mqtt_port: 70000 is not a port number"),
    ({"mqtt": True, "mqtt_host": "b", "mqtt_port": "x"}, "mqtt_port: 'x' is not a port number"),
    ({"mqtt": True, "mqtt_host": "b", "announce_targets": ["kitchen"]},
     "announce_targets: 'kitchen' is not NAME=tcp://HOST:PORT"),
    ({"mqtt": True, "mqtt_host": "b", "announce_targets": ["k=tcp://h:99999"]},
     "announce_targets: 'k=tcp://h:99999' has no valid port (1-65535)"),
    ({"mqtt": True, "mqtt_host": "b", "announce_targets": ["k=tcp://h:1", "k=tcp://g:2"]}, "'k' is used twice"),
    ({"mqtt": True, "mqtt_host": "b", "announce_targets": "k=tcp://h:1"},
     "announce_targets: 'k=tcp://h:1' is not a list"),
    ({"mqtt": True, "mqtt_host": "b", "announce_targets": ["k=tcp://h:1"], "announce_default": "office"},
     "announce_default: 'office' is not the name of an announce target; the targets are: k"),
    ({"mqtt": True, "mqtt_host": "b", "mqtt_topic_prefix": "a/#"}, "mqtt_topic_prefix: 'a/#' must be"),
    ({"mqtt": True, "mqtt_host": "b", "announce_dir": "media"}, "announce_dir: 'media' is not an absolute path"),
    ({"mqtt": True}, "mqtt is on but there is no MQTT broker"),
    ({"mqtt": True, "mqtt_host": "b", "announce_keep": -1}, "announce_keep: -1 is not a whole number from 0"),
    ({"mqtt": True, "mqtt_host": "b", "announce_keep_days": 1.5}, "announce_keep_days: 1.5 is not a whole number"),
    ({"mqtt": True, "mqtt_host": "b", "announce_max_age": 0}, "announce_max_age: 0 is not a whole number from 1"),
    ({"mqtt": True, "mqtt_host": "b", "announce_allow_uri": "yes"}, "announce_allow_uri: 'yes' is not true or"),
])
def test_invalid_options(options, message):
    with pytest.raises(AddonOptionsError) as e:
        options_to_args(options, None)
    assert message in str(e.value)


def test_invalid_options_file(tmp_path):
    with pytest.raises(AddonOptionsError, match="cannot read the options file"):
        load_addon_options(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{model: 1}", encoding="utf-8")
    with pytest.raises(AddonOptionsError, match="not valid JSON"):
        load_addon_options(bad)
    with pytest.raises(AddonOptionsError, match="must be a JSON object"):
        load_addon_options(write_options(tmp_path, ["model"]))


def test_unknown_options_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="wyoming_qwen3tts.addon"):
        assert options_to_args({"old_option": 1}, None) == DEFAULT_ARGS
    assert "old_option" in caplog.text


# --- the server's --addon-options -------------------------------------------------------------------------------
def test_merge_args_explicit_wins():
    addon_args = ["--model=m", "--announce-target=a=tcp://h:1", "--announce-target=b=tcp://h:2",
                  "--mqtt-password=p", "--debug"]
    assert merge_args(addon_args, ["--announce-target", "c=tcp://h:3", "--voice=x"]) == \
        ["--model=m", "--mqtt-password=p", "--debug", "--announce-target", "c=tcp://h:3", "--voice=x"]
    assert merge_args(addon_args, ["--mqtt-password-file", "/run/pw"])[:3] == ["--model=m",
                                                                               "--announce-target=a=tcp://h:1",
                                                                               "--announce-target=b=tcp://h:2"]
    assert "--mqtt-password=p" not in merge_args(addon_args, ["--mqtt-password-file", "/run/pw"])


def run_main(monkeypatch, argv: list[str]):
    """server_main.main(ARGV) up to the point where it would serve: the parsed arguments."""
    seen = []

    async def fake_serve(args):
        seen.append(args)
        return 0

    monkeypatch.setattr(server_main, "serve", fake_serve)
    assert server_main.main(argv) == 0
    return seen[0]


def test_main_with_addon_options(tmp_path, monkeypatch):
    monkeypatch.delenv("MQTT_HOST", raising=False)
    path = write_options(tmp_path, {**addon.DEFAULT_OPTIONS, "voices_dir": str(tmp_path), "voice": "vivian",
                                    "threads": 2, "mqtt": True, "mqtt_host": "b",
                                    "announce_targets": ["k=tcp://h:1"]})
    args = run_main(monkeypatch, ["--addon-options", str(path)])
    assert (args.model, args.voice, args.threads, args.data_dir, args.voices_dir, args.mqtt_host) == \
        ("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", "vivian", 2, Path("/data"), tmp_path, "b")
    assert args.announce_target == [("k", "tcp://h:1")]
    # the explicit command line wins, wherever it stands
    args = run_main(monkeypatch, ["--voice", "ryan", f"--addon-options={path}", "--threads=7", "--data-dir",
                                  str(tmp_path), "--announce-target", "z=tcp://h:9"])
    assert (args.voice, args.threads, args.data_dir) == ("ryan", 7, tmp_path)
    assert args.announce_target == [("z", "tcp://h:9")]
    # without --addon-options nothing changes
    args = run_main(monkeypatch, ["--voice", "ryan"])
    assert (args.voice, args.data_dir, args.model) == ("ryan", None, "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice")


def test_main_rejects_invalid_addon_options(tmp_path, monkeypatch, capsys):
    path = write_options(tmp_path, {"model": "9B"})
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, ["--addon-options", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--addon-options {path}: model: '9B' is not one of" in err


def test_start_command_runs(tmp_path):
    """run.sh's command, with an options file as the Supervisor writes it (plus --version, so that it stops)."""
    voices = tmp_path / "voices"
    voices.mkdir()
    config = load_yaml(ADDON / "config.yaml")
    path = write_options(tmp_path, {**config["options"], "voices_dir": str(voices)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_")}
    r = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts", "--addon-options", str(path), "--version"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == __version__
    # a bad options file stops it with one clear line, before --version
    bad = write_options(tmp_path, {**config["options"], "voices_dir": str(voices), "threads": -2})
    r = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts", "--addon-options", str(bad), "--version"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 2
    assert "threads: -2 is not a whole number" in r.stderr and "Traceback" not in r.stderr


def start_server(args: list[str], cwd: Path) -> subprocess.Popen:
    # cwd outside the source tree: `python -m` must import the installed package; no Supervisor broker
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_")}
    return subprocess.Popen([sys.executable, "-m", "wyoming_qwen3tts", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def test_addon_server_speaks(tiny_gguf, tmp_path):
    """The server as run.sh starts it, with the add-on's options; only the model, the address and the data folder
    are replaced on the command line (a tiny test model, a unix socket, no /data here)."""
    voices = tmp_path / "voices"
    voices.mkdir()
    options = write_options(tmp_path, {**addon.DEFAULT_OPTIONS, "voices_dir": str(voices), "voice": "dylan",
                                       "language": "zh", "streaming": False, "threads": 1})
    sock = tmp_path / "tts.sock"
    proc = start_server(["--addon-options", str(options), "--model", str(tiny_gguf("tiny-17", "f32")),
                         "--uri", f"unix://{sock}", "--data-dir", str(tmp_path / "data"), "--max-frames", "3"],
                        tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("server did not start: " + proc.stdout.read().decode())
            await asyncio.sleep(0.1)
        async with AsyncClient.from_uri(f"unix://{sock}") as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await asyncio.wait_for(client.read_event(), 30))
            assert not info.tts[0].supports_synthesize_streaming   # streaming: false
            await client.write_event(Synthesize(text="Hello.").event())
            types = []
            while not types or types[-1] != "audio-stop":
                types.append((await asyncio.wait_for(client.read_event(), 30)).type)
            assert types[0] == "audio-start" and "audio-chunk" in types
    finally:
        proc.terminate()
        proc.wait(10)
