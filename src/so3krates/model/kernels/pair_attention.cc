// Fused CPU kernels of SO3krates' pair attention (one block's messages), forward and backward.
//
// The JAX reference is ``so3krates.model.so3krates.pair_messages`` with the radial filters from
// ``radial_table.evaluate_table``; these compute the same sums pair by pair, keeping each
// pair's rows in cache, instead of XLA:CPU's sequence of (P, F)-sized kernels (table gathers,
// products, head sums, scatter-adds and their transposes), each a pass over memory.
//
// Shapes (N atoms, P pairs, F features, D EV components, R filter rows, K spline intervals):
//   qkv (N, 5F): per atom [q0 | k0 | v | q1 | k1], queries and keys already activated;
//   ev_w (R, 2, F): both branches' filters but their radial parts (the EV-difference MLPs plus
//     biases); pair p uses row p % R (R = 1: the same for every pair);
//   table (K, 4, 2, F): cubic spline coefficients of both radial filters, and s (P,): each
//     pair's distance in grid units: radial(s) = sum_k table[i, k] t^k, i = min(floor(s),
//     K - 1), t = s - i (``so3krates.model.radial_table``);
//   cut (P,): cutoff weights; a pair with weight 0 (padding, beyond the cutoff) is absent: no
//     message, no work, and zero gradients (its gradient in cut too, which the model never
//     needs: every cutoff function has zero value and zero slope there); ylm (P, D):
//     spherical harmonics;
//   centers, neighbors (P,) int32; component_degree (D,) int32: the EV-branch head (degree
//   slot) of each EV component.
// Attributes: heads0, heads1 (heads of the invariant and EV branches), scale0, scale1, and
//   halves: pair P/2 + k is the reverse of pair k (``so3krates.model.pairs``), at the same
//   distance with the same filters, which are then evaluated once per couple (R must divide
//   P/2; the gradient in s goes to the first pair of each couple).
// Forward results: raw (P, H0 + H1), each pair's head sums before cutoff and scale (for the
// backward pass), and upd (N, F + D) = sum over pairs p with center i of
//   [alpha0_h(p) v_j | alpha1_l(p) ylm_p],  alpha_bh(p) = cut_p scale_b sum_{f in h} q_ib w_pb k_jb,
//   w_p = radial(s_p) + ev_w[p % R].
// Backward (inputs: those of the forward pass, raw, and the gradient in upd; attribute
// qkv_grad) results: the gradients in qkv (empty, (0, 5F), unless qkv_grad), ev_w, s, cut
// and ylm (none in the table: inference holds the parameters fixed).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The inputs shared by both directions, as raw pointers, and the sizes.
template <typename T>
struct Pairs {
  const T *qkv, *ev, *table, *s, *cut, *ylm;
  const int32_t *centers, *neighbors, *degree;
  int64_t n, p, f, d, r, k, heads0, heads1;
  T scale0, scale1;
  bool halves;
};

template <ffi::DataType DT>
ffi::Error Unpack(ffi::Buffer<DT> qkv, ffi::Buffer<DT> ev, ffi::Buffer<DT> table,
                  ffi::Buffer<DT> s, ffi::Buffer<DT> cut, ffi::Buffer<DT> ylm,
                  ffi::Buffer<ffi::S32> centers, ffi::Buffer<ffi::S32> neighbors,
                  ffi::Buffer<ffi::S32> degree, int64_t heads0, int64_t heads1, double scale0,
                  double scale1, bool halves, Pairs<ffi::NativeType<DT>>* out) {
  using T = ffi::NativeType<DT>;
  *out = Pairs<T>{qkv.typed_data(), ev.typed_data(), table.typed_data(), s.typed_data(),
                  cut.typed_data(), ylm.typed_data(), centers.typed_data(),
                  neighbors.typed_data(), degree.typed_data(), qkv.dimensions()[0],
                  cut.dimensions()[0], ev.dimensions()[2], ylm.dimensions()[1],
                  ev.dimensions()[0], table.dimensions()[0], heads0, heads1, T(scale0),
                  T(scale1), halves};
  if (heads0 <= 0 || heads1 <= 0 || out->f % heads0 || out->f % heads1)
    return ffi::Error::InvalidArgument("pair_attention: features not divisible by heads");
  if (out->r <= 0 || out->p % out->r || (halves && (out->p % 2 || (out->p / 2) % out->r)))
    return ffi::Error::InvalidArgument("pair_attention: filter rows do not divide the pairs");
  if (out->k <= 0) return ffi::Error::InvalidArgument("pair_attention: empty spline table");
  return ffi::Error::Success();
}

