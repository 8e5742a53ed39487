#!/usr/bin/env python3
"""Speed, memory and quality of the engine per model and weight type, in one table.

    python bench/bench.py                       # 0.6B-CustomVoice, 0.6B-Base, 1.7B-CustomVoice x bf16, q8_0, q4_k
    python bench/bench.py --models 0.6B-CustomVoice --types q8_0,q4_k
    python bench/bench.py --quick               # CI smoke: the tiny test fixture, 10 frames, 1 run (seconds)
    python bench/bench.py --models 0.6B-CustomVoice --types q4_k --reference   # side by side with qwen-tts
    python bench/bench.py --models 0.6B-CustomVoice --types q4_k,q8_0 --isa generic,avx2 --no-server

Runs against the installed package (or PYTHONPATH); no torch (but in the --reference child). The first run builds
full-size random-weight checkpoints with bench/make_random_checkpoint.py from ../shared/reference/configs and
converts them, once, into --cache-dir (default ~/.cache/wyoming-qwen3tts-bench; several GB, outside the repository).

Work per (model, type), each in a fresh subprocess so that its peak RSS is its own: load the GGUF, warm up
(2 frames, as the server does), then --runs times synthesize one fixed 12-word English sentence for exactly
--frames frames (EOS suppressed: min_frames = max_frames), streaming, and report medians. Quality, over the same
codes: the baseline type (bf16 at full size: it holds the bf16 checkpoint's weights exactly, where an F32 GGUF
would be 3.6 GB for 0.6B) generates greedy frames; every other type is teacher-forced with those frames
(forced_codes) and its talker logits are compared row by row with the baseline's (mean cosine), and its codec's
decoding of them with the baseline's waveform (cosine). Then the time to first audio through the Wyoming server
(0.6B-CustomVoice), and the voice-cloning reference encode time (0.6B-Base).

--reference (needs the [reference] extra: torch, qwen-tts): per model, the official qwen-tts on CPU runs the same
checkpoint teacher-forced with the baseline's greedy frames (torch_child), and a second table sets its talker,
code-predictor and codec ms per frame beside ours, with the ratios.

--isa (e.g. generic,avx2): every type at each of these instruction-set levels (QWEN3TTS_ISA in the child), one
child per level and timed run, interleaved run by run (levels, then types, then the next run) so that a load that
comes and goes on the machine hits every level alike; the table gets an isa column (the level the child ran at).
--builds (e.g. ../before,.): the same, over source trees that each have their extension built in place, imported
through PYTHONPATH: a change's before and after side by side in one run; the table gets a build column.
"""
from __future__ import annotations

import argparse
import dataclasses
import asyncio
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = REPO.parent / "shared" / "reference" / "configs"
DEFAULT_CACHE = Path("~/.cache/wyoming-qwen3tts-bench").expanduser()
MODELS = {  # name -> released-style config in --configs-dir
    "0.6B-CustomVoice": "Qwen3-TTS-12Hz-0.6B-CustomVoice.config.json",
    "0.6B-Base": "Qwen3-TTS-12Hz-0.6B-Base.config.json",
    "1.7B-CustomVoice": "Qwen3-TTS-12Hz-1.7B-CustomVoice.config.json",
}
TYPES = ("bf16", "q8_0", "q4_k")
TINY = "tiny-17"  # --quick: the test fixture (tests/fixtures/tiny-17), a real reference state dict with tiny dims
SERVER_MODEL = "0.6B-CustomVoice"
ENCODE_MODEL = "0.6B-Base"
SENTENCE = "Good morning, the kitchen lights are on and the door is locked."  # 12 words
FRAME_RATE = 12.5
WARMUP_FRAMES = 2
TORCH_TYPE = "qwen-tts"  # the --reference child's name in run_child's files and messages
ENCODE_TYPE = "encode"   # the reference encode time's child (voice cloning)
TORCH_DTYPES = ("float32", "bfloat16")
STAGES = ("talker ms/frame", "code predictor ms/frame", "codec ms/frame")  # the side-by-side table's stages
COLUMNS = ["model", "type", "load s", "prefill ms", "talker ms/frame", "code predictor ms/frame", "codec ms/frame",
           "total s", "RTF", "first audio s", "peak RSS MB"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ models on disk
def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def ensure_checkpoint(model: str, cache: Path, configs: Path) -> tuple[Path, str]:
    """The checkpoint directory of `model` and a stamp of what it was made from (rebuilt when that changes)."""
    if model == TINY:
        return tiny_checkpoint(cache)
    cfg = configs / MODELS[model]
    side = [cfg, configs / "generation_config.json", configs / "Qwen3-TTS-Tokenizer-12Hz.config.json",
            REPO / "bench" / "make_random_checkpoint.py"]
    for p in side:
        if not p.is_file():
            raise SystemExit(f"error: {p} is missing (--configs-dir: the team's shared/reference/configs)")
    stamp = _digest(*(p.read_bytes() for p in side))
    out = cache / "checkpoints" / model
    marker = out / ".bench-stamp"
    if marker.is_file() and marker.read_text() == stamp:
        return out, stamp
    log(f"building the full-size random checkpoint {model} in {out} (once) ...")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, str(REPO / "bench" / "make_random_checkpoint.py"), "--config", str(cfg),
                    "-o", str(tmp)], check=True, stdout=sys.stderr)
    (tmp / ".bench-stamp").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out, stamp


