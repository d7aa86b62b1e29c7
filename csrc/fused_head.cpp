// Native CPU fused LM head: per-sequence summed log-probs without an [N, V] logits buffer.
//
// Registered as torch ops (the Python glue in inpo/ops/native_impl.py adds autograd and fake kernels):
//   inpo::head_forward(hidden, weight, bias?, labels, cu_seqlens, ignore_index, logit_scale=1, softcap=None)
//       -> (logps[S] fp32, lse[N])
//   inpo::head_backward(grad_logps, hidden, weight, bias?, labels, cu_seqlens, lse, ignore_index, output_mask,
//                       logit_scale=1, softcap=None)
//       -> (dhidden, dweight, dbias)   (an empty [0] tensor for a gradient not asked for)
//
// Logit transform (inpo/ops/transform.py, the one definition): the softmax sees z = c*tanh(s*raw / c) (the cap c
// only when softcap is given), raw = h W^T + bias; the backward chains dz/draw = s * sech^2(s*raw / c) into dz.
// It is applied in the fused per-row pass right after the GEMM, so it costs nothing extra for the usual LM head
// (s = 1, no cap: the same loops as without it) and one more exp per logit with a cap.
//
// Design (d log p(label) / d z = onehot(label) - softmax(z); logps[s] sums a sequence's valid tokens):
// * Only tokens whose label is not ignore_index are computed ("compaction"): prompt tokens cost nothing.
// * The work is split into one partition per thread, along the vocabulary when there are fewer valid tokens
//   than vocabulary rows (the usual LM case), else along the tokens. Each partition walks tiles
//   [token block x vocab tile]: one ATen GEMM (MKL) writes the logits tile into a reusable per-partition
//   buffer, then one fused pass over the tile: per row (4 KiB, L1-resident) bias add + max, then
//   sum-exp and the target pick (forward), or bias add, dz = g * (onehot - exp(z - lse)) in place and the
//   dbias column sums (backward). The backward feeds dz straight into the two gradient GEMMs
//   (dW_tile += dz^T h, dH_block += dz W): no [N, V] buffer, logits are read once per phase from memory.
// * Everything is computed in fp32 (fp64 for fp64 inputs): fp16/bf16 hidden/weight are upcast once per
//   call (O((N + V) * H) extra), gradients accumulate in fp32 and are cast back at the end. The partition
//   owning a vocab (token) range writes its dW (dH) rows without races; the other gradient gets
//   per-partition partials summed at the end -- extra (threads - 1) * min(N, V) * H, never N * V.
// * Results depend on the thread count only through the order of floating-point sums.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace inpo_native {
namespace {

// Tile sizes: a [512 tokens, 1024 vocab] fp32 logits tile is 2 MiB. Smaller tiles (256 x 512, L2-sized)
// measured ~10% slower on a 2-core EPYC: MKL's GEMMs lose more efficiency on the smaller shapes than the
// fused pass gains from L2, and each row (4 KiB) is L1-resident during its pass anyway.
// INPO_NATIVE_TILE="TxV" overrides them (read once per process) for tuning on another machine.
struct TileSizes {
  int64_t tokens = 512, vocab = 1024;
};

const TileSizes& tile_sizes() {
  static const TileSizes sizes = [] {
    TileSizes t;
    if (const char* env = std::getenv("INPO_NATIVE_TILE")) {
      long long a = 0, b = 0;
      if (std::sscanf(env, "%lldx%lld", &a, &b) == 2 && a > 0 && b > 0) {
        t.tokens = a;
        t.vocab = b;
      }
    }
    return t;
  }();
  return sizes;
}

// exp(x) for x <= ~0 (all our arguments are logits minus a running max or the lse), written so that
// GCC vectorises it when inlined into the `omp simd` loops below (AVX-512/AVX2 with -march=native; the
// clamps must be branch-free selects, which needs -fno-trapping-math, see native_impl.CFLAGS).
// std::exp would be a scalar libm call per element. Cody-Waite range reduction x = k ln2 + r,
// |r| <= ln2/2, then a degree-6 Taylor polynomial: relative error ~2e-7 (about 1-2 ulp).
static inline float fast_exp(float x_in) {
  float x = x_in < -87.0f ? -87.0f : x_in;  // exp(-87) ~ 1.6e-38: still normal, so 2^k below never underflows
  x = x > 88.0f ? 88.0f : x;
  const float kf = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = std::fma(kf, -0.693359375f, x);  // ln2 split into an exact high part and a low part
  r = std::fma(kf, 2.12194440e-4f, r);
  float p = 1.0f / 720.0f;
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const int32_t bits = (static_cast<int32_t>(kf) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  // Below -87 the true value is < 1.6e-38: flush to 0 (a select, still vectorised), so a -inf logit (a masked
  // token's -inf bias) gets exactly zero probability and gradient, as in the reference.
  return x_in < -87.0f ? 0.0f : p * scale;
}

// fp64 inputs are a reference/debug path: exactness over speed.
static inline double fast_exp(double x) { return std::exp(x); }

// tanh(y), and sech^2(y) = 1 - tanh^2(y) into *sech2, from one exp of -2|y| <= 0 (no overflow; saturates to +-1
// and 0 without inf/inf), vectorisable like fast_exp. Below |y| = 1/8, where 1 - e would cancel, tanh is its odd
// Taylor series to y^7 (truncation < 4e-9 relative). The same formula as kernels/head.py's _softcap.
static inline float tanh_sech2(float y, float* sech2) {
  const float a = std::fabs(y);
  const float e = fast_exp(-2.0f * a);
  const float y2 = y * y;
  const float small = a * (1.0f + y2 * (-1.0f / 3.0f + y2 * (2.0f / 15.0f + y2 * (-17.0f / 315.0f))));
  const float t = a < 0.125f ? small : (1.0f - e) / (1.0f + e);
  *sech2 = 4.0f * e / ((1.0f + e) * (1.0f + e));
  return y < 0.0f ? -t : t;
}

static inline double tanh_sech2(double y, double* sech2) {
  const double e = std::exp(-2.0 * std::fabs(y));
  *sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e));
  return std::tanh(y);
}

