// Linear layers for a handful of input rows, streamed from memory at the machine's read bandwidth.
//
// At batch 1 a U-Net step multiplies 4-16 rows by each weight matrix once: the time is the time to read the
// weights. oneDNN's small-M GEMM streams them at 21-25 GB/s on the 2-core benchmark machine; plain AVX-512
// loads read 34-36 GB/s there, but only with several independent streams per core. So the weights are packed
// in blocks of 16 output features, (N/16, K, 16), and each core walks four blocks at once: four sequential
// streams, 16 accumulators (4 rows x 4 blocks), one broadcast input per row and step of K. See
// robopolicy/nn/stream_linear.py for the packing and the Python side.
//
//   fp32:  weight (N/16, K, 16) float, y = x @ W^T (+ bias), accumulated in fp32.
//   bf16:  weight (N/16, K/2, 16, 2) bfloat16 (K padded to even): two K steps per lane, as VDPBF16PS wants;
//          x is rounded to bf16 here, the products are accumulated in fp32 and y is fp32.
//
// Built by torch.utils.cpp_extension on first use, only on CPUs with AVX-512 (and AVX512_BF16 for bf16).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

namespace {

constexpr int kLanes = 16;  // output features per block: one zmm of fp32
constexpr int kBlocks = 4;  // blocks walked together per core: independent memory streams

// acc[b][m] += sum over k of W[block j+b][k] * x[m][k], for MR rows from m0 and NB blocks from j.
template <int MR, int NB>
inline void fp32_tile(const float* x, int64_t K, const float* w, float* y, int64_t N, int64_t j, int64_t m0,
                      const float* bias) {
  __m512 acc[NB][MR];
  for (int b = 0; b < NB; ++b)
    for (int m = 0; m < MR; ++m) acc[b][m] = _mm512_setzero_ps();
  const float* stream[NB];
  for (int b = 0; b < NB; ++b) stream[b] = w + (j + b) * K * kLanes;
  const float* rows = x + m0 * K;
  for (int64_t k = 0; k < K; ++k) {
    __m512 wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_loadu_ps(stream[b] + k * kLanes);
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_set1_ps(rows[m * K + k]);
      for (int b = 0; b < NB; ++b) acc[b][m] = _mm512_fmadd_ps(wv[b], xv, acc[b][m]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const __m512 bv = bias ? _mm512_loadu_ps(bias + (j + b) * kLanes) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) _mm512_storeu_ps(y + (m0 + m) * N + (j + b) * kLanes, _mm512_add_ps(acc[b][m], bv));
  }
}

#ifdef __AVX512BF16__
// Same tile over bf16 pairs: x and w hold (k, k+1) pairs as 32-bit words, K2 = K/2 pairs.
template <int MR, int NB>
inline void bf16_tile(const uint32_t* x, int64_t K2, const uint32_t* w, float* y, int64_t N, int64_t j, int64_t m0,
                      const float* bias) {
  __m512 acc[NB][MR];
  for (int b = 0; b < NB; ++b)
    for (int m = 0; m < MR; ++m) acc[b][m] = _mm512_setzero_ps();
  const uint32_t* stream[NB];
  for (int b = 0; b < NB; ++b) stream[b] = w + (j + b) * K2 * kLanes;
  const uint32_t* rows = x + m0 * K2;
  for (int64_t k = 0; k < K2; ++k) {
    __m512i wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_loadu_si512(stream[b] + k * kLanes);
    for (int m = 0; m < MR; ++m) {
      const __m512i xv = _mm512_set1_epi32(static_cast<int>(rows[m * K2 + k]));
      for (int b = 0; b < NB; ++b) acc[b][m] = _mm512_dpbf16_ps(acc[b][m], (__m512bh)wv[b], (__m512bh)xv);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const __m512 bv = bias ? _mm512_loadu_ps(bias + (j + b) * kLanes) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) _mm512_storeu_ps(y + (m0 + m) * N + (j + b) * kLanes, _mm512_add_ps(acc[b][m], bv));
  }
}

// x (M, K) fp32 -> (M, 2*K2) bf16, rounded to nearest even, zero in the padding column.
void to_bf16_pairs(const float* x, int64_t M, int64_t K, int64_t K2, uint16_t* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    uint16_t* dst = out + m * 2 * K2;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16), _mm512_loadu_ps(src + k));
      _mm512_storeu_si512(dst + k, (__m512i)pair);
    }
    for (; k < K; ++k) dst[k] = c10::BFloat16(src[k]).x;
    if (2 * K2 > K) dst[K] = 0;
  }
}
#endif

