/* CPU kernels of the Kuramoto-Sivashinsky ETDRK4 step (solvers/c_kernels.py compiles and loads them).
 *
 * The same exact rearrangements as solvers/etdrk4_stepping.py (its module docstring); each function
 * does in one pass what the torch step does in several elementwise operations, which is what the
 * step costs besides its FFTs (and, at batch 1, besides torch's per-operation overhead).
 *
 * Fourier stages: complex arrays are interleaved (re, im) reals; states (batch, modes) row-major,
 * coefficients (modes,). The coefficients of the nonlinear terms vanish at modes >= kept (the
 * dealiasing cut; kept = modes with a closure), so above it only the linear factors E, E2 act.
 *
 *     a  = E2 v + q N(v)                                      stage_a
 *     b  = E2 v + q N(a);        s = f_u N(v) + f_ab N(a)     stage_b
 *     d  = E v + d_u N(v) + d_b N(b);   s += f_ab N(b)        stage_d
 *     v+ = E v + s + f_d N(d)      (in place)                 stage_out
 *
 * Whole Fourier step (fourier_step, no closure, n a power of two): the four stages with their own
 * transforms, N(x) = rfft(irfft(x)^2), in scratch that stays in cache, one call a step instead of ~8
 * Python-level FFT calls and 4 kernel calls. Members go through it LANES at a time, member l in lane
 * l of every vector (GCC/clang vector extensions of 32 bytes, 64 with AVX-512; a batch's last few
 * members, at most LANES / 2, in vectors half as wide): each butterfly is then a few vertical vector
 * operations, the same IEEE operations in whichever lane, width and group a member lands (no FMA
 * contraction: -ffp-contract=off), so its bits do not depend on the batch; lanes past the batch hold
 * zeros. A lone member (batch 1) runs the same source as scalar code, which GCC's vectoriser turns
 * into (re, im) pair operations, some of them fused multiply-adds (fmaddsub) that the flag does not
 * stop: ~2x the narrow vectors at N >= 256, its last bits those of that code. Vectorising batched
 * 1-d transforms across rows is what FFT libraries do (DUCC's multi-row buffers, FFTW's SIMD
 * codelets); doing it here keeps all eight transforms and the stages of a group in cache, which DUCC's
 * separate calls cannot (~2x their step; docs/performance.md, "Members in vector lanes"). Its
 * physical entry point (physical_step_packed: the public step() of physical fields) also does the
 * transforms to Fourier space and back in the same pass, loading and storing the fields through a
 * bit-reversal table, as the transforms run bit-reversed in the middle.
 * A real transform of n = 2m points is a complex one of m points (x[2j] + i x[2j+1]) plus a split
 * pass (the standard packing, e.g. Press et al., Numerical Recipes, 3rd ed., 12.3.2). The inverse
 * is radix-2 decimation in frequency (natural order in, bit-reversed out), the forward decimation in
 * time (bit-reversed in, natural out), each with two stages fused into one pass over four points
 * (three or four complex products instead of four, half the passes): the squaring between them is
 * pointwise, so no bit-reversal permutation is ever made.
 * omega[k] = exp(-2 pi i k / n), k < m, holds every twiddle: the m-point FFT's exp(-2 pi i j / len)
 * is omega[j n / len].
 *
 * The batch functions take a thread count: with it above 1 (and the library built with OpenMP) their
 * rows are shared among that many threads. Built with -fopenmp the library uses the OpenMP runtime
 * already loaded in the process -- torch's libgomp on Linux -- so it adds no second thread pool.
 * Every entry is computed by the same arithmetic whatever the thread count: results are bit-identical.
 *
 * Dense step: physical states (batch, n); the workspace (batch, 5n) is [w_a | u | w_u | w_b | w_d]
 * with w_x = x^2, and each stage is one product of a contiguous block with a stacked circulant matrix
 * (DenseStepper in solvers/etdrk4_stepping.py has the layout).
 */
#include <stdint.h>

#define R restrict
/* the whole step's vectors: 32 bytes, or 64 where -march=native enables AVX-512 */
#if defined(__AVX512F__)
#define VECTOR_BYTES 64
#else
#define VECTOR_BYTES 32
#endif
#define LANES(real) ((index_t)(VECTOR_BYTES / sizeof(real)))
/* 64-bit sizes and indices on every platform (index_t is 32 bits on Windows) */
typedef int64_t index_t;

