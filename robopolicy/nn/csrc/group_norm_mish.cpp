// GroupNorm -> Mish -> optional FiLM (y * scale + shift), forward and backward, in one pass over each group.
//
// The U-Net's Conv1dBlock follows every convolution with GroupNorm and Mish, and the first block of each
// residual block with FiLM. In eager PyTorch these are five ops and five backward ops per block, each a pass
// over the activations, and aten's GroupNorm backward is slow on short sequences (its inner loop runs over
// L = 4-16 steps). At training batch 256 they took about 11% of the paper U-Net's step. Here a group's
// Cg * L values are read once, kept in cache, and the backward recomputes the normalised input and Mish
// instead of saving them. See robopolicy/nn/group_norm_mish.py for the Python side and the autograd wiring.
//
//   forward:  h (B, C, L) fp32, weight/bias (C), scale/shift (B, C) or none
//             -> y (B, C, L) fp32, mean (B, G), rstd (B, G)
//   backward: grad_y, h, mean, rstd, weight, bias, scale
//             -> grad_h (B, C, L), grad_weight (C), grad_bias (C), grad_scale (B, C), grad_shift (B, C)
//
// The flat loops over a group's values are written for the compiler's vectoriser (built with -O3
// -march=native); per-channel parameters are spread to per-value scratch rows so that every loop is flat.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// e^x for x in [-87, 88], to about 2 ulp: 2^k * p(r) with r = x - k ln 2, |r| <= ln2 / 2, degree-6 Taylor.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // not fmin/fmax: their NaN rules block vectorising
  const float k = std::floor(x * 1.44269504f + 0.5f);
  const float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
}

// tanh(softplus(z)) = u / (u + 2) with u = e^z (e^z + 2); past z = 20 it is 1 in fp32.
inline float tanh_softplus(float z, float t) {
  const float u = t * (t + 2.0f);
  return z > 20.0f ? 1.0f : u / (u + 2.0f);
}

struct Shapes {
  int64_t batch, channels, length, groups, per_group;  // per_group: channels per group
  int64_t values() const { return per_group * length; }  // values per group
};

Shapes check(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
             const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, int64_t groups) {
  TORCH_CHECK(h.device().is_cpu() && h.scalar_type() == at::kFloat && h.dim() == 3 && h.is_contiguous(),
              "group_norm_mish: h must be a contiguous fp32 CPU tensor (B, C, L), got ", h.sizes(), " ",
              h.scalar_type());
  const int64_t channels = h.size(1);
  TORCH_CHECK(groups > 0 && channels % groups == 0, "group_norm_mish: ", channels, " channels in ", groups,
              " groups");
  for (const at::Tensor* p : {&weight, &bias})
    TORCH_CHECK(p->scalar_type() == at::kFloat && p->is_contiguous() && p->numel() == channels,
                "group_norm_mish: weight and bias must be contiguous fp32 (", channels, "), got ", p->sizes());
  TORCH_CHECK(scale.has_value() == shift.has_value(), "group_norm_mish: scale and shift go together");
  if (scale.has_value())
    for (const at::Tensor* p : {&*scale, &*shift})
      TORCH_CHECK(p->scalar_type() == at::kFloat && p->is_contiguous() && p->dim() == 2 &&
                      p->size(0) == h.size(0) && p->size(1) == channels,
                  "group_norm_mish: scale and shift must be contiguous fp32 (", h.size(0), ", ", channels,
                  "), got ", p->sizes());
  return {h.size(0), channels, h.size(2), groups, channels / groups};
}

// Groups per task: small tensors (batch-1 inference) stay on the calling thread, where a parallel region would
// cost more than the work.
inline int64_t grain(const Shapes& s) { return std::max<int64_t>(1, 32768 / s.values()); }

// Per-value rows of one group's per-channel numbers: row[c * L + l] = value[c]. The U-Net's lengths get loops of
// known length, which the compiler turns into shuffles instead of L scalar stores per channel.
template <int64_t L>
inline void spread_fixed(const float* per_channel, int64_t per_group, float* row) {
  for (int64_t c = 0; c < per_group; ++c)
    for (int64_t l = 0; l < L; ++l) row[c * L + l] = per_channel[c];
}

inline void spread(const float* per_channel, int64_t per_group, int64_t length, float* row) {
  switch (length) {
    case 4: return spread_fixed<4>(per_channel, per_group, row);
    case 8: return spread_fixed<8>(per_channel, per_group, row);
    case 16: return spread_fixed<16>(per_channel, per_group, row);
  }
  for (int64_t c = 0; c < per_group; ++c)
    for (int64_t l = 0; l < length; ++l) row[c * length + l] = per_channel[c];
}