def tiny_checkpoint(cache: Path) -> tuple[Path, str]:
    """tests/fixtures/tiny-17 assembled as tests/conftest.py does (shared speech tokenizer, Qwen2 text files)."""
    fixtures = REPO / "tests" / "fixtures"
    files = {p.name: p for p in (fixtures / TINY).iterdir() if p.is_file()}
    files.update({f"speech_tokenizer/{n}": fixtures / "speech-tokenizer" / n
                  for n in ("config.json", "preprocessor_config.json", "model.safetensors")})
    text_dir = REPO.parent / "shared" / "reference" / "qwen2-tokenizer"
    files.update({n: text_dir / n for n in ("vocab.json", "merges.txt", "tokenizer_config.json") if n not in files})
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"error: files of the {TINY} fixture are missing: {missing}")
    out = cache / "checkpoints" / TINY
    shutil.rmtree(out, ignore_errors=True)
    (out / "speech_tokenizer").mkdir(parents=True)
    for name, src in files.items():
        (out / name).symlink_to(src.resolve())
    stamp = _digest(*(f"{n}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() for n, p in sorted(files.items())))
    return out, stamp


def ensure_gguf(model: str, ckpt: Path, stamp: str, qtype: str, cache: Path, quiet: bool) -> Path:
    """The GGUF of (model, qtype), converted once; again when the checkpoint or the converter changes."""
    from wyoming_qwen3tts import convert as convert_mod

    key = _digest(stamp.encode(), qtype.encode(), Path(convert_mod.__file__).read_bytes())
    out = cache / "gguf" / f"{model}-{qtype}.gguf"
    side = out.with_suffix(".stamp")
    if out.is_file() and side.is_file() and side.read_text() == key:
        return out
    log(f"converting {model} to {qtype}: {out} ...")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.gguf")
    convert_mod.convert(ckpt, tmp, qtype, progress=not quiet)
    os.replace(tmp, out)
    side.write_text(key)
    return out


# ------------------------------------------------------------------------------------------ one child process
def voice_kwargs(tts) -> dict:
    """CustomVoice: speaker vivian; Base: an x-vector clone with a fixed synthetic speaker embedding."""
    if "vivian" in tts.speakers:
        voice = {"speaker": "vivian"}
    elif tts.speakers:
        voice = {"speaker": tts.speakers[0]}
    elif tts.has_speaker_encoder:
        emb = np.random.default_rng(0).standard_normal(tts.hidden_size).astype(np.float32)
        voice = {"speaker_embedding": emb}
    else:
        voice = {}
    return {**voice, "language": "english" if "english" in tts.languages else "auto"}


def child(spec: dict) -> dict:
    from wyoming_qwen3tts import Qwen3TTS
    from wyoming_qwen3tts.engine import SynthesisStats

    n = spec["frames"]
    t0 = time.perf_counter()
    tts = Qwen3TTS(spec["gguf"], threads=spec["threads"])
    load_s = time.perf_counter() - t0
    isa = Qwen3TTS.isa_level()
    voice = voice_kwargs(tts)
    request = dict(text=SENTENCE, **voice, min_frames=n, max_frames=n)
    for _ in tts.stream(text="Hello.", **voice, greedy=True, max_frames=WARMUP_FRAMES):  # warm-up, as the server
        pass
    runs = []
    for i in range(spec["runs"]):
        st = SynthesisStats()
        for _ in tts.stream(stats=st, seed=1000 + i, frames_per_chunk="auto", **request):  # as the server
            pass
        if st.frames != n:
            raise RuntimeError(f"expected {n} frames, got {st.frames}")
        runs.append({"prefill ms": st.prefill_ms, "talker ms/frame": st.talker_ms / n,
                     "code predictor ms/frame": st.code_predictor_ms / n, "codec ms/frame": st.codec_ms / n,
                     "total s": st.total_s, "RTF": st.total_s / (n / FRAME_RATE),
                     "first audio s": st.first_audio_s})
    # peak RSS of loading + synthesis, before the quality passes (whose 100-frame one-shot decode is not a
    # synthesis cost)
    result = {"load s": load_s, "runs": runs, "isa": isa,
              "peak RSS MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    if spec.get("make_ref"):  # the baseline: greedy frames, their talker logits and their waveform
        session = tts.open_session(**request, greedy=True, record=True)
        codes = _all_frames(session)
        # the voice too, so that the --reference child asks qwen-tts for exactly the same prompt
        np.savez(spec["make_ref"], codes=codes, logits=session.record("talker_logits"), wave=tts.decode(codes),
                 **voice)
    elif spec.get("ref"):  # the same frames forced into this type's session
        ref = np.load(spec["ref"])
        session = tts.open_session(**request, greedy=True, record=True, forced_codes=ref["codes"])
        codes = _all_frames(session)
        if not np.array_equal(codes, ref["codes"]):
            raise RuntimeError("forced frames were not reproduced")
        logits, ref_logits = session.record("talker_logits"), ref["logits"]
        if logits.shape != ref_logits.shape:
            raise RuntimeError(f"talker logits {logits.shape} vs baseline {ref_logits.shape}")
        result["logits cos"] = float(np.mean(_cos_rows(logits, ref_logits)))
        result["wave cos"] = float(_cos_rows(tts.decode(ref["codes"])[None], ref["wave"][None])[0])
    return result


def _all_frames(session) -> np.ndarray:
    frames = []
    while (f := session.next_frame()) is not None:
        frames.append(f)
    return np.stack(frames)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)


# ------------------------------------------------------------------------------------------ qwen-tts (--reference)
def torch_child(spec: dict) -> dict:
    """--reference: the official qwen-tts (PyTorch, CPU) on the checkpoint our GGUFs were converted from,
    teacher-forced with the baseline's greedy frames, timed per stage.

    The request is the reference wrapper's (Qwen3TTSModel: its tokenizer and chat template, its generation
    defaults, which sample as our timed runs do) for the baseline's voice in our text mode; then
    Qwen3TTSForConditionalGeneration.generate runs unchanged but for a logits processor that forces the baseline's
    codes in the talker's and the code predictor's generate loops. Per frame that is the reference's own work: one
    talker step with its KV cache (HF generate's loop around it included) and the code predictor's 15-step
    generate. The codec is the wrapper's speech_tokenizer.decode of
    all frames at once (chunked_decode: 300-frame chunks with 25 frames of left context), per frame."""
    from importlib.metadata import version

    sys.path.insert(0, str(REPO / "tests" / "reference"))
    import stubs  # noqa: F401 -- before qwen_tts: placeholders for its 25 Hz tokenizer's imports (sox, ...)
    import torch
    import transformers
    from qwen_tts import Qwen3TTSModel

    class Forced(transformers.LogitsProcessor):
        """Inside a generate loop: the forced code for the next position gets logit 0, every other code -inf
        (after the loop's own processors, so sampling or not, the forced code is taken)."""

        def __init__(self, codes: list[int]):
            self.codes = codes

        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, -torch.inf)
            out[:, self.codes[input_ids.shape[1]]] = 0  # input_ids: the codes generated so far (no prompt ids)
            return out

    transformers.logging.set_verbosity_error()  # "Setting pad_token_id ..." on every generate
    torch.set_num_threads(spec["threads"])
    ref = np.load(spec["ref"])
    tts = Qwen3TTSModel.from_pretrained(spec["checkpoint"], dtype=getattr(torch, spec["dtype"]))
    model, talker = tts.model, tts.model.talker
    predictor = talker.code_predictor
    input_ids = tts._tokenize_texts([tts._build_assistant_text(SENTENCE)])
    voice = {"languages": [str(ref["language"])]}  # the baseline's voice, text mode as the wrapper's defaults
    if "speaker" in ref:  # generate_custom_voice
        voice.update(speakers=[str(ref["speaker"])], non_streaming_mode=True)
    elif "speaker_embedding" in ref:  # generate_voice_clone, x-vector only
        voice.update(voice_clone_prompt={"ref_code": [None], "x_vector_only_mode": [True], "icl_mode": [False],
                                         "ref_spk_embedding": [torch.from_numpy(ref["speaker_embedding"])]},
                     non_streaming_mode=False)
    else:  # generate_voice_design without an instruction
        voice.update(speakers=[None], non_streaming_mode=True)

    frames = torch.from_numpy(ref["codes"].astype(np.int64))
    forcing = {}  # the frames of the current run
    talker_ends, predictions = [], []  # end of each talker forward; (start, end) of each code-predictor generate
    talker_generate, predictor_generate = talker.generate, predictor.generate

    def forced_talker_generate(*args, **kwargs):
        codes = forcing["frames"][:, 0].tolist() + [model.config.talker_config.codec_eos_token_id]
        return talker_generate(*args, **kwargs, logits_processor=transformers.LogitsProcessorList([Forced(codes)]))

    def forced_predictor_generate(*args, **kwargs):  # called inside the talker's forward, once per frame
        codes = forcing["frames"][len(predictions), 1:].tolist()
        t0 = time.perf_counter()
        out = predictor_generate(*args, **kwargs,
                                 logits_processor=transformers.LogitsProcessorList([Forced(codes)]))
        predictions.append((t0, time.perf_counter()))
        return out

    talker.generate, predictor.generate = forced_talker_generate, forced_predictor_generate
    talker.register_forward_hook(lambda *_: talker_ends.append(time.perf_counter()))

    def run(forced: torch.Tensor) -> dict:
        n = len(forced)
        forcing["frames"] = forced
        talker_ends.clear()
        predictions.clear()
        with torch.no_grad():  # as the wrapper's generate_* methods
            # n frames, then EOS: n + 1 tokens, from the prefill and n steps; step k first runs the code
            # predictor of frame k-1
            codes, _ = model.generate(input_ids=input_ids, **voice,
                                      **tts._merge_generate_kwargs(max_new_tokens=n + 1))
            if not torch.equal(codes[0].cpu(), forced) or len(talker_ends) != n + 1 or len(predictions) != n:
                raise RuntimeError("qwen-tts did not take the forced frames")
            t0 = time.perf_counter()
            model.speech_tokenizer.decode([{"audio_codes": codes[0]}])
            codec_s = time.perf_counter() - t0
        # Talker: from the end of the prefill to the start of the last frame's code predictor, minus the code
        # predictor's calls in between: n - 1 talker steps, as ours with max_frames = n (the step after the
        # last frame only looks for EOS), and the generate loop's own work per frame (logits processors,
        # sampling, cache bookkeeping).
        cp = [end - start for start, end in predictions]
        talker_s = predictions[-1][0] - talker_ends[0] - sum(cp[:-1])
        return {"talker ms/frame": talker_s * 1000 / n, "code predictor ms/frame": sum(cp) * 1000 / n,
                "codec ms/frame": codec_s * 1000 / n}

    run(frames[:WARMUP_FRAMES])  # warm-up, as our children
    runs = [run(frames) for _ in range(spec["runs"])]
    return {"runs": runs, "torch": torch.__version__, "qwen-tts": version("qwen-tts"),
            "attention": model.config._attn_implementation,
            "peak RSS MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), or None where unknown."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def run_child(spec: dict, work: Path, variant: Variant | None = None) -> dict:
    """Runs a child on spec; variant: its environment (--isa's level or --builds' source tree; None: this one's)."""
    spec_path = work / f"{spec['model']}-{spec['type']}{'-' + variant.tag if variant else ''}.spec.json"
    out_path = spec_path.with_suffix("").with_suffix(".result.json")
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
    # cwd outside the source tree: the child imports the installed package (or PYTHONPATH), never ./wyoming_qwen3tts
    busy0, t0 = _cpu_busy_s(), time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, **variant.env} if variant else None
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)], cwd=work,
                       stdout=sys.stderr, env=env)
    ru1, busy1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), _cpu_busy_s(), time.monotonic() - t0
    if r.returncode != 0 or not out_path.is_file():
        raise SystemExit(f"error: the benchmark of {spec['model']} {spec['type']} failed (exit {r.returncode})")
    result = json.loads(out_path.read_text())
    if busy0 is not None and busy1 is not None:
        # cores kept busy by other processes while the child ran: the machine's busy time minus the child's own
        own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        result["other cores"] = max(0.0, (busy1 - busy0 - own) / max(wall, 1e-3))
    return result


