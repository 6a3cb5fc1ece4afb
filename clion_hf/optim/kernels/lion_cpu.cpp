// Fused multi-tensor Lion / CLion step for CPU tensors.
//
// Built on first use by clion_hf/optim/kernels/cpu.py with the system C++ compiler
// (-O3 -march=native -fopenmp -ffp-contract=off), loaded with ctypes and called from the
// torch custom op clion_hf::fused_update_ (clion_hf/optim/kernels/__init__.py): plain
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
// h(c) is NaN wherever c is not finite, in every mode (the parameter then shows the
// divergence). Low-precision storage (bf16, fp16) is computed in fp32 and rounded to
// nearest even on store, as Tensor.copy_ does.
//
// The arguments come in two records, ClionHyper and ClionLists below, which
// kernels/cpu.py mirrors with ctypes; clion_layout() reports their sizes and offsets so
// that a library built from another version of this file is refused.

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

extern "C" {

// The hyper-parameters of one call (mirrored by kernels/cpu.py's CHyper).
struct ClionHyper {
  double lr;          // learning rate (a tensor lr's value)
  double decay;       // 1 - lr * weight_decay, as the foreach path rounds it
  double w1, w2;      // 1 - beta1, 1 - beta2
  double nu;          // CLion's threshold
  double stop_below;  // reduction with stop != STOP_NONE: stop below this
  int32_t rule;       // update rule: LION, TAKE, ELEMENT or SOFT
  int32_t lr_is_tensor, maximize, stop;
};

// The tensors of one call, all of one (parameter, momentum) dtype pair, contiguous
// (mirrored by kernels/cpu.py's CLists). Outputs are per tensor; NULL ones are skipped.
struct ClionLists {
  int64_t ntensors;
  void* const* ps;               // parameters (unused by the reduction)
  void* const* gs;               // gradients, in the parameters' dtype
  void* const* ms;               // momenta
  const int64_t* numel;          // elements per tensor (real elements for complex)
  int32_t p_dtype, m_dtype;      // Dtype codes
  const uint8_t* take;           // rule TAKE: the decision per tensor
  const double* caution_scale;   // cautious Lion: d / (nnz + 1) per tensor, or NULL
  int64_t* count;                // update: coordinates that took the sign branch
  int64_t* agree;                // reduction: coordinates with sign(c) * g > 0, or NULL
  double* min_abs;               // smallest non-zero |c|, or NULL
};

}  // extern "C"

namespace {

constexpr int64_t CHUNK = 1 << 15;

// dtype codes, shared with kernels/cpu.py
enum Dtype : int { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };
// update rules, shared with kernels/cpu.py
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

// h where c is finite, NaN where it is not (c - c is 0 exactly when c is finite).
template <typename C>
inline C finite_or_nan(C h, C c) {
  return c - c == C(0) ? h : std::numeric_limits<C>::quiet_NaN();
}

using Hyper = ClionHyper;

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
    h = finite_or_nan(h, c);
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
    if (AGREE) agree += int(finite_or_nan(sgn(c), c) * gc > C(0));
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
void run_update(const Hyper& hp, const ClionLists& t, int nthreads) {
  const int64_t ntensors = t.ntensors;
  void* const* ps = t.ps;
  void* const* gs = t.gs;
  void* const* ms = t.ms;
  const uint8_t* take = t.take;
  const double* caution_scale = t.caution_scale;
  const int mode = hp.rule;
  const bool track_min = t.min_abs != nullptr;
  const std::vector<Work> work = plan(ntensors, t.numel);
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
  combine(work, parts, ntensors, t.count, nullptr, t.min_abs);
}

// Early exit of the reduction: CLion only compares the min with nu, so once a chunk
// has a non-zero |c| below nu the answer is known for its tensor (STOP_TENSOR, mode
// "tensor") or for every tensor (STOP_ALL, mode "global"); later chunks are skipped and
// report +inf, so the result is a witness below nu rather than the exact min. The exact
// min is then taken by the update pass, which reads the same data anyway.
enum Stop : int { STOP_NONE = 0, STOP_TENSOR = 1, STOP_ALL = 2 };

template <typename P, typename M>
void run_reduce(const Hyper& hp, const ClionLists& t, int nthreads) {
  const int64_t ntensors = t.ntensors;
  const int stop = hp.stop;
  const double stop_below = hp.stop_below;
  const std::vector<Work> work = plan(ntensors, t.numel);
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
    const P* g = static_cast<const P*>(t.gs[k.tensor]) + k.start;
    const M* m = static_cast<const M*>(t.ms[k.tensor]) + k.start;
    parts[w] = t.agree ? reduce_chunk<P, M, true>(g, m, k.len, hp)
                     : reduce_chunk<P, M, false>(g, m, k.len, hp);
    if (stop != STOP_NONE && parts[w].min_abs < stop_below) {
      if (stop == STOP_ALL) found_any.store(1, std::memory_order_relaxed);
      else found[k.tensor].store(1, std::memory_order_relaxed);
    }
  }
  combine(work, parts, ntensors, nullptr, t.agree, t.min_abs);
}

