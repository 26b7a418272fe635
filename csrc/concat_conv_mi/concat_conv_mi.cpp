// concat_conv_mi's schemas, argument checks and row-chunk plan, shared by the CPU and
// CUDA backends; the Triton backend's kernels are a whole plan of their own and share
// the checks (registered as check_concat_conv).
// The first layer is split: W1 [f; y] + b1 = P[row] + Q[image] with P = f W1f^T
// per location (one GEMM over B * L rows) and Q = y W1y^T + b1 per image, so the
// (B, C + D, L) concat and its shuffled copies never exist; a negative row just
// reads another row of P. Chunks of whole images run the hidden layers as ATen
// GEMMs (cuBLAS / BLAS) and keep the scores, in the accumulation dtype, and (when the
// caller's memory budget allows) every hidden layer's activations; the estimate is
// dim_fused::mi_bound of the scores. The backward takes each chunk's activations from
// the kept ones, or recomputes them (P and Q, the first layer's gather, the later GEMMs),
// back-propagates through them, and adds the first-layer gradient into dP (through each
// permutation) and dQ; four GEMMs then give the first layer's and the inputs'
// gradients. docs/design.md ("Concat-and-conv") has the algebra.
#include "concat_conv_mi.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "../common/host_buffers.h"

namespace dim_fused {
namespace {

const char* const kOp = "dim_fused.concat_conv_mi: ";

// The argument checks: shapes, dtypes and devices (metadata only).
void check_concat_conv_inputs(const at::Tensor& feature_map, const at::Tensor& global_code,
                              at::TensorList weights, at::TensorList biases, const at::Tensor& perm,
                              int64_t chunk_values) {
  TORCH_CHECK_VALUE(feature_map.dim() >= 3 && global_code.dim() == 2 &&
                        global_code.size(0) == feature_map.size(0) && feature_map.size(0) >= 2,
                    kOp, "need feature_map (B >= 2, C, ...) and global_code (B, D), got ",
                    feature_map.sizes(), " and ", global_code.sizes());
  TORCH_CHECK_VALUE(feature_map.numel() > 0 && global_code.numel() > 0, kOp,
                    "need at least one channel, location and global unit, got feature_map ",
                    feature_map.sizes(), " and global_code ", global_code.sizes());
  TORCH_CHECK_VALUE(global_code.scalar_type() == feature_map.scalar_type() &&
                        global_code.device() == feature_map.device(),
                    kOp, "global_code must match feature_map's dtype and device");
  check_floating("concat_conv_mi", "feature_map", feature_map);
  const int64_t batch = feature_map.size(0), channels = feature_map.size(1);
  TORCH_CHECK_VALUE(weights.size() >= 2 && biases.size() == weights.size(), kOp,
                    "need at least two layers and one bias entry per layer");
  int64_t width = channels + global_code.size(1);
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == width && w.size(0) >= 1, kOp, "weights[", i,
                      "] must be (out, ", width, "), got ", w.sizes());
    const at::Tensor& b = biases[i];  // empty: no bias
    TORCH_CHECK_VALUE(b.numel() == 0 || (b.dim() == 1 && b.size(0) == w.size(0)), kOp, "biases[", i,
                      "] must be (", w.size(0), ") or empty");
    for (const at::Tensor* t : {&w, &b}) {
      TORCH_CHECK_VALUE(
          t->scalar_type() == feature_map.scalar_type() && t->device() == feature_map.device(), kOp,
          "weights and biases must match feature_map's dtype and device");
    }
    width = w.size(0);
  }
  TORCH_CHECK_VALUE(width == 1, kOp, "the last layer must have one output");
  const int64_t locations = feature_map.numel() / (batch * channels);
  TORCH_CHECK_VALUE(perm.dim() == 3 && perm.size(0) >= 1 && perm.size(1) == locations &&
                        perm.size(2) == batch && perm.scalar_type() == at::kLong &&
                        perm.device() == feature_map.device(),
                    kOp, "perm must be an int64 (K >= 1, L = ", locations, ", B = ", batch,
                    ") tensor on the feature map's device, got ", perm.scalar_type(), " ",
                    perm.sizes(), " on ", perm.device());
  check_tunable("concat_conv_mi", "chunk_values", chunk_values);
}

