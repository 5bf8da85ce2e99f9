// Event-driven convolutions of spike (0/1) input on the CPU: the forward pass and the weight gradient visit only the
// active inputs, so their cost grows with the spike count, not with the number of neurons (the accelerator's
// principle, applied to training). Measured: docs/benchmarks.md, "Event-driven convolutions".
//
// Layouts (a channels_last tensor's memory): spikes x [N, H, W, Cin] float 0/1; weights wt [K, K, Cin, Cout];
// output and output gradient [N, Ho, Wo, Cout]; Cout a multiple of 8 (checked by the Python side).
// * events(x): the active channels of every input pixel, as CSR: offsets [N*H*W + 1] int64, channels [nnz] int16.
// * forward: each output pixel sums the weight rows of the active inputs under its K x K window (no multiplies),
//   64 output channels at a time in AVX2 accumulators.
// * weight_grad: for each output pixel and each active input under its window, dW[ky, kx, ci, :] += g[p, :], into
//   one copy of dW per thread, summed at the end.
// The input gradient has no event form (the output gradient is dense) and stays oneDNN's.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <vector>

namespace {

struct Geometry {
  int64_t N, H, W, Cin, Ho, Wo, Cout, K, stride, pad;
};

std::vector<at::Tensor> events(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(), "events: x must be [N, H, W, C] float");
  const int64_t P = x.size(0) * x.size(1) * x.size(2), C = x.size(3);
  TORCH_CHECK(C <= 32767, "events: more than 32767 channels");
  const float* xp = x.data_ptr<float>();
  auto offsets = at::empty({P + 1}, at::kLong);
  int64_t* op = offsets.data_ptr<int64_t>();
  op[0] = 0;
  at::parallel_for(0, P, 2048, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* row = xp + p * C;
      int64_t n = 0;
      for (int64_t c = 0; c < C; ++c) n += row[c] != 0.0f;
      op[p + 1] = n;
    }
  });
  for (int64_t p = 0; p < P; ++p) op[p + 1] += op[p];
  auto channels = at::empty({op[P]}, at::kShort);
  int16_t* cp = channels.data_ptr<int16_t>();
  at::parallel_for(0, P, 2048, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* row = xp + p * C;
      int16_t* out = cp + op[p];
      for (int64_t c = 0; c < C; ++c)
        if (row[c] != 0.0f) *out++ = static_cast<int16_t>(c);
    }
  });
  return {offsets, channels};
}

// Calls f(tap, q) for every input pixel q inside output pixel p's window (tap = ky * K + kx; padding skipped).
template <typename F>
inline void for_each_window_input(const Geometry& g, int64_t p, F&& f) {
  const int64_t n = p / (g.Ho * g.Wo), r = p % (g.Ho * g.Wo), oy = r / g.Wo, ox = r % g.Wo;
  for (int64_t ky = 0; ky < g.K; ++ky) {
    const int64_t iy = oy * g.stride - g.pad + ky;
    if (iy < 0 || iy >= g.H) continue;
    for (int64_t kx = 0; kx < g.K; ++kx) {
      const int64_t ix = ox * g.stride - g.pad + kx;
      if (ix < 0 || ix >= g.W) continue;
      f(ky * g.K + kx, (n * g.H + iy) * g.W + ix);
    }
  }
}

// V accumulators of 8 floats: output channels [c0, c0 + 8 V) of output pixel p
template <int V>
inline void forward_chunk(const Geometry& g, int64_t p, int64_t c0, const int64_t* off, const int16_t* ch,
                          const float* wt, float* out) {
  __m256 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
  for_each_window_input(g, p, [&](int64_t tap, int64_t q) {
    const float* wk = wt + tap * g.Cin * g.Cout + c0;
    for (int64_t j = off[q]; j < off[q + 1]; ++j) {
      const float* row = wk + static_cast<int64_t>(ch[j]) * g.Cout;
      for (int v = 0; v < V; ++v) acc[v] = _mm256_add_ps(acc[v], _mm256_loadu_ps(row + 8 * v));
    }
  });
  float* o = out + p * g.Cout + c0;
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(o + 8 * v, acc[v]);
}

template <int V>
inline void weight_grad_chunk(const Geometry& g, int64_t p, int64_t c0, const int64_t* off, const int16_t* ch,
                              const float* grad, float* dw) {
  __m256 gv[V];
  const float* gr = grad + p * g.Cout + c0;
  for (int v = 0; v < V; ++v) gv[v] = _mm256_loadu_ps(gr + 8 * v);
  for_each_window_input(g, p, [&](int64_t tap, int64_t q) {
    float* dk = dw + tap * g.Cin * g.Cout + c0;
    for (int64_t j = off[q]; j < off[q + 1]; ++j) {
      float* d = dk + static_cast<int64_t>(ch[j]) * g.Cout;
      for (int v = 0; v < V; ++v) _mm256_storeu_ps(d + 8 * v, _mm256_add_ps(_mm256_loadu_ps(d + 8 * v), gv[v]));
    }
  });
}