// The supported (parameter dtype, momentum dtype) pairs, listed once: they are the
// instantiations, and clion_supported() answers from them. Gradients share the
// parameter dtype.
#define CLION_DTYPE_PAIRS(X)                                                      \
  X(F32, float, F32, float) X(F32, float, BF16, bf16) X(F32, float, F16, f16)     \
  X(F64, double, F64, double)                                                     \
  X(BF16, bf16, F32, float) X(BF16, bf16, BF16, bf16) X(BF16, bf16, F16, f16)     \
  X(F16, f16, F32, float) X(F16, f16, F16, f16) X(F16, f16, BF16, bf16)

// Calls fn(P{}, M{}) for the pair's storage types; 0, or 1 for an unsupported pair.
template <typename Fn>
int dispatch(int p_dtype, int m_dtype, Fn&& fn) {
#define CLION_CASE(PD, PT, MD, MT) \
  if (p_dtype == PD && m_dtype == MD) return fn(PT{}, MT{}), 0;
  CLION_DTYPE_PAIRS(CLION_CASE)
#undef CLION_CASE
  return 1;
}

}  // namespace

extern "C" {

// Whether the (parameter, momentum) dtype pair has a kernel: 0 yes, 1 no.
int clion_supported(int p_dtype, int m_dtype) {
  return dispatch(p_dtype, m_dtype, [](auto, auto) {});
}

// The update pass (rule TAKE needs lists->take). Returns 0, or 1 for an unsupported dtype
// pair (nothing written).
int clion_update(const ClionHyper* hp, const ClionLists* lists, int nthreads) {
  return dispatch(lists->p_dtype, lists->m_dtype, [&](auto p, auto m) {
    run_update<decltype(p), decltype(m)>(*hp, *lists, nthreads);
  });
}

// The reduction pass: per-tensor min non-zero |c| (or, with hp->stop, a witness below
// hp->stop_below) and, unless lists->agree is NULL, the count of sign(c) * g > 0.
int clion_reduce(const ClionHyper* hp, const ClionLists* lists, int nthreads) {
  return dispatch(lists->p_dtype, lists->m_dtype, [&](auto p, auto m) {
    run_reduce<decltype(p), decltype(m)>(*hp, *lists, nthreads);
  });
}

// The records' layout, for the loader to compare with its ctypes mirrors: sizeof and the
// offset of every field, in declaration order. Returns how many values it wrote.
int64_t clion_layout(int64_t* out, int64_t capacity) {
  const int64_t v[] = {
      sizeof(ClionHyper), offsetof(ClionHyper, lr), offsetof(ClionHyper, decay),
      offsetof(ClionHyper, w1), offsetof(ClionHyper, w2), offsetof(ClionHyper, nu),
      offsetof(ClionHyper, stop_below), offsetof(ClionHyper, rule),
      offsetof(ClionHyper, lr_is_tensor), offsetof(ClionHyper, maximize),
      offsetof(ClionHyper, stop),
      sizeof(ClionLists), offsetof(ClionLists, ntensors), offsetof(ClionLists, ps),
      offsetof(ClionLists, gs), offsetof(ClionLists, ms), offsetof(ClionLists, numel),
      offsetof(ClionLists, p_dtype), offsetof(ClionLists, m_dtype),
      offsetof(ClionLists, take), offsetof(ClionLists, caution_scale),
      offsetof(ClionLists, count), offsetof(ClionLists, agree),
      offsetof(ClionLists, min_abs)};
  const int64_t n = sizeof(v) / sizeof(v[0]);
  for (int64_t i = 0; i < n && i < capacity; ++i) out[i] = v[i];
  return n;
}

}  // extern "C"