# ------------------------------------------------------------------------------------------ the Wyoming server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_first_audio(gguf: Path, threads: int, frames: int, runs: int, work: Path) -> list[float]:
    """Seconds from sending `synthesize` to the first `audio-chunk`, through `python -m wyoming_qwen3tts`."""
    port = _free_port()
    log_path = work / f"server-{gguf.stem}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "wyoming_qwen3tts", "--model", str(gguf),
                                 "--uri", f"tcp://127.0.0.1:{port}", "--threads", str(threads),
                                 "--max-frames", str(frames)],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=work)
    try:
        deadline = time.monotonic() + 600
        while True:  # the port opens after the model is loaded and warmed up
            if proc.poll() is not None:
                raise SystemExit(f"error: the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"error: the server did not start:\n{log_path.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        return [asyncio.run(_one_request(port)) for _ in range(runs)]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _one_request(port: int) -> float:
    from wyoming.audio import AudioChunk, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.error import Error
    from wyoming.tts import Synthesize, SynthesizeVoice

    first = None
    async with AsyncTcpClient("127.0.0.1", port) as client:
        t0 = time.perf_counter()
        await client.write_event(Synthesize(text=SENTENCE, voice=SynthesizeVoice(language="en")).event())
        while True:  # read the whole answer, so that the next request does not wait for this one
            event = await asyncio.wait_for(client.read_event(), 600)
            if event is None:
                raise RuntimeError("the server closed the connection")
            if first is None and AudioChunk.is_type(event.type):
                first = time.perf_counter() - t0
            elif AudioStop.is_type(event.type):
                break
            elif Error.is_type(event.type):
                raise RuntimeError(f"server error: {Error.from_event(event).text}")
    if first is None:
        raise RuntimeError("no audio")
    return first


# ------------------------------------------------------------------------------------------ voice cloning
def encode_child(spec: dict) -> dict:
    """The child of the reference encode time (voice cloning): Qwen3TTS.speaker_embedding (the x-vector of a reference
    recording) and Qwen3TTS.encode (its codec codes, for ICL cloning), timed on spec["seconds"] s of a synthetic
    24 kHz signal, spec["runs"] times after one untimed call of each (which prepares the encoders' weights and
    compute buffers): {"speaker s": [...], "encode s": [...]}, or {"error": ...}."""
    from wyoming_qwen3tts import Qwen3TTS

    tts = Qwen3TTS(spec["gguf"], threads=spec["threads"])
    sr = 24000
    t = np.arange(int(spec["seconds"] * sr)) / sr
    rng = np.random.default_rng(0)
    wav = (0.3 * np.sin(2 * np.pi * 150 * t * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t)))
           + 0.02 * rng.standard_normal(t.size)).astype(np.float32)  # a gliding tone plus noise
    out = {"speaker s": [], "encode s": []}
    try:
        tts.speaker_embedding(wav, sr)  # the first calls prepare the encoders' weights and buffers: not timed
        tts.encode(wav, sr)
        for _ in range(spec["runs"]):
            t0 = time.perf_counter()
            tts.speaker_embedding(wav, sr)
            t1 = time.perf_counter()
            tts.encode(wav, sr)
            out["speaker s"].append(t1 - t0)
            out["encode s"].append(time.perf_counter() - t1)
    except Exception as e:  # noqa: BLE001 -- report it, keep the tables
        return {"error": f"{type(e).__name__}: {e}"}
    return out


