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
