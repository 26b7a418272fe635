// The row-chunk driver of concat_conv_mi, shared by the CPU and CUDA backends.
// The first layer is split: W1 [f; y] + b1 = P[row] + Q[image] with P = f W1f^T
// per location (one GEMM over B * L rows) and Q = y W1y^T + b1 per image, so the
// (B, C + D, L) concat and its shuffled copies never exist; a negative row just
// reads another row of P. Chunks of whole images run the hidden layers as ATen
// GEMMs (cuBLAS / BLAS) and keep the scores, in the accumulation dtype, and
// (when the caller's memory budget allows) the activations of hidden layers 2..;
// the estimate is dim_fused::mi_bound of the scores. The backward recomputes each
// chunk's first layer (a gather) and the later ones unless kept, back-propagates
// through them, and adds the first-layer gradient into dP (through each
// permutation) and dQ; four GEMMs then give the first layer's and the inputs'
// gradients. docs/design.md
// ("Concat-and-conv") has the algebra.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "dim_fused.h"

namespace dim_fused {
namespace {

at::Tensor mi_bound_op(const at::Tensor& pos, const at::Tensor& neg, c10::string_view estimator) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dim_fused::mi_bound", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(pos, neg, estimator);
}

std::tuple<at::Tensor, at::Tensor> mi_bound_backward_op(const at::Tensor& grad,
                                                        const at::Tensor& pos,
                                                        const at::Tensor& neg,
                                                        c10::string_view estimator) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dim_fused::mi_bound_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, c10::string_view)>();
  return op.call(grad, pos, neg, estimator);
}

// First-layer halves: P (B * L, H1) per location, Q (B, H1) per image.
std::pair<at::Tensor, at::Tensor> split_first_layer(const ConcatConvProblem& p) {
  const at::Tensor& w = p.weights[0];
  const at::Tensor P = at::mm(p.local_rows, w.narrow(1, 0, p.channels).t());
  const at::Tensor wy = w.narrow(1, p.channels, w.size(1) - p.channels);
  const at::Tensor Q =
      p.biases[0] ? at::addmm(*p.biases[0], p.global_code, wy.t()) : at::mm(p.global_code, wy.t());
  return {P, Q};
}

// The first hidden layer of a chunk of rows (from the kernel: the concat never exists).
at::Tensor first_hidden(const ConcatConvProblem& p, const ConcatConvKernels& kernels,
                        const at::Tensor& P, const at::Tensor& Q, int64_t pairs, int64_t first_row,
                        int64_t rows) {
  at::Tensor h1 = at::empty({rows, p.weights[0].size(0)}, P.options());
  kernels.first_layer(P, Q, p.sources[pairs].narrow(0, first_row, rows), first_row, p.locations,
                      h1);
  return h1;
}

// The chunk's activations of hidden layers 2.. from the first one's, written into
// `into` (the kept activations' rows of the chunk) when given.
std::vector<at::Tensor> later_hidden(const ConcatConvProblem& p, const at::Tensor& h1,
                                     const std::vector<at::Tensor>& into = {}) {
  std::vector<at::Tensor> hidden{h1};
  for (size_t i = 1; i + 1 < p.weights.size(); ++i) {
    const at::Tensor wt = p.weights[i].t();
    at::Tensor z = into.empty() ? at::empty({h1.size(0), wt.size(1)}, h1.options()) : into[i - 1];
    if (p.biases[i]) {
      at::addmm_out(z, *p.biases[i], hidden.back(), wt);
    } else {
      at::mm_out(z, hidden.back(), wt);
    }
    hidden.push_back(z.relu_());  // not cuBLASLt's fused ReLU epilogue: it would turn a NaN into 0
  }
  return hidden;
}

// The chunk's scores (in the accumulation dtype) from its last hidden layer.
at::Tensor chunk_scores(const ConcatConvProblem& p, const at::Tensor& last_hidden) {
  const size_t last = p.weights.size() - 1;
  const auto acc = acc_dtype(last_hidden.scalar_type());
  at::Tensor scores = mm_to(last_hidden, p.weights[last].t(), acc);
  if (p.biases[last]) scores.add_(p.biases[last]->to(acc));
  return scores.view({-1});
}

