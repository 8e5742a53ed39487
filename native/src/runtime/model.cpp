// model.cpp: loads a qwen3-tts GGUF. Tensor data stays in a read-only mmap of the file (pages that are
// never touched, like most of the 151936-row text embedding, are never read from disk); ggml tensors point
// into it through a CPU buffer wrapped around the mapping.
#include "runtime/model.h"
#include "runtime/graph.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "kernels/packed_matvec.h"
#include "runtime/cpu_backend.h"
#include "runtime/gguf_meta.h"

namespace qt {

namespace {

template <class S>
struct IntKey {
    int S::*field;
    const char *key;
};

// Reads the integer metadata keys `prefix` + key into their fields of out.
template <class S, size_t N>
void read_ints(const Meta &kv, const std::string &prefix, const IntKey<S> (&keys)[N], S &out) {
    for (const IntKey<S> &k : keys) out.*k.field = kv.i32(prefix + k.key);
}

DecoderHParams read_decoder(const Meta &kv, const std::string &p) {
    using H = DecoderHParams;
    static const IntKey<H> keys[] = {{&H::n_layer, ".block_count"},
                                     {&H::n_embd, ".embedding_length"},
                                     {&H::n_ff, ".feed_forward_length"},
                                     {&H::n_head, ".attention.head_count"},
                                     {&H::n_head_kv, ".attention.head_count_kv"},
                                     {&H::head_dim, ".attention.key_length"},
                                     {&H::vocab, ".vocab_size"}};
    H h;
    read_ints(kv, p, keys, h);
    h.eps = kv.f32(p + ".attention.layer_norm_rms_epsilon");
    h.rope_base = kv.f32(p + ".rope.freq_base");
    if (h.n_layer <= 0 || h.n_embd <= 0 || h.n_head <= 0 || h.n_head_kv <= 0 || h.head_dim <= 0 ||
        h.n_head % h.n_head_kv != 0 || h.n_ff <= 0 || h.vocab <= 0)
        throw Error("GGUF hyper-parameters of '" + p + "' are inconsistent");
    return h;
}

HParams read_hparams(const Meta &kv) {
    static const IntKey<HParams> keys[] = {{&HParams::text_vocab, "talker.text_vocab_size"},
                                           {&HParams::text_embd, "talker.text_embedding_length"},
                                           {&HParams::n_groups, "talker.num_code_groups"},
                                           {&HParams::codec_pad, "talker.codec.pad_id"},
                                           {&HParams::codec_bos, "talker.codec.bos_id"},
                                           {&HParams::codec_eos, "talker.codec.eos_id"},
                                           {&HParams::tts_pad, "text.tts_pad_id"},
                                           {&HParams::tts_bos, "text.tts_bos_id"},
                                           {&HParams::tts_eos, "text.tts_eos_id"}};
    HParams hp;
    hp.model_type = kv.str("qwen3-tts.model_type");
    hp.talker = read_decoder(kv, "qwen3-tts.talker");
    hp.cp = read_decoder(kv, "qwen3-tts.code_predictor");
    read_ints(kv, "qwen3-tts.", keys, hp);
    if (hp.n_groups != 16) throw Error("only 16 code groups are supported");
    return hp;
}

// Weights that are only ever the left operand of a mul_mat (see the converter's type policy).
bool is_matmul_weight(const std::string &n) {
    static const char *blk_suffixes[] = {"attn_q.weight",   "attn_k.weight", "attn_v.weight",  "attn_output.weight",
                                         "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
    auto starts = [&](const char *p) { return n.rfind(p, 0) == 0; };
    auto ends = [&](const char *x) {
        size_t l = strlen(x);
        return n.size() >= l && n.compare(n.size() - l, l, x) == 0;
    };
    if (starts("talker.blk.") || starts("cp.blk."))
        for (const char *x : blk_suffixes)
            if (ends(x)) return true;
    return n == "talker.codec_head.weight" || n == "talker.text_proj.fc1.weight" ||
           n == "talker.text_proj.fc2.weight" || n == "cp.input_proj.weight" || (starts("cp.head.") && ends(".weight"));
}

// The CPU backend's interleaved "repack" buffer type if its mat-vec kernel takes this weight: asked the way
// the backend itself decides, with a mul_mat on a zero-size buffer. (Its AMX buffer type is not used: in
// ggml 0.20.2 its Q4_K mul_mat crashed on a 20-row batch here.)
ggml_backend_buffer_type_t extra_buffer_type_for(ggml_backend_dev_t dev, ggml_backend_buffer_type_t *bufts,
                                                 const ggml_tensor *w) {
    if (!bufts || !ggml_is_quantized(w->type) || ggml_n_dims(w) != 2) return nullptr;
    for (; *bufts; bufts++) {
        if (strcmp(ggml_backend_buft_name(*bufts), "CPU_REPACK") != 0) continue;
        ggml_init_params ip = {4 * ggml_tensor_overhead(), nullptr, /*no_alloc=*/true};
        ggml_context_ptr c(ggml_init(ip));
        ggml_tensor *wc = ggml_new_tensor_2d(c.get(), w->type, w->ne[0], w->ne[1]);
        ggml_tensor *op = ggml_mul_mat(c.get(), wc, ggml_new_tensor_2d(c.get(), GGML_TYPE_F32, w->ne[0], 1));
        ggml_backend_buffer_ptr probe(ggml_backend_buft_alloc_buffer(*bufts, 0));
        wc->buffer = probe.get();
        if (ggml_backend_dev_supports_op(dev, op)) return *bufts;
    }
    return nullptr;
}

void release_range(const void *p, size_t n) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + pg - 1) & ~(pg - 1), hi = ((uintptr_t)p + n) & ~(pg - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

size_t mapping_size(const Model &m) { return m.mapping.get_deleter().size; }

// Where tensor data starts in the mapping, and where tensor `id`'s (or t's) bytes are.
char *file_data(const Model &m) { return (char *)m.mapping.get() + gguf_get_data_offset(m.gguf.get()); }
const char *file_data(const Model &m, int64_t id) { return file_data(m) + gguf_get_tensor_offset(m.gguf.get(), id); }
const char *file_data(const Model &m, const ggml_tensor *t) {
    return file_data(m, gguf_find_tensor(m.gguf.get(), t->name));
}

ggml_tensor *tensor_of(const Model &m, int64_t id) {
    return ggml_get_tensor(m.ctx_w.get(), gguf_get_tensor_name(m.gguf.get(), id));
}

// The GGUF's metadata and tensor descriptions (their data stays in the file: map_file).
void read_gguf(Model &m, const std::string &path) {
    ggml_context *meta = nullptr;
    gguf_init_params gp = {/*no_alloc=*/true, /*ctx=*/&meta};
    m.gguf.reset(gguf_init_from_file(path.c_str(), gp));
    m.ctx_w.reset(meta);
    if (!m.gguf) throw Error("'" + path + "' is not a readable GGUF file");
    std::string arch = Meta(m.gguf).str("general.architecture");
    if (arch != "qwen3-tts") throw Error("'" + path + "' holds a '" + arch + "' model, not qwen3-tts");
}

// Maps the file and checks that every tensor lies inside it (a truncated download must fail here). Returns the
// offset in the file where the last tensor's data ends.
size_t map_file(Model &m, const std::string &path) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) throw Error("cannot open '" + path + "'");
    struct stat st;
    fstat(fd, &st);
    const size_t size = (size_t)st.st_size;
    void *p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) throw Error("cannot mmap '" + path + "'");
    m.mapping = mapping_ptr(p, Unmapper{size});
    const gguf_context *g = m.gguf.get();
    const size_t data_off = gguf_get_data_offset(g);
    size_t data_end = data_off;
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
        size_t end = data_off + gguf_get_tensor_offset(g, i) + gguf_get_tensor_size(g, i);
        if (end > size)
            throw Error("'" + path + "' is truncated: tensor '" + gguf_get_tensor_name(g, i) +
                        "' ends past the end of the file");
        data_end = std::max(data_end, end);
    }
    return data_end;
}

