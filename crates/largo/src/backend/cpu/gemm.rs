//! The GEMM provider: `c (+)= op(a) · op(b)`, row-major f32.
//!
//! Default: the pure-Rust `gemm` crate, with its AVX-512 kernels (`x86-v4`) unless the
//! `gemm-avx512` feature is off.
//! With the `mkl` cargo feature, MKL's `cblas_sgemm` from its sequential layer. Either way the
//! work is split over largo's one rayon pool here, so no library starts threads of its own.
//!
//! At "medium" matmul precision (`set_matmul_precision`, PyTorch's
//! `torch.set_float32_matmul_precision("medium")`) `matmul` rounds both operands to bfloat16
//! and multiplies on AMX tiles with f32 sums (`amx.rs`) where the CPU has them; at "high" each
//! operand is the sum of two bfloat16 and the product takes three bf16 products ("bf16x3",
//! what PyTorch's "high" means on such CPUs).

use super::Epilogue;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    N,
    T,
}

impl Trans {
    /// (column stride, row stride) of op(x) for x stored with its rows `ld` apart.
    fn strides(self, ld: usize) -> (isize, isize) {
        match self {
            Trans::N => (1, ld as isize),
            Trans::T => (ld as isize, 1),
        }
    }

    /// The stored row length of a contiguous operand whose op is [rows, cols].
    fn stored_row(self, rows: usize, cols: usize) -> usize {
        match self {
            Trans::N => cols,
            Trans::T => rows,
        }
    }
}

/// A library that multiplies one block on one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmProvider {
    GemmCrate,
    #[cfg(feature = "mkl")]
    Mkl,
    /// bf16 products with f32 sums on AMX tiles: "medium" precision, not an f32 GEMM.
    #[cfg(target_arch = "x86_64")]
    AmxBf16,
    /// Each operand as two bf16, three bf16 products summed in f32 on AMX tiles: "high".
    #[cfg(target_arch = "x86_64")]
    AmxBf16x3,
}

impl GemmProvider {
    pub fn name(self) -> &'static str {
        match self {
            GemmProvider::GemmCrate => {
                if cfg!(feature = "gemm-avx512") {
                    "gemm-crate (x86-v4)"
                } else {
                    "gemm-crate (x86-v3)"
                }
            }
            #[cfg(feature = "mkl")]
            GemmProvider::Mkl => "mkl",
            #[cfg(target_arch = "x86_64")]
            GemmProvider::AmxBf16 => "amx bf16 (medium)",
            #[cfg(target_arch = "x86_64")]
            GemmProvider::AmxBf16x3 => "amx bf16x3 (high)",
        }
    }

    /// Whether the provider computes in f32 (all but the AMX ones).
    pub fn is_f32(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.amx_terms().is_some() {
            return false;
        }
        true
    }

    /// How many bf16 terms an AMX provider splits each operand into; None for the f32 ones.
    #[cfg(target_arch = "x86_64")]
    fn amx_terms(self) -> Option<super::amx::Terms> {
        match self {
            GemmProvider::AmxBf16 => Some(super::amx::Terms::One),
            GemmProvider::AmxBf16x3 => Some(super::amx::Terms::Two),
            _ => None,
        }
    }

    /// Every provider this build and CPU can run: the f32 ones (the default first), then the
    /// bf16 ones when the CPU has AMX.
    pub fn all() -> Vec<GemmProvider> {
        #[allow(unused_mut)]
        let mut v = vec![GemmProvider::GemmCrate];
        #[cfg(feature = "mkl")]
        v.insert(0, GemmProvider::Mkl);
        #[cfg(target_arch = "x86_64")]
        if super::amx::available() {
            v.extend([GemmProvider::AmxBf16x3, GemmProvider::AmxBf16]);
        }
        v
    }
}

/// The f32 provider: MKL when compiled in, else the gemm crate.
pub fn default_provider() -> GemmProvider {
    #[cfg(feature = "mkl")]
    return GemmProvider::Mkl;
    #[cfg(not(feature = "mkl"))]
    GemmProvider::GemmCrate
}

/// How `matmul` trades precision for speed, after PyTorch's `set_float32_matmul_precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 products and sums (the default).
    Highest,
    /// Each operand split into two bfloat16 (`hi + lo`, 16 significant bits), three bf16
    /// products summed in f32 (relative error near 2⁻¹⁶ per product) on CPUs with AMX, f32
    /// elsewhere.
    High,
    /// Operands rounded to bfloat16 (8 significant bits), products summed in f32: 2.5–3.5×
    /// the f32 GEMM rate on CPUs with AMX (measured here, packing included), f32 elsewhere.
    Medium,
}

impl MatmulPrecision {
    pub const ALL: [MatmulPrecision; 3] = [
        MatmulPrecision::Highest,
        MatmulPrecision::High,
        MatmulPrecision::Medium,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Highest => "highest",
            MatmulPrecision::High => "high",
            MatmulPrecision::Medium => "medium",
        }
    }
}

