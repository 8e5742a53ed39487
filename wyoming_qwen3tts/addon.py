"""The Home Assistant add-on's options, turned into the server's command line.

The add-on (``addon/`` in the repository) starts ``python3 -m wyoming_qwen3tts --addon-options /data/options.json``.
The Supervisor writes the options the user set in the add-on's Configuration tab to ``/data/options.json``;
:func:`load_addon_options` reads that file and returns the equivalent server arguments, and the server parses
them followed by whatever else is on its command line (explicit arguments win, see :func:`merge_args`).

Options (``addon/config.yaml`` holds the same defaults and the schema the Supervisor checks them against):

==================== ====================================== ==============================================
option               default                                server argument
==================== ====================================== ==============================================
model                ``0.6B-CustomVoice``                   ``--model=Qwen/Qwen3-TTS-12Hz-<model>``
quantization         ``auto``                               ``--quant=``
voice                (unset: the model's first voice)       ``--voice=``
language             ``auto``                               ``--language=`` (none for ``auto``)
threads              ``0`` (all cores)                      ``--threads=`` (none for 0)
streaming            ``true``                               ``--no-streaming`` when false
voices_dir           ``/share/qwen3tts/voices``             ``--voices-dir=`` (left out while the folder
                                                            does not exist)
mqtt                 ``false``                              the ``--mqtt-*`` and ``--announce-*`` arguments
mqtt_host            (unset: the Supervisor's MQTT service) ``--mqtt-host=``
mqtt_port            (unset: the service's port)            ``--mqtt-port=`` (the server's default: 1883)
mqtt_username        (unset: the service's user)            ``--mqtt-username=``
mqtt_password        (unset)                                ``--mqtt-password=``
mqtt_topic_prefix    ``qwen3tts``                           ``--mqtt-topic-prefix=``
announce_targets     ``[]``                                 ``--announce-target=NAME=tcp://HOST:PORT`` each
announce_default     (unset)                                ``--announce-default=``
announce_dir         ``/media/announcements``               ``--announce-dir=``
announce_keep        ``100``                                ``--announce-keep=`` (WAV files kept; 0: all)
announce_keep_days   ``7``                                  ``--announce-keep-days=`` (0: no age limit)
announce_max_age     ``600``                                ``--announce-max-age=`` (seconds)
announce_allow_uri   ``false``                              ``--announce-allow-uri`` when true
debug_logging        ``false``                              ``--debug``
==================== ====================================== ==============================================

Always: ``--uri=tcp://0.0.0.0:10200`` (the port the add-on publishes) and ``--data-dir=/data`` (the add-on's
persistent volume: the model is downloaded and converted there on the first start).

MQTT broker: with ``mqtt`` on, a ``mqtt_host`` set by the user is used as is (port ``mqtt_port``, else the
server's default 1883; the user's credentials; no TLS). Without one, the broker the Supervisor offers (the
Mosquitto broker add-on) is used: ``addon/run.sh`` asks for it with ``bashio::services mqtt ...`` and exports
``MQTT_HOST``, ``MQTT_PORT``, ``MQTT_USER``, ``MQTT_PASSWORD`` and ``MQTT_SSL`` (``true``: ``--mqtt-tls``), which
:func:`supervisor_mqtt_from_env` reads. A ``mqtt_username`` set by the user replaces the service's credentials;
``mqtt_port`` replaces its port. The password is passed as ``--mqtt-password=...`` (like any argument, visible
in process listings).

Every value is checked; a bad one raises :class:`AddonOptionsError` whose message names the option and what is
valid. Announcement options are ignored while ``mqtt`` is off (announcements arrive over MQTT).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "DEFAULT_OPTIONS",
    "MODELS",
    "AddonOptionsError",
    "load_addon_options",
    "merge_args",
    "options_to_args",
    "split_addon_options",
    "supervisor_mqtt_from_env",
]

_LOGGER = logging.getLogger(__name__)

ADDON_URI = "tcp://0.0.0.0:10200"
ADDON_DATA_DIR = "/data"

# the add-on's model choices -> Hugging Face repository ids
MODELS = {
    "0.6B-CustomVoice": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
    "1.7B-CustomVoice": "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",
    "0.6B-Base": "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
    "1.7B-Base": "Qwen/Qwen3-TTS-12Hz-1.7B-Base",
    "1.7B-VoiceDesign": "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",
}
QUANTIZATIONS = ("auto", "q8_0", "q4_k", "f16", "bf16")
LANGUAGES = ("auto", "en", "zh", "de", "fr", "it", "ja", "ko", "pt", "ru", "es")
MAX_THREADS = 256

# the defaults of addon/config.yaml's `options` (a test keeps the two equal); options that are unset by default
# (voice, mqtt_host, mqtt_port, mqtt_username, mqtt_password, announce_default) are not listed
DEFAULT_OPTIONS: dict[str, Any] = {
    "model": "0.6B-CustomVoice",
    "quantization": "auto",
    "language": "auto",
    "threads": 0,
    "streaming": True,
    "voices_dir": "/share/qwen3tts/voices",
    "mqtt": False,
    "mqtt_topic_prefix": "qwen3tts",
    "announce_targets": [],
    "announce_dir": "/media/announcements",
    "announce_keep": 100,
    "announce_keep_days": 7,
    "announce_max_age": 600,
    "announce_allow_uri": False,
    "debug_logging": False,
}
OPTIONAL_OPTIONS = ("voice", "mqtt_host", "mqtt_port", "mqtt_username", "mqtt_password", "announce_default")

# NAME=tcp://HOST:PORT; the same pattern is the schema of announce_targets in addon/config.yaml
TARGET_NAME_RE = r"[A-Za-z0-9_-]+"
TARGET_RE = re.compile(rf"^(?P<name>{TARGET_NAME_RE})=tcp://(?P<host>[^\s/:]+):(?P<port>[0-9]{{1,5}})$")
_TOPIC_RE = re.compile(r"^[^#+\s]+$")   # MQTT topic level names: no wildcards, no spaces


class AddonOptionsError(ValueError):
    """An add-on option is invalid; the message names the option and what is valid."""


def _get(options: Mapping[str, Any], key: str) -> Any:
    value = options.get(key)
    return DEFAULT_OPTIONS.get(key) if value is None else value


def _choice(options: Mapping[str, Any], key: str, choices) -> str:
    return _checked(options, key, lambda v: v in choices, f"one of {', '.join(choices)}")


def _checked(options: Mapping[str, Any], key: str, ok: Callable[[Any], bool], what: str) -> Any:
    """The option's value (or its default) if ``ok`` accepts it; otherwise an error saying it is not ``what``."""
    value = _get(options, key)
    if not ok(value):
        raise AddonOptionsError(f"{key}: {value!r} is not {what}")
    return value