/* rows shared among `threads` threads (a plain loop when compiled without OpenMP) */
#ifdef _OPENMP
#define ROWS_IN_PARALLEL _Pragma("omp parallel for num_threads(threads) if (threads > 1) schedule(static)")
int kernels_openmp(void) { return 1; }
#else
#define ROWS_IN_PARALLEL (void)threads;
int kernels_openmp(void) { return 0; }
#endif

/* the three codes of the whole step's groups of rows (group_code_* picks one) */
enum { SCALAR_GROUP, NARROW_GROUP, WIDE_GROUP };
/* whether log2(m) is odd (m a power of two): then one radix-2 stage of half 1 is left over */
static inline int odd_log2(index_t m) { return (m & (index_t)0x5555555555555555LL) == 0; }

/* -- the four stages of one row: value is a real, or a vector whose lanes are members (the whole step);
 * c[2k], c[2k + 1] are a coefficient's (re, im) at mode k, every array points at the row -- */
#define DEFINE_STAGE_ROWS(value, real, tag)                                                                   \
static inline void mul_##tag(const real *c, value x_re, value x_im, value *re, value *im) {                   \
    *re = c[0] * x_re - c[1] * x_im;                                                                          \
    *im = c[0] * x_im + c[1] * x_re;                                                                          \
}                                                                                                             \
static inline void mul_add_##tag(const real *c, value x_re, value x_im, value *re, value *im) {               \
    *re += c[0] * x_re - c[1] * x_im;                                                                         \
    *im += c[0] * x_im + c[1] * x_re;                                                                         \
}                                                                                                             \
/* out = c v at the modes [kept, modes) of one row, where no nonlinear term reaches (out may be v) */         \
static inline void linear_modes_##tag(index_t kept, index_t modes, const real *c, const value *v,             \
                                      value *out) {                                                           \
    for (index_t k = kept; k < modes; k++) {                                                                  \
        value re, im;                                                                                         \
        mul_##tag(c + 2 * k, v[2 * k], v[2 * k + 1], &re, &im);                                               \
        out[2 * k] = re; out[2 * k + 1] = im;                                                                 \
    }                                                                                                         \
}                                                                                                             \
static inline void row_a_##tag(index_t modes, index_t kept, const value *R v, const value *R n_u,             \
                               const real *R e2, const real *R q, value *R a) {                               \
    for (index_t k = 0; k < kept; k++) {                                                                      \
        value re, im;                                                                                         \
        mul_##tag(e2 + 2 * k, v[2 * k], v[2 * k + 1], &re, &im);                                              \
        mul_add_##tag(q + 2 * k, n_u[2 * k], n_u[2 * k + 1], &re, &im);                                       \
        a[2 * k] = re; a[2 * k + 1] = im;                                                                     \
    }                                                                                                         \
    linear_modes_##tag(kept, modes, e2, v, a);                                                                \
}                                                                                                             \
static inline void row_b_##tag(index_t modes, index_t kept, const value *R v, const value *R n_u,             \
                               const value *R n_a, const real *R e2, const real *R q, const real *R f_u,      \
                               const real *R f_ab, value *R b, value *R s) {                                  \
    for (index_t k = 0; k < kept; k++) {                                                                      \
        value re, im, s_re, s_im;                                                                             \
        mul_##tag(e2 + 2 * k, v[2 * k], v[2 * k + 1], &re, &im);                                              \
        mul_add_##tag(q + 2 * k, n_a[2 * k], n_a[2 * k + 1], &re, &im);                                       \
        b[2 * k] = re; b[2 * k + 1] = im;                                                                     \
        mul_##tag(f_u + 2 * k, n_u[2 * k], n_u[2 * k + 1], &s_re, &s_im);                                     \
        mul_add_##tag(f_ab + 2 * k, n_a[2 * k], n_a[2 * k + 1], &s_re, &s_im);                                \
        s[2 * k] = s_re; s[2 * k + 1] = s_im;                                                                 \
    }                                                                                                         \
    linear_modes_##tag(kept, modes, e2, v, b);                                                                \
}                                                                                                             \
static inline void row_d_##tag(index_t modes, index_t kept, const value *R v, const value *R n_u,             \
                               const value *R n_b, const real *R e, const real *R d_u, const real *R d_b,     \
                               const real *R f_ab, value *R d, value *R s) {                                  \
    for (index_t k = 0; k < kept; k++) {                                                                      \
        value re, im, s_re = s[2 * k], s_im = s[2 * k + 1];                                                   \
        mul_##tag(e + 2 * k, v[2 * k], v[2 * k + 1], &re, &im);                                               \
        mul_add_##tag(d_u + 2 * k, n_u[2 * k], n_u[2 * k + 1], &re, &im);                                     \
        mul_add_##tag(d_b + 2 * k, n_b[2 * k], n_b[2 * k + 1], &re, &im);                                     \
        d[2 * k] = re; d[2 * k + 1] = im;                                                                     \
        mul_add_##tag(f_ab + 2 * k, n_b[2 * k], n_b[2 * k + 1], &s_re, &s_im);                                \
        s[2 * k] = s_re; s[2 * k + 1] = s_im;                                                                 \
    }                                                                                                         \
    linear_modes_##tag(kept, modes, e, v, d);                                                                 \
}                                                                                                             \
static inline void row_out_##tag(index_t modes, index_t kept, value *R v, const value *R n_d,                 \
                                 const value *R s, const real *R e, const real *R f_d) {                      \
    for (index_t k = 0; k < kept; k++) {                                                                      \
        value re = s[2 * k], im = s[2 * k + 1];                                                               \
        mul_add_##tag(e + 2 * k, v[2 * k], v[2 * k + 1], &re, &im);                                           \
        mul_add_##tag(f_d + 2 * k, n_d[2 * k], n_d[2 * k + 1], &re, &im);                                     \
        v[2 * k] = re; v[2 * k + 1] = im;                                                                     \
    }                                                                                                         \
    linear_modes_##tag(kept, modes, e, v, v);                                                                 \
}