// body(pairs, image, images, first_row, rows, kept_row): the chunks of whole images of
// each pair set; kept_row is the chunk's first row in the kept activations.
template <typename Body>
void for_each_chunk(const ConcatConvProblem& p, const Body& body) {
  const int64_t step = p.chunk_images();
  for (int64_t pairs = 0; pairs <= p.num_negatives; ++pairs) {
    for (int64_t image = 0; image < p.batch; image += step) {
      const int64_t images = std::min(step, p.batch - image);
      const int64_t first_row = image * p.locations;
      body(pairs, image, images, first_row, images * p.locations, pairs * p.rows() + first_row);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> concat_conv_mi_forward(
    const ConcatConvProblem& p, const ConcatConvKernels& kernels) {
  const NoAutocast no_autocast;
  const auto [P, Q] = split_first_layer(p);
  const auto acc = P.options().dtype(acc_dtype(P.scalar_type()));
  at::Tensor scores = at::empty({p.num_negatives + 1, p.batch, p.locations}, acc);
  const at::Tensor flat_scores = scores.view({-1});
  std::vector<at::Tensor> kept;
  if (p.keep_activations) {
    for (size_t i = 1; i + 1 < p.weights.size(); ++i) {
      kept.push_back(
          at::empty({(p.num_negatives + 1) * p.rows(), p.weights[i].size(0)}, P.options()));
    }
  }
  for_each_chunk(
      p, [&](int64_t pairs, int64_t, int64_t, int64_t first_row, int64_t rows, int64_t kept_row) {
        std::vector<at::Tensor> into;  // the chunk's rows of the kept activations: no copy
        for (const auto& k : kept) into.push_back(k.narrow(0, kept_row, rows));
        const auto hidden =
            later_hidden(p, first_hidden(p, kernels, P, Q, pairs, first_row, rows), into);
        flat_scores.narrow(0, kept_row, rows).copy_(chunk_scores(p, hidden.back()));
      });
  const at::Tensor estimate =
      mi_bound_op(scores[0], scores.narrow(0, 1, p.num_negatives), p.estimator_name);
  return {estimate.to(P.scalar_type()), scores, kept};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
concat_conv_mi_backward(const at::Tensor& grad, const ConcatConvProblem& p,
                        const at::Tensor& scores, at::TensorList activations,
                        const ConcatConvKernels& kernels) {
  const NoAutocast no_autocast;
  const auto dtype = p.local_rows.scalar_type();
  const auto [d_pos, d_neg] =
      mi_bound_backward_op(grad.to(scores.scalar_type()), scores[0],
                           scores.narrow(0, 1, p.num_negatives), p.estimator_name);
  // d(estimate)/d(score) times the gradient scale B * L, so that half-precision
  // gradients hold values near 1 instead of underflowing (1 / (B L) is below
  // fp16's normal range); every accumulated gradient is unscaled at the end.
  const double scale = double(p.rows());
  const at::Tensor d_scores = (at::cat({d_pos.unsqueeze(0), d_neg}, 0) * scale).view({-1});

  const auto [P, Q] = split_first_layer(p);
  const auto acc = acc_dtype(dtype);
  const auto acc_options = P.options().dtype(acc);
  // dP feeds W1f's gradient (every pair) and the features' gradient (without the
  // negative pairs when they are detached, as the seed's stop_gradient does).
  at::Tensor dP = at::zeros(P.sizes(), acc_options);
  at::Tensor dP_positives = p.detach_negatives ? at::zeros(P.sizes(), acc_options) : at::Tensor();
  at::Tensor dQ = at::zeros(Q.sizes(), acc_options);
  std::vector<at::Tensor> d_weights, d_biases;
  for (size_t i = 0; i < p.weights.size(); ++i) {
    d_weights.push_back(at::zeros(p.weights[i].sizes(), acc_options));
    d_biases.push_back(p.biases[i] ? at::zeros(p.biases[i]->sizes(), acc_options)
                                   : at::empty({0}, acc_options));
  }
  const size_t last = p.weights.size() - 1;
  for_each_chunk(p, [&](int64_t pairs, int64_t image, int64_t, int64_t first_row, int64_t rows,
                        int64_t kept_row) {
    // The first layer is recomputed (a gather, no GEMM); the later ones too, unless kept.
    const at::Tensor h1 = first_hidden(p, kernels, P, Q, pairs, first_row, rows);
    std::vector<at::Tensor> hidden{h1};
    if (activations.empty()) {
      hidden = later_hidden(p, h1);
    } else {
      for (const auto& a : activations) hidden.push_back(a.narrow(0, kept_row, rows));
    }
    // d_z: the gradient at layer i's output before its activation, from the score down.
    at::Tensor d_z = d_scores.narrow(0, kept_row, rows).unsqueeze(1).to(dtype);
    for (size_t i = last; i >= 2; --i) {  // layer i reads hidden[i - 1]
      d_weights[i].add_(mm_to(d_z.t(), hidden[i - 1], acc));
      if (p.biases[i]) d_biases[i].add_(d_z.sum(0));
      d_z = at::threshold_backward(at::mm(d_z, p.weights[i]), hidden[i - 1], 0);
    }
    // Layer 1 reads h1 = relu(P[source] + Q[image]): its gradient splits back to dP and dQ.
    d_weights[1].add_(mm_to(d_z.t(), h1, acc));
    if (p.biases[1]) d_biases[1].add_(d_z.sum(0));
    const at::Tensor src = p.sources[pairs].narrow(0, first_row, rows);
    kernels.first_layer_backward(at::mm(d_z, p.weights[1]), h1, src, image, p.locations, dP,
                                 pairs == 0 && p.detach_negatives ? &dP_positives : nullptr, dQ);
  });
  const at::Tensor& dP_features = p.detach_negatives ? dP_positives : dP;
  // The first layer: W1 = [W1f, W1y], b1 (through Q), and the inputs.
  const at::Tensor w1 = p.weights[0];
  const at::Tensor w1f = w1.narrow(1, 0, p.channels);
  const at::Tensor w1y = w1.narrow(1, p.channels, w1.size(1) - p.channels);
  const at::Tensor dP_in = dP.to(dtype), dQ_in = dQ.to(dtype);
  // Weight gradients sum over every row: accumulated (and written) in the accumulation dtype.
  d_weights[0].narrow(1, 0, p.channels).add_(mm_to(dP_in.t(), p.local_rows, acc));
  d_weights[0].narrow(1, p.channels, w1y.size(1)).add_(mm_to(dQ_in.t(), p.global_code, acc));
  if (p.biases[0]) d_biases[0].add_(dQ.sum(0));
  const double unscale = 1.0 / scale;
  const at::Tensor d_local = at::mm(dP_features.to(dtype), w1f).mul_(unscale);  // (B * L, C)
  const at::Tensor d_global = at::mm(dQ_in, w1y).mul_(unscale);
  for (auto& d : d_weights) d = d.mul_(unscale).to(dtype);
  for (auto& d : d_biases) d = d.mul_(unscale).to(dtype);
  return {d_local.view({p.batch, p.locations, p.channels}).transpose(1, 2).contiguous(), d_global,
          d_weights, d_biases};
}

}  // namespace dim_fused
