// model.cpp: loads a qwen3-tts GGUF. Tensor data stays in a read-only mmap of the file (pages that are
// never touched, like most of the 151936-row text embedding, are never read from disk); ggml tensors point
// into it through a CPU buffer wrapped around the mapping.
#include "runtime/model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "ggml-cpu.h"
#include "runtime/gguf_meta.h"
#include "kernels/packed_matvec.h"

namespace qt {

namespace {

DecoderHParams read_decoder(const Meta &kv, const std::string &p) {
    DecoderHParams h;
    h.n_layer = kv.i32(p + ".block_count");
    h.n_embd = kv.i32(p + ".embedding_length");
    h.n_ff = kv.i32(p + ".feed_forward_length");
    h.n_head = kv.i32(p + ".attention.head_count");
    h.n_head_kv = kv.i32(p + ".attention.head_count_kv");
    h.head_dim = kv.i32(p + ".attention.key_length");
    h.eps = kv.f32(p + ".attention.layer_norm_rms_epsilon");
    h.rope_base = kv.f32(p + ".rope.freq_base");
    h.vocab = kv.i32(p + ".vocab_size");
    if (h.n_layer <= 0 || h.n_embd <= 0 || h.n_head <= 0 || h.n_head_kv <= 0 || h.head_dim <= 0 ||
        h.n_head % h.n_head_kv != 0 || h.n_ff <= 0 || h.vocab <= 0)
        throw Error("GGUF hyper-parameters of '" + p + "' are inconsistent");
    return h;
}

// Weights that are only ever the left operand of a mul_mat (see the converter's type policy).
bool is_matmul_weight(const std::string &n) {
    static const char *blk_suffixes[] = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                         "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
    auto starts = [&](const char *p) { return n.rfind(p, 0) == 0; };
    auto ends = [&](const char *x) { size_t l = strlen(x); return n.size() >= l && n.compare(n.size() - l, l, x) == 0; };
    if (starts("talker.blk.") || starts("cp.blk."))
        for (const char *x : blk_suffixes)
            if (ends(x)) return true;
    return n == "talker.codec_head.weight" || n == "talker.text_proj.fc1.weight" || n == "talker.text_proj.fc2.weight" ||
           n == "cp.input_proj.weight" || (starts("cp.head.") && ends(".weight"));
}

// The CPU backend's interleaved "repack" buffer type if its mat-vec kernel takes this weight: asked the way
// the backend itself decides, with a mul_mat on a zero-size buffer. (Its AMX buffer type is not used: in
// ggml 0.20.2 its Q4_K mul_mat crashed on a 20-row batch here.)
ggml_backend_buffer_type_t extra_buffer_type_for(ggml_backend_dev_t dev, ggml_backend_buffer_type_t *bufts, const ggml_tensor *w) {
    if (!bufts || !ggml_is_quantized(w->type) || ggml_n_dims(w) != 2) return nullptr;
    for (; *bufts; bufts++) {
        if (strcmp(ggml_backend_buft_name(*bufts), "CPU_REPACK") != 0) continue;
        ggml_init_params ip = {4 * ggml_tensor_overhead(), nullptr, /*no_alloc=*/true};
        ggml_context *c = ggml_init(ip);
        ggml_tensor *wc = ggml_new_tensor_2d(c, w->type, w->ne[0], w->ne[1]);
        ggml_tensor *op = ggml_mul_mat(c, wc, ggml_new_tensor_2d(c, GGML_TYPE_F32, w->ne[0], 1));
        ggml_backend_buffer_t probe = ggml_backend_buft_alloc_buffer(*bufts, 0);
        wc->buffer = probe;
        const bool ok = ggml_backend_dev_supports_op(dev, op);
        ggml_backend_buffer_free(probe);
        ggml_free(c);
        if (ok) return *bufts;
    }
    return nullptr;
}

void release_range(const void *p, size_t n) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + pg - 1) & ~(pg - 1), hi = ((uintptr_t)p + n) & ~(pg - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

}  // namespace

void Model::release_mapped(const ggml_tensor *t) const {
    const char *p = (const char *)t->data, *base = (const char *)mapping;
    if (mapping && p >= base && p + ggml_nbytes(t) <= base + mapping_size) release_range(p, ggml_nbytes(t));
}

Model::~Model() {
    for (ggml_gallocr_t a : {alloc_text, alloc_talker})
        if (a) ggml_gallocr_free(a);
    if (weights_buf) ggml_backend_buffer_free(weights_buf);
    for (ggml_backend_buffer_t b : extra_bufs) ggml_backend_buffer_free(b);
    if (backend) ggml_backend_free(backend);
    if (ctx_w) ggml_free(ctx_w);
    if (ctx_packed) ggml_free(ctx_packed);
    if (gguf) gguf_free(gguf);
    if (mapping) munmap(mapping, mapping_size);
}

ThreadPool::~ThreadPool() {
    if (pool_) ggml_threadpool_free(pool_);
}

void ThreadPool::use(ggml_backend_t backend, int n) {
    if (n != n_ || !pool_) {
        ggml_threadpool_params p = ggml_threadpool_params_default(n);
        p.poll = 0;
        ggml_threadpool *fresh = ggml_threadpool_new(&p);
        if (!fresh) throw Error("cannot start " + std::to_string(n) + " compute threads");
        ggml_backend_cpu_set_threadpool(backend, fresh);
        if (pool_) ggml_threadpool_free(pool_);
        pool_ = fresh;
        n_ = n;
    }
    ggml_backend_cpu_set_n_threads(backend, n);
}

HugePages::~HugePages() {
    if (mem) munmap(mem, size);
}

ggml_backend_buffer_t HugePages::allocate(ggml_context *ctx, const char *what) {
    const size_t huge = (size_t)2 << 20, align = 64;
    size_t total = 0;
    for (ggml_tensor *t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t)) total += GGML_PAD(ggml_nbytes(t), align);
    if (mem || total == 0) throw Error(std::string("internal error: bad allocation for ") + what);
    // Over-allocate by one huge page, keep the 2 MiB-aligned part.
    const size_t n = (total + huge - 1) / huge * huge;
    void *raw = mmap(nullptr, n + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw Error(std::string("out of memory for ") + what);
    char *start = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    if (start > (char *)raw) munmap(raw, start - (char *)raw);
    munmap(start + n, (char *)raw + huge - start);
    mem = start;
    size = n;
    advise_huge_pages(mem, size);  // a hint: without transparent huge pages these stay 4 KiB pages
    ggml_backend_buffer_t buf = ggml_backend_cpu_buffer_from_ptr(mem, size);
    if (!buf) throw Error(std::string("out of memory for ") + what);
    ggml_tallocr ta = ggml_tallocr_new(buf);
    for (ggml_tensor *t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t))
        if (ggml_tallocr_alloc(&ta, t) != GGML_STATUS_SUCCESS) {
            ggml_backend_buffer_free(buf);
            throw Error(std::string("cannot place ") + what);
        }
    return buf;
}

