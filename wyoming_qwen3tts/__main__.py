"""wyoming-qwen3tts: the Wyoming text-to-speech server.

With no arguments it serves Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice (Q8_0) on tcp://0.0.0.0:10200, downloading and
converting the model once into a per-user data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncServer

from . import __version__, quant_auto
from .download import DEFAULT_MODEL, ModelError, default_data_dir, resolve_model
from .engine import Qwen3TTS
from .handler import (DEFAULT_MAX_AUDIO_S, DEFAULT_MAX_CONNECTIONS, ConnectionLimit, Qwen3TtsEventHandler,
                      RateLimitFilter, ServerSettings)
from .mqtt import MqttBridge, add_mqtt_arguments, check_mqtt_arguments, stop_bridge
from .protocol import Limits
from .request import add_sampling_arguments, sampling_options
from .voice_library import VoiceLibrary
from .voices import Voice, builtin_voices, language_variants, library_voices, model_language
from .worker import DEFAULT_MAX_LAG_S, EngineWorker

_LOGGER = logging.getLogger("wyoming_qwen3tts")

QWEN_ATTRIBUTION = Attribution(name="Qwen team, Alibaba Cloud", url="https://github.com/QwenLM/Qwen3-TTS")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wyoming-qwen3tts", description=__doc__.split("\n\n")[0])
    p.add_argument("--uri", default="tcp://0.0.0.0:10200", help="unix:// or tcp:// or stdio:// (default: %(default)s)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="GGUF file, checkpoint directory or Hugging Face repo id (default: %(default)s)")
    p.add_argument("--quant", default="auto", choices=["auto", "f32", "f16", "bf16", "q8_0", "q4_k"],
                   help="weight type when converting a checkpoint; auto: q8_0 where this machine runs it faster than "
                        "real time with margin, else q4_k, measured at the first start (default: %(default)s)")
    p.add_argument("--quant-auto-max-rtf", type=_positive, default=quant_auto.DEFAULT_MAX_RTF, metavar="RTF",
                   help="--quant auto takes the best type whose real-time factor is at most this "
                        "(default: %(default)g)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"where downloads and converted models are kept (default: {default_data_dir()})")
    p.add_argument("--local-files-only", action="store_true", help="never touch the network")
    p.add_argument("--voices-dir", type=Path,
                   help="voice library: one folder per voice with ref.wav (+ ref.txt) or instruct.txt")
    p.add_argument("--voice", help="default voice (default: the model's first speaker or library voice)")
    p.add_argument("--language", help="default language, e.g. en (default: auto)")
    p.add_argument("--threads", type=int, help="compute threads (default: all cores)")
    p.add_argument("--zeroconf", nargs="?", const="qwen3tts", metavar="NAME",
                   help="announce the server over mDNS/zeroconf with this name (tcp:// only)")
    p.add_argument("--no-streaming", action="store_true", help="do not accept streamed text (synthesize-start)")
    p.add_argument("--samples-per-chunk", type=int, default=1024, help="samples per audio-chunk event")
    p.add_argument("--max-text-length", type=int, default=10_000, help="longest text accepted, in characters")
    p.add_argument("--max-audio-seconds", type=_positive, default=DEFAULT_MAX_AUDIO_S,
                   help="most audio one request may produce, in seconds (default: %(default)g)")
    p.add_argument("--no-language-voices", action="store_true",
                   help="do not list a <voice>-<language> variant of every voice per language")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections at most; more are refused with an error (default: %(default)s)")
    p.add_argument("--idle-timeout", type=_positive, default=Limits.idle_timeout_s,
                   help="close a connection that sends no event for this many seconds (default: %(default)g)")
    p.add_argument("--header-timeout", type=_positive, default=Limits.header_timeout_s,
                   help="close a connection whose event header is not complete this many seconds after it began "
                        "(default: %(default)g)")
    p.add_argument("--max-client-lag", type=_positive, default=DEFAULT_MAX_LAG_S,
                   help="stop synthesizing for a client that falls this many seconds behind real time "
                        "(default: %(default)g)")
    add_sampling_arguments(p, max_frames_help="frame cap per sentence (default: the runaway guard, from the "
                                              "sentence length)")
    p.add_argument("--debug", action="store_true", help="log DEBUG messages")
    p.add_argument("--log-format", default=logging.BASIC_FORMAT, help="format of log messages")
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("--addon-options", metavar="FILE",
                   help="Home Assistant add-on options (/data/options.json) to take arguments from; arguments "
                        "given here as well win")
    add_mqtt_arguments(p)
    return p


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return number


def build_info(tts: Qwen3TTS, voices: dict[str, Voice], streaming: bool) -> Info:
    return Info(tts=[TtsProgram(
        name="qwen3-tts",
        description=f"Qwen3-TTS ({tts.name}) on a ggml engine",
        attribution=QWEN_ATTRIBUTION,
        installed=True,
        version=__version__,
        voices=[TtsVoice(name=v.name, description=v.description, attribution=QWEN_ATTRIBUTION, installed=True,
                         version=None, languages=v.languages) for v in voices.values()],
        supports_synthesize_streaming=streaming,
    )])


async def serve(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or default_data_dir()
    try:
        if args.quant == "auto" and not Path(args.model).expanduser().is_file():
            model_path, _ = quant_auto.choose(args.model, data_dir, args.threads, args.local_files_only,
                                              args.quant_auto_max_rtf)
        else:  # a GGUF file has its type already
            model_path = resolve_model(args.model, data_dir, "q8_0" if args.quant == "auto" else args.quant,
                                       local_files_only=args.local_files_only)
    except ModelError as e:
        _LOGGER.error("%s", e)
        return 1

    t0 = time.perf_counter()
    try:
        tts = Qwen3TTS(model_path, threads=args.threads)
        warm_up(tts)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the reader or the engine raise
        _LOGGER.error("cannot load the model %s (%s); it is damaged or not a Qwen3-TTS GGUF: convert or download "
                      "it again", model_path, _one_line(e))
        _LOGGER.debug("the failure", exc_info=e)
        return 1
    voices = builtin_voices(tts)
    if args.voices_dir:
        try:
            library = VoiceLibrary(args.voices_dir, tts, cache_dir=data_dir / "voice-cache")
            voices.update(library_voices(library, tts))
        except ValueError as e:
            _LOGGER.error("--voices-dir: %s", e)
            return 1
    if args.voice and args.voice not in voices:
        _LOGGER.error("unknown --voice %r; available voices: %s", args.voice, ", ".join(voices) or "none")
        return 1
    default_voice = args.voice or next(iter(voices), None)
    if not args.no_language_voices:
        voices = language_variants(voices)
    settings = ServerSettings(sample_rate=tts.sample_rate, default_voice=default_voice,
                              default_language=args.language, samples_per_chunk=args.samples_per_chunk,
                              streaming=not args.no_streaming, max_text_chars=args.max_text_length,
                              max_audio_s=args.max_audio_seconds, generation=sampling_options(args),
                              limits=Limits(idle_timeout_s=args.idle_timeout, header_timeout_s=args.header_timeout),
                              connections=ConnectionLimit(args.max_connections))
    # Fail on a bad default language now rather than on every request.
    try:
        model_language(args.language, tts.languages)
    except ValueError as e:
        _LOGGER.error("--language: %s", e)
        return 1

    _LOGGER.info("loaded %s in %.1f s (%s)", model_path, time.perf_counter() - t0, tts.system_info())
    _LOGGER.debug("kernels: %s", tts.kernels)

    info = build_info(tts, voices, settings.streaming)
    worker = EngineWorker(tts, max_lag_s=args.max_client_lag)
    server = AsyncServer.from_uri(args.uri)
    if args.zeroconf:
        uri = urlparse(args.uri)
        if uri.scheme != "tcp":
            _LOGGER.error("--zeroconf needs a tcp:// URI")
            return 1
        from wyoming.zeroconf import HomeAssistantZeroconf

        hass_zeroconf = HomeAssistantZeroconf(name=args.zeroconf, port=uri.port, host=uri.hostname
                                              if uri.hostname not in ("0.0.0.0", "::") else None)
        await hass_zeroconf.register_server()
        _LOGGER.debug("zeroconf discovery enabled")

    mqtt_task = None
    if args.mqtt_host:
        try:
            bridge = MqttBridge.from_args(args, worker, voices, settings, tts.languages, tts.sample_rate, tts.name)
        except ValueError as e:
            _LOGGER.error("%s", e)
            return 1
        mqtt_task = asyncio.create_task(bridge.run(), name="mqtt-bridge")

    _LOGGER.info("ready on %s", args.uri)
    try:
        await server.run(partial(Qwen3TtsEventHandler, info, settings, worker, voices, tts.languages))
    finally:
        if mqtt_task is not None:
            await stop_bridge(mqtt_task)
        worker.close()
    return 0


def warm_up(tts: Qwen3TTS) -> None:
    """Touch every code path once (graphs, compute buffers, the pages of the weights); a damaged model fails here
    rather than at the first request."""
    for _ in tts.stream(text="Hello.", max_frames=2, greedy=True, **tts.any_voice()):
        pass


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")


def raise_open_file_limit() -> None:
    """Every connection is a file descriptor: lift the soft limit (often 1024) to the hard one, so that many idle
    connections are refused cleanly by --max-connections instead of failing in accept()."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 16), hard))
    except (ImportError, ValueError, OSError) as e:  # not on this platform, or not allowed
        _LOGGER.debug("open file limit unchanged: %s", e)


def limit_client_logs() -> None:
    """Messages that clients can trigger at will are rate-limited (see RateLimitFilter)."""
    flood_guard = RateLimitFilter()
    for name in ("asyncio", "wyoming_qwen3tts.handler", "wyoming_qwen3tts.protocol"):
        logging.getLogger(name).addFilter(flood_guard)


def main(argv: list[str] | None = None) -> int:
    from .addon import AddonOptionsError, load_addon_options, merge_args, split_addon_options

    parser = build_parser()
    # --addon-options is read before anything else acts (--version, --help), so a bad options file always fails
    options_file, rest = split_addon_options(sys.argv[1:] if argv is None else list(argv))
    try:
        argv = rest if options_file is None else merge_args(load_addon_options(options_file), rest)
    except AddonOptionsError as e:
        parser.error(f"--addon-options {options_file}: {e}")
    args = parser.parse_args(argv)
    check_mqtt_arguments(parser, args)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format=args.log_format)
    if not args.debug:
        # Third-party chatter (download progress is shown by huggingface_hub's own bars).
        for name in ("httpx", "huggingface_hub", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)
    limit_client_logs()
    raise_open_file_limit()
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