template <template <int> class F, typename... A>
inline void per_chunk(const Geometry& g, int64_t p, A... a) {
  int64_t c0 = 0;
  for (; c0 + 64 <= g.Cout; c0 += 64) F<8>::run(g, p, c0, a...);
  switch ((g.Cout - c0) / 8) {
    case 1: F<1>::run(g, p, c0, a...); break;
    case 2: F<2>::run(g, p, c0, a...); break;
    case 3: F<3>::run(g, p, c0, a...); break;
    case 4: F<4>::run(g, p, c0, a...); break;
    case 5: F<5>::run(g, p, c0, a...); break;
    case 6: F<6>::run(g, p, c0, a...); break;
    case 7: F<7>::run(g, p, c0, a...); break;
    default: break;
  }
}

template <int V>
struct Forward {
  static void run(const Geometry& g, int64_t p, int64_t c0, const int64_t* off, const int16_t* ch, const float* wt,
                  float* out) { forward_chunk<V>(g, p, c0, off, ch, wt, out); }
};

template <int V>
struct WeightGrad {
  static void run(const Geometry& g, int64_t p, int64_t c0, const int64_t* off, const int16_t* ch, const float* grad,
                  float* dw) { weight_grad_chunk<V>(g, p, c0, off, ch, grad, dw); }
};

Geometry geometry(const at::Tensor& offsets, std::vector<int64_t> in_shape, int64_t K, int64_t Cout, int64_t stride,
                  int64_t pad) {
  TORCH_CHECK(in_shape.size() == 4, "input shape must be [N, H, W, Cin]");
  Geometry g{in_shape[0], in_shape[1], in_shape[2], in_shape[3], 0, 0, Cout, K, stride, pad};
  g.Ho = (g.H + 2 * pad - K) / stride + 1;
  g.Wo = (g.W + 2 * pad - K) / stride + 1;
  TORCH_CHECK(Cout % 8 == 0, "Cout must be a multiple of 8");
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "empty output");
  TORCH_CHECK(offsets.numel() == g.N * g.H * g.W + 1, "offsets do not match the input shape");
  return g;
}

at::Tensor forward(const at::Tensor& offsets, const at::Tensor& channels, std::vector<int64_t> in_shape,
                   const at::Tensor& wt, int64_t stride, int64_t pad) {
  TORCH_CHECK(wt.dim() == 4 && wt.is_contiguous() && wt.scalar_type() == at::kFloat, "wt must be [K, K, Cin, Cout]");
  Geometry g = geometry(offsets, in_shape, wt.size(0), wt.size(3), stride, pad);
  TORCH_CHECK(wt.size(2) == g.Cin, "wt does not match the input channels");
  auto out = at::empty({g.N, g.Ho, g.Wo, g.Cout}, at::kFloat);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int16_t* ch = channels.data_ptr<int16_t>();
  const float* w = wt.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, g.N * g.Ho * g.Wo, 64, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) per_chunk<Forward>(g, p, off, ch, w, o);
  });
  return out;
}

at::Tensor weight_grad(const at::Tensor& offsets, const at::Tensor& channels, std::vector<int64_t> in_shape,
                       const at::Tensor& grad, int64_t K, int64_t stride, int64_t pad) {
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous() && grad.scalar_type() == at::kFloat,
              "grad must be [N, Ho, Wo, Cout] float");
  Geometry g = geometry(offsets, in_shape, K, grad.size(3), stride, pad);
  TORCH_CHECK(grad.size(0) == g.N && grad.size(1) == g.Ho && grad.size(2) == g.Wo, "grad does not match the output");
  const int64_t total = g.N * g.Ho * g.Wo, per = K * K * g.Cin * g.Cout;
  const int64_t parts_n = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total));
  auto parts = at::zeros({parts_n, K, K, g.Cin, g.Cout}, at::kFloat);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int16_t* ch = channels.data_ptr<int16_t>();
  const float* gp = grad.data_ptr<float>();
  float* pp = parts.data_ptr<float>();
  at::parallel_for(0, parts_n, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t b = total * t / parts_n, e = total * (t + 1) / parts_n;
      for (int64_t p = b; p < e; ++p) per_chunk<WeightGrad>(g, p, off, ch, gp, pp + t * per);
    }
  });
  return parts_n == 1 ? parts[0] : parts.sum(0);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("events", &events);
  m.def("forward", &forward);
  m.def("weight_grad", &weight_grad);
}
