# cython: language_level=3
"""Thin wrapper of the engine's C API (native/include/qwen3tts.h): numpy in, numpy out, the GIL released
around every call that computes. No model logic lives here; wyoming_qwen3tts.engine builds on it."""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, free
cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "qwen3tts.h":
    ctypedef struct qt_model:
        pass
    ctypedef struct qt_session:
        pass
    ctypedef struct qt_load_params:
        int n_threads
        int plain_kernels
    ctypedef struct qt_prompt:
        const int32_t *role_ids
        int n_role
        const int32_t *text_ids
        int n_text
        const int32_t *instruct_ids
        int n_instruct
        const int32_t *codec_prefix
        int n_codec_prefix
        int32_t speaker_codec_id
        const float *speaker_embedding
        const int32_t *ref_text_ids
        int n_ref_text
        const int32_t *ref_codes
        int n_ref_frames
        int non_streaming_text
    ctypedef struct qt_sampling:
        int do_sample
        float temperature
        int top_k
        float top_p
        float repetition_penalty
        int sub_do_sample
        float sub_temperature
        int sub_top_k
        float sub_top_p
        int min_frames
        int max_frames
        uint64_t seed
        int record
        const int32_t *forced_codes
        int n_forced

    enum: QT_NUM_CODE_GROUPS  # codes per frame in every frame buffer of the C API

    const char *qt_system_info()
    const char *qt_isa_level(int best)
    qt_model *qt_model_load(const char *path, const qt_load_params *params, char *err, size_t err_len) nogil
    void qt_model_free(qt_model *model)
    int qt_model_set_threads(qt_model *model, int n_threads)
    int qt_model_hidden_size(const qt_model *model)
    int qt_model_has_speaker_encoder(const qt_model *model)
    const char *qt_model_backend_name(const qt_model *model)
    const char *qt_model_kernels(const qt_model *model)
    qt_session *qt_session_new(qt_model *model, const qt_prompt *prompt, const qt_sampling *sampling, char *err, size_t err_len) nogil
    void qt_session_free(qt_session *session)
    int qt_session_next_frame(qt_session *session, int32_t *codes_out, char *err, size_t err_len) nogil
    int qt_session_prompt_length(const qt_session *session)
    void qt_session_timings(const qt_session *session, double *out3)
    long qt_quantize(int ggml_type, const float *src, int64_t n_rows, int64_t n_per_row, void *dst, size_t dst_cap, char *err, size_t err_len) nogil
    long qt_row_size(int ggml_type, int64_t n_per_row)
    int qt_block_size(int ggml_type)

# The parity and kernel-test hooks (not the product API).
cdef extern from "qwen3tts_debug.h":
    long qt_session_record(const qt_session *session, int kind, float *out, size_t cap, int *n_cols)
    int qt_vnni_matmul(int ggml_type, const void *rows, int64_t K, int64_t N, const float *x, int64_t ncols, float *out, int n_threads, char *err, size_t err_len) nogil

DEF ERR_LEN = 1024

RECORD_KINDS = {"prompt_embeds": 0, "step_inputs": 1, "talker_logits": 2, "talker_hidden": 3,
                "cp_prefill_in": 4, "cp_logits": 5}


class EngineError(RuntimeError):
    """An error reported by the C++ engine (bad model file, invalid prompt, out of memory)."""


def system_info():
    """ggml version, compute backend and the CPU features ggml was built to use."""
    return qt_system_info().decode()


def isa_level(bint best=False):
    """The instruction-set level the engine's kernels run at (QWEN3TTS_ISA can lower it), or with best=True the
    best level this CPU executes: "amx", "avx512", "avx2", "neon" or "generic"."""
    return qt_isa_level(best).decode()


def block_size(int ggml_type):
    return qt_block_size(ggml_type)


def row_size(int ggml_type, int64_t n_per_row):
    """Bytes of one row of n_per_row values in ggml_type, or -1 if the row length does not fit the type."""
    return qt_row_size(ggml_type, n_per_row)