impl std::str::FromStr for MatmulPrecision {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "highest" => Ok(MatmulPrecision::Highest),
            "high" => Ok(MatmulPrecision::High),
            "medium" => Ok(MatmulPrecision::Medium),
            _ => Err(crate::Error::Invalid(format!(
                "unknown matmul precision `{s}`: expected `highest` (f32), `high` (bf16x3: three \
                 bf16 products, f32 sums) or `medium` (bf16 products, f32 sums)"
            ))),
        }
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of every later `matmul` in this process (attention's per-head products,
/// `matmul_serial`, stay f32).
pub fn set_matmul_precision(p: MatmulPrecision) {
    PRECISION.store(p as u8, Ordering::Relaxed);
}

pub fn matmul_precision() -> MatmulPrecision {
    MatmulPrecision::ALL[PRECISION.load(Ordering::Relaxed) as usize]
}

/// The precision in force, for logs: `matmul precision highest (f32)`, `… medium (bf16
/// products on AMX, f32 sums)`, or high/medium falling back to f32 on a CPU without AMX.
pub fn describe_matmul_precision() -> String {
    let p = matmul_precision();
    let what = match (p, active_provider().is_f32()) {
        (MatmulPrecision::Highest, _) => "f32",
        (MatmulPrecision::High, false) => "bf16x3: three bf16 products on AMX, f32 sums",
        (MatmulPrecision::Medium, false) => "bf16 products on AMX, f32 sums",
        (_, true) if super::isa::isa() < super::isa::detected() => {
            "f32: LARGO_ISA leaves AMX-BF16 unused"
        }
        (_, true) => "f32: this CPU has no AMX-BF16",
    };
    format!("matmul precision {} ({what})", p.name())
}

/// The provider `matmul` uses now.
pub fn active_provider() -> GemmProvider {
    provider_for(matmul_precision())
}

/// The provider for a precision: a bf16 one at high or medium where the CPU has AMX, else f32.
pub fn provider_for(precision: MatmulPrecision) -> GemmProvider {
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        match precision {
            MatmulPrecision::High => return GemmProvider::AmxBf16x3,
            MatmulPrecision::Medium => return GemmProvider::AmxBf16,
            MatmulPrecision::Highest => {}
        }
    }
    default_provider()
}

/// Which library computes GEMMs in this build.
pub fn gemm_provider() -> &'static str {
    default_provider().name()
}

/// One matrix product `c[m,n] (+)= op(a)[m,k] · op(b)[k,n]`, described once and run with
/// `run` (all threads), `run_serial` (the calling thread) or `run_bias` (a linear layer):
/// `Gemm::nt(rows, out, in).run(x, w, y)` is y = x·Wᵀ; `.accumulate()` adds into c.
///
/// `a` is stored `[m,k]` (`Trans::N`) or `[k,m]` (`Trans::T`); likewise `b` is `[k,n]` or `[n,k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub ta: Trans,
    pub tb: Trans,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `c += …` instead of `c = …`.
    pub accumulate: bool,
}

impl Gemm {
    pub fn new(ta: Trans, tb: Trans, m: usize, n: usize, k: usize) -> Self {
        Gemm {
            ta,
            tb,
            m,
            n,
            k,
            accumulate: false,
        }
    }

    /// `a · b`.
    pub fn nn(m: usize, n: usize, k: usize) -> Self {
        Self::new(Trans::N, Trans::N, m, n, k)
    }

    /// `a · bᵀ`.
    pub fn nt(m: usize, n: usize, k: usize) -> Self {
        Self::new(Trans::N, Trans::T, m, n, k)
    }

    /// `aᵀ · b`.
    pub fn tn(m: usize, n: usize, k: usize) -> Self {
        Self::new(Trans::T, Trans::N, m, n, k)
    }

    /// Adds the product into c.
    pub fn accumulate(self) -> Self {
        Gemm {
            accumulate: true,
            ..self
        }
    }

    /// Splits the product over largo's threads, at the matmul precision in force.
    pub fn run(self, a: &[f32], b: &[f32], c: &mut [f32]) {
        let g = self;
        matmul(g.ta, g.tb, g.m, g.n, g.k, a, b, c, g.accumulate);
    }

    /// On the calling thread only, in f32: for kernels that already run one task per thread.
    pub fn run_serial(self, a: &[f32], b: &[f32], c: &mut [f32]) {
        let g = self;
        matmul_serial(g.ta, g.tb, g.m, g.n, g.k, a, b, c, g.accumulate);
    }

    /// `run` with a chosen provider.
    pub fn run_with(self, provider: GemmProvider, a: &[f32], b: &[f32], c: &mut [f32]) {
        let g = self;
        matmul_with(provider, g.ta, g.tb, g.m, g.n, g.k, a, b, c, g.accumulate);
    }

    /// `c = op(a) · op(b) + bias`, the bias (length n) added to every row: a linear layer.
    pub fn run_bias(self, a: &[f32], b: &[f32], bias: &[f32], c: &mut [f32]) {
        assert!(!self.accumulate, "Gemm::run_bias overwrites c");
        let g = self;
        matmul_bias(g.ta, g.tb, g.m, g.n, g.k, a, b, bias, c);
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
    matmul_with(active_provider(), ta, tb, m, n, k, a, b, c, accumulate);
}

/// `c[m,n] = op(a) · op(b) + bias`, the bias (length n) added to every row: a linear layer.
/// The AMX kernel starts its sums from the bias; the f32 providers copy it into each thread's
/// rows of c just before multiplying into them.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bias(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    c: &mut [f32],
) {
    assert!(
        bias.len() >= n,
        "matmul_bias: bias has {} < {n}",
        bias.len()
    );
    let threads = rayon::current_num_threads();
    let p = active_provider();
    matmul_impl(p, threads, ta, tb, m, n, k, a, b, c, Start::Bias(bias));
}

