// kernel_replay.cpp: runs one kernel test entry of qwen3tts_debug.h on raw files, for machines the Python package is
// not built on (an ARM64 build under qemu in CI). The host makes the inputs and checks the output against its own
// reference (tests/test_arm64.py), exactly as the x86 kernel tests do through the Python binding.
//
//   kernel_replay matvec TYPE K N NCOLS THREADS ROWS.bin X.bin OUT.bin
//   kernel_replay conv CIN COUT K DIL STRIDE T THREADS WEIGHTS W.bin X.bin BIAS.bin EA.bin IB.bin RES.bin OUT.bin
//   kernel_replay encode MODEL.gguf WAV.bin STAGE OUT.bin
//   kernel_replay xvector MODEL.gguf MEL.bin OUT.bin
//   kernel_replay decode MODEL.gguf CODES.bin PIECE OUT.bin
//
// matvec (qt_vnni_matmul): ROWS.bin: N rows of K values in the ggml type TYPE's row layout (ggml_type number: 8
// Q8_0, 12 Q4_K, 30 BF16); X.bin: float32 [NCOLS][K]; OUT.bin receives float32 [NCOLS][N].
// conv (qt_conv_packed): W.bin: float32 [COUT][K][CIN] packed in the form WEIGHTS (qt_conv_weights: 0 BF16, 1 F32,
// 2 BF16 pairs); X.bin: float32 [Tx][CIN] (Tx from its size); BIAS.bin, EA.bin, IB.bin: float32 [COUT], RES.bin:
// float32 [T][COUT], each "-" for none; OUT.bin receives float32 [T][COUT].
// encode (qt_codec_encode_debug; the codec encoder's convolutions and ELU on the packed conv kernel for a GGUF that
// is not f32): WAV.bin: float32 24 kHz samples; STAGE 1 SEANet, 2 transformer, 3 downsampled; OUT.bin receives
// the stage's float32 rows.
// xvector (qt_speaker_embedding; the speaker encoder's convs on the packed conv kernel for a GGUF that is not f32):
// MEL.bin: float32 [frames][128] log-mel; OUT.bin receives the float32 x-vector.
// decode (qt_codec_stream_decode; the codec decoder, whose convs run on the packed conv kernel for a GGUF that is not
// f32): CODES.bin: int32 [frames][16]; decoded by one stream in calls of PIECE frames; OUT.bin receives the float32
// waveform.
// Prints the engine's ISA level; exits 1 with the engine's message on an error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qwen3tts.h"
#include "qwen3tts_debug.h"
#include "tests/replay_io.h"