// The model's logit transform: scale s, cap c (0 = no cap).
template <typename T>
struct Transform {
  T scale = 1, cap = 0;
};

template <typename T>
Transform<T> make_transform(double logit_scale, const std::optional<double>& softcap) {
  TORCH_CHECK(std::isfinite(logit_scale) && logit_scale > 0, "inpo::head: logit_scale must be finite and > 0, got ",
              logit_scale);
  TORCH_CHECK(!softcap.has_value() || (std::isfinite(*softcap) && *softcap > 0),
              "inpo::head: softcap must be None or finite and > 0, got ", softcap.value_or(0.0));
  return Transform<T>{static_cast<T>(logit_scale), static_cast<T>(softcap.value_or(0.0))};
}

// row[j] += bias[j]: its own pass, so that no vectorised loop below reads through a null bias pointer.
template <typename T>
inline void add_bias(T* row, const T* bt, int64_t cols) {
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) row[j] += bt[j];
}

// Forward's per-row pass: bias add (when bt), the transform in place, and the row's max.
template <typename T>
T transform_row(T* row, const T* bt, int64_t cols, const Transform<T>& tr) {
  if (bt) add_bias(row, bt, cols);
  T mx = -std::numeric_limits<T>::infinity();
  const T s = tr.scale, c = tr.cap;
  if (c > 0) {
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < cols; ++j) {
      T unused;
      row[j] = c * tanh_sech2(row[j] * s / c, &unused);
      mx = row[j] > mx ? row[j] : mx;
    }
  } else if (s != T(1)) {
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < cols; ++j) {
      row[j] *= s;
      mx = row[j] > mx ? row[j] : mx;
    }
  } else {
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < cols; ++j) mx = row[j] > mx ? row[j] : mx;  // a select, not std::max's reference
  }
  return mx;
}