def quantize(data, int ggml_type):
    """Quantizes a 2-D float32 array row by row with ggml's own quantizer; returns uint8 [rows, row_bytes]."""
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] src = np.ascontiguousarray(data, dtype=np.float32)
    cdef int64_t rows = src.shape[0], cols = src.shape[1]
    cdef long rs = qt_row_size(ggml_type, cols)
    if rs < 0:
        raise ValueError(f"a row of {cols} values does not fit ggml type {ggml_type}")
    cdef cnp.ndarray[cnp.uint8_t, ndim=2, mode="c"] dst = np.empty((rows, rs), dtype=np.uint8)
    cdef char err[ERR_LEN]
    cdef long r
    cdef const float *sp = &src[0, 0] if rows > 0 else NULL
    cdef void *dp = &dst[0, 0] if rows > 0 else NULL
    if rows == 0:
        return dst
    with nogil:
        r = qt_quantize(ggml_type, sp, rows, cols, dp, <size_t>(rows * rs), err, ERR_LEN)
    if r < 0:
        raise EngineError(err.decode(errors="replace"))
    return dst


def vnni_matmul(rows, int ggml_type, int64_t K, x, int threads=1):
    """Test entry of the packed mat-vec kernels (those of the ISA level in use): rows uint8 [N, row_bytes] of
    ggml_type Q4_K, Q8_0 or BF16 (as quantize() returns them) times x float32 [ncols, K] -> float32 [ncols, N].
    Raises EngineError where the level has no kernel for the type (the generic level has none)."""
    cdef cnp.ndarray[cnp.uint8_t, ndim=2, mode="c"] w = np.ascontiguousarray(rows, dtype=np.uint8)
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] xs = np.ascontiguousarray(x, dtype=np.float32)
    cdef int64_t N = w.shape[0], ncols = xs.shape[0]
    if xs.shape[1] != K or qt_row_size(ggml_type, K) != w.shape[1] or N == 0 or ncols == 0:
        raise ValueError("rows must be [N, row_size(type, K)] uint8 and x [ncols, K] float32")
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] out = np.empty((ncols, N), dtype=np.float32)
    cdef char err[ERR_LEN]
    cdef int r
    with nogil:
        r = qt_vnni_matmul(ggml_type, &w[0, 0], K, N, &xs[0, 0], ncols, &out[0, 0], threads, err, ERR_LEN)
    if r < 0:
        raise EngineError(err.decode(errors="replace"))
    return out


cdef cnp.ndarray _i32(obj):
    return np.ascontiguousarray(np.asarray(obj, dtype=np.int64).astype(np.int32).reshape(-1))