def _bool(options: Mapping[str, Any], key: str) -> bool:
    return _checked(options, key, lambda v: isinstance(v, bool), "true or false")


def _str(options: Mapping[str, Any], key: str) -> str:
    """The option as a stripped string; '' when unset."""
    return (_checked(options, key, lambda v: v is None or isinstance(v, str), "a string") or "").strip()


def _int(options: Mapping[str, Any], key: str, low: int, high: int, meaning: str = "") -> int:
    return _checked(options, key, lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
                    f"a whole number from {low}{meaning} to {high}")


def _path(options: Mapping[str, Any], key: str) -> str:
    value = _str(options, key)
    if value and not value.startswith("/"):
        raise AddonOptionsError(f"{key}: {value!r} is not an absolute path (e.g. /share/qwen3tts/voices)")
    return value


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise AddonOptionsError(f"{what}: {value!r} is not a port number") from None
    if isinstance(value, bool) or not 1 <= port <= 65535 or (isinstance(value, float) and value != port):
        raise AddonOptionsError(f"{what}: {value!r} is not a port number (1-65535)")
    return port


def _targets(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    value = _get(options, "announce_targets")
    if not isinstance(value, list):
        raise AddonOptionsError(f"announce_targets: {value!r} is not a list")
    targets = []
    for entry in value:
        m = TARGET_RE.match(entry.strip()) if isinstance(entry, str) else None
        if not m:
            raise AddonOptionsError(f"announce_targets: {entry!r} is not NAME=tcp://HOST:PORT "
                                    "(e.g. kitchen=tcp://192.168.1.40:10700)")
        if not 1 <= int(m["port"]) <= 65535:
            raise AddonOptionsError(f"announce_targets: {entry!r} has no valid port (1-65535)")
        if m["name"] in dict(targets):
            raise AddonOptionsError(f"announce_targets: the name {m['name']!r} is used twice")
        targets.append((m["name"], entry.strip()))
    return targets


def _mqtt_args(options: Mapping[str, Any], supervisor_mqtt: Mapping[str, Any] | None) -> list[str]:
    supervisor_mqtt = supervisor_mqtt or {}
    host = _str(options, "mqtt_host")
    user_port = options.get("mqtt_port")
    username = _str(options, "mqtt_username")
    password = _get(options, "mqtt_password")
    if password is not None and not isinstance(password, str):
        raise AddonOptionsError("mqtt_password: not a string")
    tls = False
    from_supervisor = False
    if host:
        port = _port(user_port, "mqtt_port") if user_port is not None else None   # None: the server's default
    elif supervisor_mqtt.get("host"):
        from_supervisor = True
        host = str(supervisor_mqtt["host"])
        if user_port is not None:
            port = _port(user_port, "mqtt_port")
        else:
            sup_port = supervisor_mqtt.get("port")
            port = _port(sup_port, "the Supervisor's MQTT port") if sup_port else None
        tls = bool(supervisor_mqtt.get("ssl"))
    else:
        raise AddonOptionsError("mqtt is on but there is no MQTT broker: install and start the Mosquitto broker "
                                "add-on, or set mqtt_host (and mqtt_username / mqtt_password) to your broker")
    if not username and from_supervisor:
        username = str(supervisor_mqtt.get("username") or "")
        password = supervisor_mqtt.get("password") or None

    prefix = _str(options, "mqtt_topic_prefix")
    if not prefix or not _TOPIC_RE.match(prefix):
        raise AddonOptionsError(f"mqtt_topic_prefix: {prefix!r} must be a non-empty MQTT topic without "
                                "'#', '+' or spaces, e.g. qwen3tts")

    args = [f"--mqtt-host={host}"]
    if port is not None:
        args.append(f"--mqtt-port={port}")
    if username:
        args.append(f"--mqtt-username={username}")
    if password:
        args.append(f"--mqtt-password={password}")
    if tls:
        args.append("--mqtt-tls")
    args.append(f"--mqtt-topic-prefix={prefix}")

    targets = _targets(options)
    args += [f"--announce-target={entry}" for _, entry in targets]
    default = _str(options, "announce_default")
    if default:
        if default not in dict(targets):
            names = ", ".join(name for name, _ in targets) or "none (announce_targets is empty)"
            raise AddonOptionsError(f"announce_default: {default!r} is not the name of an announce target; "
                                    f"the targets are: {names}")
        args.append(f"--announce-default={default}")
    announce_dir = _path(options, "announce_dir")
    if announce_dir:
        args.append(f"--announce-dir={announce_dir}")
    args += [f"--announce-keep={_int(options, 'announce_keep', 0, 100_000, ' (all)')}",
             f"--announce-keep-days={_int(options, 'announce_keep_days', 0, 3650, ' (no age limit)')}",
             f"--announce-max-age={_int(options, 'announce_max_age', 1, 86_400)}"]
    if _bool(options, "announce_allow_uri"):
        args.append("--announce-allow-uri")
    return args


def options_to_args(options: Mapping[str, Any], supervisor_mqtt: Mapping[str, Any] | None = None) -> list[str]:
    """The server arguments for the add-on OPTIONS (the contents of /data/options.json; missing keys take the
    defaults of addon/config.yaml). SUPERVISOR_MQTT is the broker the Supervisor offers (keys host, port,
    username, password, ssl) or None. Every argument is one ``--name=value`` or ``--flag`` token, so values
    that start with '-' are safe. Raises AddonOptionsError for an invalid value."""
    if not isinstance(options, Mapping):
        raise AddonOptionsError(f"the options must be a JSON object, not {type(options).__name__}")
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS) - set(OPTIONAL_OPTIONS))
    if unknown:
        _LOGGER.warning("ignoring unknown add-on options: %s", ", ".join(unknown))

    args = [f"--uri={ADDON_URI}", f"--data-dir={ADDON_DATA_DIR}",
            f"--model={MODELS[_choice(options, 'model', tuple(MODELS))]}",
            f"--quant={_choice(options, 'quantization', QUANTIZATIONS)}"]
    voice = _str(options, "voice")
    if voice:
        args.append(f"--voice={voice}")
    language = _choice(options, "language", LANGUAGES)
    if language != "auto":
        args.append(f"--language={language}")
    threads = _int(options, "threads", 0, MAX_THREADS, " (all cores)")
    if threads:
        args.append(f"--threads={threads}")
    if not _bool(options, "streaming"):
        args.append("--no-streaming")
    voices_dir = _path(options, "voices_dir")
    if voices_dir:
        args.append(f"--voices-dir={voices_dir}")
    if _bool(options, "mqtt"):
        args += _mqtt_args(options, supervisor_mqtt)
    if _bool(options, "debug_logging"):
        args.append("--debug")
    return args