/// `matmul` on the calling thread only: for kernels that already run one task per thread
/// (attention heads, for instance).
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial(
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
    let start = Start::from_accumulate(accumulate);
    matmul_impl(default_provider(), 1, ta, tb, m, n, k, a, b, c, start);
}

/// A linear layer's weight `W [n,k]` packed once for the AMX kernels at one matmul precision,
/// for `linear_packed` (inference: the weight must not change while this is in use).
pub struct PackedWeight {
    provider: GemmProvider,
    #[cfg(target_arch = "x86_64")]
    tiles: super::amx::PackedB,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight({})", self.provider.name())
    }
}

impl PackedWeight {
    /// `w` [n,k] packed for the provider in force now, or None when that provider is f32
    /// (packing would gain nothing).
    pub fn for_active_provider(w: &[f32], n: usize, k: usize) -> Option<PackedWeight> {
        Self::for_provider(w, n, k, active_provider())
    }

    fn for_provider(w: &[f32], n: usize, k: usize, provider: GemmProvider) -> Option<Self> {
        assert!(
            w.len() >= n * k,
            "PackedWeight: w has {} < {n}x{k}",
            w.len()
        );
        #[cfg(target_arch = "x86_64")]
        if let (Some(terms), true) = (provider.amx_terms(), n > 0 && k > 0) {
            // op(b) = Wᵀ: element (kk, j) at j·k + kk.
            let b = super::amx::Operand {
                ptr: w.as_ptr(),
                rs: 1,
                cs: k as isize,
                k_contiguous: true,
            };
            // SAFETY: the AMX providers exist only where `amx::available()`; w holds n·k.
            let tiles = unsafe { super::amx::PackedB::new(b, n, k, terms) };
            return Some(PackedWeight { provider, tiles });
        }
        None
    }
}

/// `c[m,n] = epilogue(a[m,k] · Wᵀ + bias)` from a packed weight: the same result as
/// `matmul_bias` (or `matmul` without a bias) with `w`, then the epilogue on each row, without
/// packing W again. The epilogue runs on each block of C as soon as it is final (in L1).
/// Falls back to the unpacked product when the precision in force is not the one `packed` was
/// made for, or for a few rows.
#[allow(clippy::too_many_arguments)]
pub fn linear_packed(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    w: &[f32],
    packed: &PackedWeight,
    bias: Option<&[f32]>,
    c: &mut [f32],
    epilogue: Epilogue,
) {
    linear_packed_with(active_provider(), m, n, k, a, w, packed, bias, c, epilogue)
}

/// `linear_packed` with the provider given.
#[allow(clippy::too_many_arguments)]
fn linear_packed_with(
    provider: GemmProvider,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    w: &[f32],
    packed: &PackedWeight,
    bias: Option<&[f32]>,
    c: &mut [f32],
    epilogue: Epilogue,
) {
    #[cfg(target_arch = "x86_64")]
    if packed.provider == provider && m >= 16 && packed.tiles.shape() == (n, k) {
        assert!(
            a.len() >= m * k,
            "linear_packed: a has {} < {m}x{k}",
            a.len()
        );
        assert!(
            c.len() >= m * n,
            "linear_packed: c has {} < {m}x{n}",
            c.len()
        );
        if let Some(bias) = bias {
            assert!(
                bias.len() >= n,
                "linear_packed: bias has {} < {n}",
                bias.len()
            );
        }
        let parts = if m * n * k < PARALLEL_MIN_MACS {
            1
        } else {
            rayon::current_num_threads()
        };
        // Blocks of whole rows: every block reads all of the shared packed W.
        let rows = m.div_ceil(parts).next_multiple_of(16).min(m);
        c[..m * n]
            .par_chunks_mut(rows * n)
            .zip(a[..m * k].par_chunks(rows * k))
            .for_each(|(c, a)| {
                let a_rows = super::amx::Operand {
                    ptr: a.as_ptr(),
                    rs: k as isize,
                    cs: 1,
                    k_contiguous: true,
                };
                // SAFETY: the provider is an AMX one, so `amx::available()`; a holds this
                // block's rows × k, c its rows × n, disjoint from other blocks; the bias (when
                // given) holds n values and W's tiles were packed for n and k.
                let init = match bias {
                    Some(b) => super::amx::Init::Bias(b.as_ptr()),
                    None => super::amx::Init::Zero,
                };
                unsafe {
                    let rows = c.len() / n;
                    let tiles = &packed.tiles;
                    super::amx::gemm_bf16_packed(
                        rows,
                        a_rows,
                        tiles,
                        c.as_mut_ptr(),
                        n,
                        init,
                        epilogue,
                    )
                }
            });
        return;
    }
    let start = match bias {
        Some(bias) => Start::Bias(bias),
        None => Start::Zero,
    };
    let threads = rayon::current_num_threads();
    matmul_impl(
        provider,
        threads,
        Trans::N,
        Trans::T,
        m,
        n,
        k,
        a,
        w,
        c,
        start,
    );
    apply_epilogue(m, n, c, epilogue);
}

/// Runs an epilogue over each of the `m` rows of `c` [m,n], in parallel.
pub fn apply_epilogue(m: usize, n: usize, c: &mut [f32], epilogue: Epilogue) {
    if let (Some(f), true) = (epilogue, n > 0) {
        c[..m * n]
            .par_chunks_mut(n * super::rows_per_task(n))
            .for_each(|rows| f(rows, n, n));
    }
}