// Every index of perm must be in [0, B): checked here on the CPU (free: the data
// is on the host). On a GPU the check would cost a sync, so an index outside
// [0, B) becomes source -1 there instead (NaN scores, no stray memory access).
// Repeated indices are harmless on both: the scatters are correct for any map.
void check_perm_range_on_host(const at::Tensor& perm, int64_t batch) {
  DIM_FUSED_HOST_CHECK();
  const auto [low, high] = at::aminmax(perm);
  const int64_t lowest = low.item<int64_t>(), highest = high.item<int64_t>();
  TORCH_CHECK_VALUE(lowest >= 0 && highest < batch, kOp, "perm's indices must be in [0, ", batch,
                    "), got ", lowest < 0 ? lowest : highest);
}

// (1 + K, B * L): row b * L + l of negative k reads local row perm[k, l, b] * L + l.
at::Tensor row_sources(const at::Tensor& perm, int64_t batch, int64_t locations) {
  if (perm.is_cpu()) check_perm_range_on_host(perm, batch);
  const at::Tensor rows = at::arange(batch * locations, perm.options());
  const at::Tensor in_range = perm.ge(0).logical_and(perm.lt(batch)).transpose(1, 2);
  const at::Tensor negatives =
      at::where(in_range, perm.transpose(1, 2) * locations + at::arange(locations, perm.options()),
                at::full({}, -1, perm.options()))
          .reshape({perm.size(0), -1});
  return at::cat({rows.unsqueeze(0), negatives}, 0);
}

}  // namespace

ConcatConvProblem concat_conv_problem(const at::Tensor& feature_map, const at::Tensor& global_code,
                                      at::TensorList weights, at::TensorList biases,
                                      const at::Tensor& perm, c10::string_view estimator,
                                      bool detach_negatives, bool keep_activations,
                                      int64_t chunk_values) {
  const Estimator e = parse_estimator(estimator);
  check_concat_conv_inputs(feature_map, global_code, weights, biases, perm, chunk_values);
  const int64_t batch = feature_map.size(0), channels = feature_map.size(1);
  const at::Tensor flat = feature_map.reshape({batch, channels, -1});
  const int64_t locations = flat.size(2);
  std::vector<std::optional<at::Tensor>> bias_list;
  for (const auto& b : biases) bias_list.push_back(b.numel() > 0 ? std::optional(b) : std::nullopt);
  return {host_contiguous(flat.transpose(1, 2)).view({batch * locations, channels}),
          global_code.contiguous(),
          std::vector<at::Tensor>(weights.begin(), weights.end()),
          std::move(bias_list),
          row_sources(perm, batch, locations),
          batch,
          locations,
          channels,
          perm.size(0),
          e,
          estimator,
          detach_negatives,
          keep_activations,
          chunk_values};
}

namespace {

// The backward's grad and the forward's scores: (1 + K, B, L) in the accumulation dtype.
void check_scores_shape(const at::Tensor& grad, const at::Tensor& scores, const at::Tensor& like,
                        int64_t num_negatives, int64_t batch, int64_t locations) {
  const auto acc = acc_dtype(like.scalar_type());
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == like.device(),
                    "dim_fused.concat_conv_mi_backward: grad must be one element on ",
                    like.device());
  TORCH_CHECK_VALUE(
      scores.dim() == 3 && scores.size(0) == num_negatives + 1 && scores.size(1) == batch &&
          scores.size(2) == locations && scores.scalar_type() == acc &&
          scores.device() == like.device(),
      "dim_fused.concat_conv_mi_backward: scores must be the forward's (1 + K, B, L) = (",
      num_negatives + 1, ", ", batch, ", ", locations, ") ", acc, " tensor, got ", scores.sizes(),
      " ", scores.scalar_type());
}

}  // namespace

void check_concat_conv_scores(const at::Tensor& grad, const at::Tensor& scores,
                              const ConcatConvProblem& p, at::TensorList activations) {
  const int64_t rows = (p.num_negatives + 1) * p.rows();
  TORCH_CHECK_VALUE(activations.empty() || activations.size() + 1 == p.weights.size(),
                    "dim_fused.concat_conv_mi_backward: activations must be the forward's (one per "
                    "hidden layer) or none");
  for (size_t i = 0; i < activations.size(); ++i) {
    const at::Tensor& a = activations[i];
    const int64_t units = p.weights[i].size(0);
    TORCH_CHECK_VALUE(a.dim() == 2 && a.size(0) == rows && a.size(1) == units &&
                          a.scalar_type() == p.local_rows.scalar_type() &&
                          a.device() == p.local_rows.device() && a.is_contiguous(),
                      "dim_fused.concat_conv_mi_backward: activations[", i,
                      "] must be the forward's (", rows, ", ", units, ") tensor, got ", a.sizes());
  }
  check_scores_shape(grad, scores, p.local_rows, p.num_negatives, p.batch, p.locations);
}

