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
 * The stage functions take a thread count: with it above 1 (and the library built with OpenMP) their
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

#define DEFINE_KERNELS(real, suffix)                                                                    \
static inline void mul_##suffix(const real *c, const real *x, real *re, real *im) {                   \
    *re = c[0] * x[0] - c[1] * x[1];                                                                   \
    *im = c[0] * x[1] + c[1] * x[0];                                                                   \
}                                                                                                      \
static inline void mul_add_##suffix(const real *c, const real *x, real *re, real *im) {               \
    *re += c[0] * x[0] - c[1] * x[1];                                                                  \
    *im += c[0] * x[1] + c[1] * x[0];                                                                  \
}                                                                                                      \
/* out = c v at the modes [kept, modes) of one row, where no nonlinear term reaches (out may be v) */ \
static inline void linear_modes_##suffix(index_t kept, index_t modes, const real *c, const real *v,   \
                                         real *out) {                                                 \
    for (index_t m = kept; m < modes; m++) {                                                           \
        real re, im;                                                                                   \
        mul_##suffix(c + 2 * m, v + 2 * m, &re, &im);                                                  \
        out[2 * m] = re; out[2 * m + 1] = im;                                                          \
    }                                                                                                  \
}                                                                                                      \
void stage_a_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, const real *R v,    \
                      const real *R n_u, const real *R e2, const real *R q, real *R a) {               \
    ROWS_IN_PARALLEL                                                                                   \
    for (index_t row = 0; row < batch; row++) {                                                        \
        index_t o = 2 * row * modes;                                                                   \
        for (index_t m = 0; m < kept; m++) {                                                           \
            index_t i = o + 2 * m;                                                                     \
            real re, im;                                                                               \
            mul_##suffix(e2 + 2 * m, v + i, &re, &im);                                                 \
            mul_add_##suffix(q + 2 * m, n_u + i, &re, &im);                                            \
            a[i] = re; a[i + 1] = im;                                                                  \
        }                                                                                              \
        linear_modes_##suffix(kept, modes, e2, v + o, a + o);                                          \
    }                                                                                                  \
}                                                                                                      \
void stage_b_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, const real *R v,    \
                      const real *R n_u, const real *R n_a, const real *R e2, const real *R q,         \
                      const real *R f_u, const real *R f_ab, real *R b, real *R s) {                   \
    ROWS_IN_PARALLEL                                                                                   \
    for (index_t row = 0; row < batch; row++) {                                                        \
        index_t o = 2 * row * modes;                                                                   \
        for (index_t m = 0; m < kept; m++) {                                                           \
            index_t i = o + 2 * m;                                                                     \
            real re, im, s_re, s_im;                                                                   \
            mul_##suffix(e2 + 2 * m, v + i, &re, &im);                                                 \
            mul_add_##suffix(q + 2 * m, n_a + i, &re, &im);                                            \
            b[i] = re; b[i + 1] = im;                                                                  \
            mul_##suffix(f_u + 2 * m, n_u + i, &s_re, &s_im);                                          \
            mul_add_##suffix(f_ab + 2 * m, n_a + i, &s_re, &s_im);                                     \
            s[i] = s_re; s[i + 1] = s_im;                                                              \
        }                                                                                              \
        linear_modes_##suffix(kept, modes, e2, v + o, b + o);                                          \
    }                                                                                                  \
}                                                                                                      \
void stage_d_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, const real *R v,    \
                      const real *R n_u, const real *R n_b, const real *R e, const real *R d_u,        \
                      const real *R d_b, const real *R f_ab, real *R d, real *R s) {                   \
    ROWS_IN_PARALLEL                                                                                   \
    for (index_t row = 0; row < batch; row++) {                                                        \
        index_t o = 2 * row * modes;                                                                   \
        for (index_t m = 0; m < kept; m++) {                                                           \
            index_t i = o + 2 * m;                                                                     \
            real re, im, s_re = s[i], s_im = s[i + 1];                                                 \
            mul_##suffix(e + 2 * m, v + i, &re, &im);                                                  \
            mul_add_##suffix(d_u + 2 * m, n_u + i, &re, &im);                                          \
            mul_add_##suffix(d_b + 2 * m, n_b + i, &re, &im);                                          \
            d[i] = re; d[i + 1] = im;                                                                  \
            mul_add_##suffix(f_ab + 2 * m, n_b + i, &s_re, &s_im);                                     \
            s[i] = s_re; s[i + 1] = s_im;                                                              \
        }                                                                                              \
        linear_modes_##suffix(kept, modes, e, v + o, d + o);                                           \
    }                                                                                                  \
}                                                                                                      \
void stage_out_##suffix(index_t threads, index_t batch, index_t modes, index_t kept, real *R v,        \
                        const real *R n_d, const real *R s, const real *R e, const real *R f_d) {      \
    ROWS_IN_PARALLEL                                                                                   \
    for (index_t row = 0; row < batch; row++) {                                                        \
        index_t o = 2 * row * modes;                                                                   \
        for (index_t m = 0; m < kept; m++) {                                                           \
            index_t i = o + 2 * m;                                                                     \
            real re = s[i], im = s[i + 1];                                                             \
            mul_add_##suffix(e + 2 * m, v + i, &re, &im);                                              \
            mul_add_##suffix(f_d + 2 * m, n_d + i, &re, &im);                                          \
            v[i] = re; v[i + 1] = im;                                                                  \
        }                                                                                              \
        linear_modes_##suffix(kept, modes, e, v + o, v + o);                                           \
    }                                                                                                  \
}                                                                                                      \
/* out[r, :n] = x[r, :k] @ matrix (k, n) for rows r < batch; x's rows are ldx apart */                 \
static void row_products_##suffix(index_t batch, index_t k, index_t n, const real *R x, index_t ldx,              \
                                  const real *R matrix, real *R out) {                                 \
    for (index_t row = 0; row < batch; row++) {                                                           \
        const real *R x_row = x + row * ldx;                                                           \
        real *R o = out + row * n;                                                                     \
        for (index_t j = 0; j < n; j++) o[j] = 0;                                                         \
        for (index_t i = 0; i < k; i++) {                                                                 \
            const real x_i = x_row[i], *R m_i = matrix + i * n;                                        \
            for (index_t j = 0; j < n; j++) o[j] += x_i * m_i[j];                                         \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
static void squares_##suffix(index_t batch, index_t n, const real *R x, real *R out, index_t ldo) {            \
    for (index_t row = 0; row < batch; row++)                                                             \
        for (index_t j = 0; j < n; j++) out[row * ldo + j] = x[row * n + j] * x[row * n + j];             \
}                                                                                                      \
void dense_step_##suffix(index_t batch, index_t n, const real *R u, real *R workspace, real *R stage,      \
                         const real *R a_matrix, const real *R b_matrix, const real *R d_matrix,      \
                         const real *R final_matrix, real *R out) {                                    \
    index_t ld = 5 * n;                                                                                   \
    for (index_t row = 0; row < batch; row++)                                                             \
        for (index_t j = 0; j < n; j++) {                                                                 \
            real x = u[row * n + j];                                                                   \
            workspace[row * ld + n + j] = x;                                                           \
            workspace[row * ld + 2 * n + j] = x * x;                                                   \
        }                                                                                              \
    row_products_##suffix(batch, 2 * n, n, workspace + n, ld, a_matrix, stage);      /* a: u, w_u */   \
    squares_##suffix(batch, n, stage, workspace, ld);                                                  \
    row_products_##suffix(batch, 2 * n, n, workspace, ld, b_matrix, stage);          /* b: w_a, u */   \
    squares_##suffix(batch, n, stage, workspace + 3 * n, ld);                                          \
    row_products_##suffix(batch, 3 * n, n, workspace + n, ld, d_matrix, stage);  /* d: u, w_u, w_b */ \
    squares_##suffix(batch, n, stage, workspace + 4 * n, ld);                                          \
    row_products_##suffix(batch, 5 * n, n, workspace, ld, final_matrix, out);                          \
}

DEFINE_KERNELS(double, f64)
DEFINE_KERNELS(float, f32)
