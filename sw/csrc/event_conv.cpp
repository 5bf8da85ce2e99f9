// Event-driven convolutions of spike (0/1) input on the CPU: the forward pass and the weight gradient visit only the
// active inputs, so their cost grows with the spike count, not with the number of neurons (the accelerator's
// principle, applied to training). Measured: docs/benchmarks.md, "Event-driven convolutions".
//
// Layouts (a channels_last tensor's memory): spikes x [N, H, W, Cin] float 0/1; output and output gradient
// [N, Ho, Wo, Cout], Cout a multiple of 8 (checked by the Python side). Channels go in blocks of 64: input channel
// block k = [64 k, 64 k + 64), output channel chunk c = [64 c, 64 c + 64) (the last one zero-padded to 64).
// * events(x): the active channels of every (input pixel, input block), as CSR: offsets [N*H*W*nb + 1] int64,
//   channels [nnz] int16 (absolute channel numbers, ascending).
// * forward(..., wp): wp is the weight packed as [nc, K, K, Cin, 64], so that one (chunk, tap, block) slice is
//   16 KiB of contiguous 256-byte rows. For a tile of 32 output pixels and one chunk, taps and blocks go in the outer
//   loops: the slice stays in L1 while each pixel adds the rows of its window input's active channels (no
//   multiplies) to its 64 accumulators.
// * weight_grad: each work item owns one (block, chunk) slice of dW, [K, K, 64, 64] (147 KiB, stays in L2). For a
//   tile of 64 output pixels it first marks, per (tap, input channel), which of the tile's pixels see that input
//   active (one bit each), then sums those pixels' output gradient rows in registers (loads and adds from a 16 KiB
//   copy of the tile's gradient) and adds the sum to the dW row once. Where there are fewer slices than 2 per
//   thread, the pixels are split too and the partial slices added after. Returned packed, [nb, nc, K, K, 64, 64];
//   the Python side unpacks it.
// The input gradient has no event form (the output gradient is dense) and stays oneDNN's.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <vector>

namespace {

constexpr int64_t B = 64;   // input channels per block, output channels per chunk
constexpr int64_t TP = 32;  // output pixels per tile of the forward
constexpr int64_t TW = 64;  // output pixels per tile of the weight gradient (one bit each in a uint64)

// 64 floats (one weight or gradient row of a 64-channel block) in 8 AVX2 registers
struct Row64 {
  __m256 v[8];

  static Row64 zero() {
    Row64 r;
    for (auto& x : r.v) x = _mm256_setzero_ps();
    return r;
  }
  static Row64 load(const float* p) {  // p 32-byte aligned
    Row64 r;
    for (int k = 0; k < 8; ++k) r.v[k] = _mm256_load_ps(p + 8 * k);
    return r;
  }
  void add(const float* p) {
    for (int k = 0; k < 8; ++k) v[k] = _mm256_add_ps(v[k], _mm256_load_ps(p + 8 * k));
  }
  void store(float* p) const {
    for (int k = 0; k < 8; ++k) _mm256_store_ps(p + 8 * k, v[k]);
  }
  void add_to(float* p) const {
    for (int k = 0; k < 8; ++k) _mm256_store_ps(p + 8 * k, _mm256_add_ps(_mm256_load_ps(p + 8 * k), v[k]));
  }
};

struct Geometry {
  int64_t N, H, W, Cin, Ho, Wo, Cout, K, stride, pad, nb, nc;
  int64_t pixels() const { return N * Ho * Wo; }
};

// events of a [P, C] 0/1 float matrix, as CSR over (pixel, 64-channel block): offsets [P * nb + 1], channels int16
std::vector<at::Tensor> events(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(), "events: x must be [N, H, W, C] float");
  const int64_t P = x.size(0) * x.size(1) * x.size(2), C = x.size(3), nb = (C + B - 1) / B;
  TORCH_CHECK(C <= 32767, "events: more than 32767 channels");
  const float* xp = x.data_ptr<float>();
  auto offsets = at::empty({P * nb + 1}, at::kLong);
  int64_t* op = offsets.data_ptr<int64_t>();
  op[0] = 0;
  const __m256 zero = _mm256_setzero_ps();
  auto mask8 = [&](const float* row, int64_t c, int64_t C) -> uint32_t {
    if (c + 8 <= C) return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + c), zero, _CMP_NEQ_UQ));
    uint32_t m = 0;
    for (int64_t i = c; i < C; ++i) m |= static_cast<uint32_t>(row[i] != 0.0f) << (i - c);
    return m;
  };
  at::parallel_for(0, P, 1024, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* row = xp + p * C;
      for (int64_t k = 0; k < nb; ++k) {
        int64_t n = 0;
        for (int64_t c = k * B; c < std::min(C, (k + 1) * B); c += 8) n += __builtin_popcount(mask8(row, c, C));
        op[p * nb + k + 1] = n;
      }
    }
  });
  for (int64_t i = 0; i < P * nb; ++i) op[i + 1] += op[i];
  auto channels = at::empty({op[P * nb]}, at::kShort);
  int16_t* cp = channels.data_ptr<int16_t>();
  at::parallel_for(0, P, 1024, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* row = xp + p * C;
      int16_t* out = cp + op[p * nb];
      for (int64_t c = 0; c < C; c += 8)
        for (uint32_t m = mask8(row, c, C); m; m &= m - 1) *out++ = static_cast<int16_t>(c + __builtin_ctz(m));
    }
  });
  return {offsets, channels};
}

