//! CPU kernels: each op's forward and backward side by side (llm.c's layout).

/// `fn name(args) -> ret { body }` defines `name`, whose body runs compiled with AVX-512 F when
/// the kernels may use it (its plain slice loops then vectorise 16 lanes wide), with AVX2 + FMA
/// on AVX2-only CPUs (8 lanes) and as is elsewhere. The compiler does not fuse a multiply and an
/// add on its own, so every tier computes the same values.
macro_rules! avx512_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn plain($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    plain($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn wide_avx2($($arg: $ty),*) $(-> $ret)? {
                    plain($($arg),*)
                }
                if $crate::backend::cpu::isa::avx512() {
                    // SAFETY: the CPU has AVX-512 F (isa::avx512 checked it), the only
                    // feature `wide` enables.
                    return unsafe { wide($($arg),*) };
                }
                if $crate::backend::cpu::isa::avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (isa::avx2 checked them).
                    return unsafe { wide_avx2($($arg),*) };
                }
            }
            plain($($arg),*)
        }
    };
}

/// Applied to C's values once their sums are final: a linear layer's activation. It is called
/// with `(block, cols, stride)` for a block of rows `block[r·stride..r·stride + cols]`; the AMX
/// kernels call it on each 32×32 block of C while it is in L1.
pub type Epilogue<'a> = Option<&'a (dyn Fn(&mut [f32], usize, usize) + Sync)>;

pub mod activation;
#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
pub mod batchnorm;
pub mod conv;
pub mod dropout;
pub mod embedding;
pub mod flash;
pub mod gemm;
pub mod half;
pub mod isa;
pub mod layernorm;
pub mod loss;
pub mod math;
pub mod pool;
pub mod qmatmul;
pub mod quant;
pub mod rmsnorm;
pub mod shape;
pub mod winograd;

pub use activation::*;
pub use attention::*;
pub use batchnorm::*;
pub use conv::*;
pub use dropout::*;
pub use embedding::*;
pub use flash::*;
pub use gemm::*;
pub use layernorm::*;
pub use loss::*;
pub use pool::*;
pub use rmsnorm::*;

/// Rows per partial column sum: fixed, so the sum order (and the result) does not depend on the
/// thread count.
const COLUMN_SUM_ROWS: usize = 64;

avx512_dispatch! {
    /// out[j] += Σ_r rows[r·cols + j], whole rows in order.
    fn add_rows(rows: &[f32], cols: usize, out: &mut [f32]) {
        for row in rows.chunks_exact(cols) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
    }
}

/// dbias += Σ over rows of dy [rows, cols]. Blocks of [`COLUMN_SUM_ROWS`] rows are summed in
/// parallel, each into its own row of partial sums that a thread reads and writes contiguously
/// (splitting columns instead left each thread half of every row, slower at two threads than
/// at one); the partial sums are then added in block order.
pub fn add_bias_grad(dy: &[f32], cols: usize, dbias: &mut [f32]) {
    use rayon::prelude::*;
    let _span = crate::backend::profile::span("add bias grad");
    let dy = &dy[..dy.len() / cols * cols];
    let block = COLUMN_SUM_ROWS * cols;
    if dy.len() <= block {
        add_rows(dy, cols, &mut dbias[..cols]);
        return;
    }
    let mut partial = vec![0f32; dy.len().div_ceil(block) * cols];
    partial
        .par_chunks_mut(cols)
        .zip(dy.par_chunks(block))
        .for_each(|(out, rows)| add_rows(rows, cols, out));
    add_rows(&partial, cols, &mut dbias[..cols]);
}

/// y += x, element-wise, over the thread pool (exact: no sum order to depend on).
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    let _span = crate::backend::profile::span("add assign");
    use rayon::prelude::*;
    const CHUNK: usize = 16 * 1024;
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
}

/// Rows per rayon task for row-wise kernels: big enough to amortise scheduling.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (16 * 1024 / cols.max(1)).max(1)
}

// ---- Helpers shared by the convolution algorithms (`conv.rs`, `winograd.rs`). ----

/// `buf[..len]`, growing the buffer when it is shorter.
pub(crate) fn prefix(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Runs longer than this are copied or filled by the library (memmove, memset); shorter ones, the
/// rows of small maps (ResNet-18's 8×8 down to 1×1 at 32×32), by fixed-size moves: a call per
/// run of a few values made those calls a sixth of a step there.
const SHORT_RUN: usize = 64;

/// `dst = src`, for runs of any length.
#[inline(always)]
pub(crate) fn copy_run(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    if n > SHORT_RUN {
        return dst.copy_from_slice(&src[..n]);
    }
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src[..n].chunks_exact(8));
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    let (d, s) = (d.into_remainder(), s.remainder());
    let mut i = 0;
    if d.len() >= 4 {
        d[..4].copy_from_slice(&s[..4]);
        i = 4;
    }
    for (d, &s) in d[i..].iter_mut().zip(&s[i..]) {
        *d = s;
    }
}

/// `dst = [v; len]`, for runs of any length.
#[inline(always)]
pub(crate) fn fill_run(dst: &mut [f32], v: f32) {
    if dst.len() > SHORT_RUN {
        return dst.fill(v);
    }
    let mut d = dst.chunks_exact_mut(8);
    for d in &mut d {
        d.copy_from_slice(&[v; 8]);
    }
    for d in d.into_remainder() {
        *d = v;
    }
}

/// Runs `f(i, row)` over the rows of `buf` (`len` values each), on all threads or on this one.
pub(crate) fn for_each_row(
    buf: &mut [f32],
    len: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    use rayon::prelude::*;
    if parallel {
        buf.par_chunks_mut(len)
            .with_min_len(rows_per_task(len))
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    } else {
        buf.chunks_mut(len)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    }
}

/// Images per part of a batch whose parts sum their own weight gradients (the one-image-per-task
/// backwards): parts are summed in a fixed order afterwards (`add_parts`), so the result does not depend on the thread count. Their partial sums are
/// bounded to about 16 MiB.
pub(crate) fn weight_grad_parts(n: usize, weight_len: usize) -> usize {
    let parts = n.min(8).min((1 << 22) / weight_len.max(1)).max(1);
    n.div_ceil(parts).max(1)
}

/// into += each `into.len()`-long part of `partial`, in order.
pub(crate) fn add_parts(partial: &[f32], into: &mut [f32]) {
    for p in partial.chunks_exact(into.len()) {
        into.iter_mut().zip(p).for_each(|(d, &v)| *d += v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Column sums add fixed blocks of rows in block order: the same bits on 1 and 3 threads,
    /// and (to rounding) the plain row-by-row sum.
    #[test]
    fn column_sums_do_not_depend_on_the_thread_count() {
        let (rows, cols) = (1000, 300);
        let dy: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let sums = |threads| {
            on_threads(threads, || {
                let mut db = vec![0.5f32; cols];
                add_bias_grad(&dy, cols, &mut db);
                db
            })
        };
        let (one, three) = (sums(1), sums(3));
        assert_eq!(one, three);
        for (j, &s) in one.iter().enumerate() {
            let plain: f64 = 0.5 + (0..rows).map(|r| dy[r * cols + j] as f64).sum::<f64>();
            assert!(
                (s as f64 - plain).abs() < 1e-4,
                "column {j}: {s} vs {plain}"
            );
        }
    }
}
