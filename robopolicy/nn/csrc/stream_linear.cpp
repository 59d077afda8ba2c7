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

// How one K step reads and multiplies, per weight format. Both hold one zmm of weights per K step of a block.
struct Fp32 {  // a K step is one k: 16 floats, times one broadcast float of x
  using Word = float;
  static __m512 load(const float* w) { return _mm512_loadu_ps(w); }
  static __m512 broadcast(float x) { return _mm512_set1_ps(x); }
  static __m512 madd(__m512 acc, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, acc); }
};

#ifdef __AVX512BF16__
struct Bf16 {  // a K step is a pair (k, k+1): 16 bf16 pairs as 32-bit words, times one broadcast pair of x
  using Word = uint32_t;
  static __m512 load(const uint32_t* w) { return _mm512_castsi512_ps(_mm512_loadu_si512(w)); }
  static __m512 broadcast(uint32_t x) { return _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(x))); }
  static __m512 madd(__m512 acc, __m512 w, __m512 x) { return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x); }
};

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

// y[m][block j+b] = sum over the S K steps of W[block j+b][s] * x[m][s] (+ bias), for MR rows from m0 and NB
// blocks from j: NB weight streams, MR * NB accumulators.
template <typename Format, int MR, int NB>
inline void tile(const typename Format::Word* x, int64_t S, const typename Format::Word* w, float* y, int64_t N,
                 int64_t j, int64_t m0, const float* bias) {
  __m512 acc[NB][MR];
  for (int b = 0; b < NB; ++b)
    for (int m = 0; m < MR; ++m) acc[b][m] = _mm512_setzero_ps();
  const typename Format::Word* stream[NB];
  for (int b = 0; b < NB; ++b) stream[b] = w + (j + b) * S * kLanes;
  const typename Format::Word* rows = x + m0 * S;
  for (int64_t s = 0; s < S; ++s) {
    __m512 wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = Format::load(stream[b] + s * kLanes);
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = Format::broadcast(rows[m * S + s]);
      for (int b = 0; b < NB; ++b) acc[b][m] = Format::madd(acc[b][m], wv[b], xv);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const __m512 bv = bias ? _mm512_loadu_ps(bias + (j + b) * kLanes) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) _mm512_storeu_ps(y + (m0 + m) * N + (j + b) * kLanes, _mm512_add_ps(acc[b][m], bv));
  }
}

// Every row of x: in tiles of 4, then 2, then 1.
template <typename RowTile>
inline void all_rows(int64_t M, RowTile&& row_tile) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) row_tile(std::integral_constant<int, 4>{}, m0);
  for (; m0 + 2 <= M; m0 += 2) row_tile(std::integral_constant<int, 2>{}, m0);
  for (; m0 < M; ++m0) row_tile(std::integral_constant<int, 1>{}, m0);
}

// y (M, N) = x (M, S steps) against the packed weight: the N/16 blocks split between the cores, each core
// walking its share kBlocks at a time.
template <typename Format>
void multiply(const typename Format::Word* x, int64_t M, int64_t S, const typename Format::Word* w, float* y,
              int64_t N, const float* bias) {
  at::parallel_for(0, N / kLanes, 1, [&](int64_t begin, int64_t end) {
    auto blocks = [&](auto NB, int64_t j) {
      all_rows(M, [&](auto MR, int64_t m0) { tile<Format, MR.value, NB.value>(x, S, w, y, N, j, m0, bias); });
    };
    int64_t j = begin;
    for (; j + kBlocks <= end; j += kBlocks) blocks(std::integral_constant<int, kBlocks>{}, j);
    for (; j < end; ++j) blocks(std::integral_constant<int, 1>{}, j);
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
    multiply<Fp32>(x.data_ptr<float>(), M, K, weight.data_ptr<float>(), out, N, bias_data);
    return y.view(out_shape);
  }
#ifdef __AVX512BF16__
  at::Tensor pairs = at::empty({M, 2 * K2}, input.options().dtype(at::kBFloat16));
  to_bf16_pairs(x.data_ptr<float>(), M, K, K2, reinterpret_cast<uint16_t*>(pairs.data_ptr<at::BFloat16>()));
  multiply<Bf16>(reinterpret_cast<const uint32_t*>(pairs.data_ptr<at::BFloat16>()), M, K2,
                 reinterpret_cast<const uint32_t*>(weight.data_ptr<at::BFloat16>()), out, N, bias_data);
  return y.view(out_shape);
#else
  TORCH_CHECK(false, "stream_linear: bf16 weights need a CPU with AVX512_BF16");
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(robopolicy, m) {
  m.def("stream_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(robopolicy, CPU, m) {
  m.impl("stream_linear", &stream_linear);
}