// Every row of x against blocks [j, j + NB): rows in tiles of 4, then 2, then 1.
template <int NB, typename Tile>
inline void all_rows(int64_t M, Tile&& tile) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) tile(std::integral_constant<int, 4>{}, m0);
  for (; m0 + 2 <= M; m0 += 2) tile(std::integral_constant<int, 2>{}, m0);
  for (; m0 < M; ++m0) tile(std::integral_constant<int, 1>{}, m0);
}

// Splits the N/16 blocks between the cores; each walks its share kBlocks at a time.
template <typename Tile>
void over_blocks(int64_t blocks, Tile&& tile) {
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    int64_t j = begin;
    for (; j + kBlocks <= end; j += kBlocks) tile(std::integral_constant<int, kBlocks>{}, j);
    for (; j < end; ++j) tile(std::integral_constant<int, 1>{}, j);
  });
}

at::Tensor stream_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), "stream_linear runs on CPU tensors");
  TORCH_CHECK(input.scalar_type() == at::kFloat, "stream_linear: input must be float32, got ", input.scalar_type());
  const bool bf16 = weight.scalar_type() == at::kBFloat16;
  TORCH_CHECK(weight.dim() == (bf16 ? 4 : 3) && weight.size(2) == kLanes && weight.is_contiguous(),
              "stream_linear: weight must be packed by robopolicy.nn.stream_linear.pack, got shape ", weight.sizes());
  const int64_t K = input.size(-1), N = weight.size(0) * kLanes;
  const int64_t K2 = bf16 ? weight.size(1) : 0;
  TORCH_CHECK(bf16 ? (K2 == (K + 1) / 2) : (weight.size(1) == K), "stream_linear: input has ", K,
              " features, the packed weight expects ", bf16 ? 2 * K2 : weight.size(1));
  const float* bias_data = nullptr;
  at::Tensor bias_fp32;
  if (bias.has_value()) {
    bias_fp32 = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(bias_fp32.numel() == N, "stream_linear: bias has ", bias_fp32.numel(), " values for ", N, " outputs");
    bias_data = bias_fp32.data_ptr<float>();
  }
  const at::Tensor x = input.reshape({-1, K}).contiguous();
  const int64_t M = x.size(0);
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({M, N}, input.options());
  float* out = y.data_ptr<float>();

  if (!bf16) {
    const float* xs = x.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    over_blocks(N / kLanes, [&](auto NB, int64_t j) {
      all_rows<NB.value>(M, [&](auto MR, int64_t m0) {
        fp32_tile<MR.value, NB.value>(xs, K, w, out, N, j, m0, bias_data);
      });
    });
    return y.view(out_shape);
  }
#ifdef __AVX512BF16__
  at::Tensor pairs = at::empty({M, 2 * K2}, input.options().dtype(at::kBFloat16));
  to_bf16_pairs(x.data_ptr<float>(), M, K, K2, reinterpret_cast<uint16_t*>(pairs.data_ptr<at::BFloat16>()));
  const uint32_t* xs = reinterpret_cast<const uint32_t*>(pairs.data_ptr<at::BFloat16>());
  const uint32_t* w = reinterpret_cast<const uint32_t*>(weight.data_ptr<at::BFloat16>());
  over_blocks(N / kLanes, [&](auto NB, int64_t j) {
    all_rows<NB.value>(M, [&](auto MR, int64_t m0) {
      bf16_tile<MR.value, NB.value>(xs, K2, w, out, N, j, m0, bias_data);
    });
  });
  return y.view(out_shape);
#else
  TORCH_CHECK(false, "stream_linear: bf16 weights need a CPU with AVX512_BF16");
#endif
}

}  // namespace

TORCH_LIBRARY(robopolicy, m) {
  m.def("stream_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(robopolicy, CPU, m) {
  m.impl("stream_linear", &stream_linear);
}