/* -- the whole Fourier step of the members in the lanes of VEC vectors (member l in lane l of every
 * vector, so the transforms' butterflies are plain vertical vector operations; VEC = real: one member,
 * plain scalar code); z holds m complex vectors; the stage rows of the same tag come from
 * DEFINE_STAGE_ROWS -- */
#define DEFINE_LANES(real, VEC, tag)                                                                          \
/* radix-2 stage of half 1 (twiddle 1) */                                                                     \
static inline void pairs_##tag(index_t m, VEC *R z) {                                                         \
    for (index_t i = 0; i < m; i += 2) {                                                                      \
        VEC *p = z + 2 * i, *r = p + 2;                                                                       \
        VEC d_re = p[0] - r[0], d_im = p[1] - r[1];                                                           \
        p[0] += r[0]; p[1] += r[1]; r[0] = d_re; r[1] = d_im;                                                 \
    }                                                                                                         \
}                                                                                                             \
/* unnormalised inverse complex FFT of m points, natural order in, bit-reversed out: radix-2                  \
 * decimation in frequency with each two stages (halves 2q, q) fused into one pass over 4q points */          \
static void inverse_fft_##tag(index_t m, VEC *R z, const real *R omega) {                                     \
    index_t n = 2 * m;                                                                                        \
    for (index_t q = m / 4; q >= 1; q /= 4) {                                                                 \
        index_t step_a = n / (4 * q), step_b = n / (2 * q);                                                   \
        for (index_t i = 0; i < m; i += 4 * q)                                                                \
            for (index_t j = 0; j < q; j++) {                                                                 \
                VEC *x0 = z + 2 * (i + j), *x1 = x0 + 2 * q, *x2 = x1 + 2 * q, *x3 = x2 + 2 * q;              \
                real wa_re = omega[2 * j * step_a], wa_im = -omega[2 * j * step_a + 1];                       \
                real wb_re = omega[2 * j * step_b], wb_im = -omega[2 * j * step_b + 1];                       \
                VEC t0_re = x0[0] + x2[0], t0_im = x0[1] + x2[1], u_re = x0[0] - x2[0], u_im = x0[1] - x2[1]; \
                VEC t1_re = x1[0] + x3[0], t1_im = x1[1] + x3[1];                                             \
                VEC v_re = x3[1] - x1[1], v_im = x1[0] - x3[0];  /* (x1 - x3) i */                            \
                VEC re = t0_re - t1_re, im = t0_im - t1_im;                                                   \
                x0[0] = t0_re + t1_re; x0[1] = t0_im + t1_im;                                                 \
                x1[0] = re * wb_re - im * wb_im; x1[1] = re * wb_im + im * wb_re;                             \
                re = u_re + v_re; im = u_im + v_im;                                                           \
                x2[0] = re * wa_re - im * wa_im; x2[1] = re * wa_im + im * wa_re;                             \
                re = u_re - v_re; im = u_im - v_im;                                                           \
                VEC minus_re = re * wa_re - im * wa_im, minus_im = re * wa_im + im * wa_re;                   \
                x3[0] = minus_re * wb_re - minus_im * wb_im; x3[1] = minus_re * wb_im + minus_im * wb_re;     \
            }                                                                                                 \
    }                                                                                                         \
    if (odd_log2(m)) pairs_##tag(m, z);                                                                       \
}                                                                                                             \
/* unnormalised forward complex FFT of m points, bit-reversed order in, natural out: radix-2                  \
 * decimation in time, two stages (halves q, 2q) fused likewise */                                            \