int64_t ConcatConvProblem::chunk_images() const {
  int64_t widest = 1;
  for (const auto& w : weights) widest = std::max(widest, w.size(0));
  return std::clamp<int64_t>(chunk_values / (widest * locations), 1, batch);
}

namespace {

// The estimate of dim_fused::mi_bound (its normaliser is not kept: the backward
// below passes none, and DV's is recomputed there).
at::Tensor mi_bound_op(const at::Tensor& pos, const at::Tensor& neg, c10::string_view estimator) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dim_fused::mi_bound", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return std::get<0>(op.call(pos, neg, estimator));
}

std::tuple<at::Tensor, at::Tensor> mi_bound_backward_op(const at::Tensor& grad,
                                                        const at::Tensor& pos,
                                                        const at::Tensor& neg,
                                                        c10::string_view estimator) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dim_fused::mi_bound_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(grad, pos, neg, std::nullopt, estimator);
}

// First-layer halves: P (B * L, H1) per location, Q (B, H1) per image.
std::pair<at::Tensor, at::Tensor> split_first_layer(const ConcatConvProblem& p) {
  const at::Tensor& w = p.weights[0];
  const at::Tensor P = gemm(p.local_rows, w.narrow(1, 0, p.channels).t());
  const at::Tensor wy = w.narrow(1, p.channels, w.size(1) - p.channels);
  const at::Tensor Q = at::empty({p.batch, w.size(0)}, P.options());
  gemm_out(Q, p.global_code, wy.t(), p.biases[0]);
  return {P, Q};
}

// The first layer's gradients from dP (every pair set: W1f's gradient), dP_features (the
// pairs whose gradient reaches the features: dP itself unless negatives are detached) and
// dQ, all in the accumulation dtype and times `scale`: (d local rows (B * L, C),
// d global_code, d W1, d b1 (empty without a bias)), unscaled, in the inputs' dtype.
// Weight gradients sum over every row: their GEMMs write the accumulation dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> first_layer_gradients(
    const at::Tensor& local_rows, const at::Tensor& global_code, const at::Tensor& w1,
    bool has_bias, const at::Tensor& dP, const at::Tensor& dP_features, const at::Tensor& dQ,
    double scale) {
  const auto dtype = local_rows.scalar_type();
  const auto acc = acc_dtype(dtype);
  const int64_t channels = local_rows.size(1);
  const double unscale = 1.0 / scale;
  const at::Tensor dQ_in = dQ.to(dtype);
  const at::Tensor dP_in = host_converted(dP, dtype);  // dP itself unless the inputs are half
  // The fp32 dP and dQ meet the inputs in their dtype on CUDA, in fp32 on a CPU (gemm_to),
  // except W1f's gradient from half inputs on a CPU: dP rounded to their dtype, a half GEMM
  // (fp32 inside, rounded once; the gradient is returned in that dtype), at twice the rate
  // of the fp32 product of converted operands.
  const at::Tensor d_w1f = local_rows.is_cpu() && dtype != acc ? gemm(dP_in.t(), local_rows).to(acc)
                                                               : gemm_to(dP.t(), local_rows, acc);
  const at::Tensor d_w1 = at::cat({d_w1f, gemm_to(dQ.t(), global_code, acc)}, 1);
  const at::Tensor d_b1 = has_bias ? dQ.sum(0) : at::empty({0}, dQ.options());
  const at::Tensor d_local =
      gemm(dP_features.is_same(dP) ? dP_in : host_converted(dP_features, dtype),
           w1.narrow(1, 0, channels));
  const at::Tensor d_code = gemm(dQ_in, w1.narrow(1, channels, w1.size(1) - channels));
  return {d_local.mul_(unscale), d_code.mul_(unscale), d_w1.mul_(unscale).to(dtype),
          d_b1.mul(unscale).to(dtype)};
}

