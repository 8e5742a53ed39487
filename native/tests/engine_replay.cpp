// engine_replay.cpp: runs one resolved request through the C API (qwen3tts.h) without Python, for machines the
// Python package is not built on (an ARM64 build under qemu in CI). The host resolves the request with
// wyoming_qwen3tts (tokenizer, speaker and language ids) and writes it as text; this program generates the
// frames, decodes them with a codec stream, and writes codes (int32 [frames][16]) and PCM (float32) as raw files
// that the host compares with the reference oracle and with its own engine.
//
//   engine_replay MODEL.gguf REQUEST.txt CODES.bin PCM.bin
//
// REQUEST.txt: one field a line, "name value..."; id lists are space-separated integers. Fields: role_ids,
// text_ids, codec_prefix, instruct_ids, speaker_codec_id, non_streaming_text, max_frames, min_frames and the
// sampling values (do_sample, temperature, top_k, top_p, repetition_penalty, sub_*; the parity oracle is greedy).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "qwen3tts.h"
#include "tests/replay_io.h"

namespace {

using Fields = std::map<std::string, std::vector<double>>;  // ids are exact in a double

Fields read_request(const char *path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(std::string("cannot read ") + path);
    Fields f;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string name;
        if (!(ls >> name)) continue;
        std::vector<double> &v = f[name];
        for (double x; ls >> x;) v.push_back(x);
    }
    return f;
}

std::vector<int32_t> ids(const Fields &f, const char *name) {
    auto it = f.find(name);
    if (it == f.end()) return {};
    std::vector<int32_t> out;
    for (double x : it->second) out.push_back((int32_t)x);
    return out;
}

double scalar(const Fields &f, const char *name, double fallback) {
    auto it = f.find(name);
    return it == f.end() || it->second.empty() ? fallback : it->second[0];
}

// The C API's handles, freed by their own functions.
using ModelPtr = std::unique_ptr<qt_model, decltype(&qt_model_free)>;
using SessionPtr = std::unique_ptr<qt_session, decltype(&qt_session_free)>;
using StreamPtr = std::unique_ptr<qt_codec_stream, decltype(&qt_codec_stream_free)>;

// A request's prompt and sampling values; the prompt points into the id lists.
struct Request {
    std::vector<int32_t> role, text, prefix, instruct;
    qt_prompt prompt = {};
    qt_sampling sampling = {};

    explicit Request(const Fields &f)
        : role(ids(f, "role_ids")),
          text(ids(f, "text_ids")),
          prefix(ids(f, "codec_prefix")),
          instruct(ids(f, "instruct_ids")) {
        qt_prompt &p = prompt;
        p.role_ids = role.data(), p.n_role = (int)role.size();
        p.text_ids = text.data(), p.n_text = (int)text.size();
        p.codec_prefix = prefix.data(), p.n_codec_prefix = (int)prefix.size();
        p.instruct_ids = instruct.empty() ? nullptr : instruct.data(), p.n_instruct = (int)instruct.size();
        p.speaker_codec_id = (int32_t)scalar(f, "speaker_codec_id", -1);
        p.non_streaming_text = (int)scalar(f, "non_streaming_text", 1);
        qt_sampling &s = sampling;
        s.min_frames = (int)scalar(f, "min_frames", 2);
        s.max_frames = (int)scalar(f, "max_frames", 64);
        s.do_sample = (int)scalar(f, "do_sample", 0), s.sub_do_sample = (int)scalar(f, "sub_do_sample", 0);
        s.temperature = (float)scalar(f, "temperature", 1), s.sub_temperature = (float)scalar(f, "sub_temperature", 1);
        s.top_k = (int)scalar(f, "top_k", 0), s.sub_top_k = (int)scalar(f, "sub_top_k", 0);
        s.top_p = (float)scalar(f, "top_p", 1), s.sub_top_p = (float)scalar(f, "sub_top_p", 1);
        s.repetition_penalty = (float)scalar(f, "repetition_penalty", 1);
        s.seed = (uint64_t)scalar(f, "seed", 0);
    }
    Request(const Request &) = delete;  // prompt points into this object's vectors
};

// The frames of one session, [n][16] row-major.
std::vector<int32_t> generate(qt_model *model, const Request &r) {
    char err[1024] = "";
    SessionPtr session(qt_session_new(model, &r.prompt, &r.sampling, err, sizeof err), qt_session_free);
    if (!session) throw std::runtime_error(std::string("session: ") + err);
    std::vector<int32_t> codes;
    int32_t frame[QT_NUM_CODE_GROUPS];
    int rc;
    while ((rc = qt_session_next_frame(session.get(), frame, err, sizeof err)) == 1)
        codes.insert(codes.end(), frame, frame + QT_NUM_CODE_GROUPS);
    if (rc < 0) throw std::runtime_error(std::string("next_frame: ") + err);
    return codes;
}

// The PCM of the frames, decoded by one codec stream in two calls: the stream's state carried across a split must
// give the one-shot result.
std::vector<float> decode(qt_model *model, const std::vector<int32_t> &codes) {
    char err[1024] = "";
    int spf = 0, rate = 0, nq = 0;
    if (qt_codec_info(model, &spf, &rate, &nq, err, sizeof err) != 0)
        throw std::runtime_error(std::string("codec: ") + err);
    StreamPtr stream(qt_codec_stream_new(model, err, sizeof err), qt_codec_stream_free);
    if (!stream) throw std::runtime_error(std::string("codec stream: ") + err);
    const int n_frames = (int)(codes.size() / QT_NUM_CODE_GROUPS), first = n_frames / 2;
    std::vector<float> pcm((size_t)n_frames * spf);
    long a = qt_codec_stream_decode(stream.get(), codes.data(), first, pcm.data(), pcm.size(), err, sizeof err);
    long b = a < 0 ? -1
                   : qt_codec_stream_decode(stream.get(), codes.data() + (size_t)first * QT_NUM_CODE_GROUPS,
                                            n_frames - first, pcm.data() + a, pcm.size() - a, err, sizeof err);
    if (a < 0 || b < 0) throw std::runtime_error(std::string("decode: ") + err);
    return pcm;
}

int run(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf REQUEST.txt CODES.bin PCM.bin\n", argv[0]);
        return 2;
    }
    char err[1024] = "";
    printf("%s\nengine ISA: %s\n", qt_system_info(), qt_isa_level(0));
    qt_load_params lp = {/*n_threads=*/2, /*plain_kernels=*/0};
    ModelPtr model(qt_model_load(argv[1], &lp, err, sizeof err), qt_model_free);
    if (!model) throw std::runtime_error(std::string("load: ") + err);
    printf("kernels: %s\n", qt_model_kernels(model.get()));

    const Request request(read_request(argv[2]));
    const std::vector<int32_t> codes = generate(model.get(), request);
    write_raw(argv[3], codes.data(), codes.size() * sizeof(int32_t));
    const std::vector<float> pcm = decode(model.get(), codes);
    write_raw(argv[4], pcm.data(), pcm.size() * sizeof(float));
    printf("frames: %d, samples: %zu\n", (int)(codes.size() / QT_NUM_CODE_GROUPS), pcm.size());
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception &e) {
        fprintf(stderr, "engine_replay: %s\n", e.what());
        return 1;
    }
}