namespace {

int matvec(char **argv) {
    const int type = std::atoi(argv[0]);
    const int64_t K = std::atoll(argv[1]), N = std::atoll(argv[2]), ncols = std::atoll(argv[3]);
    const int threads = std::atoi(argv[4]);
    const std::vector<char> rows = read_raw(argv[5]), x = read_raw(argv[6]);
    if (K <= 0 || N <= 0 || ncols <= 0 || x.size() != (size_t)(ncols * K) * sizeof(float) ||
        rows.size() != (size_t)qt_row_size(type, K) * (size_t)N)
        throw std::runtime_error("input files do not match TYPE K N NCOLS");
    std::vector<float> out((size_t)(ncols * N));
    char err[1024];
    if (qt_vnni_matmul(type, rows.data(), K, N, (const float *)x.data(), ncols, out.data(), threads, err, sizeof err) !=
        0)
        throw std::runtime_error(err);
    write_raw(argv[7], out.data(), out.size() * sizeof(float));
    return 0;
}

// The floats of an optional input file ("-": none, empty) of exactly n values.
std::vector<float> read_floats(const char *path, size_t n) {
    if (std::string(path) == "-") return {};
    const std::vector<char> raw = read_raw(path);
    if (raw.size() != n * sizeof(float)) throw std::runtime_error(std::string(path) + " does not match the shape");
    std::vector<float> v(n);
    std::memcpy(v.data(), raw.data(), raw.size());
    return v;
}

const float *data_or_null(const std::vector<float> &v) { return v.empty() ? nullptr : v.data(); }

int conv(char **argv) {
    const int cin = std::atoi(argv[0]), cout = std::atoi(argv[1]), k = std::atoi(argv[2]), dil = std::atoi(argv[3]);
    const int stride = std::atoi(argv[4]), threads = std::atoi(argv[6]), weights = std::atoi(argv[7]);
    const int64_t T = std::atoll(argv[5]);
    if (cin <= 0 || cout <= 0 || k <= 0 || T <= 0) throw std::runtime_error("bad CIN COUT K T");
    const std::vector<char> xraw = read_raw(argv[9]);
    const int64_t Tx = (int64_t)(xraw.size() / (sizeof(float) * cin));
    if (xraw.size() != (size_t)(Tx * cin) * sizeof(float)) throw std::runtime_error("X.bin is not [Tx][CIN]");
    const std::vector<float> w = read_floats(argv[8], (size_t)cout * k * cin), x = read_floats(argv[9], Tx * cin);
    const std::vector<float> bias = read_floats(argv[10], cout), ea = read_floats(argv[11], cout),
                             ib = read_floats(argv[12], cout), res = read_floats(argv[13], (size_t)(T * cout));
    std::vector<float> out((size_t)(T * cout));
    char err[1024];
    if (qt_conv_packed(w.data(), cin, cout, k, dil, stride, x.data(), Tx, T, data_or_null(bias), data_or_null(ea),
                       data_or_null(ib), data_or_null(res), weights, out.data(), threads, err, sizeof err) != 0)
        throw std::runtime_error(err);
    write_raw(argv[14], out.data(), out.size() * sizeof(float));
    return 0;
}

using ModelPtr = std::unique_ptr<qt_model, decltype(&qt_model_free)>;

ModelPtr load(const char *path) {
    char err[1024];
    qt_load_params params = {};
    params.n_threads = 2;
    ModelPtr model(qt_model_load(path, &params, err, sizeof err), &qt_model_free);
    if (!model) throw std::runtime_error(err);
    return model;
}

// One stage of the codec encoder (qt_codec_encode_debug: 1 SEANet, 2 transformer, 3 downsampled) of a 24 kHz wav.
int encode(char **argv) {
    const int stage = std::atoi(argv[2]);
    const std::vector<char> raw = read_raw(argv[1]);
    const size_t n = raw.size() / sizeof(float);
    char err[1024];
    ModelPtr model = load(argv[0]);
    const float *wav = (const float *)raw.data();
    int cols = 0;
    const long total =
        qt_codec_encode_debug(model.get(), wav, n, stage, 0, nullptr, 0, &cols, nullptr, err, sizeof err);
    if (total < 0) throw std::runtime_error(err);
    std::vector<float> out((size_t)total);
    if (qt_codec_encode_debug(model.get(), wav, n, stage, 0, out.data(), out.size(), &cols, nullptr, err, sizeof err) !=
        total)
        throw std::runtime_error(err);
    write_raw(argv[3], out.data(), out.size() * sizeof(float));
    return 0;
}

// The x-vector of a log-mel [frames][128].
int xvector(char **argv) {
    const int mel_dim = 128;
    const std::vector<char> raw = read_raw(argv[1]);
    const int frames = (int)(raw.size() / sizeof(float) / mel_dim);
    char err[1024];
    ModelPtr model = load(argv[0]);
    std::vector<float> out(8192);
    const long n = qt_speaker_embedding(model.get(), (const float *)raw.data(), frames, mel_dim, out.data(), out.size(),
                                        err, sizeof err);
    if (n < 0) throw std::runtime_error(err);
    write_raw(argv[2], out.data(), (size_t)n * sizeof(float));
    return 0;
}

// The waveform of codes [frames][16], decoded by one codec stream in calls of `piece` frames.
int decode(char **argv) {
    const std::vector<char> raw = read_raw(argv[1]);
    const int piece = std::atoi(argv[2]);
    const int nq = 16, frames = (int)(raw.size() / sizeof(int32_t) / nq);
    if (piece < 1 || raw.size() != (size_t)frames * nq * sizeof(int32_t)) throw std::runtime_error("bad CODES / PIECE");
    char err[1024];
    ModelPtr model = load(argv[0]);
    int spf = 0, rate = 0, n_q = 0;
    if (qt_codec_info(model.get(), &spf, &rate, &n_q, err, sizeof err) != 0 || n_q != nq) throw std::runtime_error(err);
    std::unique_ptr<qt_codec_stream, decltype(&qt_codec_stream_free)> stream(
        qt_codec_stream_new(model.get(), err, sizeof err), &qt_codec_stream_free);
    if (!stream || qt_codec_stream_set_max_batch(stream.get(), piece) != 0) throw std::runtime_error(err);
    const int32_t *codes = (const int32_t *)raw.data();
    std::vector<float> pcm((size_t)frames * spf);
    for (int f = 0; f < frames; f += piece) {
        const int n = std::min(piece, frames - f);
        if (qt_codec_stream_decode(stream.get(), codes + (size_t)f * nq, n, pcm.data() + (size_t)f * spf,
                                   (size_t)n * spf, err, sizeof err) != (long)n * spf)
            throw std::runtime_error(err);
    }
    write_raw(argv[3], pcm.data(), pcm.size() * sizeof(float));
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    try {
        printf("engine ISA: %s\n%s\n", qt_isa_level(0), qt_system_info());
        if (argc == 10 && std::string(argv[1]) == "matvec") return matvec(argv + 2);
        if (argc == 17 && std::string(argv[1]) == "conv") return conv(argv + 2);
        if (argc == 6 && std::string(argv[1]) == "encode") return encode(argv + 2);
        if (argc == 5 && std::string(argv[1]) == "xvector") return xvector(argv + 2);
        if (argc == 6 && std::string(argv[1]) == "decode") return decode(argv + 2);
        fprintf(stderr,
                "usage: kernel_replay matvec TYPE K N NCOLS THREADS ROWS.bin X.bin OUT.bin\n"
                "       kernel_replay conv CIN COUT K DIL STRIDE T THREADS WEIGHTS W.bin X.bin BIAS.bin EA.bin "
                "IB.bin RES.bin OUT.bin\n"
                "       kernel_replay encode MODEL.gguf WAV.bin STAGE OUT.bin\n"
                "       kernel_replay xvector MODEL.gguf MEL.bin OUT.bin\n"
                "       kernel_replay decode MODEL.gguf CODES.bin PIECE OUT.bin\n");
        return 2;
    } catch (const std::exception &e) {
        fprintf(stderr, "kernel_replay: %s\n", e.what());
        return 1;
    }
}