// out[c] = sum over l of row[c * L + l].
template <int64_t L>
inline void sum_steps_fixed(const float* row, int64_t per_group, float* out) {
  for (int64_t c = 0; c < per_group; ++c) {
    float s = 0.0f;
    for (int64_t l = 0; l < L; ++l) s += row[c * L + l];
    out[c] = s;
  }
}

inline void sum_steps(const float* row, int64_t per_group, int64_t length, float* out) {
  switch (length) {
    case 4: return sum_steps_fixed<4>(row, per_group, out);
    case 8: return sum_steps_fixed<8>(row, per_group, out);
    case 16: return sum_steps_fixed<16>(row, per_group, out);
  }
  for (int64_t c = 0; c < per_group; ++c) {
    float s = 0.0f;
    for (int64_t l = 0; l < length; ++l) s += row[c * length + l];
    out[c] = s;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_mish(
    const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& shift, int64_t groups, double eps) {
  const Shapes s = check(h, weight, bias, scale, shift, groups);
  at::Tensor y = at::empty_like(h);
  at::Tensor mean = at::empty({s.batch, s.groups}, h.options());
  at::Tensor rstd = at::empty({s.batch, s.groups}, h.options());
  const float *x_all = h.data_ptr<float>(), *gamma = weight.data_ptr<float>(), *beta = bias.data_ptr<float>();
  const float* film_scale = scale.has_value() ? scale->data_ptr<float>() : nullptr;
  const float* film_shift = shift.has_value() ? shift->data_ptr<float>() : nullptr;
  float *y_all = y.data_ptr<float>(), *mean_all = mean.data_ptr<float>(), *rstd_all = rstd.data_ptr<float>();
  at::parallel_for(0, s.batch * s.groups, grain(s), [&](int64_t begin, int64_t end) {
    const int64_t n = s.values();  // a local: the vectoriser will not hoist a captured reference past the stores
    std::vector<float> scratch(4 * n + 2 * s.per_group);
    float *a = scratch.data(), *b = a + n, *sc = b + n, *sh = sc + n, *ca = sh + n, *cb = ca + s.per_group;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t batch = unit / s.groups, c0 = (unit % s.groups) * s.per_group;
      const float* x = x_all + (batch * s.channels + c0) * s.length;
      float* out = y_all + (batch * s.channels + c0) * s.length;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < n; ++i) sum += x[i];
      const float mu = sum / n;
      float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < n; ++i) squares += (x[i] - mu) * (x[i] - mu);
      const float r = 1.0f / std::sqrt(squares / n + static_cast<float>(eps));
      mean_all[unit] = mu;
      rstd_all[unit] = r;
      // z = (x - mu) * r * gamma + beta = x * a + b per channel.
      for (int64_t c = 0; c < s.per_group; ++c) {
        ca[c] = r * gamma[c0 + c];
        cb[c] = beta[c0 + c] - mu * ca[c];
      }
      spread(ca, s.per_group, s.length, a);
      spread(cb, s.per_group, s.length, b);
      if (film_scale != nullptr) {
        spread(film_scale + batch * s.channels + c0, s.per_group, s.length, sc);
        spread(film_shift + batch * s.channels + c0, s.per_group, s.length, sh);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const float z = x[i] * a[i] + b[i];
          out[i] = z * tanh_softplus(z, fast_exp(z)) * sc[i] + sh[i];
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const float z = x[i] * a[i] + b[i];
          out[i] = z * tanh_softplus(z, fast_exp(z));
        }
      }
    }
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>>
group_norm_mish_backward(const at::Tensor& grad_y, const at::Tensor& h, const at::Tensor& mean,
                         const at::Tensor& rstd, const at::Tensor& weight, const at::Tensor& bias,
                         const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                         int64_t groups) {
  const Shapes s = check(h, weight, bias, scale, shift, groups);
  TORCH_CHECK(grad_y.sizes() == h.sizes() && grad_y.scalar_type() == at::kFloat,
              "group_norm_mish_backward: grad ", grad_y.sizes(), " for h ", h.sizes());
  const at::Tensor dy_c = grad_y.contiguous();
  const bool film = scale.has_value();
  at::Tensor grad_h = at::empty_like(h);
  // Per-(batch, channel) partial sums; summed over the batch afterwards (no shared accumulators across threads).
  at::Tensor dgamma_rows = at::empty({s.batch, s.channels}, h.options());
  at::Tensor dbeta_rows = at::empty({s.batch, s.channels}, h.options());
  c10::optional<at::Tensor> grad_scale, grad_shift;
  if (film) {
    grad_scale = at::empty({s.batch, s.channels}, h.options());
    grad_shift = at::empty({s.batch, s.channels}, h.options());
  }
  const float *dy_all = dy_c.data_ptr<float>(), *x_all = h.data_ptr<float>();
  const float *mean_all = mean.data_ptr<float>(), *rstd_all = rstd.data_ptr<float>();
  const float *gamma = weight.data_ptr<float>(), *beta = bias.data_ptr<float>();
  const float* film_scale = film ? scale->data_ptr<float>() : nullptr;
  float *dh_all = grad_h.data_ptr<float>(), *dgamma_all = dgamma_rows.data_ptr<float>();
  float* dbeta_all = dbeta_rows.data_ptr<float>();
  float* dscale_all = film ? grad_scale->data_ptr<float>() : nullptr;
  float* dshift_all = film ? grad_shift->data_ptr<float>() : nullptr;
  at::parallel_for(0, s.batch * s.groups, grain(s), [&](int64_t begin, int64_t end) {
    const int64_t n = s.values();
    std::vector<float> scratch(6 * n);
    float *g = scratch.data(), *be = g + n, *sc = be + n, *dz = sc + n, *dz_xhat = dz + n, *dy_m = dz_xhat + n;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t batch = unit / s.groups, c0 = (unit % s.groups) * s.per_group;
      const int64_t offset = (batch * s.channels + c0) * s.length, row = batch * s.channels + c0;
      const float *x = x_all + offset, *dy = dy_all + offset;
      float* dh = dh_all + offset;
      const float mu = mean_all[unit], r = rstd_all[unit];
      spread(gamma + c0, s.per_group, s.length, g);
      spread(beta + c0, s.per_group, s.length, be);
      if (film)
        spread(film_scale + row, s.per_group, s.length, sc);
      else
        std::fill(sc, sc + n, 1.0f);
      // dz = dy * scale * mish'(z); the group sums of dxhat = dz * gamma and of dxhat * xhat give dh below.
      float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
      for (int64_t i = 0; i < n; ++i) {
        const float xhat = (x[i] - mu) * r;
        const float z = xhat * g[i] + be[i];
        const float t = fast_exp(z);
        const float tsp = tanh_softplus(z, t);
        const float sigmoid = z > 20.0f ? 1.0f : t / (1.0f + t);
        const float dmish = tsp + z * (1.0f - tsp * tsp) * sigmoid;
        dy_m[i] = dy[i] * z * tsp;
        const float d = dy[i] * sc[i] * dmish;
        dz[i] = d;
        dz_xhat[i] = d * xhat;
        sum_dxhat += d * g[i];
        sum_dxhat_xhat += d * g[i] * xhat;
      }
      const float mean_dxhat = sum_dxhat / n, mean_dxhat_xhat = sum_dxhat_xhat / n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float xhat = (x[i] - mu) * r;
        dh[i] = r * (dz[i] * g[i] - mean_dxhat - xhat * mean_dxhat_xhat);
      }
      sum_steps(dz_xhat, s.per_group, s.length, dgamma_all + row);
      sum_steps(dz, s.per_group, s.length, dbeta_all + row);
      if (film) {
        sum_steps(dy_m, s.per_group, s.length, dscale_all + row);
        sum_steps(dy, s.per_group, s.length, dshift_all + row);
      }
    }
  });
  return {grad_h, dgamma_rows.sum(0), dbeta_rows.sum(0), grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(robopolicy, m) {
  m.def("group_norm_mish(Tensor h, Tensor weight, Tensor bias, Tensor? scale, Tensor? shift, int groups, "
        "float eps) -> (Tensor, Tensor, Tensor)");
  m.def("group_norm_mish_backward(Tensor grad, Tensor h, Tensor mean, Tensor rstd, Tensor weight, Tensor bias, "
        "Tensor? scale, Tensor? shift, int groups) -> (Tensor, Tensor, Tensor, Tensor?, Tensor?)");
}

TORCH_LIBRARY_IMPL(robopolicy, CPU, m) {
  m.impl("group_norm_mish", &group_norm_mish);
  m.impl("group_norm_mish_backward", &group_norm_mish_backward);
}