/// `c = a · op(b)` in f32 on the calling thread, for matrices that are row ranges of wider
/// row-major buffers (one attention head's columns of `[T, C]` Q, K, V, O): row `i` of `a`
/// `[m,k]` starts at `a[i·lda]`, of `c` `[m,n]` at `c[i·ldc]`; `b` is stored `[k,n]` (N) or
/// `[n,k]` (T) with rows `ldb` apart. Nothing is gathered or copied.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_serial(
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    matmul_strided_serial(Trans::N, tb, m, n, k, a, lda, b, ldb, c, ldc, false);
}

/// `c (+)= op(a) · op(b)` in f32 on the calling thread, every operand a block of a wider
/// row-major buffer: `a` is stored `[m,k]` (N) or `[k,m]` (T) with rows `lda` apart, `b` `[k,n]`
/// (N) or `[n,k]` (T) with rows `ldb` apart, `c` `[m,n]` with rows `ldc` apart; `accumulate`
/// adds into c. For kernels that tile an operand in place (a convolution's band of output rows).
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided_serial(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    let (a_rows, a_cols) = if ta == Trans::N { (m, k) } else { (k, m) };
    let (b_rows, b_cols) = if tb == Trans::N { (k, n) } else { (n, k) };
    assert!(
        a.len() >= (a_rows - 1) * lda + a_cols,
        "matmul_strided: a too short"
    );
    assert!(
        b.len() >= (b_rows - 1) * ldb + b_cols,
        "matmul_strided: b too short"
    );
    assert!(c.len() >= (m - 1) * ldc + n, "matmul_strided: c too short");
    // (column stride, row stride) of op(a) [m,k] and op(b) [k,n].
    let (a_cs, a_rs) = ta.strides(lda);
    let (b_cs, b_rs) = tb.strides(ldb);
    // SAFETY: the asserts above bound every element the strides reach in a, b and c; c is
    // borrowed mutably, a and b are only read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Below this many multiply-adds one thread is faster than splitting the work.
const PARALLEL_MIN_MACS: usize = 48 * 48 * 48;

/// An operand block: pointer to its first element and its (column, row) strides.
#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    cs: isize,
    rs: isize,
    /// How the full operand is stored (strides alone are ambiguous when a dimension is 1).
    trans: Trans,
}

/// `matmul` with a chosen provider. C is split into one block of rows (or of columns, when C is
/// wide) per thread and each block is a single-threaded GEMM: on this 2-core machine that
/// scales as well as the libraries' own threading, and keeps one thread pool.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    provider: GemmProvider,
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
    let threads = rayon::current_num_threads();
    let start = Start::from_accumulate(accumulate);
    matmul_impl(provider, threads, ta, tb, m, n, k, a, b, c, start);
}

/// What the sums in c start from.
#[derive(Clone, Copy)]
enum Start<'a> {
    Zero,
    /// c's own values (`accumulate`).
    C,
    /// The bias row, for every row of c.
    Bias(&'a [f32]),
}