void start_backend(Model &m, int n_threads) {
    m.backend = new_cpu_backend();
    m.n_threads = n_threads > 0 ? n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    m.pool.use(m.backend.get(), m.n_threads);
    ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(m.backend.get());
    m.alloc_text.reset(ggml_gallocr_new(buft));
    m.alloc_talker.reset(ggml_gallocr_new(buft));
}

// Where the weights live: matmul weights that the packed kernels (packed_matvec.h) take are packed (they beat
// repack); other quantized matmul weights go to the CPU backend's repack buffer type where it has a kernel for
// them (the copy is re-laid out for kernels that read 8 rows per pass: Q4_K mat-vecs ~1.3x faster); everything
// else, and everything with !use_extra_buffers, stays in the mapping.
struct Placement {
    std::vector<ggml_tensor *> packed;
    std::map<ggml_backend_buffer_type_t, std::vector<ggml_tensor *>> repack;
    std::set<const ggml_tensor *> moved;  // the tensors of both
};

Placement choose_placement(const Model &m, bool use_extra_buffers) {
    Placement pl;
    if (!use_extra_buffers) return pl;
    ggml_backend_dev_t dev = ggml_backend_get_device(m.backend.get());
    auto get_extra = (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(
        ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts");
    ggml_backend_buffer_type_t *bufts = get_extra ? get_extra(dev) : nullptr;
    for (int64_t i = 0; i < gguf_get_n_tensors(m.gguf.get()); i++) {
        ggml_tensor *t = tensor_of(m, i);
        if (!is_matmul_weight(t->name)) continue;
        if (packed_fits(t))
            pl.packed.push_back(t);
        else if (ggml_backend_buffer_type_t b = extra_buffer_type_for(dev, bufts, t))
            pl.repack[b].push_back(t);
        else
            continue;
        pl.moved.insert(t);
    }
    return pl;
}

// The weights buffer wraps the mapping (read-only pages: ggml never writes to weights); the tensors that stay
// there point at their bytes in the file.
void place_in_mapping(Model &m, const Placement &pl, size_t data_end) {
    char *base = file_data(m);
    const size_t data_off = gguf_get_data_offset(m.gguf.get());
    m.weights_buf.reset(ggml_backend_cpu_buffer_from_ptr(base, std::max<size_t>(data_end - data_off, 1)));
    ggml_backend_buffer_set_usage(m.weights_buf.get(), GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    for (int64_t i = 0; i < gguf_get_n_tensors(m.gguf.get()); i++) {
        ggml_tensor *t = tensor_of(m, i);
        if (pl.moved.count(t)) continue;
        if (ggml_backend_tensor_alloc(m.weights_buf.get(), t, base + gguf_get_tensor_offset(m.gguf.get(), i)) !=
            GGML_STATUS_SUCCESS)
            throw Error(std::string("cannot place tensor '") + t->name + "'");
    }
}

// Copies the repacked weights into buffers of their type (the backend re-lays them out on the way in) and drops
// their mapped pages.
void copy_to_repack_buffers(Model &m, const Placement &pl) {
    for (const auto &[buft, tensors] : pl.repack) {
        size_t total = 0;
        for (ggml_tensor *t : tensors)
            total += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t), ggml_backend_buft_get_alignment(buft));
        ggml_backend_buffer_ptr buf(ggml_backend_buft_alloc_buffer(buft, total));
        if (!buf) throw Error("cannot allocate " + std::to_string(total >> 20) + " MiB for the re-laid-out weights");
        ggml_backend_buffer_set_usage(buf.get(), GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        ggml_tallocr ta = ggml_tallocr_new(buf.get());
        m.extra_bufs.push_back(std::move(buf));
        for (ggml_tensor *t : tensors) {
            if (ggml_tallocr_alloc(&ta, t) != GGML_STATUS_SUCCESS)
                throw Error(std::string("cannot place tensor '") + t->name + "'");
            const char *src = file_data(m, t);
            ggml_backend_tensor_set(t, src, 0, ggml_nbytes(t));
            release_range(src, ggml_nbytes(t));
        }
    }
}

// The packed weights: one I8 tensor of raw bytes each, in memory of their own; the GGUF tensors they replace
// keep their names and shapes (for the shape checks of bind_talker and bind_code_predictor) but no data.
// Returns the packed tensor of each, for swap_in_packed.
std::map<const ggml_tensor *, ggml_tensor *> pack_weights(Model &m, const std::vector<ggml_tensor *> &weights) {
    std::map<const ggml_tensor *, ggml_tensor *> packed_of;
    if (weights.empty()) return packed_of;
    m.packed.begin(weights.size(), "packed weights");
    for (ggml_tensor *t : weights)
        packed_of[t] =
            ggml_new_tensor_1d(m.packed.ctx(), GGML_TYPE_I8, (int64_t)vnni_packed_size(t->type, t->ne[0], t->ne[1]));
    m.packed.allocate("packed weights");
    // on the backend's threads: the copy's pages are zeroed by the kernel at first touch, which is most of the time
    std::vector<std::function<void()>> jobs;
    for (ggml_tensor *t : weights)
        jobs.push_back([&m, t, dst = packed_of[t]] {
            const char *src = file_data(m, t);
            vnni_pack(t->type, src, t->ne[0], t->ne[1], dst->data);
            release_range(src, ggml_nbytes(t));
        });
    run_jobs(m.backend.get(), jobs);
    return packed_of;
}

void load_layers(const Model &m, const std::string &p, const DecoderHParams &h, std::vector<LayerTensors> &out) {
    const int64_t q_w = (int64_t)h.n_head * h.head_dim, kv_w = (int64_t)h.n_head_kv * h.head_dim;
    out.resize(h.n_layer);
    for (int i = 0; i < h.n_layer; i++) {
        std::string b = p + ".blk." + std::to_string(i) + ".";
        LayerTensors &l = out[i];
        l.attn_norm = expect_f32(m, b + "attn_norm.weight", {h.n_embd});
        l.wq = expect_matrix(m, b + "attn_q.weight", {h.n_embd, q_w});
        l.wk = expect_matrix(m, b + "attn_k.weight", {h.n_embd, kv_w});
        l.wv = expect_matrix(m, b + "attn_v.weight", {h.n_embd, kv_w});
        l.wo = expect_matrix(m, b + "attn_output.weight", {q_w, h.n_embd});
        l.q_norm = expect_f32(m, b + "attn_q_norm.weight", {h.head_dim});
        l.k_norm = expect_f32(m, b + "attn_k_norm.weight", {h.head_dim});
        l.ffn_norm = expect_f32(m, b + "ffn_norm.weight", {h.n_embd});
        l.ffn_gate = expect_matrix(m, b + "ffn_gate.weight", {h.n_embd, h.n_ff});
        l.ffn_up = expect_matrix(m, b + "ffn_up.weight", {h.n_embd, h.n_ff});
        l.ffn_down = expect_matrix(m, b + "ffn_down.weight", {h.n_ff, h.n_embd});
    }
}

void bind_talker(Model &m) {
    const HParams &hp = m.hp;
    const int D = hp.talker.n_embd;
    TalkerTensors &t = m.talker;
    t.text_embd = expect_matrix(m, "talker.text_embd.weight", {hp.text_embd, hp.text_vocab});
    t.text_fc1_w = expect_matrix(m, "talker.text_proj.fc1.weight", {hp.text_embd, hp.text_embd});
    t.text_fc1_b = expect_f32(m, "talker.text_proj.fc1.bias", {hp.text_embd});
    t.text_fc2_w = expect_matrix(m, "talker.text_proj.fc2.weight", {hp.text_embd, D});
    t.text_fc2_b = expect_f32(m, "talker.text_proj.fc2.bias", {D});
    t.codec_embd = expect_matrix(m, "talker.codec_embd.weight", {D, hp.talker.vocab});
    load_layers(m, "talker", hp.talker, t.layers);
    t.output_norm = expect_f32(m, "talker.output_norm.weight", {D});
    t.codec_head = expect_matrix(m, "talker.codec_head.weight", {D, hp.talker.vocab});
}

void bind_code_predictor(Model &m) {
    const HParams &hp = m.hp;
    const int D = hp.talker.n_embd, Dc = hp.cp.n_embd;
    CodePredictorTensors &c = m.cp;
    load_layers(m, "cp", hp.cp, c.layers);
    c.output_norm = expect_f32(m, "cp.output_norm.weight", {Dc});
    for (int j = 0; j < hp.n_groups - 1; j++) {
        c.codec_embd.push_back(expect_matrix(m, "cp.codec_embd." + std::to_string(j) + ".weight", {D, hp.cp.vocab}));
        c.heads.push_back(expect_matrix(m, "cp.head." + std::to_string(j) + ".weight", {Dc, hp.cp.vocab}));
    }
    c.input_proj_w = expect_matrix(m, "cp.input_proj.weight", {D, Dc}, required_if(D != Dc));
    c.input_proj_b = expect_f32(m, "cp.input_proj.bias", {Dc}, required_if(D != Dc));
    if (hp.talker.vocab <= hp.codec_eos || hp.cp.vocab > hp.talker.vocab)
        throw Error("GGUF codec vocabulary sizes are inconsistent");
}

// Points the talker's and the code predictor's matmul weights at their packed forms.
void swap_in_packed(Model &m, const std::map<const ggml_tensor *, ggml_tensor *> &packed_of) {
    auto swap = [&](ggml_tensor *&w) {
        auto it = packed_of.find(w);
        if (it != packed_of.end()) w = it->second;
    };
    TalkerTensors &t = m.talker;
    CodePredictorTensors &c = m.cp;
    for (std::vector<LayerTensors> *ls : {&t.layers, &c.layers})
        for (LayerTensors &l : *ls)
            for (ggml_tensor **w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) swap(*w);
    for (ggml_tensor **w : {&t.text_fc1_w, &t.text_fc2_w, &t.codec_head, &c.input_proj_w}) swap(*w);
    for (ggml_tensor *&w : c.heads) swap(w);
}

}  // namespace

void Unmapper::operator()(void *p) const { munmap(p, size); }

void ggml_threadpool_deleter::operator()(ggml_threadpool *pool) const { cpu_backend().threadpool_free(pool); }

void Model::release_mapped(const ggml_tensor *t) const {
    const char *p = (const char *)t->data, *base = (const char *)mapping.get();
    if (base && p >= base && p + ggml_nbytes(t) <= base + mapping_size(*this)) release_range(p, ggml_nbytes(t));
}

ggml_tensor *Model::get(const std::string &name, Presence presence) const {
    ggml_tensor *t = ggml_get_tensor(ctx_w.get(), name.c_str());
    if (!t && presence == Presence::Required) throw Error("GGUF tensor '" + name + "' is missing");
    return t;
}

void ThreadPool::use(ggml_backend_t backend, int n) {
    if (n != n_ || !pool_) {
        ggml_threadpool_params p = ggml_threadpool_params_default(n);
        p.poll = 0;
        ggml_threadpool_ptr fresh(cpu_backend().threadpool_new(&p));
        if (!fresh) throw Error("cannot start " + std::to_string(n) + " compute threads");
        cpu_backend().set_threadpool(backend, fresh.get());
        pool_ = std::move(fresh);  // frees the pool the backend used before
        n_ = n;
    }
    cpu_backend().set_n_threads(backend, n);
}

ggml_backend_buffer_ptr HugePages::allocate(ggml_context *ctx, const char *what) {
    const size_t huge = (size_t)2 << 20, align = 64;
    size_t total = 0;
    for (ggml_tensor *t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t))
        total += GGML_PAD(ggml_nbytes(t), align);
    if (mem || total == 0) throw Error(std::string("internal error: bad allocation for ") + what);
    // Over-allocate by one huge page, keep the 2 MiB-aligned part.
    const size_t n = (total + huge - 1) / huge * huge;
    void *raw = mmap(nullptr, n + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw Error(std::string("out of memory for ") + what);
    char *start = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    if (start > (char *)raw) munmap(raw, start - (char *)raw);
    munmap(start + n, (char *)raw + huge - start);
    mem = mapping_ptr(start, Unmapper{n});
    advise_huge_pages(start, n);  // a hint: without transparent huge pages these stay 4 KiB pages
    ggml_backend_buffer_ptr buf(ggml_backend_cpu_buffer_from_ptr(start, n));
    if (!buf) throw Error(std::string("out of memory for ") + what);
    ggml_tallocr ta = ggml_tallocr_new(buf.get());
    for (ggml_tensor *t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t))
        if (ggml_tallocr_alloc(&ta, t) != GGML_STATUS_SUCCESS) throw Error(std::string("cannot place ") + what);
    return buf;
}