def reference_encode_lines(model: str, qtype: str, gguf: Path, threads: int, runs: int, seconds: float,
                           compared: list[Variant], work: Path) -> list[str]:
    """"0.6B-Base (q8_0) 30 s reference encode time: ...", one line per --isa / --builds variant (interleaved run by
    run, in children as the rows are) or one for this environment; medians of `runs`."""
    results: dict[str, dict] = {}
    for _ in range(runs):
        for v in compared or [None]:
            name = v.name if v else ""
            log(f"[{model} {qtype}{' ' + name if name else ''}] {seconds} s reference encode")
            res = run_child({"model": model, "type": ENCODE_TYPE, "gguf": str(gguf), "threads": threads, "runs": 1,
                             "seconds": seconds}, work, v)
            if name not in results or "error" in res:
                results[name] = res
            elif "error" not in results[name]:
                for key in ("speaker s", "encode s"):
                    results[name][key] += res[key]
    lines = []
    for name, res in results.items():
        head = f"{model} ({qtype}{', ' + name if name else ''}) {seconds} s reference encode time: "
        if "error" in res:
            lines.append(head + "error: " + res["error"])
            continue
        s, e = statistics.median(res["speaker s"]), statistics.median(res["encode s"])
        lines.append(head + f"speaker embedding {s:.2f} s + codec encode {e:.2f} s = {s + e:.2f} s "
                            f"(median of {len(res['encode s'])})")
    return lines


