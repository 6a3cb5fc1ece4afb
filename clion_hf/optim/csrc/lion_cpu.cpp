// Fused multi-tensor Lion / CLion step for CPU tensors.
//
// Built on first use by clion_hf/optim/fused_cpu.py with the system C++ compiler
// (-O3 -march=native -fopenmp -ffp-contract=off) and called through ctypes: plain
// C++17 without torch headers, so it compiles in a few seconds. One call updates every
// tensor of a param group: the work is cut into chunks of at most CHUNK elements across
// all tensors and the chunks are shared among OpenMP threads.
//
// The arithmetic is the foreach path's (clion_hf/optim/functional.py), operation by
// operation, with fma written out exactly where ATen's vectorised CPU kernels use one
// (lerp, add with alpha), and no other contraction (-ffp-contract=off):
//   c  = lerp(m, g, 1 - beta1)
//   p  = fma(h(c), -lr, p * (1 - lr * wd))      (tensor lr: p * decay - h(c) * lr)
//   m  = lerp(m, g, 1 - beta2)
// Low-precision storage (bf16, fp16) is computed in fp32 and rounded to nearest even on
// store, as Tensor.copy_ does.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t CHUNK = 1 << 15;

// dtype codes, shared with fused_cpu.py
enum Dtype : int { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };
// update rules, shared with fused_cpu.py
enum Mode : int { LION = 0, TAKE = 1, ELEMENT = 2, SOFT = 3 };

// Storage types for the 16-bit formats: plain bits, converted in software (branch-free,
// so loops vectorise), which needs neither f16 (GCC >= 12) nor F16C.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