static void forward_fft_##tag(index_t m, VEC *R z, const real *R omega) {                                     \
    index_t n = 2 * m, q = 1;                                                                                 \
    if (odd_log2(m)) {                                                                                        \
        pairs_##tag(m, z);                                                                                    \
        q = 2;                                                                                                \
    }                                                                                                         \
    for (; 4 * q <= m; q *= 4) {                                                                              \
        index_t step_a = n / (4 * q), step_b = n / (2 * q);                                                   \
        for (index_t i = 0; i < m; i += 4 * q)                                                                \
            for (index_t j = 0; j < q; j++) {                                                                 \
                VEC *x0 = z + 2 * (i + j), *x1 = x0 + 2 * q, *x2 = x1 + 2 * q, *x3 = x2 + 2 * q;              \
                real wa_re = omega[2 * j * step_a], wa_im = omega[2 * j * step_a + 1];                        \
                real wb_re = omega[2 * j * step_b], wb_im = omega[2 * j * step_b + 1];                        \
                VEC c1_re = x1[0] * wb_re - x1[1] * wb_im, c1_im = x1[0] * wb_im + x1[1] * wb_re;             \
                VEC c3_re = x3[0] * wb_re - x3[1] * wb_im, c3_im = x3[0] * wb_im + x3[1] * wb_re;             \
                VEC b0_re = x0[0] + c1_re, b0_im = x0[1] + c1_im;                                             \
                VEC b1_re = x0[0] - c1_re, b1_im = x0[1] - c1_im;                                             \
                VEC re = x2[0] + c3_re, im = x2[1] + c3_im;                                                   \
                VEC e2_re = re * wa_re - im * wa_im, e2_im = re * wa_im + im * wa_re;                         \
                re = x2[0] - c3_re; im = x2[1] - c3_im;                                                       \
                VEC e3_re = re * wa_re - im * wa_im, e3_im = re * wa_im + im * wa_re;                         \
                /* the second pair's twiddle is wa (-i): e3 (-i) = (e3_im, -e3_re) */                         \
                x0[0] = b0_re + e2_re; x0[1] = b0_im + e2_im; x2[0] = b0_re - e2_re; x2[1] = b0_im - e2_im;   \
                x1[0] = b1_re + e3_im; x1[1] = b1_im - e3_re; x3[0] = b1_re - e3_im; x3[1] = b1_im + e3_re;   \
            }                                                                                                 \
    }                                                                                                         \
}                                                                                                             \
/* z = irfft(x, n) for the rows in x's lanes, m + 1 modes, as m complex values (z_j = u_2j + i u_2j+1) in     \
 * bit-reversed order (irfft ignores the imaginary parts of the mean and Nyquist modes, as torch's does) */   \
static void to_physical_##tag(index_t m, const VEC *R x, VEC *R z, const real *R omega) {                     \
    const real half = (real)0.5 / (real)m;  /* the split's 1/2 and the inverse's 1/m */                       \
    VEC x0 = x[0], xm = x[2 * m];                                                                             \
    z[0] = (x0 + xm) * half; z[1] = (x0 - xm) * half;                                                         \
    for (index_t k = 1; k < m; k++) {                                                                         \
        /* E = (X_k + conj X_{m-k}) / 2, O = (X_k - conj X_{m-k}) conj(omega_k) / 2, Z_k = E + i O */         \
        VEC a_re = x[2 * k], a_im = x[2 * k + 1], b_re = x[2 * (m - k)], b_im = -x[2 * (m - k) + 1];          \
        real w_re = omega[2 * k], w_im = -omega[2 * k + 1];                                                   \
        VEC d_re = a_re - b_re, d_im = a_im - b_im;                                                           \
        VEC o_re = d_re * w_re - d_im * w_im, o_im = d_re * w_im + d_im * w_re;                               \
        z[2 * k] = (a_re + b_re - o_im) * half; z[2 * k + 1] = (a_im + b_im + o_re) * half;                   \
    }                                                                                                         \
    inverse_fft_##tag(m, z, omega);                                                                           \
}                                                                                                             \
/* out = rfft(u) (m + 1 modes) of the field in z, packed and bit-reversed as to_physical leaves it;           \
 * z is overwritten */                                                                                        \
