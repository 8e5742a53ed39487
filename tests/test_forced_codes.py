"""Teacher forcing (``forced_codes``): the session takes given frames instead of sampling them, runs the talker
over them and records its logits (the quality columns of bench/bench.py compare weight types this way)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from wyoming_qwen3tts import Qwen3TTS

from helpers import FIXTURES

TOL = 1e-5


@pytest.fixture(scope="module")
def tts_and_oracle(tiny_gguf):
    return Qwen3TTS(tiny_gguf("tiny-17", "f32"), threads=1), load_file(str(FIXTURES / "tiny-17" / "oracle.safetensors"))


def run(tts: Qwen3TTS, o: dict, forced: np.ndarray, max_frames: int, **kw):
    session = tts.open_session(text_ids=o["ids.input"][0].tolist()[3:-5], speaker="vivian", language="english",
                               max_frames=max_frames, record=True, forced_codes=forced, **kw)
    frames = []
    while (f := session.next_frame()) is not None:
        frames.append(f)
    return session, np.stack(frames)


def test_forcing_the_oracle_codes_gives_the_oracle_logits(tts_and_oracle):
    tts, o = tts_and_oracle
    want_codes, want_logits = o["custom_voice.codes"], o["custom_voice.talker_logits"]
    n = want_codes.shape[0]
    # Sampling (not greedy): the forced frames must not depend on the sampler at all. One more frame than forced,
    # so that the talker also runs the step that consumes the last forced frame (the oracle's last logit row).
    session, frames = run(tts, o, want_codes, max_frames=n + 1, seed=7, greedy=False)
    assert frames.shape == (n + 1, 16)
    np.testing.assert_array_equal(frames[:n], want_codes)
    assert ((frames[n] >= 0) & (frames[n] < 2048)).all()  # after the forced frames, generation goes on
    logits = session.record("talker_logits")
    assert logits.shape[0] == want_logits.shape[0] == n + 1
    diff = np.abs(logits - want_logits).max()
    assert diff <= TOL, f"talker logits differ from the oracle by {diff:.3g}"
    # the code predictor ran for the sampled frame only
    assert session.record("cp_logits").shape[0] == 15


def test_forced_and_greedy_runs_agree(tts_and_oracle):
    """Forcing a session's own greedy frames reproduces its logits exactly (same steps, same inputs)."""
    tts, o = tts_and_oracle
    s_greedy, codes = run(tts, o, None, max_frames=8, greedy=True, min_frames=8)
    s_forced, frames = run(tts, o, codes, max_frames=8)
    np.testing.assert_array_equal(frames, codes)
    np.testing.assert_array_equal(s_forced.record("talker_logits"), s_greedy.record("talker_logits"))


def test_other_codes_change_the_later_logits(tts_and_oracle):
    tts, o = tts_and_oracle
    codes = o["custom_voice.codes"]
    n = codes.shape[0]
    other = codes.copy()
    other[2] = (other[2] + 1000) % 2048  # frame 2 differs: logit rows 0..2 are computed before it is fed back
    s_a, _ = run(tts, o, codes, max_frames=n + 1)
    s_b, frames_b = run(tts, o, other, max_frames=n + 1)
    np.testing.assert_array_equal(frames_b[:n], other)
    a, b = s_a.record("talker_logits"), s_b.record("talker_logits")
    np.testing.assert_array_equal(a[:3], b[:3])
    for row in range(3, n + 1):
        assert np.abs(a[row] - b[row]).max() > 1e-3, f"logit row {row} did not change"


def test_forced_codes_are_validated(tts_and_oracle):
    tts, o = tts_and_oracle
    codes = o["custom_voice.codes"]
    bad = codes.copy()
    bad[1, 3] = 2048
    with pytest.raises(ValueError, match="0..2047"):
        run(tts, o, bad, max_frames=3)
    bad[1, 3] = -1
    with pytest.raises(ValueError, match="0..2047"):
        run(tts, o, bad, max_frames=3)
    with pytest.raises(ValueError, match="shape"):
        run(tts, o, codes[:, :15], max_frames=3)
    with pytest.raises(ValueError, match="integers"):
        run(tts, o, codes.astype(np.float32), max_frames=3)
    # more forced frames than max_frames: the cap still holds
    _, frames = run(tts, o, codes, max_frames=2)
    np.testing.assert_array_equal(frames, codes[:2])