cdef cnp.ndarray _frames(codes, str what):
    a = np.asarray(codes)
    if a.ndim != 2 or a.shape[1] != QT_NUM_CODE_GROUPS:
        raise ValueError(f"{what} must have shape [frames, {QT_NUM_CODE_GROUPS}], got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.int32)


cdef const int32_t *_ptr(cnp.ndarray a):
    if a is None or a.size == 0:
        return NULL
    return <const int32_t *> cnp.PyArray_DATA(a)


cdef class Model:
    """A loaded GGUF (weights mmapped) and its compute backend."""
    cdef qt_model *ptr
    cdef public str path

    def __cinit__(self, str path, int threads=0, bint plain_kernels=False):
        """plain_kernels: ggml's mul_mat for every matrix (no packed copies, no fused decoder layers): the
        engine's reference point in tests."""
        cdef qt_load_params p
        cdef char err[ERR_LEN]
        p.n_threads = threads
        p.plain_kernels = plain_kernels
        b = path.encode()
        cdef const char *cpath = b
        with nogil:
            self.ptr = qt_model_load(cpath, &p, err, ERR_LEN)
        if self.ptr == NULL:
            raise EngineError(err.decode(errors="replace"))
        self.path = path

    def __dealloc__(self):
        if self.ptr != NULL:
            qt_model_free(self.ptr)
            self.ptr = NULL

    def set_threads(self, int threads):
        if qt_model_set_threads(self.ptr, threads) != 0:
            raise ValueError("threads must be >= 1")

    @property
    def hidden_size(self):
        return qt_model_hidden_size(self.ptr)

    @property
    def has_speaker_encoder(self):
        return bool(qt_model_has_speaker_encoder(self.ptr))

    @property
    def backend(self):
        return qt_model_backend_name(self.ptr).decode()

    @property
    def kernels(self):
        """How the talker and code predictor run: "talker: fused layers, packed q4_K; code predictor: ..."
        (or "ggml graph" for a stack whose weights are not packed); once a codec stream exists, also how the
        codec's matrices run ("; codec matrices: packed bf16" or "ggml")."""
        return qt_model_kernels(self.ptr).decode()


cdef class Session:
    """One synthesis. The prompt is laid out and prefilled at construction; next_frame() yields frames."""
    cdef qt_session *ptr
    cdef Model model  # keeps the model alive while the session exists

    def __cinit__(self, Model model, *, role_ids, text_ids, codec_prefix, instruct_ids=None,
                  int speaker_codec_id=-1, speaker_embedding=None, ref_text_ids=None, ref_codes=None,
                  bint non_streaming_text=True, bint do_sample=False, float temperature=0.9, int top_k=50,
                  float top_p=1.0, float repetition_penalty=1.05, bint sub_do_sample=False,
                  float sub_temperature=0.9, int sub_top_k=50, float sub_top_p=1.0, int min_frames=2,
                  int max_frames=2048, uint64_t seed=0, bint record=False, forced_codes=None):
        self.model = model
        cdef cnp.ndarray role = _i32(role_ids)
        cdef cnp.ndarray text = _i32(text_ids)
        cdef cnp.ndarray prefix = _i32(codec_prefix)
        cdef cnp.ndarray inst = _i32(instruct_ids) if instruct_ids is not None else None
        cdef cnp.ndarray ref_t = _i32(ref_text_ids) if ref_text_ids is not None else None
        cdef cnp.ndarray ref_c = None
        cdef cnp.ndarray spk = None
        # The values of the codes are the request's to check (SynthesisRequest.validate) and the engine's; their
        # shapes are checked here because the C side reads QT_NUM_CODE_GROUPS codes per frame.
        if ref_codes is not None:
            ref_c = _frames(ref_codes, "ref_codes")
        cdef cnp.ndarray forced = None
        if forced_codes is not None:
            # teacher forcing: these frames are returned (and fed back) instead of sampled ones
            forced = _frames(forced_codes, "forced_codes")
        if speaker_embedding is not None:
            spk = np.ascontiguousarray(speaker_embedding, dtype=np.float32).reshape(-1)
            if spk.size != model.hidden_size:
                raise ValueError(f"speaker_embedding must have {model.hidden_size} values, got {spk.size}")

        cdef qt_prompt p
        p.role_ids = _ptr(role); p.n_role = role.size
        p.text_ids = _ptr(text); p.n_text = text.size
        p.codec_prefix = _ptr(prefix); p.n_codec_prefix = prefix.size
        p.instruct_ids = _ptr(inst) if inst is not None else NULL
        p.n_instruct = inst.size if inst is not None else 0
        p.speaker_codec_id = speaker_codec_id
        p.speaker_embedding = <const float *> cnp.PyArray_DATA(spk) if spk is not None else NULL
        p.ref_text_ids = _ptr(ref_t) if ref_t is not None else NULL
        p.n_ref_text = ref_t.size if ref_t is not None else 0
        p.ref_codes = _ptr(ref_c) if ref_c is not None else NULL
        p.n_ref_frames = ref_c.shape[0] if ref_c is not None else 0
        p.non_streaming_text = non_streaming_text

        cdef qt_sampling s
        s.do_sample = do_sample; s.temperature = temperature; s.top_k = top_k; s.top_p = top_p
        s.repetition_penalty = repetition_penalty
        s.sub_do_sample = sub_do_sample; s.sub_temperature = sub_temperature; s.sub_top_k = sub_top_k
        s.sub_top_p = sub_top_p
        s.min_frames = min_frames; s.max_frames = max_frames; s.seed = seed; s.record = record
        s.forced_codes = _ptr(forced) if forced is not None else NULL
        s.n_forced = forced.shape[0] if forced is not None else 0

        cdef char err[ERR_LEN]
        with nogil:
            self.ptr = qt_session_new(model.ptr, &p, &s, err, ERR_LEN)
        if self.ptr == NULL:
            raise EngineError(err.decode(errors="replace"))

    def __dealloc__(self):
        if self.ptr != NULL:
            qt_session_free(self.ptr)
            self.ptr = NULL

    def next_frame(self):
        """The next frame as int32 [16], or None when generation has finished."""
        cdef cnp.ndarray[cnp.int32_t, ndim=1, mode="c"] codes = np.empty(QT_NUM_CODE_GROUPS, dtype=np.int32)
        cdef int32_t *cp = &codes[0]
        cdef char err[ERR_LEN]
        cdef int r
        with nogil:
            r = qt_session_next_frame(self.ptr, cp, err, ERR_LEN)
        if r < 0:
            raise EngineError(err.decode(errors="replace"))
        return codes if r == 1 else None

    @property
    def prompt_length(self):
        return qt_session_prompt_length(self.ptr)

    def record(self, str kind):
        """A recorded tensor (sessions created with record=True) as float32 [rows, cols]."""
        cdef int k = RECORD_KINDS[kind]
        cdef int cols = 0
        cdef long n = qt_session_record(self.ptr, k, NULL, 0, &cols)
        cdef cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] out = np.empty(n, dtype=np.float32)
        if n > 0:
            qt_session_record(self.ptr, k, &out[0], n, &cols)
            return out.reshape(-1, cols)
        return out.reshape(0, max(cols, 1))

    def timings(self):
        """Milliseconds spent so far: {'prefill', 'talker', 'code_predictor'}."""
        cdef double t[3]
        qt_session_timings(self.ptr, t)
        return {"prefill": t[0], "talker": t[1], "code_predictor": t[2]}


