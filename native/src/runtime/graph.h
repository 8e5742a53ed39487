// graph.h: the graph plumbing every stage uses: graphs built once and computed many times, and overlapping views
// for convolution windows.
#pragma once

#include "ggml-cpp.h"

#include "runtime/model.h"

#include <functional>
#include <vector>

namespace qt {

// Runs independent jobs on the threads of `backend` (one ggml custom op whose threads take the jobs in turn, on
// the backend's pool and thread count); the first exception a job throws is rethrown here once all have run.
void run_jobs(ggml_backend_t backend, const std::vector<std::function<void()>> &jobs);

// A 2-D view of F32 x whose rows overlap (row_stride < row length), e.g. the windows of a convolution over a
// time-major input. ggml_view_2d checks a view's extent as rows * row length, so it is created with one row and
// then given its real row count; the true extent, (rows - 1) * row_stride + row length, must lie inside x
// (checked here). mul_mat reads a non-contiguous F32 src1 through its row stride.
ggml_tensor *overlapping_rows(ggml_context *ctx, ggml_tensor *x, int64_t row_len, int64_t rows, size_t row_stride);

// A graph with its own metadata context and compute buffer. Built once and computed many times: inputs are
// overwritten in place between computes, nothing is re-planned.
struct Graph {
    ggml_cgraph *gf = nullptr;  // lives in ctx_

    ggml_context *ctx() const { return ctx_.get(); }
    bool built() const { return gf != nullptr; }
    void begin(size_t max_nodes);  // drops the previous graph and starts a new one
    ggml_tensor *input(ggml_type type, int64_t ne0, int64_t ne1 = 1);
    void output(ggml_tensor *t);  // marks t as a result and adds it to the graph
    // Plans and allocates the compute buffer (after building). A one-off graph may borrow a long-lived
    // allocator instead of owning one.
    void allocate(ggml_backend_t backend, ggml_gallocr_t shared = nullptr);
    void compute(ggml_backend_t backend);
    void reset();  // frees everything (also the compute buffer)

private:
    ggml_context_ptr ctx_;
    ggml_gallocr_ptr alloc_;  // the graph's own compute memory (none while it borrows a shared allocator)
};

}  // namespace qt