Geometry geometry(const at::Tensor& offsets, std::vector<int64_t> in_shape, int64_t K, int64_t Cout, int64_t stride,
                  int64_t pad) {
  TORCH_CHECK(in_shape.size() == 4, "input shape must be [N, H, W, Cin]");
  Geometry g{in_shape[0], in_shape[1], in_shape[2], in_shape[3], 0, 0, Cout, K, stride, pad, 0, 0};
  g.Ho = (g.H + 2 * pad - K) / stride + 1;
  g.Wo = (g.W + 2 * pad - K) / stride + 1;
  g.nb = (g.Cin + B - 1) / B;
  g.nc = (g.Cout + B - 1) / B;
  TORCH_CHECK(Cout % 8 == 0, "Cout must be a multiple of 8");
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "empty output");
  TORCH_CHECK(offsets.numel() == g.N * g.H * g.W * g.nb + 1, "offsets do not match the input shape");
  return g;
}

// where the windows of output pixels p0 .. p0 + n - 1 (n <= 64) start: one division per tile, not four per pixel
// and tap
static_assert(TP <= 64 && TW <= 64, "TileOrigins holds 64 pixels");
struct TileOrigins {
  int64_t n;
  int64_t row[64], iy[64], ix[64];  // first input row of the pixel's image; window origin (may be in the padding)

  TileOrigins(const Geometry& g, int64_t p0, int64_t count) : n(count) {
    int64_t b = p0 / (g.Ho * g.Wo), r = p0 % (g.Ho * g.Wo), oy = r / g.Wo, ox = r % g.Wo;
    for (int64_t i = 0; i < n; ++i) {
      row[i] = b * g.H;
      iy[i] = oy * g.stride - g.pad;
      ix[i] = ox * g.stride - g.pad;
      if (++ox == g.Wo) {
        ox = 0;
        if (++oy == g.Ho) oy = 0, ++b;
      }
    }
  }

  // the input pixel under tap (ky, kx) of each of the tile's pixels, or -1 in the padding
  void inputs(const Geometry& g, int64_t ky, int64_t kx, int64_t* q) const {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t y = iy[i] + ky, x = ix[i] + kx;
      q[i] = (y < 0 || y >= g.H || x < 0 || x >= g.W) ? -1 : (row[i] + y) * g.W + x;
    }
  }
};

// wp: packed weights [nc, K, K, Cin, 64] (output channels zero-padded to nc * 64)
at::Tensor forward(const at::Tensor& offsets, const at::Tensor& channels, std::vector<int64_t> in_shape,
                   const at::Tensor& wp, int64_t Cout, int64_t stride, int64_t pad) {
  TORCH_CHECK(wp.dim() == 5 && wp.is_contiguous() && wp.scalar_type() == at::kFloat && wp.size(4) == B,
              "wp must be [nc, K, K, Cin, 64]");
  Geometry g = geometry(offsets, in_shape, wp.size(1), Cout, stride, pad);
  TORCH_CHECK(wp.size(0) == g.nc && wp.size(3) == g.Cin, "wp does not match the input channels");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(wp.data_ptr<float>()) % 32 == 0, "wp must be 32-byte aligned");
  auto out = at::empty({g.N, g.Ho, g.Wo, g.Cout}, at::kFloat);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int16_t* ch = channels.data_ptr<int16_t>();
  const float* w = wp.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t P = g.pixels(), tiles = (P + TP - 1) / TP, KK = g.K * g.K;
  at::parallel_for(0, g.nc * tiles, 1, [&](int64_t ib, int64_t ie) {
    alignas(32) float acc[TP * B];
    int64_t q[TP];
    for (int64_t item = ib; item < ie; ++item) {
      const int64_t c = item / tiles, p0 = (item % tiles) * TP, n = std::min(TP, P - p0);
      std::fill(acc, acc + n * B, 0.0f);
      const TileOrigins tile(g, p0, n);
      for (int64_t tap = 0; tap < KK; ++tap) {
        tile.inputs(g, tap / g.K, tap % g.K, q);
        const float* wk = w + (c * KK + tap) * g.Cin * B;
        for (int64_t k = 0; k < g.nb; ++k) {
          for (int64_t i = 0; i < n; ++i) {
            if (q[i] < 0) continue;
            const int64_t j0 = off[q[i] * g.nb + k], j1 = off[q[i] * g.nb + k + 1];
            if (j0 == j1) continue;
            float* a = acc + i * B;
            Row64 sum = Row64::load(a);
            for (int64_t j = j0; j < j1; ++j) sum.add(wk + static_cast<int64_t>(ch[j]) * B);
            sum.store(a);
          }
        }
      }
      const int64_t cw = std::min(B, g.Cout - c * B);
      for (int64_t i = 0; i < n; ++i) std::copy(acc + i * B, acc + i * B + cw, o + (p0 + i) * g.Cout + c * B);
    }
  });
  return out;
}