// Backward's per-row pass: row (raw logits, bias not yet added) becomes d logp / d raw times the token's upstream
// gradient gi: gi * s * sech^2 * (onehot(label) - softmax(z)), z the transformed logits and li their lse.
template <typename T>
void grad_row(T* row, const T* bt, int64_t cols, T gi, T li, int64_t lab_col, const Transform<T>& tr) {
  if (bt) add_bias(row, bt, cols);
  const T gs = gi * tr.scale, s = tr.scale, c = tr.cap;
  if (c > 0) {
    T d_lab = 0;
    if (lab_col >= 0) tanh_sech2(row[lab_col] * s / c, &d_lab);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      T d;
      const T t = tanh_sech2(row[j] * s / c, &d);
      row[j] = -gs * d * fast_exp(c * t - li);
    }
    if (lab_col >= 0) row[lab_col] += gs * d_lab;
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) row[j] = -gs * fast_exp(row[j] * s - li);
  if (lab_col >= 0) row[lab_col] += gs;
}

// Valid (non-ignored) tokens, compacted: the kernels only ever see these.
struct Compacted {
  int64_t n = 0;                 // all tokens
  int64_t num_seqs = 0;          // S
  std::vector<int64_t> rows;     // original token index of each valid token
  std::vector<int64_t> labels;   // its label, in [0, V)
  std::vector<int64_t> seq;      // its sequence
  bool all_valid() const { return static_cast<int64_t>(rows.size()) == n; }
};