ggml_tensor *Model::get(const std::string &name, Presence presence) const {
    ggml_tensor *t = ggml_get_tensor(ctx_w, name.c_str());
    if (!t && presence == Presence::Required) throw Error("GGUF tensor '" + name + "' is missing");
    return t;
}

static void load_layers(const Model &m, const std::string &p, const DecoderHParams &h, std::vector<LayerTensors> &out) {
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

Model *load_model(const std::string &path, int n_threads, bool use_extra_buffers) {
    std::unique_ptr<Model> m(new Model());

    ggml_context *meta = nullptr;
    gguf_init_params gp = {/*no_alloc=*/true, /*ctx=*/&meta};
    m->gguf = gguf_init_from_file(path.c_str(), gp);
    if (!m->gguf) throw Error("'" + path + "' is not a readable GGUF file");
    m->ctx_w = meta;

    Meta kv(m->gguf);
    std::string arch = kv.str("general.architecture");
    if (arch != "qwen3-tts") throw Error("'" + path + "' holds a '" + arch + "' model, not qwen3-tts");

    // Map the file and check that every tensor lies inside it (a truncated download must fail here).
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) throw Error("cannot open '" + path + "'");
    struct stat st;
    fstat(fd, &st);
    m->mapping_size = (size_t)st.st_size;
    m->mapping = mmap(nullptr, m->mapping_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m->mapping == MAP_FAILED) {
        m->mapping = nullptr;
        throw Error("cannot mmap '" + path + "'");
    }
    const size_t data_off = gguf_get_data_offset(m->gguf);
    const int64_t n_tensors = gguf_get_n_tensors(m->gguf);
    size_t data_end = data_off;
    for (int64_t i = 0; i < n_tensors; i++) {
        size_t end = data_off + gguf_get_tensor_offset(m->gguf, i) + gguf_get_tensor_size(m->gguf, i);
        if (end > m->mapping_size)
            throw Error("'" + path + "' is truncated: tensor '" + gguf_get_tensor_name(m->gguf, i) + "' ends past the end of the file");
        if (end > data_end) data_end = end;
    }

    m->backend = ggml_backend_cpu_init();
    if (!m->backend) throw Error("cannot initialise the ggml CPU backend");
    m->n_threads = n_threads > 0 ? n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    m->plain_kernels = !use_extra_buffers;
    m->pool.use(m->backend, m->n_threads);
    ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(m->backend);
    m->alloc_text = ggml_gallocr_new(buft);
    m->alloc_talker = ggml_gallocr_new(buft);

    // Quantized matmul weights go to the repack buffer type where the backend has a kernel for them (the copy
    // is re-laid out for kernels that read 8 rows per pass: Q4_K mat-vecs ~1.3x faster); everything else stays
    // in the mapping.
    std::map<ggml_backend_buffer_type_t, std::vector<ggml_tensor *>> extra;
    std::vector<ggml_tensor *> packed;  // weights for the packed kernels (packed_matvec.h), which beat repack
    if (use_extra_buffers) {
        ggml_backend_dev_t dev = ggml_backend_get_device(m->backend);
        auto get_extra = (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(
            ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts");
        ggml_backend_buffer_type_t *bufts = get_extra ? get_extra(dev) : nullptr;
        for (int64_t i = 0; i < n_tensors; i++) {
            ggml_tensor *t = ggml_get_tensor(meta, gguf_get_tensor_name(m->gguf, i));
            if (!is_matmul_weight(t->name)) continue;
            if (packed_fits(t)) packed.push_back(t);
            else if (ggml_backend_buffer_type_t b = extra_buffer_type_for(dev, bufts, t)) extra[b].push_back(t);
        }
    }

    // The weights buffer wraps the mapping (read-only pages: ggml never writes to weights).
    char *base = (char *)m->mapping + data_off;
    m->weights_buf = ggml_backend_cpu_buffer_from_ptr(base, data_end - data_off > 0 ? data_end - data_off : 1);
    ggml_backend_buffer_set_usage(m->weights_buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    for (int64_t i = 0; i < n_tensors; i++) {
        ggml_tensor *t = ggml_get_tensor(meta, gguf_get_tensor_name(m->gguf, i));
        bool elsewhere = std::find(packed.begin(), packed.end(), t) != packed.end();
        for (auto &kv : extra) elsewhere |= std::find(kv.second.begin(), kv.second.end(), t) != kv.second.end();
        if (elsewhere) continue;
        if (ggml_backend_tensor_alloc(m->weights_buf, t, base + gguf_get_tensor_offset(m->gguf, i)) != GGML_STATUS_SUCCESS)
            throw Error(std::string("cannot place tensor '") + t->name + "'");
    }
    for (auto &kv : extra) {
        size_t total = 0;
        for (ggml_tensor *t : kv.second) total += GGML_PAD(ggml_backend_buft_get_alloc_size(kv.first, t), ggml_backend_buft_get_alignment(kv.first));
        ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(kv.first, total);
        if (!buf) throw Error("cannot allocate " + std::to_string(total >> 20) + " MiB for the re-laid-out weights");
        m->extra_bufs.push_back(buf);
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        ggml_tallocr ta = ggml_tallocr_new(buf);
        for (ggml_tensor *t : kv.second) {
            if (ggml_tallocr_alloc(&ta, t) != GGML_STATUS_SUCCESS) throw Error(std::string("cannot place tensor '") + t->name + "'");
            const int64_t id = gguf_find_tensor(m->gguf, t->name);
            const char *src = base + gguf_get_tensor_offset(m->gguf, id);
            ggml_backend_tensor_set(t, src, 0, ggml_nbytes(t));
            release_range(src, ggml_nbytes(t));
        }
    }

    // The packed weights: one I8 tensor of raw bytes each, in a buffer of their own; the GGUF tensors they
    // replace keep their names and shapes (for the checks below) but no data, and are swapped out afterwards.
    std::map<const ggml_tensor *, ggml_tensor *> packed_of;
    if (!packed.empty()) {
        ggml_init_params ip = {ggml_tensor_overhead() * packed.size(), nullptr, /*no_alloc=*/true};
        m->ctx_packed = ggml_init(ip);
        if (!m->ctx_packed) throw Error("out of memory for the packed weights");
        for (ggml_tensor *t : packed)
            packed_of[t] = ggml_new_tensor_1d(m->ctx_packed, GGML_TYPE_I8, (int64_t)vnni_packed_size(t->type, t->ne[0], t->ne[1]));
        m->extra_bufs.push_back(m->packed_pages.allocate(m->ctx_packed, "the packed weights"));
        for (ggml_tensor *t : packed) {
            const char *src = base + gguf_get_tensor_offset(m->gguf, gguf_find_tensor(m->gguf, t->name));
            vnni_pack(t->type, src, t->ne[0], t->ne[1], packed_of[t]->data);
            release_range(src, ggml_nbytes(t));
        }
    }

    HParams &hp = m->hp;
    hp.model_type = kv.str("qwen3-tts.model_type");
    hp.talker = read_decoder(kv, "qwen3-tts.talker");
    hp.cp = read_decoder(kv, "qwen3-tts.code_predictor");
    hp.text_vocab = kv.i32("qwen3-tts.talker.text_vocab_size");
    hp.text_embd = kv.i32("qwen3-tts.talker.text_embedding_length");
    hp.n_groups = kv.i32("qwen3-tts.talker.num_code_groups");
    hp.codec_pad = kv.i32("qwen3-tts.talker.codec.pad_id");
    hp.codec_bos = kv.i32("qwen3-tts.talker.codec.bos_id");
    hp.codec_eos = kv.i32("qwen3-tts.talker.codec.eos_id");
    hp.tts_pad = kv.i32("qwen3-tts.text.tts_pad_id");
    hp.tts_bos = kv.i32("qwen3-tts.text.tts_bos_id");
    hp.tts_eos = kv.i32("qwen3-tts.text.tts_eos_id");
    if (hp.n_groups != 16) throw Error("only 16 code groups are supported");

    const int D = hp.talker.n_embd, Dc = hp.cp.n_embd;
    TalkerTensors &t = m->talker;
    t.text_embd = expect_matrix(*m, "talker.text_embd.weight", {hp.text_embd, hp.text_vocab});
    t.text_fc1_w = expect_matrix(*m, "talker.text_proj.fc1.weight", {hp.text_embd, hp.text_embd});
    t.text_fc1_b = expect_f32(*m, "talker.text_proj.fc1.bias", {hp.text_embd});
    t.text_fc2_w = expect_matrix(*m, "talker.text_proj.fc2.weight", {hp.text_embd, D});
    t.text_fc2_b = expect_f32(*m, "talker.text_proj.fc2.bias", {D});
    t.codec_embd = expect_matrix(*m, "talker.codec_embd.weight", {D, hp.talker.vocab});
    load_layers(*m, "talker", hp.talker, t.layers);
    t.output_norm = expect_f32(*m, "talker.output_norm.weight", {D});
    t.codec_head = expect_matrix(*m, "talker.codec_head.weight", {D, hp.talker.vocab});

    CodePredictorTensors &c = m->cp;
    load_layers(*m, "cp", hp.cp, c.layers);
    c.output_norm = expect_f32(*m, "cp.output_norm.weight", {Dc});
    for (int j = 0; j < hp.n_groups - 1; j++) {
        c.codec_embd.push_back(expect_matrix(*m, "cp.codec_embd." + std::to_string(j) + ".weight", {D, hp.cp.vocab}));
        c.heads.push_back(expect_matrix(*m, "cp.head." + std::to_string(j) + ".weight", {Dc, hp.cp.vocab}));
    }
    c.input_proj_w = expect_matrix(*m, "cp.input_proj.weight", {D, Dc}, required_if(D != Dc));
    c.input_proj_b = expect_f32(*m, "cp.input_proj.bias", {Dc}, required_if(D != Dc));
    if (hp.talker.vocab <= hp.codec_eos || hp.cp.vocab > hp.talker.vocab)
        throw Error("GGUF codec vocabulary sizes are inconsistent");

    if (!packed_of.empty()) {
        auto swap = [&](ggml_tensor *&w) {
            auto it = packed_of.find(w);
            if (it != packed_of.end()) w = it->second;
        };
        for (std::vector<LayerTensors> *ls : {&t.layers, &c.layers})
            for (LayerTensors &l : *ls)
                for (ggml_tensor **w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) swap(*w);
        for (ggml_tensor **w : {&t.text_fc1_w, &t.text_fc2_w, &t.codec_head, &c.input_proj_w}) swap(*w);
        for (ggml_tensor *&w : c.heads) swap(w);
    }

    m->has_speaker_encoder = m->get("spk.fc.weight", Presence::Optional) != nullptr;
    return m.release();
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
