//! The GEMM provider: `c (+)= op(a) · op(b)`, row-major f32.
//!
//! Default: the pure-Rust `gemm` crate built with `x86-v4` (AVX-512 kernels on stable Rust).
//! With the `mkl` cargo feature, MKL's `cblas_sgemm` (sequential layer: largo's rayon pool is the
//! only thread pool, MKL threads would fight it on small machines).

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    N,
    T,
}

/// Which library computes GEMMs in this build.
pub fn gemm_provider() -> &'static str {
    if cfg!(feature = "mkl") {
        "mkl"
    } else {
        "gemm-crate (x86-v4)"
    }
}

/// `c[m,n] = op(a)[m,k] · op(b)[k,n]`, or `c += …` when `accumulate`.
///
/// `a` is stored `[m,k]` (`Trans::N`) or `[k,m]` (`Trans::T`); likewise `b` is `[k,n]` or `[n,k]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k, "matmul: a has {} < {m}x{k}", a.len());
    assert!(b.len() >= k * n, "matmul: b has {} < {k}x{n}", b.len());
    assert!(c.len() >= m * n, "matmul: c has {} < {m}x{n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    provider::matmul(ta, tb, m, n, k, a, b, c, accumulate);
}

#[cfg(not(feature = "mkl"))]
mod provider {
    use super::Trans;
    use gemm::Parallelism;

    /// Below this many multiply-adds one thread is faster than splitting the work.
    const PARALLEL_MIN_MACS: usize = 48 * 48 * 48;

    /// Splits C into one block of rows (or columns, when C is wide) per thread and runs a
    /// single-threaded GEMM on each: on this 2-core machine that scales better than the
    /// crate's own parallel loop (measured with `largo bench gemm`).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        ta: Trans,
        tb: Trans,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) {
        // Row-major strides (column stride, row stride) of op(a) [m,k] and op(b) [k,n].
        let (a_cs, a_rs) = match ta {
            Trans::N => (1, k as isize),
            Trans::T => (m as isize, 1),
        };
        let (b_cs, b_rs) = match tb {
            Trans::N => (1, n as isize),
            Trans::T => (k as isize, 1),
        };
        let threads = rayon::current_num_threads();
        let parts = if m * n * k < PARALLEL_MIN_MACS {
            1
        } else {
            threads
        };
        let split_rows = m >= n;
        let len = if split_rows { m } else { n };
        // Block edges rounded to 16 so every block keeps whole SIMD panels.
        let block = len.div_ceil(parts).next_multiple_of(16).min(len);
        let (a_ptr, b_ptr, c_ptr) = (
            a.as_ptr() as usize,
            b.as_ptr() as usize,
            c.as_mut_ptr() as usize,
        );
        let run = |start: usize| {
            let size = block.min(len - start);
            let (mm, nn) = if split_rows { (size, n) } else { (m, size) };
            // Offsets of the block's first element in a (rows) or b (columns), and in c.
            let (a_off, b_off, c_off) = if split_rows {
                (start as isize * a_rs, 0, start * n)
            } else {
                (0, start as isize * b_cs, start)
            };
            // SAFETY: `matmul` checked that a, b, c hold m*k, k*n and m*n elements; each block
            // addresses a sub-range of those extents with the full strides, and distinct
            // blocks write disjoint elements of c (different rows or different columns).
            // a and b are only read. The pointers outlive the scope below.
            unsafe {
                gemm::gemm(
                    mm,
                    nn,
                    k,
                    (c_ptr as *mut f32).add(c_off),
                    1,
                    n as isize,
                    accumulate,
                    (a_ptr as *const f32).offset(a_off),
                    a_cs,
                    a_rs,
                    (b_ptr as *const f32).offset(b_off),
                    b_cs,
                    b_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        };
        if block >= len {
            run(0);
        } else {
            rayon::scope(|s| {
                for start in (block..len).step_by(block) {
                    s.spawn(move |_| run(start));
                }
                run(0);
            });
        }
    }
}

#[cfg(feature = "mkl")]
mod provider {
    use super::Trans;

    const CBLAS_ROW_MAJOR: i32 = 101;
    const CBLAS_NO_TRANS: i32 = 111;
    const CBLAS_TRANS: i32 = 112;

    extern "C" {
        fn cblas_sgemm(
            layout: i32,
            transa: i32,
            transb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        ta: Trans,
        tb: Trans,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) {
        let (ta_flag, lda) = match ta {
            Trans::N => (CBLAS_NO_TRANS, k),
            Trans::T => (CBLAS_TRANS, m),
        };
        let (tb_flag, ldb) = match tb {
            Trans::N => (CBLAS_NO_TRANS, n),
            Trans::T => (CBLAS_TRANS, k),
        };
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: lengths were checked by the caller; leading dimensions describe the same
        // row-major extents; MKL reads a and b and writes only c[..m*n].
        unsafe {
            cblas_sgemm(
                CBLAS_ROW_MAJOR,
                ta_flag,
                tb_flag,
                m as i32,
                n as i32,
                k as i32,
                1.0,
                a.as_ptr(),
                lda as i32,
                b.as_ptr(),
                ldb as i32,
                beta,
                c.as_mut_ptr(),
                n as i32,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(ta: Trans, tb: Trans, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let av = if ta == Trans::N {
                        a[i * k + p]
                    } else {
                        a[p * m + i]
                    };
                    let bv = if tb == Trans::N {
                        b[p * n + j]
                    } else {
                        b[j * k + p]
                    };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_for_every_transpose_and_accumulates() {
        let mut rng = Rng::new(1);
        for &(m, n, k) in &[(3, 5, 7), (70, 65, 80), (1, 9, 4)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    let want = naive(ta, tb, m, n, k, &a, &b);
                    let mut c = vec![1f32; m * n];
                    matmul(ta, tb, m, n, k, &a, &b, &mut c, false);
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                    }
                    matmul(ta, tb, m, n, k, &a, &b, &mut c, true);
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - 2.0 * y).abs() < 2e-4 * (1.0 + y.abs()));
                    }
                }
            }
        }
    }
}
