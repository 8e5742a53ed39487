// graph.cpp: see graph.h.
#include "runtime/graph.h"

#include <atomic>
#include <exception>
#include <mutex>

namespace qt {

namespace {

struct JobQueue {
    const std::vector<std::function<void()>> *jobs;
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::exception_ptr err;
};

// Every thread of the op takes the next job until none is left; exceptions stay on the host side of ggml.
void op_run_jobs(ggml_tensor *, int, int, void *ud) {
    JobQueue &q = *(JobQueue *)ud;
    for (size_t i; (i = q.next++) < q.jobs->size();) {
        try {
            (*q.jobs)[i]();
        } catch (...) {
            std::lock_guard<std::mutex> lock(q.mu);
            if (!q.err) q.err = std::current_exception();
        }
    }
}

}  // namespace

void run_jobs(ggml_backend_t backend, const std::vector<std::function<void()>> &jobs) {
    if (jobs.empty()) return;
    JobQueue q;
    q.jobs = &jobs;
    Graph g;
    g.begin(1);
    g.output(ggml_custom_4d(g.ctx(), GGML_TYPE_I32, 1, 1, 1, 1, nullptr, 0, op_run_jobs, GGML_N_TASKS_MAX, &q));
    g.allocate(backend);
    g.compute(backend);
    if (q.err) std::rethrow_exception(q.err);
}

void Graph::begin(size_t max_nodes) {
    ggml_init_params ip = {ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false), nullptr,
                           /*no_alloc=*/true};
    ctx_.reset(ggml_init(ip));
    if (!ctx_) throw Error("out of memory for a graph");
    gf = ggml_new_graph_custom(ctx_.get(), max_nodes, false);
}

ggml_tensor *Graph::input(ggml_type type, int64_t ne0, int64_t ne1) {
    ggml_tensor *t = ggml_new_tensor_2d(ctx_.get(), type, ne0, ne1);
    ggml_set_input(t);
    return t;
}

void Graph::output(ggml_tensor *t) {
    ggml_set_output(t);
    ggml_build_forward_expand(gf, t);
}

void Graph::allocate(ggml_backend_t backend, ggml_gallocr_t shared) {
    if (!shared && !alloc_) alloc_.reset(ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend)));
    if (!ggml_gallocr_alloc_graph(shared ? shared : alloc_.get(), gf)) throw Error("cannot allocate compute memory");
}

ggml_tensor *overlapping_rows(ggml_context *ctx, ggml_tensor *x, int64_t row_len, int64_t rows, size_t row_stride) {
    const size_t extent = (size_t)(rows - 1) * row_stride + (size_t)row_len * sizeof(float);
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || extent > ggml_nbytes(x))
        throw Error("internal error: overlapping conv windows out of range");
    ggml_tensor *v = ggml_view_2d(ctx, x, row_len, 1, row_stride, 0);
    v->ne[1] = rows;
    v->nb[2] = v->nb[3] = row_stride * (size_t)rows;
    return v;
}

void Graph::compute(ggml_backend_t backend) {
    if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) throw Error("ggml graph compute failed");
}

void Graph::reset() {
    alloc_.reset();
    ctx_.reset();
    gf = nullptr;
}

}  // namespace qt