// returns the packed weight gradient [nb, nc, K, K, 64, 64] (input channel within the block, output channel)
at::Tensor weight_grad(const at::Tensor& offsets, const at::Tensor& channels, std::vector<int64_t> in_shape,
                       const at::Tensor& grad, int64_t K, int64_t stride, int64_t pad) {
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous() && grad.scalar_type() == at::kFloat,
              "grad must be [N, Ho, Wo, Cout] float");
  Geometry g = geometry(offsets, in_shape, K, grad.size(3), stride, pad);
  TORCH_CHECK(grad.size(0) == g.N && grad.size(1) == g.Ho && grad.size(2) == g.Wo, "grad does not match the output");
  TORCH_CHECK(K <= 8, "weight_grad: kernels up to 8 x 8");
  const int64_t P = g.pixels(), KK = K * K, slices = g.nb * g.nc, slice = KK * B * B;
  // split the pixels too where there are fewer slices than 2 per thread; the splits' partial sums are added after
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>((2 * at::get_num_threads() + slices - 1) / slices,
                                                                (P + TP - 1) / TP));
  auto parts = at::zeros({splits, g.nb, g.nc, K, K, B, B}, at::kFloat);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int16_t* ch = channels.data_ptr<int16_t>();
  const float* gp = grad.data_ptr<float>();
  float* pp = parts.data_ptr<float>();
  at::parallel_for(0, splits * slices, 1, [&](int64_t ib, int64_t ie) {
    alignas(32) float gt[TW * B];
    uint64_t seen[64 * B];  // [tap, channel in the block]: which of the tile's pixels see that input active (K <= 8)
    int64_t q[TW];
    for (int64_t item = ib; item < ie; ++item) {
      const int64_t s = item / slices, k = (item % slices) / g.nc, c = item % g.nc;
      const int64_t pb = P * s / splits, pe = P * (s + 1) / splits, cw = std::min(B, g.Cout - c * B);
      const int64_t first = k * B;
      float* dw = pp + item * slice;
      for (int64_t p0 = pb; p0 < pe; p0 += TW) {
        const int64_t n = std::min(TW, pe - p0);
        for (int64_t i = 0; i < n; ++i) {
          std::copy(gp + (p0 + i) * g.Cout + c * B, gp + (p0 + i) * g.Cout + c * B + cw, gt + i * B);
          std::fill(gt + i * B + cw, gt + (i + 1) * B, 0.0f);
        }
        std::fill(seen, seen + KK * B, uint64_t{0});
        const TileOrigins tile(g, p0, n);
        for (int64_t tap = 0; tap < KK; ++tap) {
          tile.inputs(g, tap / K, tap % K, q);
          uint64_t* sk = seen + tap * B - first;
          for (int64_t i = 0; i < n; ++i) {
            if (q[i] < 0) continue;
            for (int64_t j = off[q[i] * g.nb + k], j1 = off[q[i] * g.nb + k + 1]; j < j1; ++j)
              sk[ch[j]] |= uint64_t{1} << i;
          }
        }
        for (int64_t r = 0; r < KK * B; ++r) {
          uint64_t m = seen[r];
          if (!m) continue;
          Row64 sum = Row64::zero();
          for (; m; m &= m - 1) sum.add(gt + __builtin_ctzll(m) * B);
          sum.add_to(dw + r * B);
        }
      }
    }
  });
  return splits == 1 ? parts[0] : parts.sum(0);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("events", &events);
  m.def("forward", &forward);
  m.def("weight_grad", &weight_grad);
}