static void to_fourier_##tag(index_t m, VEC *R z, VEC *R out, const real *R omega) {                          \
    VEC zero = {0};                                                                                           \
    forward_fft_##tag(m, z, omega);                                                                           \
    out[0] = z[0] + z[1]; out[1] = zero;                                                                      \
    out[2 * m] = z[0] - z[1]; out[2 * m + 1] = zero;                                                          \
    for (index_t k = 1; k < m; k++) {                                                                         \
        /* E = (Z_k + conj Z_{m-k}) / 2, O = (Z_k - conj Z_{m-k}) / 2i, X_k = E + omega_k O */                \
        VEC a_re = z[2 * k], a_im = z[2 * k + 1], b_re = z[2 * (m - k)], b_im = -z[2 * (m - k) + 1];          \
        VEC e_re = (a_re + b_re) * (real)0.5, e_im = (a_im + b_im) * (real)0.5;                               \
        VEC o_re = (a_im - b_im) * (real)0.5, o_im = (b_re - a_re) * (real)0.5;                               \
        real w_re = omega[2 * k], w_im = omega[2 * k + 1];                                                    \
        out[2 * k] = e_re + w_re * o_re - w_im * o_im; out[2 * k + 1] = e_im + w_re * o_im + w_im * o_re;     \
    }                                                                                                         \
}                                                                                                             \
/* out = rfft(irfft(x, n)^2), the quadratic term; z: m complex vectors of scratch */                          \
static void nonlinear_##tag(index_t m, const VEC *R x, VEC *R out, VEC *R z, const real *R omega) {           \
    to_physical_##tag(m, x, z, omega);                                                                        \
    for (index_t j = 0; j < 2 * m; j++) z[j] *= z[j];                                                         \
    to_fourier_##tag(m, z, out, omega);                                                                       \
}                                                                                                             \
/* rows [0, count) of x (rows of `size` reals) into the lanes of `lanes` (size vectors), zeros in the         \
 * lanes past count: a member's arithmetic never meets another's, nor garbage. With a bit-reversal table      \
 * the rows are physical fields (size = n reals) and go in the order to_fourier takes (complex sample         \
 * j = x_2j + i x_2j+1 at position bitrev[j]); without (NULL) Fourier rows, in order. A union is C99's        \
 * way to read and write a vector's lanes as reals (for plain reals too: VEC = real) */                       \