// A buffer of `width` columns for one chunk's rows, allocated once per call and reused by
// every chunk (ChunkBuffer::rows gives a chunk its first rows): each chunk rewrites lines the
// last one wrote, still in cache, where a block taken from the host cache per chunk could be
// any block it held.
struct ChunkBuffer {
  at::Tensor buffer;
  ChunkBuffer(const ConcatConvProblem& p, int64_t width, const at::TensorOptions& options)
      : buffer(host_empty({p.chunk_images() * p.locations, width}, options)) {}
  at::Tensor rows(int64_t count) const { return buffer.narrow(0, 0, count); }
};

// The first hidden layer of a chunk of rows (from the kernel: the concat never exists),
// written into `h1`.
at::Tensor first_hidden(const ConcatConvProblem& p, const ConcatConvKernels& kernels,
                        const at::Tensor& P, const at::Tensor& Q, int64_t pairs, int64_t first_row,
                        at::Tensor h1) {
  kernels.first_layer(P, Q, p.sources[pairs].narrow(0, first_row, h1.size(0)), first_row,
                      p.locations, h1);
  return h1;
}

// What a device's hidden epilogue reads, in the accumulation dtype, converted once per call:
// each later hidden layer's bias (zeros where none; [0] unused) and the score layer's weight.
struct EpilogueTerms {
  std::vector<at::Tensor> biases;
  at::Tensor score_weight;
};

EpilogueTerms epilogue_terms(const ConcatConvProblem& p, const ConcatConvKernels& kernels) {
  EpilogueTerms terms;
  if (kernels.hidden_epilogue == nullptr && kernels.score_backward == nullptr) return terms;
  const auto acc = p.local_rows.options().dtype(acc_dtype(p.local_rows.scalar_type()));
  terms.biases.resize(p.weights.size());
  for (size_t i = 1; i + 1 < p.weights.size(); ++i) {
    terms.biases[i] =
        p.biases[i] ? p.biases[i]->to(acc).contiguous() : at::zeros({p.weights[i].size(0)}, acc);
  }
  terms.score_weight = p.weights.back().reshape({-1}).to(acc).contiguous();
  return terms;
}

// The chunk's activations of hidden layers 2.. from the first one's, written into
// `into` (the kept activations' rows of the chunk) when given; with `scores`, the last
// one's scores (before the score layer's bias) too, from the device's epilogue.
std::vector<at::Tensor> later_hidden(const ConcatConvProblem& p, const ConcatConvKernels& kernels,
                                     const EpilogueTerms& terms, const at::Tensor& h1,
                                     const std::vector<at::Tensor>& into = {},
                                     at::Tensor* scores = nullptr) {
  std::vector<at::Tensor> hidden{h1};
  for (size_t i = 1; i + 1 < p.weights.size(); ++i) {
    const at::Tensor wt = p.weights[i].t();
    at::Tensor z = into.empty() ? host_empty({h1.size(0), wt.size(1)}, h1.options()) : into[i - 1];
    if (kernels.hidden_epilogue != nullptr) {
      gemm_out(z, hidden.back(), wt);
      const bool scored = scores != nullptr && i + 2 == p.weights.size();
      at::Tensor none;
      kernels.hidden_epilogue(z, terms.biases[i], scored ? terms.score_weight : none,
                              scored ? *scores : none);
    } else {
      gemm_out(z, hidden.back(), wt, p.biases[i]);
      z.relu_();  // not cuBLASLt's fused ReLU epilogue: it would turn a NaN into 0
    }
    hidden.push_back(z);
  }
  return hidden;
}