// Both filters of pair p, w (2F) = radial(s_p) + ev row; with ``slope``, also d radial / d s.
template <typename T>
inline void Filters(const Pairs<T>& a, int64_t p, T* w, T* slope) {
  const int64_t f2 = 2 * a.f;
  T i = std::floor(a.s[p]);
  if (i > T(a.k - 1)) i = T(a.k - 1);
  const T t = a.s[p] - i;
  const T* c0 = a.table + static_cast<int64_t>(i) * 4 * f2;
  const T *c1 = c0 + f2, *c2 = c0 + 2 * f2, *c3 = c0 + 3 * f2;
  const T* ev = a.ev + (p % a.r) * f2;
#pragma omp simd
  for (int64_t x = 0; x < f2; ++x) w[x] = c0[x] + t * (c1[x] + t * (c2[x] + t * c3[x])) + ev[x];
  if (slope) {
#pragma omp simd
    for (int64_t x = 0; x < f2; ++x) slope[x] = c1[x] + t * (T(2) * c2[x] + T(3) * t * c3[x]);
  }
}

// Whether every pair of unit u (pair u, and its reverse u + h in the halves layout) is absent.
template <typename T>
inline bool Absent(const Pairs<T>& a, int64_t u, int64_t h) {
  return a.cut[u] == T(0) && (!a.halves || a.cut[u + h] == T(0));
}

// Raw head sums of one branch: out[h] = sum_{x in head h} q[x] w[x] k[x].
template <typename T>
inline void HeadSums(const T* q, const T* w, const T* k, int64_t f, int64_t heads, T* out) {
  const int64_t width = f / heads;
  for (int64_t h = 0; h < heads; ++h) {
    T sum = 0;
    const int64_t o = h * width;
#pragma omp simd reduction(+ : sum)
    for (int64_t x = 0; x < width; ++x) sum += q[o + x] * w[o + x] * k[o + x];
    out[h] = sum;
  }
}

// Pair p's message, with filters w, added to its center's row of upd; its raw head sums
// (before cutoff and scale) to raw (H0 + H1), which the backward pass reads.
template <typename T>
inline void ForwardPair(const Pairs<T>& a, int64_t p, const T* w, T* upd, T* raw) {
  const int64_t f = a.f, row = 5 * f;
  const T c = a.cut[p];
  T *a0 = raw, *a1 = raw + a.heads0;
  if (c == T(0)) {  // an absent pair (padding, beyond the cutoff): no message
    std::fill(raw, raw + a.heads0 + a.heads1, T(0));
    return;
  }
  const T* qi = a.qkv + a.centers[p] * row;
  const T* kj = a.qkv + a.neighbors[p] * row;
  HeadSums(qi, w, kj + f, f, a.heads0, a0);
  HeadSums(qi + 3 * f, w + f, kj + 4 * f, f, a.heads1, a1);
  T* o = upd + a.centers[p] * (f + a.d);
  const T* vj = kj + 2 * f;
  const int64_t width0 = f / a.heads0;
  for (int64_t h = 0; h < a.heads0; ++h) {  // nested loops, no division per element
    const T coef = a0[h] * c * a.scale0;
#pragma omp simd
    for (int64_t x = h * width0; x < (h + 1) * width0; ++x) o[x] += coef * vj[x];
  }
  const T s1 = c * a.scale1;
  const T* y = a.ylm + p * a.d;
  for (int64_t m = 0; m < a.d; ++m) o[f + m] += a1[a.degree[m]] * s1 * y[m];
}

// Scratch of one backward pass (per-head buffers).
template <typename T>
struct Scratch {
  std::vector<T> g0, g1;
  explicit Scratch(const Pairs<T>& a) : g0(a.heads0), g1(a.heads1) {}
};

