// speaker_encoder.h: the ECAPA-TDNN speaker encoder of the Base models (model.md 5.2) on ggml: log-mel [T, 128]
// -> x-vector [enc_dim] (= talker hidden size). The mel itself (model.md 5.1) is computed by the caller
// (wyoming_qwen3tts/audio.py).
#pragma once

#include <memory>
#include <vector>

#include "runtime/model.h"

namespace qt {

// `qwen3-tts.speaker_encoder.*` (docs/gguf.md).
struct SpeakerEncoderHParams {
    int mel_dim = 128;
    int enc_dim = 1024;            // x-vector width, always the talker hidden size
    int attention_channels = 128;  // ASP
    int res2net_scale = 8;
    int se_channels = 128;
    int sample_rate = 24000;
    std::vector<int> channels;      // [512, 512, 512, 512, 1536]: block 0, the SE-Res2Net blocks, MFA
    std::vector<int> kernel_sizes;  // [5, 3, 3, 3, 1]
    std::vector<int> dilations;     // [1, 2, 3, 4, 1]
    int min_frames = 1;             // fewest mel frames every reflect padding accepts (pad < length)
};

// Reads and checks the hyper-parameters. Throws Error("this model has no speaker encoder ...") for a model
// without one.
SpeakerEncoderHParams read_speaker_encoder_hparams(const Model &m);

struct SpeakerEncWeights;
// The model's speaker encoder weights (checked, and on the tile path packed), built on first use (thread-safe).
// Throws like read_speaker_encoder_hparams.
std::shared_ptr<const SpeakerEncWeights> load_speaker_enc_weights(const Model &m);

// The x-vector's width (enc_dim); prepares the weights like load_speaker_enc_weights.
int speaker_embedding_size(const Model &m);

// x-vector of a log-mel given as [n_frames][mel_dim] row-major (frame after frame). Writes enc_dim floats.
// Builds, runs and frees one graph (reference audio is encoded once per voice).
void speaker_embedding(const Model &m, const float *mel, int n_frames, int mel_dim, float *out);

}  // namespace qt