// The chunk's scores (in the accumulation dtype, before the score layer's bias) from its
// last hidden layer.
at::Tensor chunk_scores(const ConcatConvProblem& p, const at::Tensor& last_hidden) {
  const auto acc = acc_dtype(last_hidden.scalar_type());
  return gemm_to(last_hidden, p.weights.back().t(), acc).view({-1});
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
  // Every hidden layer's activations over all rows, kept for the backward: the first
  // layer's too, which the backward would otherwise gather again.
  std::vector<at::Tensor> kept;
  if (p.keep_activations) {
    for (size_t i = 0; i + 1 < p.weights.size(); ++i) {
      kept.push_back(
          host_empty({(p.num_negatives + 1) * p.rows(), p.weights[i].size(0)}, P.options()));
    }
  }
  const EpilogueTerms terms = epilogue_terms(p, kernels);
  // The device's epilogue scores the last hidden layer as it applies its ReLU.
  const bool epilogue_scores = kernels.hidden_epilogue != nullptr && p.weights.size() > 2;
  const ChunkBuffer h1(p, kept.empty() ? p.weights[0].size(0) : 0, P.options());
  for_each_chunk(
      p, [&](int64_t pairs, int64_t, int64_t, int64_t first_row, int64_t rows, int64_t kept_row) {
        // The chunk's rows of the kept activations, written in place: no copy.
        const at::Tensor first = kept.empty() ? h1.rows(rows) : kept[0].narrow(0, kept_row, rows);
        std::vector<at::Tensor> into;  // layers 2..
        for (size_t i = 1; i < kept.size(); ++i) into.push_back(kept[i].narrow(0, kept_row, rows));
        at::Tensor chunk = flat_scores.narrow(0, kept_row, rows);
        const auto hidden =
            later_hidden(p, kernels, terms, first_hidden(p, kernels, P, Q, pairs, first_row, first),
                         into, epilogue_scores ? &chunk : nullptr);
        if (!epilogue_scores) chunk.copy_(chunk_scores(p, hidden.back()));
      });
  if (p.biases.back()) flat_scores.add_(p.biases.back()->to(flat_scores.scalar_type()));
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

  // P and Q only to recompute the first layer: kept activations hold it.
  const auto [P, Q] =
      activations.empty() ? split_first_layer(p) : std::pair<at::Tensor, at::Tensor>();
  const int64_t first_units = p.weights[0].size(0);
  const auto options = p.local_rows.options();
  const auto acc = acc_dtype(dtype);
  const auto acc_options = options.dtype(acc);
  // dP feeds W1f's gradient (every pair) and the features' gradient (without the
  // negative pairs when they are detached, as the seed's stop_gradient does).
  at::Tensor dP = host_empty({p.rows(), first_units}, acc_options).zero_();
  at::Tensor dP_positives =
      p.detach_negatives ? host_empty(dP.sizes(), acc_options).zero_() : at::Tensor();
  at::Tensor dQ = at::zeros({p.batch, first_units}, acc_options);
  std::vector<at::Tensor> d_weights(p.weights.size()), d_biases(p.weights.size());
  for (size_t i = 1; i < p.weights.size(); ++i) {
    d_weights[i] = host_empty(p.weights[i].sizes(), acc_options).zero_();
    d_biases[i] =
        p.biases[i] ? at::zeros(p.biases[i]->sizes(), acc_options) : at::empty({0}, acc_options);
  }
  const size_t last = p.weights.size() - 1;
  const EpilogueTerms terms = epilogue_terms(p, kernels);
  // The device's score backward: the score layer's weight and bias gradients (the latter a
  // sum of d_scores, taken once here) and the last hidden layer's ReLU and bias in one pass.
  const bool score_backward = kernels.score_backward != nullptr && last >= 2;
  at::Tensor d_score_weight = d_weights[last].view({-1});
  if (score_backward && p.biases[last]) d_biases[last].add_(d_scores.sum());
  const ChunkBuffer h1_rows(p, activations.empty() ? first_units : 0, options);
  const ChunkBuffer d_h1_rows(p, first_units, options);
  // The score layer's gradient, only where the device's score backward writes it.
  const ChunkBuffer d_z_rows(p, score_backward ? p.weights[last].size(1) : 0, options);
  for_each_chunk(p, [&](int64_t pairs, int64_t image, int64_t, int64_t first_row, int64_t rows,
                        int64_t kept_row) {
    std::vector<at::Tensor> hidden;
    if (activations.empty()) {  // the first layer a gather, the later ones GEMMs
      hidden = later_hidden(p, kernels, terms,
                            first_hidden(p, kernels, P, Q, pairs, first_row, h1_rows.rows(rows)));
    } else {
      for (const at::Tensor& a : activations) hidden.push_back(a.narrow(0, kept_row, rows));
    }
    const at::Tensor& h1 = hidden.front();
    // d_z: the gradient at layer i's output before its activation, from the score down;
    // summed: whether its layer's bias gradient is added already.
    at::Tensor d_z;
    bool summed = false;
    size_t i = last;
    if (score_backward) {  // the score layer and the last hidden layer's ReLU and bias
      d_z = d_z_rows.rows(rows);
      kernels.score_backward(hidden[last - 1], d_scores.narrow(0, kept_row, rows),
                             terms.score_weight, d_score_weight, d_biases[last - 1], d_z);
      summed = true;
      --i;
    } else {
      d_z = d_scores.narrow(0, kept_row, rows).unsqueeze(1).to(dtype);
    }
    for (; i >= 2; --i) {  // layer i reads hidden[i - 1]
      gemm_accumulate(d_weights[i], d_z.t(), hidden[i - 1]);
      if (p.biases[i] && !summed) d_biases[i].add_(d_z.sum(0));
      summed = false;
      d_z = at::threshold_backward(gemm(d_z, p.weights[i]), hidden[i - 1], 0);
    }
    // Layer 1 reads h1 = relu(P[source] + Q[image]): its gradient splits back to dP and dQ.
    gemm_accumulate(d_weights[1], d_z.t(), h1);
    if (p.biases[1] && !summed) d_biases[1].add_(d_z.sum(0));
    const at::Tensor src = p.sources[pairs].narrow(0, first_row, rows);
    const at::Tensor d_h1 = d_h1_rows.rows(rows);
    gemm_out(d_h1, d_z, p.weights[1]);
    kernels.first_layer_backward(d_h1, h1, src, image, p.locations, dP,
                                 pairs == 0 && p.detach_negatives ? &dP_positives : nullptr, dQ);
  });
  const double unscale = 1.0 / scale;
  for (size_t i = 1; i < p.weights.size(); ++i) {
    d_weights[i] = d_weights[i].mul_(unscale).to(dtype);
    d_biases[i] = d_biases[i].mul_(unscale).to(dtype);
  }
  const auto [d_rows, d_code, d_w1, d_b1] =
      first_layer_gradients(p.local_rows, p.global_code, p.weights[0], p.biases[0].has_value(), dP,
                            p.detach_negatives ? dP_positives : dP, dQ, scale);
  d_weights[0] = d_w1;
  d_biases[0] = d_b1;
  return {host_contiguous(d_rows.view({p.batch, p.locations, p.channels}).transpose(1, 2)), d_code,
          d_weights, d_biases};
}