inline float load(float x) { return x; }
inline double load(double x) { return x; }
inline float load(bf16 x) { return float_of(static_cast<uint32_t>(x.bits) << 16); }
inline float load(f16 x) {
  // IEEE half -> float, exact (the FP16 library's method, as c10::detail)
  const uint32_t w = static_cast<uint32_t>(x.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = float_of((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = float_of((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude =
      two_w < (1u << 27) ? bits_of(denormalized) : bits_of(normalized);
  return float_of(sign | magnitude);
}

template <typename T, typename C>
inline T store(C x);
template <>
inline float store<float, float>(float x) { return x; }
template <>
inline double store<double, double>(double x) { return x; }
template <>
inline bf16 store<bf16, float>(float x) {
  uint32_t u = bits_of(x);
  if (x != x) return bf16{0x7FC0};
  u += 0x7FFF + ((u >> 16) & 1);  // round to nearest even, as c10::BFloat16
  return bf16{static_cast<uint16_t>(u >> 16)};
}
template <>
inline f16 store<f16, float>(float x) {
  // float -> IEEE half, round to nearest even (the FP16 library's method, as c10)
  float base = (std::fabs(x) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = bits_of(x);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = float_of((bias >> 1) + 0x07800000u) + base;
  const uint32_t b = bits_of(base);
  const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
  return f16{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

// The min of non-negative floats is the min of their bit patterns read as unsigned
// integers: an integer min has one cycle of latency where a float min has four, which
// would otherwise make the reduction loop latency bound. bits(|c|) - 1 sends c == 0 to
// the largest value, so zeros never win; NaN patterns sit above +inf and never win.
template <typename C> struct Bits { using type = uint32_t; };
template <> struct Bits<double> { using type = uint64_t; };

template <typename C>
inline typename Bits<C>::type min_key(C a) {
  typename Bits<C>::type u;
  std::memcpy(&u, &a, sizeof(C));
  return u - 1;
}

template <typename C>
inline double from_min_key(typename Bits<C>::type key, int nan_seen) {
  using U = typename Bits<C>::type;
  if (nan_seen) return std::numeric_limits<double>::quiet_NaN();
  if (key == ~U(0)) return std::numeric_limits<double>::infinity();  // no non-zero |c|
  const U u = key + 1;
  C a;
  std::memcpy(&a, &u, sizeof(C));
  return static_cast<double>(a);
}

// ATen's lerp: fma(w, end - start, start) for |w| < 0.5, else fma(w - 1, end - start, end)
template <typename C>
inline C lerp(C start, C end, C w, bool small_w) {
  return small_w ? std::fma(w, end - start, start) : std::fma(w - C(1), end - start, end);
}

template <typename C>
inline C sgn(C x) {
  // torch.sign: -1, 0, +1, and NaN stays NaN. Branch-free, so loops vectorise.
  const C s = C(x > C(0)) - C(x < C(0));
  return x != x ? x : s;
}

struct Hyper {
  double lr, decay, w1, w2, nu;
  int lr_is_tensor, maximize;
};

struct Stats {
  int64_t count;   // coordinates that took the sign branch (element/soft/lion)
  int64_t agree;   // coordinates with h * g > 0 (the cautious mask)
  double min_abs;  // smallest non-zero |c|, +inf if none, NaN if any |c| is NaN
};

// One chunk of one tensor. Everything that is fixed for the chunk is a template
// parameter, so each instantiation is a straight, branch-free, vectorised loop that runs
// at memory speed; work not needed (the statistics Lion does not keep, a min |c| that
// pass 1 already has) is not compiled in.
template <typename P, typename M, int MODE, bool CAUTION, bool TRACK_MIN>
Stats update_chunk(P* __restrict p, const P* __restrict g, M* __restrict m, int64_t n,
                   const Hyper& hp, bool take, double caution_scale) {
  using C = typename Compute<P>::type;
  const C lr = C(hp.lr), neg_lr = C(-hp.lr), decay = C(hp.decay), w1 = C(hp.w1),
          w2 = C(hp.w2), nu = C(hp.nu), scale = C(caution_scale);
  const bool small1 = std::fabs(w1) < C(0.5), small2 = std::fabs(w2) < C(0.5);
  const bool lr_tensor = hp.lr_is_tensor;
  const C gsign = hp.maximize ? C(-1) : C(1);  // x * -1 is exact negation
  using U = typename Bits<C>::type;
  int count = 0;  // per chunk: CHUNK fits
  U key = ~U(0);
  int nan_seen = 0;
#pragma omp simd reduction(+ : count) reduction(min : key) reduction(| : nan_seen)
  for (int64_t i = 0; i < n; ++i) {
    const C pc = load(p[i]);
    const C gc = load(g[i]) * gsign;
    const C mc = load(m[i]);
    const C c = lerp(mc, gc, w1, small1);
    const C a = std::fabs(c);
    C h;
    if (MODE == LION) {
      h = sgn(c);
    } else if (MODE == TAKE) {
      h = take ? sgn(c) : c;
    } else if (MODE == ELEMENT) {
      h = a >= nu ? sgn(c) : c;
    } else {  // SOFT: (c / nu).clamp(-1, 1), NaN propagates
      const C q = c / nu;
      h = q < C(-1) ? C(-1) : (q > C(1) ? C(1) : q);
    }
    if (MODE == ELEMENT || MODE == SOFT) count += int(a >= nu);
    if (CAUTION) h = h * gc > C(0) ? (h * C(1)) * scale : (h * C(0)) * scale;
    if (TRACK_MIN) {
      const U k = min_key(a);
      key = k < key ? k : key;
      nan_seen |= (a != a);
    }
    const C p1 = pc * decay;
    const C p2 = lr_tensor ? p1 - h * lr : std::fma(h, neg_lr, p1);
    p[i] = store<P, C>(p2);
    m[i] = store<M, C>(lerp(mc, gc, w2, small2));
  }
  Stats s{count, 0, from_min_key<C>(key, nan_seen)};
  if (MODE == LION) s.count = n;
  if (MODE == TAKE) s.count = take ? n : 0;
  return s;
}

// Pass 1 of global/tensor modes and of cautious Lion: min non-zero |c| and the number
// of coordinates where sign(c) agrees with g (caution is Lion-only, h = sign(c)).
template <typename P, typename M, bool AGREE>
Stats reduce_chunk(const P* __restrict g, const M* __restrict m, int64_t n, const Hyper& hp) {
  using C = typename Compute<P>::type;
  const C w1 = C(hp.w1);
  const bool small1 = std::fabs(w1) < C(0.5);
  const C gsign = hp.maximize ? C(-1) : C(1);
  using U = typename Bits<C>::type;
  int agree = 0;
  U key = ~U(0);
  int nan_seen = 0;
#pragma omp simd reduction(+ : agree) reduction(min : key) reduction(| : nan_seen)
  for (int64_t i = 0; i < n; ++i) {
    const C gc = load(g[i]) * gsign;
    const C c = lerp(load(m[i]), gc, w1, small1);
    const C a = std::fabs(c);
    if (AGREE) agree += int(sgn(c) * gc > C(0));
    const U k = min_key(a);
    key = k < key ? k : key;
    nan_seen |= (a != a);
  }
  return Stats{0, agree, from_min_key<C>(key, nan_seen)};
}

struct Work {
  int64_t tensor, start, len;
};

std::vector<Work> plan(int64_t ntensors, const int64_t* numel) {
  std::vector<Work> work;
  for (int64_t t = 0; t < ntensors; ++t)
    for (int64_t s = 0; s < numel[t]; s += CHUNK)
      work.push_back({t, s, numel[t] - s < CHUNK ? numel[t] - s : CHUNK});
  return work;
}

// Combine chunk results per tensor (in chunk order, so the result is deterministic).
void combine(const std::vector<Work>& work, const std::vector<Stats>& parts, int64_t ntensors,
             int64_t* count, int64_t* agree, double* min_abs) {
  for (int64_t t = 0; t < ntensors; ++t) {
    if (count) count[t] = 0;
    if (agree) agree[t] = 0;
    if (min_abs) min_abs[t] = std::numeric_limits<double>::infinity();
  }
  for (size_t w = 0; w < work.size(); ++w) {
    const int64_t t = work[w].tensor;
    const Stats& s = parts[w];
    if (count) count[t] += s.count;
    if (agree) agree[t] += s.agree;
    if (min_abs && !(min_abs[t] != min_abs[t]))
      min_abs[t] = (s.min_abs != s.min_abs || s.min_abs < min_abs[t]) ? s.min_abs : min_abs[t];
  }
}

template <typename P, typename M>
void run_update(int64_t ntensors, void** ps, void** gs, void** ms, const int64_t* numel,
                int mode, const Hyper& hp, const uint8_t* take, const double* caution_scale,
                int64_t* count, double* min_abs, int nthreads) {
  const bool track_min = min_abs != nullptr;
  const std::vector<Work> work = plan(ntensors, numel);
  std::vector<Stats> parts(work.size());
  const int64_t nwork = static_cast<int64_t>(work.size());
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nwork > 1)
  for (int64_t w = 0; w < nwork; ++w) {
    const Work& k = work[w];
    P* p = static_cast<P*>(ps[k.tensor]) + k.start;
    const P* g = static_cast<const P*>(gs[k.tensor]) + k.start;
    M* m = static_cast<M*>(ms[k.tensor]) + k.start;
    const bool tk = take ? take[k.tensor] != 0 : false;
    Stats s;
    if (caution_scale && track_min) {
      s = update_chunk<P, M, LION, true, true>(p, g, m, k.len, hp, tk, caution_scale[k.tensor]);
    } else if (caution_scale) {
      s = update_chunk<P, M, LION, true, false>(p, g, m, k.len, hp, tk, caution_scale[k.tensor]);
    } else if (mode == LION && track_min) {
      s = update_chunk<P, M, LION, false, true>(p, g, m, k.len, hp, tk, 1.0);
    } else if (mode == LION) {
      s = update_chunk<P, M, LION, false, false>(p, g, m, k.len, hp, tk, 1.0);
    } else if (mode == TAKE && track_min) {  // exact min after an early-exit pass 1
      s = update_chunk<P, M, TAKE, false, true>(p, g, m, k.len, hp, tk, 1.0);
    } else if (mode == TAKE) {
      s = update_chunk<P, M, TAKE, false, false>(p, g, m, k.len, hp, tk, 1.0);
    } else if (mode == ELEMENT) {
      s = update_chunk<P, M, ELEMENT, false, true>(p, g, m, k.len, hp, tk, 1.0);
    } else {
      s = update_chunk<P, M, SOFT, false, true>(p, g, m, k.len, hp, tk, 1.0);
    }
    parts[w] = s;
  }
  combine(work, parts, ntensors, count, nullptr, min_abs);
}

// Early exit of the reduction: CLion only compares the min with nu, so once a chunk
// has a non-zero |c| below nu the answer is known for its tensor (STOP_TENSOR, mode
// "tensor") or for every tensor (STOP_ALL, mode "global"); later chunks are skipped and
// report +inf, so the result is a witness below nu rather than the exact min. The exact
// min is then taken by the update pass, which reads the same data anyway.
enum Stop : int { STOP_NONE = 0, STOP_TENSOR = 1, STOP_ALL = 2 };

template <typename P, typename M>
void run_reduce(int64_t ntensors, void** gs, void** ms, const int64_t* numel, const Hyper& hp,
                int stop, double stop_below, int64_t* agree, double* min_abs, int nthreads) {
  const std::vector<Work> work = plan(ntensors, numel);
  std::vector<Stats> parts(work.size());
  std::vector<std::atomic<int>> found(stop == STOP_TENSOR ? ntensors : 0);
  std::atomic<int> found_any{0};
  const int64_t nwork = static_cast<int64_t>(work.size());
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nwork > 1)
  for (int64_t w = 0; w < nwork; ++w) {
    const Work& k = work[w];
    if ((stop == STOP_ALL && found_any.load(std::memory_order_relaxed)) ||
        (stop == STOP_TENSOR && found[k.tensor].load(std::memory_order_relaxed))) {
      parts[w] = Stats{0, 0, std::numeric_limits<double>::infinity()};
      continue;
    }
    const P* g = static_cast<const P*>(gs[k.tensor]) + k.start;
    const M* m = static_cast<const M*>(ms[k.tensor]) + k.start;
    parts[w] = agree ? reduce_chunk<P, M, true>(g, m, k.len, hp)
                     : reduce_chunk<P, M, false>(g, m, k.len, hp);
    if (stop != STOP_NONE && parts[w].min_abs < stop_below) {
      if (stop == STOP_ALL) found_any.store(1, std::memory_order_relaxed);
      else found[k.tensor].store(1, std::memory_order_relaxed);
    }
  }
  combine(work, parts, ntensors, nullptr, agree, min_abs);
}

// (parameter dtype, momentum dtype) -> instantiation; gradients share the parameter dtype.
#define CLION_DISPATCH(FN, PD, MD, ...)                                              \
  do {                                                                               \
    if (PD == F32 && MD == F32) return FN<float, float>(__VA_ARGS__), 0;             \
    if (PD == F32 && MD == BF16) return FN<float, bf16>(__VA_ARGS__), 0;             \
    if (PD == F32 && MD == F16) return FN<float, f16>(__VA_ARGS__), 0;          \
    if (PD == F64 && MD == F64) return FN<double, double>(__VA_ARGS__), 0;           \
    if (PD == BF16 && MD == F32) return FN<bf16, float>(__VA_ARGS__), 0;             \
    if (PD == BF16 && MD == BF16) return FN<bf16, bf16>(__VA_ARGS__), 0;             \
    if (PD == F16 && MD == F32) return FN<f16, float>(__VA_ARGS__), 0;          \
    if (PD == F16 && MD == F16) return FN<f16, f16>(__VA_ARGS__), 0;       \
    if (PD == F16 && MD == BF16) return FN<f16, bf16>(__VA_ARGS__), 0;          \
    if (PD == BF16 && MD == F16) return FN<bf16, f16>(__VA_ARGS__), 0;          \
    return 1;                                                                        \
  } while (0)

}  // namespace

extern "C" {

// Whether the (parameter, momentum) dtype pair has a kernel: 0 yes, 1 no.
int clion_supported(int p_dtype, int m_dtype) {
  const int pairs[][2] = {{F32, F32},  {F32, BF16}, {F32, F16},  {F64, F64},  {BF16, F32},
                          {BF16, BF16}, {F16, F32}, {F16, F16}, {F16, BF16}, {BF16, F16}};
  for (const auto& pr : pairs)
    if (pr[0] == p_dtype && pr[1] == m_dtype) return 0;
  return 1;
}

// The update pass. take: per-tensor decision (mode TAKE) or NULL; caution_scale:
// per-tensor d / (nnz + 1) for cautious Lion, or NULL; count: per-tensor sign-branch
// counts; min_abs: per-tensor min non-zero |c|, or NULL to skip it. Returns 0, or 1 for
// an unsupported dtype pair (nothing written).
int clion_update(int64_t ntensors, void** ps, void** gs, void** ms, const int64_t* numel,
                 int p_dtype, int m_dtype, int mode, double lr, double decay, double w1,
                 double w2, double nu, int lr_is_tensor, int maximize, const uint8_t* take,
                 const double* caution_scale, int64_t* count, double* min_abs, int nthreads) {
  const Hyper hp{lr, decay, w1, w2, nu, lr_is_tensor, maximize};
  CLION_DISPATCH(run_update, p_dtype, m_dtype, ntensors, ps, gs, ms, numel, mode, hp, take,
                 caution_scale, count, min_abs, nthreads);
}

// The reduction pass: per-tensor min non-zero |c| (or, with stop, a witness below
// stop_below) and, unless agree is NULL, the count of coordinates with sign(c) * g > 0.
int clion_reduce(int64_t ntensors, void** gs, void** ms, const int64_t* numel, int p_dtype,
                 int m_dtype, double w1, int maximize, int stop, double stop_below,
                 int64_t* agree, double* min_abs, int nthreads) {
  const Hyper hp{0.0, 1.0, w1, 0.0, 1.0, 0, maximize};
  CLION_DISPATCH(run_reduce, p_dtype, m_dtype, ntensors, gs, ms, numel, hp, stop, stop_below,
                 agree, min_abs, nthreads);
}

}  // extern "C"