def supervisor_mqtt_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The Supervisor's MQTT service as addon/run.sh exports it (MQTT_HOST, MQTT_PORT, MQTT_USER, MQTT_PASSWORD,
    MQTT_SSL), or None when MQTT_HOST is unset or empty."""
    env = os.environ if environ is None else environ
    host = env.get("MQTT_HOST", "").strip()
    if not host:
        return None
    port = env.get("MQTT_PORT", "").strip()
    return {
        "host": host,
        "port": _port(port, "MQTT_PORT (from the Supervisor)") if port else None,
        "username": env.get("MQTT_USER") or None,
        "password": env.get("MQTT_PASSWORD") or None,
        "ssl": env.get("MQTT_SSL", "").strip().lower() in ("1", "true", "yes", "on"),
    }


def load_addon_options(path: str | os.PathLike[str]) -> list[str]:
    """The server arguments for the add-on options file PATH (/data/options.json), with the Supervisor's MQTT
    broker taken from the environment. A voices folder that does not exist yet is left out, with a warning, so
    that the server starts with the model's own voices. Raises AddonOptionsError for an unreadable file or an
    invalid option."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise AddonOptionsError(f"cannot read the options file: {e.strerror or e}") from None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise AddonOptionsError(f"the options file is not valid JSON: {e}") from None
    args = options_to_args(options, supervisor_mqtt_from_env())
    kept = []
    for arg in args:
        if arg.startswith("--voices-dir=") and not Path(arg.split("=", 1)[1]).is_dir():
            _LOGGER.warning("voices folder %s does not exist: only the model's own voices are offered (create it "
                            "and add one folder per voice, then restart the add-on)", arg.split("=", 1)[1])
            continue
        kept.append(arg)
    return kept


def split_addon_options(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the value of --addon-options or None, the rest of ARGV in order)."""
    pre = argparse.ArgumentParser(prog="wyoming-qwen3tts", add_help=False, allow_abbrev=False)
    pre.add_argument("--addon-options", metavar="FILE")
    known, rest = pre.parse_known_args(argv)
    return known.addon_options, rest


# options of which the command line may give only one: giving either replaces the add-on's other
_EXCLUSIVE = {"--mqtt-password-file": ("--mqtt-password",), "--mqtt-password": ("--mqtt-password-file",)}


def merge_args(addon_args: list[str], argv: list[str]) -> list[str]:
    """ADDON_ARGS followed by ARGV, without the add-on arguments whose option ARGV names itself: an explicit
    argument always wins, also for repeatable ones (--announce-target). A flag the add-on sets (--no-streaming,
    --debug) cannot be switched off from the command line."""
    explicit = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    for name in list(explicit):
        explicit.update(_EXCLUSIVE.get(name, ()))
    return [a for a in addon_args if a.split("=", 1)[0] not in explicit] + list(argv)