Compacted compact(const at::Tensor& labels_in, const at::Tensor& cu_in, int64_t ignore_index, int64_t vocab) {
  Compacted c;
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  const at::Tensor cu = cu_in.to(at::kLong).contiguous();
  c.n = labels.size(0);
  c.num_seqs = cu.size(0) - 1;
  const int64_t* lab = labels.data_ptr<int64_t>();
  const int64_t* cup = cu.data_ptr<int64_t>();
  // Cheap here and it keeps the kernels free of out-of-bounds reads whatever the caller skipped.
  TORCH_CHECK(cup[0] == 0 && cup[c.num_seqs] == c.n, "inpo::head: cu_seqlens must start at 0 and end at N=", c.n,
              ", got first=", cup[0], ", last=", cup[c.num_seqs]);
  c.rows.reserve(c.n);
  c.labels.reserve(c.n);
  c.seq.reserve(c.n);
  for (int64_t s = 0; s < c.num_seqs; ++s) {
    TORCH_CHECK(cup[s] <= cup[s + 1], "inpo::head: cu_seqlens must be non-decreasing, got cu_seqlens[", s, "]=",
                cup[s], " > cu_seqlens[", s + 1, "]=", cup[s + 1]);
    for (int64_t i = cup[s]; i < cup[s + 1]; ++i) {
      if (lab[i] == ignore_index) continue;
      TORCH_CHECK(lab[i] >= 0 && lab[i] < vocab, "inpo::head: labels must be in [0, V=", vocab,
                  ") or ignore_index=", ignore_index, ", got label ", lab[i], " at token ", i);
      c.rows.push_back(i);
      c.labels.push_back(lab[i]);
      c.seq.push_back(s);
    }
  }
  return c;
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Hidden rows of the valid tokens, contiguous, in the accumulation dtype (no copy when nothing changes).
at::Tensor gather_hidden(const at::Tensor& hidden, const Compacted& c, at::ScalarType acc) {
  if (c.all_valid()) return hidden.to(acc).contiguous();
  at::Tensor idx = at::from_blob(const_cast<int64_t*>(c.rows.data()), {static_cast<int64_t>(c.rows.size())},
                                 at::TensorOptions().dtype(at::kLong)).clone();
  return hidden.index_select(0, idx).to(acc).contiguous();
}

// Split [0, total) into `parts` near-equal contiguous ranges.
inline int64_t split_at(int64_t total, int64_t parts, int64_t k) { return total * k / parts; }

int64_t num_partitions(int64_t extent, int64_t tile) {
  const int64_t tiles = (extent + tile - 1) / tile;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
}

// A [rows, cols] contiguous view over a preallocated buffer (the reused per-partition logits tile).
at::Tensor tile_view(at::Tensor& buffer, int64_t rows, int64_t cols) {
  return at::from_blob(buffer.data_ptr(), {rows, cols}, buffer.options());
}

// Visit the (token block, vocab tile) grid of [n0, n1) x [v0, v1). Vocab-outer keeps one W tile hot while the
// token blocks stream past it (the split-vocabulary partitions); token-outer does the opposite.
template <typename F>
void for_each_tile(int64_t n0, int64_t n1, int64_t v0, int64_t v1, bool vocab_outer, F&& tile) {
  const int64_t token_block = tile_sizes().tokens, vocab_tile = tile_sizes().vocab;
  if (vocab_outer) {
    for (int64_t vb = v0; vb < v1; vb += vocab_tile)
      for (int64_t nb = n0; nb < n1; nb += token_block) tile(nb, vb);
  } else {
    for (int64_t nb = n0; nb < n1; nb += token_block)
      for (int64_t vb = v0; vb < v1; vb += vocab_tile) tile(nb, vb);
  }
}

template <typename T>
struct ForwardState {  // online log-sum-exp state per valid token
  T* m;       // running max
  T* s;       // running sum of exp(z - m)
  T* target;  // the label's logit (written by the one tile that holds the label)
};

// Forward over tokens [n0, n1) x vocab [v0, v1) of the compacted problem.
template <typename T>
void forward_partition(const at::Tensor& h, const at::Tensor& w, const T* bias, const Compacted& c, int64_t n0,
                       int64_t n1, int64_t v0, int64_t v1, bool vocab_outer, ForwardState<T> st,
                       const Transform<T>& tr) {
  const int64_t token_block = tile_sizes().tokens, vocab_tile = tile_sizes().vocab;
  at::Tensor buffer = at::empty({token_block * vocab_tile}, h.options());
  auto tile = [&](int64_t nb, int64_t vb) {
    const int64_t rows = std::min(token_block, n1 - nb), cols = std::min(vocab_tile, v1 - vb);
    at::Tensor z = tile_view(buffer, rows, cols);
    at::mm_out(z, h.narrow(0, nb, rows), w.narrow(0, vb, cols).t());
    T* zp = z.data_ptr<T>();
    const T* bt = bias ? bias + vb : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      T* row = zp + r * cols;
      const int64_t i = nb + r;
      const T mx = transform_row(row, bt, cols, tr);
      const T m_old = st.m[i];
      const T m_new = std::max(m_old, mx);
      // Every logit so far is -inf (a -inf bias over whole tiles: masked tokens): nothing to add, and
      // exp(-inf - -inf) would be NaN. (m, s) stay (-inf, 0) until a finite logit arrives.
      if (m_new != -std::numeric_limits<T>::infinity()) {
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < cols; ++j) sum += fast_exp(row[j] - m_new);
        // m_old = -inf on the first tile: exp(-inf) = 0 and s = 0, so this is just `sum`.
        st.s[i] = st.s[i] * std::exp(m_old - m_new) + sum;
        st.m[i] = m_new;
      }
      const int64_t lab = c.labels[i];
      if (lab >= vb && lab < vb + cols) st.target[i] = row[lab - vb];
    }
  };
  for_each_tile(n0, n1, v0, v1, vocab_outer, tile);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> forward_typed(const at::Tensor& hidden, const at::Tensor& weight,
                                                 const std::optional<at::Tensor>& bias, const Compacted& c,
                                                 const Transform<T>& tr) {
  const at::ScalarType acc = acc_type(hidden.scalar_type());
  const int64_t nv = static_cast<int64_t>(c.rows.size()), vocab = weight.size(0);
  at::Tensor lse = at::zeros({c.n}, hidden.options().dtype(acc));
  at::Tensor logps = at::zeros({c.num_seqs}, hidden.options().dtype(at::kFloat));
  if (nv == 0) return {logps, lse};
  const at::Tensor h = gather_hidden(hidden, c, acc);
  const at::Tensor w = weight.to(acc).contiguous();
  at::Tensor b;
  if (bias.has_value()) b = bias->to(acc).contiguous();
  const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;

  const bool vocab_parallel = nv <= vocab;
  const int64_t parts = vocab_parallel ? num_partitions(vocab, tile_sizes().vocab) : num_partitions(nv, tile_sizes().tokens);
  // Vocab-parallel partitions each keep their own (m, s) per token, merged below; `target` is shared
  // because exactly one vocab tile holds each token's label. Token-parallel partitions own disjoint rows.
  const int64_t copies = vocab_parallel ? parts : 1;
  std::vector<T> m(copies * nv, -std::numeric_limits<T>::infinity()), s(copies * nv, T(0)), target(nv, T(0));
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t k = vocab_parallel ? p : 0;
      ForwardState<T> st{m.data() + k * nv, s.data() + k * nv, target.data()};
      if (vocab_parallel)
        forward_partition<T>(h, w, bp, c, 0, nv, split_at(vocab, parts, p), split_at(vocab, parts, p + 1), true, st,
                             tr);
      else
        forward_partition<T>(h, w, bp, c, split_at(nv, parts, p), split_at(nv, parts, p + 1), 0, vocab, false, st,
                             tr);
    }
  });

  T* lse_p = lse.data_ptr<T>();
  std::vector<double> seq_sum(c.num_seqs, 0.0);  // fp64 sums: cheap, and order-robust across thread counts
  for (int64_t i = 0; i < nv; ++i) {
    T mx = m[i];
    for (int64_t k = 1; k < copies; ++k) mx = std::max(mx, m[k * nv + i]);
    T total = 0;
    for (int64_t k = 0; k < copies; ++k) total += s[k * nv + i] * std::exp(m[k * nv + i] - mx);
    const T l = mx + std::log(total);
    lse_p[c.rows[i]] = l;
    seq_sum[c.seq[i]] += static_cast<double>(target[i] - l);
  }
  float* out = logps.data_ptr<float>();
  for (int64_t q = 0; q < c.num_seqs; ++q) out[q] = static_cast<float>(seq_sum[q]);
  return {logps, lse};
}

