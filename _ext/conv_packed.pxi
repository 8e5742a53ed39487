# Test entry of the packed convolution kernel (native/src/kernels/packed_conv.h: AVX2 and AVX512-BF16 on x86-64, NEON
# on ARM64; declared in qwen3tts_debug.h). Included at the end of engine.pyx.

cdef extern from "qwen3tts_debug.h":
    int qt_conv_packed(const float *w, int cin, int cout, int k, int dil, int stride, const float *x, int64_t Tx,
                       int64_t T, const float *bias, const float *ea, const float *ib, const float *residual,
                       int weights, float *out, int n_threads, char *err, size_t err_len) nogil


cdef const float *_opt_f32(cnp.ndarray a):
    return <const float *>a.data if a is not None else NULL


CONV_WEIGHT_FORMS = {"bf16": 0, "f32": 1, "bf16_pairs": 2}  # qt_conv_weights


def conv_packed(w, x, int64_t T, int dil=1, int stride=1, bias=None, snake=None, residual=None, int threads=1,
                str weights="bf16"):
    """out [T, cout] = epilogue(sum_j x[t*stride + j*dil] @ w[:, j, :].T) on the packed conv kernel, with w float32
    [cout, k, cin] packed as `weights`: "bf16" (rounded to BF16, FP32 inputs), "f32" (as given) or "bf16_pairs"
    (weights and inputs rounded to BF16, AVX512-BF16), x float32 [Tx, cin]; epilogue: + bias [cout], + residual
    [T, cout], then SnakeBeta with snake = (exp(alpha), 1 / (exp(beta) + 1e-9)), each [cout]. Raises EngineError
    below the avx2 (x86-64) / neon (ARM64) level, and for "bf16_pairs" without AVX512-BF16 at the level in use."""
    if weights not in CONV_WEIGHT_FORMS:
        raise ValueError(f"weights must be one of {sorted(CONV_WEIGHT_FORMS)}")
    cdef int form = CONV_WEIGHT_FORMS[weights]
    cdef cnp.ndarray[cnp.float32_t, ndim=3, mode="c"] ws = np.ascontiguousarray(w, dtype=np.float32)
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] xs = np.ascontiguousarray(x, dtype=np.float32)
    cdef int cout = ws.shape[0], k = ws.shape[1], cin = ws.shape[2]
    if xs.shape[1] != cin or T < 1 or cout < 1:
        raise ValueError("x must be [Tx, cin] and T >= 1")
    cdef cnp.ndarray b = None, ea = None, ib = None, r = None
    if bias is not None:
        b = np.ascontiguousarray(bias, dtype=np.float32).reshape(cout)
    if snake is not None:
        ea = np.ascontiguousarray(snake[0], dtype=np.float32).reshape(cout)
        ib = np.ascontiguousarray(snake[1], dtype=np.float32).reshape(cout)
    if residual is not None:
        r = np.ascontiguousarray(residual, dtype=np.float32).reshape(T, cout)
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] out = np.empty((T, cout), dtype=np.float32)
    cdef const float *bp = _opt_f32(b)
    cdef const float *eap = _opt_f32(ea)
    cdef const float *ibp = _opt_f32(ib)
    cdef const float *rp = _opt_f32(r)
    cdef char err[ERR_LEN]
    cdef int rc
    with nogil:
        rc = qt_conv_packed(&ws[0, 0, 0], cin, cout, k, dil, stride, &xs[0, 0], xs.shape[0], T, bp, eap, ibp, rp,
                            form, &out[0, 0], threads, err, ERR_LEN)
    if rc < 0:
        raise EngineError(err.decode(errors="replace"))
    return out
