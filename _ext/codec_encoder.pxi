# Codec encoder binding (see qwen3tts.h: qt_codec_encode; qwen3tts_debug.h: qt_codec_encode_debug). Included at
# the end of engine.pyx.

cdef extern from "qwen3tts.h":
    long qt_codec_encode(qt_model *model, const float *wav, size_t n_samples, int32_t *codes_out, size_t cap,
                         char *err, size_t err_len) nogil
    int qt_codec_has_encoder(const qt_model *model)

cdef extern from "qwen3tts_debug.h":
    long qt_codec_encode_debug(qt_model *model, const float *wav, size_t n_samples, int stage, long chunk_samples,
                               float *out, size_t cap, int *n_cols, size_t *peak_bytes, char *err,
                               size_t err_len) nogil

CODEC_ENCODER_STAGES = {"codes": 0, "seanet": 1, "transformer": 2, "downsampled": 3}


cdef cnp.ndarray _wav1d(wav):
    a = np.asarray(wav)
    if a.ndim != 1:
        raise ValueError(f"wav must be 1-D mono samples, got shape {a.shape}")
    if a.size == 0:
        raise ValueError("the audio to encode is empty")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"wav must be numeric, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def codec_has_encoder(Model model):
    """Whether the model's GGUF holds the codec encoder (codec.enc.* tensors), which codec_encode needs."""
    return bool(qt_codec_has_encoder(model.ptr))


def codec_encode(Model model, wav):
    """Codes of 24 kHz mono float samples with the codec's (Mimi) encoder half (model.md 6.3): int32
    [ceil(n / 1920), 16]. Raises ValueError for empty or non-1-D input, EngineError for a model without codec
    encoder tensors or non-finite samples."""
    cdef cnp.ndarray w = _wav1d(wav)
    cdef size_t n = w.shape[0]
    cdef const float *wp = <const float *> cnp.PyArray_DATA(w)
    cdef char err[ERR_LEN]
    cdef long frames
    with nogil:
        frames = qt_codec_encode(model.ptr, wp, n, NULL, 0, err, ERR_LEN)  # size query
    if frames < 0:
        raise EngineError(err.decode(errors="replace"))
    cdef cnp.ndarray[cnp.int32_t, ndim=2, mode="c"] out = np.empty((frames, 16), dtype=np.int32)
    if frames == 0:
        return out
    cdef int32_t *op = &out[0, 0]
    cdef size_t cap = <size_t>frames * 16
    cdef long r
    with nogil:
        r = qt_codec_encode(model.ptr, wp, n, op, cap, err, ERR_LEN)
    if r < 0:
        raise EngineError(err.decode(errors="replace"))
    return out


def codec_encode_debug(Model model, wav, str stage="codes", long chunk_samples=0):
    """Diagnostics of the codec encoder: (array, {'seanet', 'rest'}: compute buffer bytes of the SEANet graph and
    of the transformer / downsample / RVQ graph). stage 'codes' gives the codes (int32
    [frames, 16]); 'seanet' / 'transformer' (25 Hz) and 'downsampled' (12.5 Hz) give float32 [rows, hidden].
    chunk_samples > 0 sets the SEANet chunk (rounded up to a multiple of its stride; the result must not depend
    on it)."""
    cdef int st = CODEC_ENCODER_STAGES[stage]
    cdef cnp.ndarray w = _wav1d(wav)
    cdef size_t n = w.shape[0]
    cdef const float *wp = <const float *> cnp.PyArray_DATA(w)
    cdef char err[ERR_LEN]
    cdef int cols = 0
    cdef size_t peak[2]
    peak[0] = 0
    peak[1] = 0
    cdef long r
    with nogil:
        r = qt_codec_encode_debug(model.ptr, wp, n, st, chunk_samples, NULL, 0, &cols, NULL, err, ERR_LEN)
    if r < 0:
        raise EngineError(err.decode(errors="replace"))
    cdef cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] out = np.empty(r, dtype=np.float32)
    cdef float *op = &out[0] if r > 0 else NULL
    if r > 0:
        with nogil:
            r = qt_codec_encode_debug(model.ptr, wp, n, st, chunk_samples, op, <size_t>out.shape[0], &cols, peak,
                                      err, ERR_LEN)
        if r < 0:
            raise EngineError(err.decode(errors="replace"))
    res = out.reshape(-1, max(cols, 1))
    if st == 0:
        res = res.astype(np.int32)
    return res, {"seanet": peak[0], "rest": peak[1]}