// Pair p's gradients (raw: its head sums from the forward pass): g_cut[p] and g_ylm[p] set,
// g_qkv accumulated (unless null: q, k and v held fixed), and the gradient in its filters w
// added to gw (2F).
template <typename T>
inline void BackwardPair(const Pairs<T>& a, int64_t p, const T* w, const T* raw,
                         const T* g_upd, T* g_qkv, T* g_cut, T* g_ylm, T* gw, Scratch<T>& b) {
  const int64_t f = a.f, d = a.d, row = 5 * f;
  const int64_t width0 = f / a.heads0, width1 = f / a.heads1;
  const T c = a.cut[p];
  T* gy = g_ylm + p * d;
  if (c == T(0)) {  // an absent pair: no gradients (see the header)
    g_cut[p] = 0;
    std::fill(gy, gy + d, T(0));
    return;
  }
  const T* qi = a.qkv + a.centers[p] * row;
  const T* kj = a.qkv + a.neighbors[p] * row;
  const T* vj = kj + 2 * f;
  const T* go = g_upd + a.centers[p] * (f + d);
  const T* y = a.ylm + p * d;
  const T s0 = c * a.scale0, s1 = c * a.scale1;
  const T *r0 = raw + p * (a.heads0 + a.heads1), *r1 = r0 + a.heads0;
  // d upd / d alpha: the messages' sums over each head's features / each degree's components.
  for (int64_t h = 0; h < a.heads0; ++h) {
    T acc = 0;
    const int64_t o = h * width0;
#pragma omp simd reduction(+ : acc)
    for (int64_t x = 0; x < width0; ++x) acc += go[o + x] * vj[o + x];
    b.g0[h] = acc;
  }
  for (int64_t m0 = 0; m0 < d;) {  // runs of components of one degree (sorted by degree)
    const int32_t l = a.degree[m0];
    const T scale = r1[l] * s1;
    T acc = 0;
    int64_t m = m0;
    for (; m < d && a.degree[m] == l; ++m) {
      acc += go[f + m] * y[m];
      gy[m] = scale * go[f + m];
    }
    b.g1[l] = acc;
    m0 = m;
  }
  T gc = 0;
  for (int64_t h = 0; h < a.heads0; ++h) gc += b.g0[h] * r0[h] * a.scale0;
  for (int64_t h = 0; h < a.heads1; ++h) gc += b.g1[h] * r1[h] * a.scale1;
  g_cut[p] = gc;
  const T *q1 = qi + 3 * f, *k1 = kj + 4 * f, *w1 = w + f;
  if (g_qkv == nullptr) {  // q, k and v held fixed: the gradient in the filters only
    for (int64_t h = 0; h < a.heads0; ++h) {
      const T tg = b.g0[h] * s0;
#pragma omp simd
      for (int64_t x = h * width0; x < (h + 1) * width0; ++x) gw[x] += tg * qi[x] * kj[f + x];
    }
    for (int64_t h = 0; h < a.heads1; ++h) {
      const T tg = b.g1[h] * s1;
#pragma omp simd
      for (int64_t x = h * width1; x < (h + 1) * width1; ++x) gw[f + x] += tg * q1[x] * k1[x];
    }
    return;
  }
  T* gqi = g_qkv + a.centers[p] * row;
  T* gkj = g_qkv + a.neighbors[p] * row;
  // Per head, with its factors as scalars: queries, keys and filters of both branches, values.
  for (int64_t h = 0; h < a.heads0; ++h) {
    const T tg = b.g0[h] * s0, ta = r0[h] * s0;
#pragma omp simd
    for (int64_t x = h * width0; x < (h + 1) * width0; ++x) {
      const T qw = qi[x] * w[x], wk = w[x] * kj[f + x];
      gqi[x] += tg * wk;
      gkj[f + x] += tg * qw;
      gw[x] += tg * qi[x] * kj[f + x];
      gkj[2 * f + x] += ta * go[x];
    }
  }
  for (int64_t h = 0; h < a.heads1; ++h) {
    const T tg = b.g1[h] * s1;
#pragma omp simd
    for (int64_t x = h * width1; x < (h + 1) * width1; ++x) {
      gqi[3 * f + x] += tg * w1[x] * k1[x];
      gkj[4 * f + x] += tg * q1[x] * w1[x];
      gw[f + x] += tg * q1[x] * k1[x];
    }
  }
}