impl Start<'_> {
    fn from_accumulate(accumulate: bool) -> Self {
        if accumulate {
            Start::C
        } else {
            Start::Zero
        }
    }

    /// Writes the start into c [m, n] (zeros, or the bias in every row), so that the product
    /// can be added into it.
    fn write(self, c: &mut [f32], n: usize) {
        match self {
            Start::Zero => c.fill(0.0),
            Start::C => {}
            Start::Bias(bias) => c
                .chunks_exact_mut(n)
                .for_each(|row| row.copy_from_slice(&bias[..n])),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul_impl(
    provider: GemmProvider,
    threads: usize,
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    init: Start,
) {
    let _span = crate::backend::profile::gemm_span(ta == Trans::T, tb == Trans::T, m, n, k);
    assert!(a.len() >= m * k, "matmul: a has {} < {m}x{k}", a.len());
    assert!(b.len() >= k * n, "matmul: b has {} < {k}x{n}", b.len());
    assert!(c.len() >= m * n, "matmul: c has {} < {m}x{n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if m <= SMALL_M && ta == Trans::N || k == 0 {
        init.write(&mut c[..m * n], n);
        if k > 0 {
            small_m(tb, m, n, k, a, b, c);
        }
        return;
    }
    // Below one tile of each dimension the bf16 packing costs more than it saves.
    #[cfg(target_arch = "x86_64")]
    let provider = if !provider.is_f32() && (m < 16 || n < 16 || k < 32) {
        default_provider()
    } else {
        provider
    };
    // Row-major strides (column stride, row stride) of op(a) [m,k] and op(b) [k,n].
    let (a_cs, a_rs) = ta.strides(ta.stored_row(m, k));
    let (b_cs, b_rs) = tb.strides(tb.stored_row(k, n));
    if provider.is_f32() && threads > 1 && m * n <= K_SPLIT_MAX_C && k >= 2 * K_PART {
        // SAFETY: the asserts above bound a, b and c to their extents.
        unsafe { matmul_k_split(provider, ta, tb, m, n, k, a, b, c, init) };
        return;
    }
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
        // Offsets (in elements) of the block's first element in a (rows) or b (columns), and c.
        let (a_off, b_off, c_off) = if split_rows {
            (start as isize * a_rs, 0, start * n)
        } else {
            (0, start as isize * b_cs, start)
        };
        let at = |base: usize, off: isize| (base as isize + off * 4) as usize;
        let a_blk = Block {
            ptr: at(a_ptr, a_off),
            cs: a_cs,
            rs: a_rs,
            trans: ta,
        };
        let b_blk = Block {
            ptr: at(b_ptr, b_off),
            cs: b_cs,
            rs: b_rs,
            trans: tb,
        };
        let c_blk = at(c_ptr, c_off as isize);
        // The block's columns of the bias.
        let bias = match init {
            Start::Bias(bias) if split_rows => Some(&bias[..n]),
            Start::Bias(bias) => Some(&bias[start..start + size]),
            _ => None,
        };
        // SAFETY (for every provider): `matmul_impl` checked that a, b, c hold m*k, k*n and m*n
        // elements; each block addresses a sub-range of those extents with the full strides;
        // distinct blocks write disjoint elements of c (different rows or different columns),
        // and a and b are only read. The buffers outlive the rayon scope below.
        unsafe {
            // The f32 providers start from c: the bias is copied into the block's rows first.
            let f32_start = || match bias {
                Some(bias) => {
                    for r in 0..mm {
                        let row = (c_blk as *mut f32).add(r * n);
                        std::slice::from_raw_parts_mut(row, nn).copy_from_slice(bias);
                    }
                    true
                }
                None => matches!(init, Start::C),
            };
            match provider {
                GemmProvider::GemmCrate => {
                    gemm_crate_block(mm, nn, k, a_blk, b_blk, c_blk, n, f32_start())
                }
                #[cfg(feature = "mkl")]
                GemmProvider::Mkl => mkl::block(mm, nn, k, a_blk, b_blk, c_blk, n, f32_start()),
                #[cfg(target_arch = "x86_64")]
                GemmProvider::AmxBf16 | GemmProvider::AmxBf16x3 => {
                    let terms = provider.amx_terms().expect("an AMX provider");
                    let accumulate = matches!(init, Start::C);
                    amx_block(mm, nn, k, a_blk, b_blk, c_blk, n, accumulate, bias, terms)
                }
            }
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

/// A product whose C has at most this many values and whose k is at least 2·`K_PART` (a linear
/// layer over a flattened image: 64×128×9216 on the MNIST net) splits k instead of C's rows or
/// columns: split that way, each thread would pack the whole of the long operand for a sliver
/// of C (measured: 53 GFLOP/s).
const K_SPLIT_MAX_C: usize = 1 << 14;

/// k per part of a k-split product: fixed, so the sums do not depend on the thread count.
const K_PART: usize = 2048;

/// `c (init)= op(a) · op(b)` as parts of `K_PART` along k, each a single-threaded GEMM into its
/// own [m, n] buffer on the pool, added into c in part order.
///
/// # Safety
/// `a`, `b` and `c` hold op(a) [m, k], op(b) [k, n] and c [m, n] as `matmul_impl` checked.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_k_split(
    provider: GemmProvider,
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    init: Start,
) {
    let parts = k.div_ceil(K_PART);
    let mut partial = vec![0f32; parts * m * n];
    // (column stride, row stride) of op(a) [m,k] and op(b) [k,n]; part p starts at column
    // p·K_PART of op(a) and row p·K_PART of op(b).
    let (a_cs, a_rs) = ta.strides(ta.stored_row(m, k));
    partial
        .par_chunks_mut(m * n)
        .enumerate()
        .for_each(|(p, part)| {
            let (k0, kk) = (p * K_PART, K_PART.min(k - p * K_PART));
            let a_blk = Block {
                ptr: a[(k0 as isize * a_cs) as usize..].as_ptr() as usize,
                cs: a_cs,
                rs: a_rs,
                trans: ta,
            };
            // A transposed b is copied to [kk, n] first, in cache-sized tiles: the gemm crate packs
            // a b whose k runs along its stored rows 3× slower, which dominates when m is small
            // (measured on 64×128×9216: 2.4 ms against 0.85 ms for the same product from [k, n]).
            let b_rows: Vec<f32>;
            let b_blk = match tb {
                Trans::N => Block {
                    ptr: b[k0 * n..].as_ptr() as usize,
                    cs: 1,
                    rs: n as isize,
                    trans: tb,
                },
                Trans::T => {
                    b_rows = transpose_block(b, k, n, k0, kk);
                    Block {
                        ptr: b_rows.as_ptr() as usize,
                        cs: 1,
                        rs: n as isize,
                        trans: Trans::N,
                    }
                }
            };
            let c_blk = part.as_mut_ptr() as usize;
            // SAFETY: the part's blocks start inside a and b and reach kk ≤ k − k0 more
            // columns (a) or rows (b), within the extents the caller guarantees; `part` is this
            // task's own [m, n] buffer.
            unsafe {
                match provider {
                    #[cfg(feature = "mkl")]
                    GemmProvider::Mkl => mkl::block(m, n, kk, a_blk, b_blk, c_blk, n, false),
                    _ => gemm_crate_block(m, n, kk, a_blk, b_blk, c_blk, n, false),
                }
            }
        });
    let c = &mut c[..m * n];
    init.write(c, n);
    for part in partial.chunks_exact(m * n) {
        c.iter_mut().zip(part).for_each(|(c, &p)| *c += p);
    }
}

/// Columns k0..k0 + kk of b [n, k] (row-major) as a row-major [kk, n] matrix, 32×32 tiles at a
/// time so both the reads and the writes stay within a few cache lines.
fn transpose_block(b: &[f32], k: usize, n: usize, k0: usize, kk: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut out = vec![0f32; kk * n];
    for j0 in (0..n).step_by(T) {
        for p0 in (0..kk).step_by(T) {
            for j in j0..(j0 + T).min(n) {
                let row = &b[j * k + k0 + p0..][..T.min(kk - p0)];
                for (p, &v) in (p0..).zip(row) {
                    out[p * n + j] = v;
                }
            }
        }
    }
    out
}

/// At most this many rows of C go through `small_m` (decoding one token at a time).
const SMALL_M: usize = 4;

/// C += a · op(b) for a few rows without packing: the GEMM libraries pack B on every call, which
/// costs more than the arithmetic when A is a single row (measured with `largo bench generate`).
fn small_m(tb: Trans, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    for (a_row, c_row) in a.chunks_exact(k).zip(c.chunks_exact_mut(n)).take(m) {
        match tb {
            // b is [n,k]: each output is a dot product of two contiguous rows.
            Trans::T => {
                use rayon::prelude::*;
                // Large weight matrices are streamed by every thread, a slice of rows each.
                let threads = rayon::current_num_threads();
                let per = if n * k >= 1 << 16 {
                    n.div_ceil(threads)
                } else {
                    n
                };
                c_row
                    .par_chunks_mut(per)
                    .zip(b[..n * k].par_chunks(per * k))
                    .for_each(|(c_part, b_part)| {
                        for (cv, b_row) in c_part.iter_mut().zip(b_part.chunks_exact(k)) {
                            *cv += dot(a_row, b_row);
                        }
                    });
            }
            // b is [k,n]: accumulate a[p]·b[p,:] row by row.
            Trans::N => {
                for (&av, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
                    for (cv, &bv) in c_row.iter_mut().zip(b_row) {
                        *cv += av * bv;
                    }
                }
            }
        }
    }
}

/// Dot product with eight independent partial sums, so the loop vectorises.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += xs[i] * ys[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One block on the calling thread with the `gemm` crate. Caller guarantees the extents.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_crate_block(
    m: usize,
    n: usize,
    k: usize,
    a: Block,
    b: Block,
    c: usize,
    ldc: usize,
    accumulate: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        c as *mut f32,
        1,
        ldc as isize,
        accumulate,
        a.ptr as *const f32,
        a.cs,
        a.rs,
        b.ptr as *const f32,
        b.cs,
        b.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// One block with the AMX bf16 kernel. Caller guarantees the extents.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn amx_block(
    m: usize,
    n: usize,
    k: usize,
    a: Block,
    b: Block,
    c: usize,
    ldc: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    terms: super::amx::Terms,
) {
    use super::amx::{gemm_bf16, Init, Operand};
    // op(a) is [m,k]: k runs along its stored rows when a is not transposed; op(b) is [k,n]:
    // k runs along b's stored rows when b is transposed.
    let operand = |x: Block, k_contiguous: bool| Operand {
        ptr: x.ptr as *const f32,
        rs: x.rs,
        cs: x.cs,
        k_contiguous,
    };
    gemm_bf16(
        m,
        n,
        k,
        operand(a, a.trans == Trans::N),
        operand(b, b.trans == Trans::T),
        c as *mut f32,
        ldc,
        match (bias, accumulate) {
            (Some(bias), _) => Init::Bias(bias.as_ptr()),
            (None, true) => Init::C,
            (None, false) => Init::Zero,
        },
        terms,
    );
}

#[cfg(feature = "mkl")]
mod mkl {
    use super::{Block, Trans};

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

    /// CBLAS flag and leading dimension (the stored row length) of an operand.
    fn trans_ld(x: Block) -> (i32, i32) {
        match x.trans {
            Trans::N => (CBLAS_NO_TRANS, x.rs as i32),
            Trans::T => (CBLAS_TRANS, x.cs as i32),
        }
    }

    /// One block with MKL's sequential sgemm. Caller guarantees the extents.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        m: usize,
        n: usize,
        k: usize,
        a: Block,
        b: Block,
        c: usize,
        ldc: usize,
        accumulate: bool,
    ) {
        let (ta, lda) = trans_ld(a);
        let (tb, ldb) = trans_ld(b);
        let beta = if accumulate { 1.0 } else { 0.0 };
        cblas_sgemm(
            CBLAS_ROW_MAJOR,
            ta,
            tb,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.ptr as *const f32,
            lda,
            b.ptr as *const f32,
            ldb,
            beta,
            c as *mut f32,
            ldc as i32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn normal(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal()).collect()
    }

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
        for &(m, n, k) in &[
            (3, 5, 7),
            (70, 65, 80),
            (1, 9, 4),
            (130, 40, 90),
            (40, 130, 90),
        ] {
            let a = normal(&mut rng, m * k);
            let b = normal(&mut rng, k * n);
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    let want = naive(ta, tb, m, n, k, &a, &b);
                    for p in GemmProvider::all().into_iter().filter(|p| p.is_f32()) {
                        let mut c = vec![1f32; m * n];
                        matmul_with(p, ta, tb, m, n, k, &a, &b, &mut c, false);
                        for (x, y) in c.iter().zip(&want) {
                            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{p:?}: {x} vs {y}");
                        }
                        matmul_with(p, ta, tb, m, n, k, &a, &b, &mut c, true);
                        for (x, y) in c.iter().zip(&want) {
                            assert!((x - 2.0 * y).abs() < 2e-4 * (1.0 + y.abs()), "{p:?}");
                        }
                    }
                }
            }
        }
    }

    /// A small C over a long k splits k into fixed parts: the products match the naive ones for
    /// every transpose, with zero, accumulated and bias starts, and give the same bits on 2 and
    /// 3 threads (one thread takes the ordinary path, so it is not compared bit for bit).
    #[test]
    fn a_k_split_product_matches_naive_and_not_the_thread_count() {
        let mut rng = Rng::new(2);
        let (m, n, k) = (6, 10, 2 * K_PART + 300);
        let a = normal(&mut rng, m * k);
        let b = normal(&mut rng, k * n);
        let bias = normal(&mut rng, n);
        let on = |threads: usize, f: &(dyn Fn() -> Vec<f32> + Sync)| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(f)
        };
        for ta in [Trans::N, Trans::T] {
            for tb in [Trans::N, Trans::T] {
                let want = naive(ta, tb, m, n, k, &a, &b);
                let run = || {
                    let mut c = vec![1f32; m * n];
                    matmul(ta, tb, m, n, k, &a, &b, &mut c, true);
                    let mut d = vec![f32::NAN; m * n];
                    matmul_bias(ta, tb, m, n, k, &a, &b, &bias, &mut d);
                    c.extend(d);
                    c
                };
                let (two, three) = (on(2, &run), on(3, &run));
                assert_eq!(two, three, "{ta:?}{tb:?}");
                for (i, y) in want.iter().enumerate() {
                    let tol = 1e-3 * (1.0 + y.abs());
                    assert!((two[i] - (1.0 + y)).abs() < tol, "{ta:?}{tb:?} [{i}]");
                    let with_bias = bias[i % n] + y;
                    assert!(
                        (two[m * n + i] - with_bias).abs() < tol,
                        "{ta:?}{tb:?} bias [{i}]"
                    );
                }
            }
        }
    }

    /// x rounded to bfloat16, nearest even (what the AMX kernel multiplies).
    fn to_bf16(x: f32) -> f32 {
        let b = x.to_bits();
        f32::from_bits((b.wrapping_add(0x7fff + ((b >> 16) & 1))) & 0xffff_0000)
    }

    #[test]
    fn high_and_medium_precision_multiply_bf16_terms_with_f32_sums() {
        let amx: Vec<_> = GemmProvider::all()
            .into_iter()
            .filter(|p| !p.is_f32())
            .collect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(!amx.is_empty(), super::super::amx::available());
        // (The process-wide setting is left alone: other tests run matmuls concurrently.)
        assert!(provider_for(MatmulPrecision::Highest).is_f32());
        if amx.is_empty() {
            // Without AMX, high and medium precision are f32.
            assert!(provider_for(MatmulPrecision::High).is_f32());
            assert!(provider_for(MatmulPrecision::Medium).is_f32());
            return;
        }
        let (high, medium) = (
            provider_for(MatmulPrecision::High),
            provider_for(MatmulPrecision::Medium),
        );
        assert_eq!(amx, vec![high, medium]);
        let mut rng = Rng::new(2);
        // Edges in every dimension (rows, columns, k not multiples of 16 / 32) and full blocks;
        // then A taller than one packed block (1,024 rows at k = 512), k longer than one chunk
        // (8 or 16 steps of 32), and both.
        for &(m, n, k) in &[
            (16, 16, 32),
            (70, 65, 80),
            (130, 40, 90),
            (40, 130, 33),
            (64, 96, 300),
            (1100, 40, 512),
            (40, 130, 600),
            (1700, 20, 600),
        ] {
            let a = normal(&mut rng, m * k);
            let b = normal(&mut rng, k * n);
            // Each operand as bf16 terms: hi = bf16(x), lo = bf16(x - hi).
            let hi = |x: &[f32]| x.iter().map(|&v| to_bf16(v)).collect::<Vec<_>>();
            let lo = |x: &[f32]| {
                x.iter()
                    .map(|&v| to_bf16(v - to_bf16(v)))
                    .collect::<Vec<_>>()
            };
            let (a_hi, a_lo, b_hi, b_lo) = (hi(&a), lo(&a), hi(&b), lo(&b));
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    let exact = naive(ta, tb, m, n, k, &a, &b);
                    let hi_hi = naive(ta, tb, m, n, k, &a_hi, &b_hi);
                    let hi_lo = naive(ta, tb, m, n, k, &a_hi, &b_lo);
                    let lo_hi = naive(ta, tb, m, n, k, &a_lo, &b_hi);
                    let x3: Vec<f32> = (0..m * n).map(|i| hi_hi[i] + hi_lo[i] + lo_hi[i]).collect();
                    let mut worst = [0f32; 2];
                    for (t, (p, want)) in [(high, &x3), (medium, &hi_hi)].into_iter().enumerate() {
                        let mut c = vec![1f32; m * n];
                        matmul_with(p, ta, tb, m, n, k, &a, &b, &mut c, false);
                        for (x, y) in c.iter().zip(want) {
                            assert!(
                                (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                                "{p:?} {ta:?}{tb:?} {m}x{n}x{k}: {x} vs {y}"
                            );
                        }
                        worst[t] = c
                            .iter()
                            .zip(&exact)
                            .map(|(x, y)| (x - y).abs())
                            .fold(0f32, f32::max);
                        let bias = normal(&mut rng, m * n);
                        let mut c = bias.clone();
                        matmul_with(p, ta, tb, m, n, k, &a, &b, &mut c, true);
                        for ((x, y), b0) in c.iter().zip(want).zip(&bias) {
                            assert!(
                                (x - y - b0).abs() < 1e-4 * (1.0 + y.abs()),
                                "{p:?} accumulate {ta:?}{tb:?} {m}x{n}x{k}: {x} vs {y} + {b0}"
                            );
                        }
                    }
                    // Neither is f32: the bf16 terms show against the exact product (relative
                    // 2⁻⁹ per product at medium, near 2⁻¹⁶ at high), high ≥ 30× closer.
                    let [high_err, medium_err] = worst;
                    assert!(
                        medium_err > 1e-4 && medium_err < 0.05 * (k as f32).sqrt(),
                        "medium error {medium_err}"
                    );
                    assert!(
                        high_err > 1e-7 && high_err < medium_err / 30.0,
                        "high error {high_err} vs medium {medium_err}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_bias_adds_the_bias_to_every_row_for_every_provider() {
        let mut rng = Rng::new(3);
        // Tall (rows split), wide (columns split), a few rows (no packing), an edge-only shape.
        for &(m, n, k) in &[(130, 40, 90), (40, 130, 64), (3, 50, 40), (20, 17, 33)] {
            let a = normal(&mut rng, m * k);
            let b = normal(&mut rng, k * n);
            let bias = normal(&mut rng, n);
            for p in GemmProvider::all() {
                let mut want = vec![0f32; m * n];
                matmul_with(p, Trans::N, Trans::T, m, n, k, &a, &b, &mut want, false);
                for row in want.chunks_exact_mut(n) {
                    row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b);
                }
                let mut c = vec![f32::NAN; m * n];
                let threads = rayon::current_num_threads();
                let init = Start::Bias(&bias);
                matmul_impl(
                    p,
                    threads,
                    Trans::N,
                    Trans::T,
                    m,
                    n,
                    k,
                    &a,
                    &b,
                    &mut c,
                    init,
                );
                for (x, y) in c.iter().zip(&want) {
                    assert!(
                        (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                        "{p:?} {m}x{n}x{k}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_packed_weight_gives_the_products_of_the_unpacked_one() {
        let mut rng = Rng::new(4);
        // Rows split over threads, an edge in every dimension, and few rows (not packed).
        for &(m, n, k) in &[(300, 96, 128), (70, 65, 80), (8, 40, 64)] {
            let x = normal(&mut rng, m * k);
            let w = normal(&mut rng, n * k);
            let bias = normal(&mut rng, n);
            let threads = rayon::current_num_threads();
            let (tn, tt) = (Trans::N, Trans::T);
            for p in GemmProvider::all() {
                let packed = PackedWeight::for_provider(&w, n, k, p);
                assert_eq!(packed.is_some(), !p.is_f32(), "{p:?}");
                let Some(packed) = packed else { continue };
                for b in [Some(bias.as_slice()), None] {
                    let start = || b.map_or(Start::Zero, Start::Bias);
                    // Packed for the provider in force, then for another one (f32): each time
                    // exactly the unpacked product of the provider in force.
                    for in_force in [p, default_provider()] {
                        let mut want = vec![0f32; m * n];
                        matmul_impl(
                            in_force,
                            threads,
                            tn,
                            tt,
                            m,
                            n,
                            k,
                            &x,
                            &w,
                            &mut want,
                            start(),
                        );
                        let mut got = vec![f32::NAN; m * n];
                        let (x, w, pw) = (&x, &w, &packed);
                        linear_packed_with(in_force, m, n, k, x, w, pw, b, &mut got, None);
                        assert_eq!(
                            got, want,
                            "{p:?} packed, {in_force:?} in force, {m}x{n}x{k}"
                        );
                        // An epilogue sees every value once, after its sum is final.
                        let twice_plus_one = |block: &mut [f32], cols: usize, stride: usize| {
                            for row in block.chunks_mut(stride) {
                                row[..cols].iter_mut().for_each(|v| *v = 2.0 * *v + 1.0);
                            }
                        };
                        let f: Epilogue = Some(&twice_plus_one);
                        linear_packed_with(in_force, m, n, k, x, w, pw, b, &mut got, f);
                        let want: Vec<f32> = want.iter().map(|v| 2.0 * v + 1.0).collect();
                        assert_eq!(got, want, "epilogue, {p:?} packed, {in_force:?} in force");
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_precision_parses_pytorch_names_and_rejects_others() {
        assert_eq!(
            "highest".parse::<MatmulPrecision>().unwrap(),
            MatmulPrecision::Highest
        );
        assert_eq!(
            "medium".parse::<MatmulPrecision>().unwrap(),
            MatmulPrecision::Medium
        );
        assert_eq!(
            "high".parse::<MatmulPrecision>().unwrap(),
            MatmulPrecision::High
        );
        for p in MatmulPrecision::ALL {
            assert_eq!(p.name().parse::<MatmulPrecision>().unwrap(), p);
        }
        let e = "bf16".parse::<MatmulPrecision>().unwrap_err().to_string();
        assert!(
            e.contains("`bf16`")
                && e.contains("`highest`")
                && e.contains("`high`")
                && e.contains("`medium`"),
            "{e}"
        );
    }
}