# ---- 12 Hz codec decoder -------------------------------------------------------------------------------------

cdef extern from "qwen3tts.h":
    ctypedef struct qt_codec_stream:
        pass
    int qt_codec_info(qt_model *model, int *samples_per_frame, int *sample_rate, int *num_quantizers, char *err, size_t err_len)
    qt_codec_stream *qt_codec_stream_new(qt_model *model, char *err, size_t err_len) nogil
    void qt_codec_stream_free(qt_codec_stream *stream)
    void qt_codec_stream_reset(qt_codec_stream *stream)
    long qt_codec_stream_position(const qt_codec_stream *stream)
    int qt_codec_stream_set_max_batch(qt_codec_stream *stream, int max_frames)
    void qt_codec_stream_set_threads(qt_codec_stream *stream, int n_threads)
    long qt_codec_stream_decode(qt_codec_stream *stream, const int32_t *codes, int n_frames, float *pcm_out, size_t cap, char *err, size_t err_len) nogil
    long qt_codec_decode_chunked(qt_model *model, const int32_t *codes, int n_frames, int chunk, int left_context, float *pcm_out, size_t cap, char *err, size_t err_len) nogil

cdef extern from "qwen3tts_debug.h":
    long qt_codec_debug_stage(qt_model *model, const int32_t *codes, int n_frames, int stage, float *out, size_t cap, int *n_cols, char *err, size_t err_len) nogil

CODEC_STAGES = {"quantized": 0, "pre_conv": 1, "pre_transformer": 2, "waveform": 3}


cdef cnp.ndarray _codes2d(codes, int n_q):
    a = np.asarray(codes)
    if a.ndim != 2 or a.shape[1] != n_q:
        raise ValueError(f"codes must have shape [frames, {n_q}], got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {a.dtype}")
    if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
        raise ValueError("codes are out of the int32 range")
    return np.ascontiguousarray(a, dtype=np.int32)


def codec_info(Model model):
    """{'samples_per_frame', 'sample_rate', 'num_quantizers'} of the model's codec decoder."""
    cdef int spf = 0, sr = 0, nq = 0
    cdef char err[ERR_LEN]
    if qt_codec_info(model.ptr, &spf, &sr, &nq, err, ERR_LEN) != 0:
        raise EngineError(err.decode(errors="replace"))
    return {"samples_per_frame": spf, "sample_rate": sr, "num_quantizers": nq}