// Runs work(part) for part in [0, parts) on the calling thread and one task on XLA's intra-op
// thread pool. Parts are claimed atomically, so the caller never waits for a task that has not
// started (it then does that part itself); a late task finds nothing left and never touches
// ``work``, which the caller keeps alive until every claimed part is done.
template <typename F>
void InParallel(ffi::ThreadPool& pool, int64_t parts, const F& work) {
  struct Claims {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto claims = std::make_shared<Claims>();
  auto run = [claims, parts, &work]() {
    for (int64_t part; (part = claims->next.fetch_add(1)) < parts;) {
      work(part);
      claims->done.fetch_add(1, std::memory_order_release);
    }
  };
  if (parts > 1 && pool.num_threads() > 0) pool.Schedule(decltype(run)(run));  // a copy
  run();
  while (claims->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// How many parts a loop over ``n`` couples of pairs is split into: two from 64 on (fewer are
// not worth a task).
inline int64_t Parts(int64_t n) { return n >= 64 ? 2 : 1; }

template <ffi::DataType DT>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<DT> qkv, ffi::Buffer<DT> ev,
                   ffi::Buffer<DT> table,
                   ffi::Buffer<DT> s, ffi::Buffer<DT> cut, ffi::Buffer<DT> ylm,
                   ffi::Buffer<ffi::S32> centers, ffi::Buffer<ffi::S32> neighbors,
                   ffi::Buffer<ffi::S32> degree, int64_t heads0, int64_t heads1, double scale0,
                   double scale1, bool halves, ffi::ResultBuffer<DT> upd,
                   ffi::ResultBuffer<DT> raw) {
  using T = ffi::NativeType<DT>;
  Pairs<T> a;
  if (auto e = Unpack(qkv, ev, table, s, cut, ylm, centers, neighbors, degree, heads0, heads1,
                      scale0, scale1, halves, &a);
      e.failure())
    return e;
  T* out = upd->typed_data();
  T* r = raw->typed_data();
  const int64_t nh = a.heads0 + a.heads1, size = a.n * (a.f + a.d);
  const int64_t h = a.halves ? a.p / 2 : a.p, parts = Parts(h);
  std::vector<T> extra((parts - 1) * size);  // the second part's messages, added at the end
  std::memset(out, 0, sizeof(T) * size);
  InParallel(pool, parts, [&](int64_t part) {
    T* o = part ? extra.data() : out;
    std::vector<T> w(2 * a.f);
    for (int64_t p = part * h / parts; p < (part + 1) * h / parts; ++p) {
      if (!Absent(a, p, h)) Filters(a, p, w.data(), static_cast<T*>(nullptr));
      ForwardPair(a, p, w.data(), o, r + p * nh);
      if (a.halves) ForwardPair(a, p + h, w.data(), o, r + (p + h) * nh);
    }
  });
  for (int64_t x = 0; x < static_cast<int64_t>(extra.size()); ++x) out[x] += extra[x];
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<DT> qkv, ffi::Buffer<DT> ev,
                    ffi::Buffer<DT> table,
                    ffi::Buffer<DT> s, ffi::Buffer<DT> cut, ffi::Buffer<DT> ylm,
                    ffi::Buffer<ffi::S32> centers, ffi::Buffer<ffi::S32> neighbors,
                    ffi::Buffer<ffi::S32> degree, ffi::Buffer<DT> raw, ffi::Buffer<DT> g_upd,
                    int64_t heads0,
                    int64_t heads1, double scale0, double scale1, bool halves,
                    bool qkv_grad, ffi::ResultBuffer<DT> g_qkv, ffi::ResultBuffer<DT> g_ev,
                    ffi::ResultBuffer<DT> g_s, ffi::ResultBuffer<DT> g_cut,
                    ffi::ResultBuffer<DT> g_ylm) {
  using T = ffi::NativeType<DT>;
  Pairs<T> a;
  if (auto e = Unpack(qkv, ev, table, s, cut, ylm, centers, neighbors, degree, heads0, heads1,
                      scale0, scale1, halves, &a);
      e.failure())
    return e;
  const int64_t f2 = 2 * a.f;
  const T* gu = g_upd.typed_data();
  const T* r = raw.typed_data();
  T *gq = g_qkv->typed_data(), *gev = g_ev->typed_data(), *gs = g_s->typed_data();
  T *gc = g_cut->typed_data(), *gy = g_ylm->typed_data();
  const int64_t h = a.halves ? a.p / 2 : a.p, parts = Parts(h);
  // The second part accumulates the atoms' gradients (and the filter rows', when pairs share
  // rows) apart, added at the end; the per-pair ones are disjoint.
  if (!qkv_grad) gq = nullptr;  // no gradient in q, k and v (g_qkv is empty)
  const int64_t nq = qkv_grad ? a.n * 5 * a.f : 0, nev = a.r * f2;
  const bool shared_rows = a.r != h;
  std::vector<T> extra((parts - 1) * (nq + (shared_rows ? nev : 0)));
  if (qkv_grad) std::memset(gq, 0, sizeof(T) * nq);
  std::memset(gev, 0, sizeof(T) * nev);
  std::memset(gs, 0, sizeof(T) * a.p);
  InParallel(pool, parts, [&](int64_t part) {
    T* q = !qkv_grad ? nullptr : part ? extra.data() : gq;
    T* ev = part && shared_rows ? extra.data() + nq : gev;
    std::vector<T> w(f2), slope(f2), gw(f2);
    Scratch<T> scratch(a);
    for (int64_t p = part * h / parts; p < (part + 1) * h / parts; ++p) {
      const bool absent = Absent(a, p, h);  // its pairs only zero their gradients
      if (!absent) {
        Filters(a, p, w.data(), slope.data());
        std::fill(gw.begin(), gw.end(), T(0));
      }
      BackwardPair(a, p, w.data(), r, gu, q, gc, gy, gw.data(), scratch);
      if (a.halves) BackwardPair(a, p + h, w.data(), r, gu, q, gc, gy, gw.data(), scratch);
      if (absent) continue;
      T* gr = ev + (p % a.r) * f2;
      T ds = 0;
#pragma omp simd reduction(+ : ds)
      for (int64_t x = 0; x < f2; ++x) {
        gr[x] += gw[x];
        ds += gw[x] * slope[x];
      }
      gs[p] = ds;
    }
  });
  if (parts > 1) {
    for (int64_t x = 0; x < nq; ++x) gq[x] += extra[x];
    if (shared_rows)
      for (int64_t x = 0; x < nev; ++x) gev[x] += extra[nq + x];
  }
  return ffi::Error::Success();
}

}  // namespace

#define SO3KRATES_PAIR_ARGS(DT)                                                            \
  .Arg<ffi::Buffer<DT>>()           /* qkv */                                              \
      .Arg<ffi::Buffer<DT>>()       /* ev_w */                                             \
      .Arg<ffi::Buffer<DT>>()       /* table */                                            \
      .Arg<ffi::Buffer<DT>>()       /* s */                                                \
      .Arg<ffi::Buffer<DT>>()       /* cut */                                              \
      .Arg<ffi::Buffer<DT>>()       /* ylm */                                              \
      .Arg<ffi::Buffer<ffi::S32>>() /* centers */                                          \
      .Arg<ffi::Buffer<ffi::S32>>() /* neighbors */                                        \
      .Arg<ffi::Buffer<ffi::S32>>() /* component_degree */

#define SO3KRATES_PAIR_ATTRS                                                               \
  .Attr<int64_t>("heads0")                                                                 \
      .Attr<int64_t>("heads1")                                                             \
      .Attr<double>("scale0")                                                              \
      .Attr<double>("scale1")                                                              \
      .Attr<bool>("halves")

#define SO3KRATES_BIND_FORWARD(DT)                                                         \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() SO3KRATES_PAIR_ARGS(DT)                             \
      SO3KRATES_PAIR_ATTRS.Ret<ffi::Buffer<DT>>() /* upd */                                 \
      .Ret<ffi::Buffer<DT>>() /* raw head sums */

#define SO3KRATES_BIND_BACKWARD(DT)                                                        \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() SO3KRATES_PAIR_ARGS(DT)                         \
      .Arg<ffi::Buffer<DT>>() /* raw head sums */                                          \
      .Arg<ffi::Buffer<DT>>() /* g_upd */ SO3KRATES_PAIR_ATTRS                             \
      .Attr<bool>("qkv_grad")                                                              \
      .Ret<ffi::Buffer<DT>>()                                                              \
      .Ret<ffi::Buffer<DT>>()                                                              \
      .Ret<ffi::Buffer<DT>>()                                                              \
      .Ret<ffi::Buffer<DT>>()                                                              \
      .Ret<ffi::Buffer<DT>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(PairAttentionForwardF32, Forward<ffi::F32>,
                              SO3KRATES_BIND_FORWARD(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(PairAttentionForwardF64, Forward<ffi::F64>,
                              SO3KRATES_BIND_FORWARD(ffi::F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(PairAttentionBackwardF32, Backward<ffi::F32>,
                              SO3KRATES_BIND_BACKWARD(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(PairAttentionBackwardF64, Backward<ffi::F64>,
                              SO3KRATES_BIND_BACKWARD(ffi::F64));