# ------------------------------------------------------------------------------------------ tables
def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict], baseline: str, variant_column: str = "") -> str:
    """variant_column: "isa" or "build" where the rows are --isa's or --builds' variants."""
    cols = COLUMNS + [f"logits cos vs {baseline}", f"wave cos vs {baseline}"]
    if variant_column:
        cols.insert(2, variant_column)
    digits = {"load s": 2, "prefill ms": 1, "talker ms/frame": 1, "code predictor ms/frame": 1,
              "codec ms/frame": 1, "total s": 2, "RTF": 2, "first audio s": 3, "peak RSS MB": 0}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        med = {k: statistics.median(run[k] for run in r["runs"]) for k in r["runs"][0]}
        cells = [r["model"], r["type"]] + variant_cell(r, variant_column) + [_fmt(r["load s"], 2)]
        cells += [_fmt(med[c], digits[c]) for c in COLUMNS[3:-1]]
        cells.append(_fmt(r["peak RSS MB"], 0))
        if r["type"] == baseline:
            cells += ["1 (baseline)", "1 (baseline)"]
        else:
            cells += [_fmt(r.get("logits cos"), 5), _fmt(r.get("wave cos"), 5)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stage_medians(runs: list[dict]) -> dict:
    med = {k: statistics.median(run[k] for run in runs) for k in STAGES}
    med["total ms/frame"] = statistics.median(sum(run[k] for k in STAGES) for run in runs)
    return med


def variant_cell(r: dict, variant_column: str) -> list[str]:
    """The row's --isa level (the one its child ran at) or --builds tree, as table cells ([] without either)."""
    if not variant_column:
        return []
    return [r.get("isa" if variant_column == "isa" else "variant", "-")]


def torch_table(rows: list[dict], torch_results: dict, variant_column: str = "") -> str:
    """Per (model, type[, variant]): qwen-tts's ms per frame beside ours, stage by stage, and the speed-up
    qwen-tts / ours."""
    stages = STAGES + ("total ms/frame",)
    cols = ["model", "type"] + ([variant_column] if variant_column else [])
    for stage in stages:
        cols += [f"qwen-tts {stage}", stage, f"{stage.removesuffix(' ms/frame')} speed-up"]
    cols.append("qwen-tts peak RSS MB")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r["model"] not in torch_results:
            continue
        theirs, ours = _stage_medians(torch_results[r["model"]]["runs"]), _stage_medians(r["runs"])
        cells = [r["model"], r["type"]] + variant_cell(r, variant_column)
        for stage in stages:
            cells += [_fmt(theirs[stage], 1), _fmt(ours[stage], 1),
                      _fmt(theirs[stage] / ours[stage] if ours[stage] > 0 else None, 2)]
        cells.append(_fmt(torch_results[r["model"]]["peak RSS MB"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One of the things --isa or --builds compares side by side: its name in the table, a tag for file names
    and the environment its children run in."""
    name: str
    tag: str
    env: dict


def variants(args: argparse.Namespace) -> tuple[str, list[Variant]]:
    """The table column and the variants of --isa (QWEN3TTS_ISA levels) or --builds (source trees with an in-place
    built extension, imported through PYTHONPATH); ("", []) without either."""
    if args.isa:
        return "isa", [Variant(level, level, {"QWEN3TTS_ISA": level}) for level in args.isa]
    if args.builds:
        trees = [Path(b).expanduser().absolute() for b in args.builds]
        names = [t.name or str(t) for t in trees]
        names = [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]  # one row each
        return "build", [Variant(n, f"build{i}", {"PYTHONPATH": str(t)}) for i, (n, t) in enumerate(zip(names, trees))]
    return "", []


def variant_rows(model: str, types: list[str], compared: list[Variant], common: dict, ggufs: dict, ref: Path,
                 baseline: str, runs: int, work: Path) -> list[dict]:
    """--isa / --builds: one timed run per child, interleaved: run 1 of every (type, variant), then run 2, ...; the
    first run of each also forces the baseline's frames (the cosines; not the baseline itself). Its rows, runs
    merged, each with its variant's name."""
    merged: dict[tuple[str, str], dict] = {}
    for i in range(runs):
        for t in types:
            for v in compared:
                log(f"[{model} {t} {v.name}] timed run {i + 1}/{runs} of {common['frames']} frames")
                spec = {**common, "type": t, "gguf": str(ggufs[t]), "runs": 1}
                if i == 0 and t != baseline:
                    spec["ref"] = str(ref)
                res = run_child(spec, work, v)
                key = (t, v.name)
                if key in merged:
                    merged[key]["runs"] += res["runs"]
                    merged[key]["other cores"] = max(merged[key].get("other cores", 0), res.get("other cores", 0))
                else:
                    merged[key] = {**res, "variant": v.name}
    return [{"model": model, "type": t, **merged[(t, v.name)]} for t in types for v in compared]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                    help="where checkpoints and GGUFs are kept (default: %(default)s)")
    ap.add_argument("--configs-dir", type=Path, default=DEFAULT_CONFIGS,
                    help="released-style configs (default: %(default)s)")
    ap.add_argument("--models", type=_csv, default=list(MODELS),
                    help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--types", type=_csv, default=None, help="comma-separated subset of f32, f16, bf16, q8_0, "
                    f"q4_k (default: {','.join(TYPES)}; q8_0 with --quick)")
    ap.add_argument("--baseline", default=None, choices=["f32", "f16", "bf16"],
                    help="type whose greedy frames and outputs the cosines compare with (default: bf16; f32 "
                         "with --quick)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per (model, type); medians (default: 3)")
    ap.add_argument("--frames", type=int, default=100, help="frames per run, EOS suppressed (default: 100)")
    ap.add_argument("--threads", type=int, default=2, help="compute threads (default: 2)")
    ap.add_argument("--server-runs", type=int, default=3, help="requests through the server (default: 3)")
    ap.add_argument("--no-server", action="store_true", help="skip the Wyoming server measurement")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke test: the {TINY} test fixture, q8_0, 10 frames, 1 run (seconds)")
    ap.add_argument("--reference", action="store_true",
                    help="side by side: also time the official qwen-tts (PyTorch, CPU; the [reference] extra) on "
                         "the same checkpoint, threads and frames, once per model, and print a second table")
    ap.add_argument("--reference-dtype", choices=TORCH_DTYPES, default="float32",
                    help="qwen-tts's weights with --reference (default: %(default)s, the usual choice on CPU; "
                         "bfloat16: the checkpoint's own)")
    ap.add_argument("--isa", type=_csv, default=None,
                    help="comma-separated instruction-set levels (QWEN3TTS_ISA: amx, avx512, avx2, neon, generic) to "
                         "time every type at, side by side, interleaved run by run; the table gets an isa column")
    ap.add_argument("--builds", type=_csv, default=None,
                    help="comma-separated source trees, each with its extension built in place (setup.py build_ext "
                         "--inplace), to time side by side, interleaved run by run (e.g. before and after a change); "
                         "the table gets a build column")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def _selection(args: argparse.Namespace, ap: argparse.ArgumentParser) -> tuple[list, list, int, int, int, str]:
    """(models, types, frames, runs, server runs, baseline type) of this run: --quick's, or the options'."""
    if args.quick:
        return [TINY], args.types or ["q8_0"], 10, 1, 1, args.baseline or "f32"
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    return (args.models, args.types or list(TYPES), args.frames, args.runs, args.server_runs,
            args.baseline or "bf16")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)

    if args.child:
        spec = json.loads(Path(args.child).read_text())
        run = {TORCH_TYPE: torch_child, ENCODE_TYPE: encode_child}.get(spec["type"], child)
        Path(spec["out"]).write_text(json.dumps(run(spec)))
        return 0

    models, types, frames, runs, server_runs, baseline = _selection(args, ap)
    if args.isa and any(level not in ("amx", "avx512", "avx2", "neon", "generic") for level in args.isa):
        ap.error(f"--isa takes levels among amx, avx512, avx2, neon, generic, not {args.isa}")
    if args.isa and args.builds:
        ap.error("--isa and --builds compare one thing at a time: give one of them")
    variant_column, compared = variants(args)
    bad = [t for t in types if t not in ("f32", "f16", "bf16", "q8_0", "q4_k")]
    if bad or not types or not models or runs < 1 or frames < 1:
        ap.error("need models, types among f32/f16/bf16/q8_0/q4_k, runs >= 1 and frames >= 1")
    load = os.getloadavg()[0]
    if load > 1:
        log(f"warning: load average {load:.2f}: other work is running, the timings will not be reliable")

    cache = args.cache_dir.expanduser().absolute()
    work = cache / "runs"
    work.mkdir(parents=True, exist_ok=True)
    rows, server_rows, encode_lines, torch_results = [], [], [], {}
    for model in models:
        ckpt, stamp = ensure_checkpoint(model, cache, args.configs_dir)
        ggufs = {t: ensure_gguf(model, ckpt, stamp, t, cache, args.quick) for t in dict.fromkeys([baseline] + types)}
        common = {"model": model, "frames": frames, "threads": args.threads}
        ref = work / f"{model}-reference.npz"
        ref.unlink(missing_ok=True)
        log(f"[{model} {baseline}] baseline: greedy reference frames" + (f", {runs} timed runs" if baseline in types
                                                                           else ""))
        if compared:
            run_child({**common, "type": baseline, "gguf": str(ggufs[baseline]), "runs": 0, "make_ref": str(ref)},
                      work, compared[0])
            rows += variant_rows(model, types, compared, common, ggufs, ref, baseline, runs, work)
        else:
            results = {baseline: run_child({**common, "type": baseline, "gguf": str(ggufs[baseline]),
                                            "runs": runs if baseline in types else 0, "make_ref": str(ref)}, work)}
            for t in types:
                if t != baseline:
                    log(f"[{model} {t}] {runs} timed runs of {frames} frames, then the forced baseline frames")
                    results[t] = run_child({**common, "type": t, "gguf": str(ggufs[t]), "runs": runs,
                                            "ref": str(ref)}, work)
            rows += [{"model": model, "type": t, **results[t]} for t in types]
        if args.reference:
            log(f"[{model} {TORCH_TYPE}] the official implementation (PyTorch, {args.reference_dtype}), {runs} timed "
                f"runs of the forced baseline frames")
            torch_results[model] = run_child({**common, "type": TORCH_TYPE, "checkpoint": str(ckpt), "ref": str(ref),
                                              "runs": runs, "dtype": args.reference_dtype}, work)
        if not args.no_server and model in (SERVER_MODEL, TINY):
            for t in types:
                log(f"[{model} {t}] time to first audio through the Wyoming server, {server_runs} requests")
                ttfa = server_first_audio(ggufs[t], args.threads, frames, server_runs, work)
                server_rows.append((model, t, statistics.median(ttfa), ttfa))
        if model in (ENCODE_MODEL, TINY):
            seconds = 2 if args.quick else 30  # --quick: the code path only, in seconds
            encode_lines += reference_encode_lines(model, types[0], ggufs[types[0]], args.threads, runs, seconds,
                                                   compared, work)

    audio_s = frames / FRAME_RATE
    others = [r["other cores"] for r in rows + list(torch_results.values()) if "other cores" in r]
    busy = ""
    if others:
        busy = f" Other processes kept up to {max(others):.2f} cores busy during the runs"
        busy += (": WARNING, the timings are not reliable." if max(others) > 0.25 else ".")
    print(f"\nQwen3-TTS engine bench: \"{SENTENCE}\", {frames} frames ({audio_s:g} s of audio, EOS suppressed), "
          f"{args.threads} threads, median of {runs} run(s) after a {WARMUP_FRAMES}-frame warm-up; RTF = total / "
          f"{audio_s:g} s; first audio = call to first PCM chunk (streaming); peak RSS of the process (load + "
          f"synthesis). Cosines over the baseline's greedy frames forced into each type: the baseline is {baseline}"
          + (" (it holds the bf16 checkpoint exactly; an F32 GGUF would be 3.6 GB for 0.6B)." if baseline == "bf16"
             else ".") + busy + "\n")
    print(table(rows, baseline, variant_column))
    if torch_results:
        about = next(iter(torch_results.values()))
        print(f"\nSide by side with the official implementation, qwen-tts {about['qwen-tts']} (PyTorch "
              f"{about['torch']}, CPU, {args.reference_dtype} weights, {about['attention']} attention, "
              f"{args.threads} threads) on the same checkpoint, teacher-forced with the baseline's {frames} greedy "
              f"frames; median of {runs} run(s) after a {WARMUP_FRAMES}-frame warm-up. qwen-tts per frame: one "
              f"talker step with its KV cache (its generate loop's own work included) and the code predictor's "
              f"15-step generate; codec = its one-shot decode of all frames / {frames}. Ours: the timed runs of the "
              f"table above ({frames} sampled frames, codec streamed frame by frame). total = talker + code "
              f"predictor + codec; speed-up = qwen-tts / ours (above 1: ours is faster).\n")
        print(torch_table(rows, torch_results, variant_column))
    if server_rows:
        print(f"\nTime to first audio through the Wyoming server (synthesize sent -> first audio-chunk), "
              f"median of {server_runs}:\n")
        print("| model | type | server first audio s | runs s |\n|---|---|---|---|")
        for model, t, med, all_runs in server_rows:
            print(f"| {model} | {t} | {med:.3f} | {', '.join(f'{x:.3f}' for x in all_runs)} |")
    for line in encode_lines:
        print("\n" + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