struct BackwardTargets {
  at::Tensor dh;  // [Nv, H] rows this partition adds into (undefined when not needed)
  at::Tensor dw;  // [V, H]
  void* db;       // [V] (nullptr when not needed)
};

template <typename T>
void backward_partition(const at::Tensor& h, const at::Tensor& w, const T* bias, const Compacted& c, const T* g,
                        const T* lse, int64_t n0, int64_t n1, int64_t v0, int64_t v1, bool vocab_outer,
                        BackwardTargets out, const Transform<T>& tr) {
  const int64_t token_block = tile_sizes().tokens, vocab_tile = tile_sizes().vocab;
  at::Tensor buffer = at::empty({token_block * vocab_tile}, h.options());
  T* db = static_cast<T*>(out.db);
  auto tile = [&](int64_t nb, int64_t vb) {
    const int64_t rows = std::min(token_block, n1 - nb), cols = std::min(vocab_tile, v1 - vb);
    at::Tensor z = tile_view(buffer, rows, cols);
    const at::Tensor hb = h.narrow(0, nb, rows), wt = w.narrow(0, vb, cols);
    at::mm_out(z, hb, wt.t());
    T* zp = z.data_ptr<T>();
    const T* bt = bias ? bias + vb : nullptr;
    T* dbt = db ? db + vb : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      T* row = zp + r * cols;
      const int64_t i = nb + r;
      // d logp / draw = dz/draw * (onehot(label) - softmax(z)), scaled by the sequence's upstream gradient.
      const int64_t lab = c.labels[i];
      grad_row(row, bt, cols, g[i], lse[i], lab >= vb && lab < vb + cols ? lab - vb : -1, tr);
      if (dbt) {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) dbt[j] += row[j];
      }
    }
    if (out.dw.defined()) out.dw.narrow(0, vb, cols).addmm_(z.t(), hb);
    if (out.dh.defined()) out.dh.narrow(0, nb, rows).addmm_(z, wt);
  };
  for_each_tile(n0, n1, v0, v1, vocab_outer, tile);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_typed(
    const at::Tensor& grad_logps, const at::Tensor& hidden, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& lse_full, const Compacted& c,
    std::array<bool, 3> mask, const Transform<T>& tr) {
  const at::ScalarType acc = acc_type(hidden.scalar_type());
  const int64_t nv = static_cast<int64_t>(c.rows.size()), vocab = weight.size(0), dim = hidden.size(1);
  const bool need_h = mask[0], need_w = mask[1], need_b = mask[2] && bias.has_value();
  const auto opts = hidden.options().dtype(acc);
  at::Tensor dh_c = need_h ? at::zeros({nv, dim}, opts) : at::Tensor();
  at::Tensor dw = need_w ? at::zeros({vocab, dim}, opts) : at::Tensor();
  at::Tensor db = need_b ? at::zeros({vocab}, opts) : at::Tensor();

  if (nv > 0 && (need_h || need_w || need_b)) {
    const at::Tensor h = gather_hidden(hidden, c, acc);
    const at::Tensor w = weight.to(acc).contiguous();
    at::Tensor b;
    if (bias.has_value()) b = bias->to(acc).contiguous();
    const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;
    const at::Tensor gs = grad_logps.to(acc).contiguous(), lse_in = lse_full.to(acc).contiguous();
    const T* gsp = gs.data_ptr<T>();
    const T* lsep = lse_in.data_ptr<T>();
    std::vector<T> g(nv), lse(nv);
    for (int64_t i = 0; i < nv; ++i) {
      g[i] = gsp[c.seq[i]];
      lse[i] = lsep[c.rows[i]];
    }

    const bool vocab_parallel = nv <= vocab;
    const int64_t parts = vocab_parallel ? num_partitions(vocab, tile_sizes().vocab) : num_partitions(nv, tile_sizes().tokens);
    // The gradient along the partitioned dimension is written in place; the other one gets a private
    // partial per extra partition (partition 0 writes the real accumulator).
    std::vector<at::Tensor> partial(parts);
    for (int64_t p = 1; p < parts; ++p) {
      if (vocab_parallel) {
        if (need_h) partial[p] = at::zeros({nv, dim}, opts);
      } else {
        partial[p] = at::zeros({(need_w ? vocab * dim : 0) + (need_b ? vocab : 0)}, opts);
      }
    }
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        BackwardTargets t{dh_c, dw, need_b ? db.data_ptr() : nullptr};
        if (vocab_parallel) {
          if (p > 0) t.dh = partial[p];
          backward_partition<T>(h, w, bp, c, g.data(), lse.data(), 0, nv, split_at(vocab, parts, p),
                                split_at(vocab, parts, p + 1), true, t, tr);
        } else {
          if (p > 0) {
            if (need_w) t.dw = partial[p].narrow(0, 0, vocab * dim).view({vocab, dim});
            if (need_b) t.db = partial[p].data_ptr<T>() + (need_w ? vocab * dim : 0);
          }
          backward_partition<T>(h, w, bp, c, g.data(), lse.data(), split_at(nv, parts, p),
                                split_at(nv, parts, p + 1), 0, vocab, false, t, tr);
        }
      }
    });
    for (int64_t p = 1; p < parts; ++p) {
      if (vocab_parallel) {
        if (need_h) dh_c.add_(partial[p]);
      } else {
        if (need_w) dw.add_(partial[p].narrow(0, 0, vocab * dim).view({vocab, dim}));
        if (need_b) db.add_(partial[p].narrow(0, need_w ? vocab * dim : 0, vocab));
      }
    }
  }

  // Distinct empty tensors for gradients not asked for: outputs of an op must never alias each other.
  at::Tensor dhidden = at::empty({0}, hidden.options()), dweight = at::empty({0}, hidden.options()),
             dbias = at::empty({0}, hidden.options());
  if (need_h) {
    if (c.all_valid()) {
      dhidden = dh_c.to(hidden.scalar_type());
    } else {
      dhidden = at::zeros_like(hidden, at::MemoryFormat::Contiguous);
      if (nv > 0) {
        at::Tensor idx = at::from_blob(const_cast<int64_t*>(c.rows.data()), {nv},
                                       at::TensorOptions().dtype(at::kLong)).clone();
        dhidden.index_copy_(0, idx, dh_c.to(hidden.scalar_type()));
      }
    }
  }
  if (need_w) dweight = dw.to(weight.scalar_type());
  if (need_b) dbias = db.to(bias->scalar_type());
  return {dhidden, dweight, dbias};
}