void OwnedTensors::begin(size_t n_tensors, const char *what) {
    ggml_init_params ip = {ggml_tensor_overhead() * (n_tensors + 1), nullptr, /*no_alloc=*/true};
    ctx_.reset(ggml_init(ip));
    if (!ctx_) throw Error(std::string("out of memory for the ") + what);
}

void OwnedTensors::allocate(const char *what) {
    if (!ggml_get_first_tensor(ctx_.get())) return;
    buf = pages.allocate(ctx_.get(), (std::string("the ") + what).c_str());
}

std::unique_ptr<Model> load_model(const std::string &path, int n_threads, bool use_extra_buffers) {
    auto m = std::make_unique<Model>();
    read_gguf(*m, path);
    const size_t data_end = map_file(*m, path);
    start_backend(*m, n_threads);
    m->plain_kernels = !use_extra_buffers;
    const Placement placement = choose_placement(*m, use_extra_buffers);
    place_in_mapping(*m, placement, data_end);
    copy_to_repack_buffers(*m, placement);
    const auto packed_of = pack_weights(*m, placement.packed);
    m->hp = read_hparams(Meta(m->gguf));
    bind_talker(*m);
    bind_code_predictor(*m);
    swap_in_packed(*m, packed_of);
    m->has_speaker_encoder = m->get("spk.fc.weight", Presence::Optional) != nullptr;
    return m;
}

void read_row(const ggml_tensor *t, int64_t row, float *out) {
    const char *src = (const char *)t->data + row * t->nb[1];
    if (t->type == GGML_TYPE_F32) {
        memcpy(out, src, sizeof(float) * t->ne[0]);
        return;
    }
    const ggml_type_traits *tr = ggml_get_type_traits(t->type);
    if (!tr->to_float) throw Error(std::string("cannot read rows of type ") + ggml_type_name(t->type));
    tr->to_float(src, out, t->ne[0]);
}

}  // namespace qt