static inline index_t lane_position_##tag(index_t k, const int64_t *R bitrev) {                               \
    return bitrev ? 2 * bitrev[k / 2] + k % 2 : k;                                                            \
}                                                                                                             \
static void load_##tag(index_t count, index_t size, const real *R x, const int64_t *R bitrev,                \
                       VEC *R lanes) {                                                                        \
    for (index_t k = 0; k < size; k++) {                                                                      \
        union { VEC vector; real lane[sizeof(VEC) / sizeof(real)]; } value;                                   \
        for (index_t l = 0; l < (index_t)(sizeof(VEC) / sizeof(real)); l++)                                   \
            value.lane[l] = l < count ? x[l * size + k] : 0;                                                  \
        lanes[lane_position_##tag(k, bitrev)] = value.vector;                                                 \
    }                                                                                                         \
}                                                                                                             \
static void store_##tag(index_t count, index_t size, const VEC *R lanes, const int64_t *R bitrev,            \
                        real *R x) {                                                                          \
    for (index_t k = 0; k < size; k++) {                                                                      \
        union { VEC vector; real lane[sizeof(VEC) / sizeof(real)]; } value;                                   \
        value.vector = lanes[lane_position_##tag(k, bitrev)];                                                 \
        for (index_t l = 0; l < count; l++) x[l * size + k] = value.lane[l];                                  \
    }                                                                                                         \
}                                                                                                             \
/* the whole step of the count <= lanes rows at `in` into `out` (which may be `in`), in scratch of            \
 * 16 m + 14 vectors: Fourier rows (m + 1 modes), or with `physical` physical rows (n reals), taken to        \
 * Fourier space and back in cache; a: the packed arguments (whole_step_##suffix) */                          \
static void step_##tag(index_t count, const real *in, real *out, int physical, const int64_t *R a,            \
                       VEC *R scratch) {                                                                      \
    index_t m = a[0], kept = a[1], modes = m + 1, size = 2 * modes;                                           \
    const real *e = (const real *)(intptr_t)a[2], *e2 = (const real *)(intptr_t)a[3];                         \
    const real *q = (const real *)(intptr_t)a[4], *d_u = (const real *)(intptr_t)a[5];                        \
    const real *d_b = (const real *)(intptr_t)a[6], *f_u = (const real *)(intptr_t)a[7];                      \
    const real *f_ab = (const real *)(intptr_t)a[8], *f_d = (const real *)(intptr_t)a[9];                     \
    const real *omega = (const real *)(intptr_t)a[10];                                                        \
    const int64_t *bitrev = (const int64_t *)(intptr_t)a[12];                                                 \
    VEC *x = scratch, *n_v = x + size, *n_a = n_v + size, *n_b = n_a + size, *n_d = n_b + size;               \
    VEC *stage = n_d + size, *s = stage + size, *z = s + size;                                                \
    if (physical) {                                                                                           \
        load_##tag(count, 2 * m, in, bitrev, z);                                                              \
        to_fourier_##tag(m, z, x, omega);                                                                     \
    } else {                                                                                                  \
        load_##tag(count, size, in, 0, x);                                                                    \
    }                                                                                                         \
    nonlinear_##tag(m, x, n_v, z, omega);                                                                     \
    row_a_##tag(modes, kept, x, n_v, e2, q, stage);                                                           \
    nonlinear_##tag(m, stage, n_a, z, omega);                                                                 \
    row_b_##tag(modes, kept, x, n_v, n_a, e2, q, f_u, f_ab, stage, s);                                        \
    nonlinear_##tag(m, stage, n_b, z, omega);                                                                 \
    row_d_##tag(modes, kept, x, n_v, n_b, e, d_u, d_b, f_ab, stage, s);                                       \
    nonlinear_##tag(m, stage, n_d, z, omega);                                                                 \
    row_out_##tag(modes, kept, x, n_d, s, e, f_d);                                                            \
    if (physical) {                                                                                           \
        to_physical_##tag(m, x, z, omega);                                                                    \
        store_##tag(count, 2 * m, z, bitrev, out);                                                            \
    } else {                                                                                                  \
        store_##tag(count, size, x, 0, out);                                                                  \
    }                                                                                                         \
}                                                                                                             \
/* rows [0, count) of x through squared_hat into out (the tested entry point's group); scratch: 6 m + 4       \
 * vectors */                                                                                                 \
static void nonlinear_rows_##tag(index_t count, index_t m, const real *R x, real *R out, VEC *R scratch,      \
                                   const real *R omega) {                                                     \
    index_t size = 2 * (m + 1);                                                                               \
    load_##tag(count, size, x, 0, scratch);                                                                   \
    nonlinear_##tag(m, scratch, scratch + size, scratch + 2 * size, omega);                                   \
    store_##tag(count, size, scratch + size, 0, out);                                                         \
}