cdef class CodecStream:
    """Streaming codec decoder: decode(codes [n, 16]) -> float32 [n * samples_per_frame], frames as they come.
    The concatenated output of successive calls equals a one-shot decode of all frames."""
    cdef qt_codec_stream *ptr
    cdef Model model  # keeps the model alive while the stream exists
    cdef readonly int samples_per_frame
    cdef readonly int sample_rate
    cdef readonly int num_quantizers

    def __cinit__(self, Model model, int max_batch=0, int threads=0):
        cdef char err[ERR_LEN]
        info = codec_info(model)
        self.samples_per_frame = info["samples_per_frame"]
        self.sample_rate = info["sample_rate"]
        self.num_quantizers = info["num_quantizers"]
        self.model = model
        with nogil:
            self.ptr = qt_codec_stream_new(model.ptr, err, ERR_LEN)
        if self.ptr == NULL:
            raise EngineError(err.decode(errors="replace"))
        if max_batch > 0:
            qt_codec_stream_set_max_batch(self.ptr, max_batch)
        qt_codec_stream_set_threads(self.ptr, threads)

    def __dealloc__(self):
        if self.ptr != NULL:
            qt_codec_stream_free(self.ptr)
            self.ptr = NULL

    def set_max_batch(self, int max_frames):
        """Frames per internal graph (longer calls are split; exact)."""
        if qt_codec_stream_set_max_batch(self.ptr, max_frames) != 0:
            raise ValueError("max_frames must be >= 1")

    def set_threads(self, int threads):
        """Compute threads of this stream; <= 0 follows the model's thread count."""
        qt_codec_stream_set_threads(self.ptr, threads)

    def reset(self):
        qt_codec_stream_reset(self.ptr)

    @property
    def position(self):
        """Frames decoded so far."""
        return qt_codec_stream_position(self.ptr)

    def decode(self, codes):
        """Decodes the next frames, codes int [n, 16]; returns float32 [n * samples_per_frame]."""
        cdef cnp.ndarray c = _codes2d(codes, self.num_quantizers)
        cdef int n = c.shape[0]
        cdef size_t cap = <size_t>n * self.samples_per_frame
        cdef cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] out = np.empty(cap, dtype=np.float32)
        if n == 0:
            return out
        cdef const int32_t *cp = <const int32_t *> cnp.PyArray_DATA(c)
        cdef float *op = &out[0]
        cdef char err[ERR_LEN]
        cdef long r
        with nogil:
            r = qt_codec_stream_decode(self.ptr, cp, n, op, cap, err, ERR_LEN)
        if r < 0:
            raise EngineError(err.decode(errors="replace"))
        return out


def codec_decode_chunked(Model model, codes, int chunk=300, int left_context=25):
    """The reference's decode(): codes int [n, 16] -> float32 [n * samples_per_frame], decoded in chunks of
    `chunk` frames, each from scratch with up to `left_context` frames of context (qwen-tts: 300 / 25)."""
    info = codec_info(model)
    cdef cnp.ndarray c = _codes2d(codes, info["num_quantizers"])
    cdef int n = c.shape[0]
    cdef size_t cap = <size_t>n * info["samples_per_frame"]
    cdef cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] out = np.empty(cap, dtype=np.float32)
    if n == 0:
        return out
    if chunk <= 0 or left_context < 0:
        raise ValueError("chunk must be >= 1 and left_context >= 0")
    cdef const int32_t *cp = <const int32_t *> cnp.PyArray_DATA(c)
    cdef float *op = &out[0]
    cdef char err[ERR_LEN]
    cdef long r
    with nogil:
        r = qt_codec_decode_chunked(model.ptr, cp, n, chunk, left_context, op, cap, err, ERR_LEN)
    if r < 0:
        raise EngineError(err.decode(errors="replace"))
    return out


def codec_debug_stage(Model model, codes, str stage):
    """One-shot decode returning an intermediate tensor as float32 [frames, width]: 'quantized' [T, codebook_dim],
    'pre_conv' / 'pre_transformer' [T, latent], 'waveform' [T, samples_per_frame]."""
    cdef int st = CODEC_STAGES[stage]
    info = codec_info(model)
    cdef cnp.ndarray c = _codes2d(codes, info["num_quantizers"])
    cdef int n = c.shape[0]
    cdef const int32_t *cp = <const int32_t *> cnp.PyArray_DATA(c) if n > 0 else NULL
    cdef char err[ERR_LEN]
    cdef int cols = 0
    cdef long r
    with nogil:
        r = qt_codec_debug_stage(model.ptr, cp, n, st, NULL, 0, &cols, err, ERR_LEN)
    if r < 0:
        raise EngineError(err.decode(errors="replace"))
    cdef cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] out = np.empty(r, dtype=np.float32)
    cdef float *op = &out[0] if r > 0 else NULL
    if r > 0:
        with nogil:
            r = qt_codec_debug_stage(model.ptr, cp, n, st, op, <size_t>out.shape[0], &cols, err, ERR_LEN)
        if r < 0:
            raise EngineError(err.decode(errors="replace"))
    return out.reshape(-1, max(cols, 1))


# Voice cloning: the speaker encoder and the codec encoder (declared in qwen3tts.h).
include "speaker.pxi"
include "codec_encoder.pxi"
include "conv_packed.pxi"