namespace {

// The Triton backend's checks (its kernels are the whole plan there): the arguments', with
// the backward's grad and scores when given.
void check_concat_conv_op(const at::Tensor& feature_map, const at::Tensor& global_code,
                          at::TensorList weights, at::TensorList biases, const at::Tensor& perm,
                          c10::string_view estimator, const std::optional<at::Tensor>& grad,
                          const std::optional<at::Tensor>& scores) {
  parse_estimator(estimator);
  check_concat_conv_inputs(feature_map, global_code, weights, biases, perm, 1);
  const int64_t batch = feature_map.size(0), locations = feature_map[0][0].numel();
  if (perm.is_cpu()) check_perm_range_on_host(perm, batch);
  if (grad || scores) {
    TORCH_CHECK_VALUE(grad && scores, kOp, "give the backward's grad and scores together");
    check_scores_shape(*grad, *scores, feature_map, perm.size(0), batch, locations);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dim_fused, m) {
  m.def(
      "concat_conv_mi(Tensor feature_map, Tensor global_code, Tensor[] weights, Tensor[] biases,"
      " Tensor perm, str estimator, bool detach_negatives, bool keep_activations,"
      " int chunk_values) -> (Tensor, Tensor, Tensor[])");
  m.def(
      "concat_conv_mi_backward(Tensor grad, Tensor feature_map, Tensor global_code,"
      " Tensor[] weights, Tensor[] biases, Tensor perm, Tensor scores, Tensor[] activations,"
      " str estimator, bool detach_negatives, int chunk_values)"
      " -> (Tensor, Tensor, Tensor[], Tensor[])");
  m.def(
      "check_concat_conv(Tensor feature_map, Tensor global_code, Tensor[] weights,"
      " Tensor[] biases, Tensor perm, str estimator, Tensor? grad, Tensor? scores) -> ()");
}

TORCH_LIBRARY_IMPL(dim_fused, CompositeExplicitAutograd, m) {
  m.impl("check_concat_conv", &check_concat_conv_op);
}

}  // namespace dim_fused