#define DEFINE_KERNELS(real, suffix)                                                                          \
typedef real wide_##suffix __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(real))));                 \
typedef real narrow_##suffix __attribute__((vector_size(VECTOR_BYTES / 2), aligned(sizeof(real))));           \
DEFINE_STAGE_ROWS(real, real, suffix)                                                                         \
DEFINE_STAGE_ROWS(wide_##suffix, real, wide_##suffix)                                                         \
DEFINE_STAGE_ROWS(narrow_##suffix, real, narrow_##suffix)                                                     \
DEFINE_LANES(real, real, suffix)                                                                              \
DEFINE_LANES(real, wide_##suffix, wide_##suffix)                                                              \
DEFINE_LANES(real, narrow_##suffix, narrow_##suffix)                                                          \
/* -- the stages over a batch (row offset o = 2 * row * modes reals) -- */                                    \
void stage_a_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, const real *R v,           \
                      const real *R n_u, const real *R e2, const real *R q, real *R a) {                      \
    ROWS_IN_PARALLEL                                                                                          \
    for (index_t row = 0; row < batch; row++) {                                                               \
        index_t o = 2 * row * modes;                                                                          \
        row_a_##suffix(modes, kept, v + o, n_u + o, e2, q, a + o);                                            \
    }                                                                                                         \
}                                                                                                             \
void stage_b_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, const real *R v,           \
                      const real *R n_u, const real *R n_a, const real *R e2, const real *R q,                \
                      const real *R f_u, const real *R f_ab, real *R b, real *R s) {                          \
    ROWS_IN_PARALLEL                                                                                          \
    for (index_t row = 0; row < batch; row++) {                                                               \
        index_t o = 2 * row * modes;                                                                          \
        row_b_##suffix(modes, kept, v + o, n_u + o, n_a + o, e2, q, f_u, f_ab, b + o, s + o);                 \
    }                                                                                                         \
}                                                                                                             \
void stage_d_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, const real *R v,           \
                      const real *R n_u, const real *R n_b, const real *R e, const real *R d_u,               \
                      const real *R d_b, const real *R f_ab, real *R d, real *R s) {                          \
    ROWS_IN_PARALLEL                                                                                          \
    for (index_t row = 0; row < batch; row++) {                                                               \
        index_t o = 2 * row * modes;                                                                          \
        row_d_##suffix(modes, kept, v + o, n_u + o, n_b + o, e, d_u, d_b, f_ab, d + o, s + o);                \
    }                                                                                                         \
}                                                                                                             \
void stage_out_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, real *R v,               \
                        const real *R n_d, const real *R s, const real *R e, const real *R f_d) {             \
    ROWS_IN_PARALLEL                                                                                          \
    for (index_t row = 0; row < batch; row++) {                                                               \
        index_t o = 2 * row * modes;                                                                          \
        row_out_##suffix(modes, kept, v + o, n_d + o, s + o, e, f_d);                                         \
    }                                                                                                         \
}                                                                                                             \
/* members per wide vector (the scratch is counted in wide vectors of this many reals) */                     \
index_t whole_step_lanes_##suffix(void) { return LANES(real); }                                               \
/* the code a group of `count` rows takes: one member alone scalar code (a lone trajectory: its (re, im)      \
 * pairs are what the compiler vectorises, ~2x the narrow vectors at N >= 256), a batch's last few            \
 * narrow vectors (half the work of a wide group), else wide ones */                                          \
static inline int group_code_##suffix(index_t count) {                                                        \
    return count == 1 ? SCALAR_GROUP : 2 * count <= LANES(real) ? NARROW_GROUP : WIDE_GROUP;                  \
}                                                                                                             \
/* the whole step of `count` rows, in the code group_code picks */                                            \
static void step_group_##suffix(index_t count, const real *in, real *out, int physical,                       \
                                const int64_t *R arguments, real *R scratch) {                                \
    switch (group_code_##suffix(count)) {                                                                     \
    case SCALAR_GROUP: step_##suffix(count, in, out, physical, arguments, scratch); break;                    \
    case NARROW_GROUP:                                                                                        \
        step_narrow_##suffix(count, in, out, physical, arguments, (narrow_##suffix *)scratch);                \
        break;                                                                                                \
    default: step_wide_##suffix(count, in, out, physical, arguments, (wide_##suffix *)scratch);               \
    }                                                                                                         \
}                                                                                                             \
/* `batch` rows of `in` stepped into `out`, LANES(real) rows at a time; the groups of rows in `threads`       \
 * contiguous blocks, block c using the scratch at c (16 m + 14) wide vectors. arguments (int64, packed       \
 * once per plan by FourierStep: one ctypes argument instead of thirteen, ~1.5 us a call): m, kept, then      \
 * the addresses of e, e2, q, d_u, d_b, f_u, f_ab, f_d, omega, the scratch and the bit-reversal table         \
 * (m entries) */                                                                                             \
