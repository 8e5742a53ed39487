# Speaker encoder binding (see qwen3tts.h: qt_speaker_embedding). Included at the end of engine.pyx.

cdef extern from "qwen3tts.h":
    long qt_speaker_embedding(qt_model *model, const float *mel, int n_frames, int mel_dim, float *out, size_t cap,
                              char *err, size_t err_len) nogil


def speaker_embedding(Model model, mel):
    """x-vector (ECAPA-TDNN, model.md 5.2) of a log-mel float [frames, mel_dim] (wyoming_qwen3tts.audio.log_mel):
    float32 [hidden]. Raises EngineError for a model without a speaker encoder, a wrong mel width or too few
    frames."""
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] m = np.ascontiguousarray(mel, dtype=np.float32)
    cdef int n_frames = m.shape[0]
    cdef int mel_dim = m.shape[1]
    cdef size_t cap = <size_t>max(qt_model_hidden_size(model.ptr), 0)
    cdef cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] out = np.empty(cap, dtype=np.float32)
    cdef const float *mp = &m[0, 0] if m.size > 0 else NULL
    cdef float *op = &out[0] if cap > 0 else NULL
    cdef char err[ERR_LEN]
    cdef long r
    with nogil:
        r = qt_speaker_embedding(model.ptr, mp, n_frames, mel_dim, op, cap, err, ERR_LEN)
    if r < 0:
        raise EngineError(err.decode(errors="replace"))
    return out[:r]