void check_common(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  const at::Tensor& labels, const at::Tensor& cu_seqlens) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && weight.size(1) == hidden.size(1),
              "inpo::head: hidden must be [N, H] and weight [V, H], got ", hidden.sizes(), " and ", weight.sizes());
  TORCH_CHECK(hidden.scalar_type() == weight.scalar_type(), "inpo::head: weight dtype ", weight.scalar_type(),
              " must match hidden dtype ", hidden.scalar_type());
  TORCH_CHECK(at::isFloatingType(hidden.scalar_type()), "inpo::head: hidden must be floating, got ",
              hidden.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == hidden.size(0), "inpo::head: labels must be [N] with N=",
              hidden.size(0), ", got ", labels.sizes());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2, "inpo::head: cu_seqlens must be [S+1], S >= 1, got ",
              cu_seqlens.sizes());
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "inpo::head: bias must be [V] with V=",
                weight.size(0), ", got ", bias->sizes());
}

std::tuple<at::Tensor, at::Tensor> head_forward_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& labels,
                                                    const at::Tensor& cu_seqlens, int64_t ignore_index,
                                                    double logit_scale, std::optional<double> softcap) {
  check_common(hidden, weight, bias, labels, cu_seqlens);
  // The GEMMs below run on plain buffers; nothing here is recorded for autograd.
  at::AutoDispatchBelowADInplaceOrView guard;
  const Compacted c = compact(labels, cu_seqlens, ignore_index, weight.size(0));
  // Detached views: OpenMP worker threads do not inherit the guard's thread-local dispatch state.
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(bias->detach()) : std::nullopt;
  if (hidden.scalar_type() == at::kDouble)
    return forward_typed<double>(hidden.detach(), weight.detach(), b, c, make_transform<double>(logit_scale, softcap));
  return forward_typed<float>(hidden.detach(), weight.detach(), b, c, make_transform<float>(logit_scale, softcap));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> head_backward_cpu(
    const at::Tensor& grad_logps, const at::Tensor& hidden, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& labels, const at::Tensor& cu_seqlens,
    const at::Tensor& lse, int64_t ignore_index, std::array<bool, 3> output_mask, double logit_scale,
    std::optional<double> softcap) {
  check_common(hidden, weight, bias, labels, cu_seqlens);
  TORCH_CHECK(grad_logps.dim() == 1 && grad_logps.size(0) == cu_seqlens.size(0) - 1,
              "inpo::head_backward: grad_logps must be [S], got ", grad_logps.sizes());
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == hidden.size(0), "inpo::head_backward: lse must be [N], got ",
              lse.sizes());
  at::AutoDispatchBelowADInplaceOrView guard;
  const Compacted c = compact(labels, cu_seqlens, ignore_index, weight.size(0));
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(bias->detach()) : std::nullopt;
  if (hidden.scalar_type() == at::kDouble)
    return backward_typed<double>(grad_logps.detach(), hidden.detach(), weight.detach(), b, lse.detach(), c,
                                  output_mask, make_transform<double>(logit_scale, softcap));
  return backward_typed<float>(grad_logps.detach(), hidden.detach(), weight.detach(), b, lse.detach(), c,
                               output_mask, make_transform<float>(logit_scale, softcap));
}

}  // namespace
}  // namespace inpo_native

TORCH_LIBRARY(inpo, m) {
  // The fake (meta) kernels and the autograd formula live in Python: point torch at that module so a
  // FakeTensor trace that meets these ops before it was imported can find them.
  m.set_python_module("inpo.ops.native_impl");
  m.def("head_forward(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, Tensor cu_seqlens, "
        "int ignore_index, float logit_scale=1., float? softcap=None) -> (Tensor, Tensor)");
  m.def("head_backward(Tensor grad_logps, Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, "
        "Tensor cu_seqlens, Tensor lse, int ignore_index, bool[3] output_mask, float logit_scale=1., "
        "float? softcap=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(inpo, CPU, m) {
  m.impl("head_forward", &inpo_native::head_forward_cpu);
  m.impl("head_backward", &inpo_native::head_backward_cpu);
}