static void whole_step_##suffix(index_t threads, index_t batch, const real *in, real *out, int physical,      \
                                const int64_t *R arguments) {                                                 \
    index_t m = arguments[0], lanes = LANES(real), groups = (batch + lanes - 1) / lanes;                      \
    index_t row = physical ? 2 * m : 2 * (m + 1);                                                             \
    real *scratch = (real *)(intptr_t)arguments[11];                                                          \
    ROWS_IN_PARALLEL                                                                                          \
    for (index_t block = 0; block < threads; block++) {                                                       \
        real *mine = scratch + block * (16 * m + 14) * lanes;                                                 \
        for (index_t group = block * groups / threads; group < (block + 1) * groups / threads; group++) {     \
            index_t first = group * lanes, count = batch - first < lanes ? batch - first : lanes;             \
            step_group_##suffix(count, in + first * row, out + first * row, physical, arguments, mine);       \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
/* v (batch, m + 1), Fourier coefficients, stepped in place */                                                \
void fourier_step_packed_##suffix(index_t threads, index_t batch, real *R v, const int64_t *R arguments) {    \
    whole_step_##suffix(threads, batch, v, v, 0, arguments);                                                  \
}                                                                                                             \
/* u (batch, n), physical fields, stepped into out (batch, n): the transforms to Fourier space and back       \
 * in the same cache-resident pass, instead of two torch FFT calls around the step */                         \
void physical_step_packed_##suffix(index_t threads, index_t batch, const real *R u, real *R out,              \
                                   const int64_t *R arguments) {                                              \
    whole_step_##suffix(threads, batch, u, out, 1, arguments);                                                \
}                                                                                                             \
/* the squared-hat transform alone, rows of x into out, grouped as the step groups them (a lone row,          \
 * narrow, wide: tested against torch's FFTs); scratch: 6 m + 4 wide vectors */                               \
void squared_hat_##suffix(index_t batch, index_t m, const real *R x, real *R out, real *R scratch,            \
                          const real *R omega) {                                                              \
    index_t lanes = LANES(real), size = 2 * (m + 1);                                                          \
    for (index_t first = 0; first < batch; first += lanes) {                                                  \
        index_t count = batch - first < lanes ? batch - first : lanes;                                        \
        const real *rows_in = x + first * size;                                                               \
        real *rows_out = out + first * size;                                                                  \
        switch (group_code_##suffix(count)) {                                                                 \
        case SCALAR_GROUP: nonlinear_rows_##suffix(count, m, rows_in, rows_out, scratch, omega); break;       \
        case NARROW_GROUP:                                                                                    \
            nonlinear_rows_narrow_##suffix(count, m, rows_in, rows_out, (narrow_##suffix *)scratch, omega);   \
            break;                                                                                            \
        default: nonlinear_rows_wide_##suffix(count, m, rows_in, rows_out, (wide_##suffix *)scratch, omega);  \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
/* out[r, :n] = x[r, :k] @ matrix (k, n) for rows r < batch; x's rows are ldx apart */                        \
static void row_products_##suffix(index_t batch, index_t k, index_t n, const real *R x, index_t ldx,          \
                                  const real *R matrix, real *R out) {                                        \
    for (index_t row = 0; row < batch; row++) {                                                               \
        const real *R x_row = x + row * ldx;                                                                  \
        real *R o = out + row * n;                                                                            \
        for (index_t j = 0; j < n; j++) o[j] = 0;                                                             \
        for (index_t i = 0; i < k; i++) {                                                                     \
            const real x_i = x_row[i], *R m_i = matrix + i * n;                                               \
            for (index_t j = 0; j < n; j++) o[j] += x_i * m_i[j];                                             \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
static void squares_##suffix(index_t batch, index_t n, const real *R x, real *R out, index_t ldo) {           \
    for (index_t row = 0; row < batch; row++)                                                                 \
        for (index_t j = 0; j < n; j++) out[row * ldo + j] = x[row * n + j] * x[row * n + j];                 \
}                                                                                                             \
void dense_step_##suffix(index_t batch, index_t n, const real *R u, real *R workspace, real *R stage,         \
                         const real *R a_matrix, const real *R b_matrix, const real *R d_matrix,              \
                         const real *R final_matrix, real *R out) {                                           \
    index_t ld = 5 * n;                                                                                       \
    for (index_t row = 0; row < batch; row++)                                                                 \
        for (index_t j = 0; j < n; j++) {                                                                     \
            real x = u[row * n + j];                                                                          \
            workspace[row * ld + n + j] = x;                                                                  \
            workspace[row * ld + 2 * n + j] = x * x;                                                          \
        }                                                                                                     \
    row_products_##suffix(batch, 2 * n, n, workspace + n, ld, a_matrix, stage);      /* a: u, w_u */          \
    squares_##suffix(batch, n, stage, workspace, ld);                                                         \
    row_products_##suffix(batch, 2 * n, n, workspace, ld, b_matrix, stage);          /* b: w_a, u */          \
    squares_##suffix(batch, n, stage, workspace + 3 * n, ld);                                                 \
    row_products_##suffix(batch, 3 * n, n, workspace + n, ld, d_matrix, stage);  /* d: u, w_u, w_b */         \
    squares_##suffix(batch, n, stage, workspace + 4 * n, ld);                                                 \
    row_products_##suffix(batch, 5 * n, n, workspace, ld, final_matrix, out);                                 \
}

DEFINE_KERNELS(double, f64)
DEFINE_KERNELS(float, f32)
