//! bf16 GEMM on Intel AMX tiles: `matmul` at "medium" and "high" precision (PyTorch's names).
//! At medium both operands are rounded to bfloat16 (8 significant bits, f32's range) and every
//! product is summed in f32 by `TDPBF16PS`, one instruction doing 16×16×32 multiply-adds.
//!
//! At high ("bf16x3") each f32 is split into two bf16, `x ≈ hi + lo` with `lo = bf16(x − hi)`
//! (16 significant bits together), and `a·b ≈ hi·hi + hi·lo + lo·hi`: three tile products, the
//! dropped `lo·lo` and the rounding of `lo` leave a relative error near 2⁻¹⁶ per product instead
//! of medium's 2⁻⁸.
//!
//! Layout. A tile is 16 rows of 64 bytes, i.e. 16 × 16 `u32`, each `u32` a pair of bf16 (the
//! lower k in the low half). A tile of A holds 16 rows of op(a) × 32 k; a tile of B holds 16
//! k-pairs × 16 columns of op(b) (the "VNNI" layout the instruction wants). Both operands are
//! packed once per call into strips of 32 rows (A) or 32 columns (B), k-step by k-step, each
//! step two tiles (rows/columns 0–15 then 16–31; at high, the two `hi` tiles then the two `lo`
//! ones), zero-padded to whole tiles, so the kernel reads every tile contiguously. The register block is 2×2 C tiles (32×32 f32) in tmm0–3, with
//! A in tmm4–5 and B in tmm6–7.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly; the
//! conversions use the (stable) AVX-512 BF16 intrinsics.

use super::Epilogue;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// u32 (bf16 pairs) in one tile: 16 rows × 64 bytes.
const TILE: usize = 256;
/// k values in one tile step.
const KSTEP: usize = 32;
/// Bytes of packed A kept hot while every B strip passes over it (L2 holds 2 MiB per core).
const A_BLOCK_BYTES: usize = 1 << 20;
/// Most k-steps in one chunk of the k loop (k = 2048). Each chunk after the first reloads C, which
/// cost more than keeping a B strip's chunk in L1 saved (measured: with chunks of 16 steps, k =
/// 1536 ran at 614 GFLOP/s at medium; in one chunk, 762).
const KC_STEPS: usize = 64;

/// Whether the CPU has AMX-TILE, AMX-BF16 and AVX-512 BF16, and the kernel lets this process use
/// the tile registers (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); checked once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if __cpuid(0).eax < 7 {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let amx = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        amx && super::isa::avx512()
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && request_tile_permission()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl only extends the xsave features this process may use; `syscall`
    // clobbers rcx and r11, declared here.
    unsafe {
        asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// One operand of `op(x)`: element (r, c) is at `ptr + r·rs + c·cs` (in f32), and whether its
/// k index is the contiguous one (rows of op(a) for A stored `[m,k]`, columns of op(b) for B
/// stored `[n,k]`).
#[derive(Clone, Copy)]
pub struct Operand {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
    pub k_contiguous: bool,
}

/// What a block's sums start from.
#[derive(Clone, Copy)]
pub enum Init {
    Zero,
    /// C's own values.
    C,
    /// The n values at this pointer, for every row: a bias, loaded into the tiles with a row
    /// stride of 0 (no copy of it into C first).
    Bias(*const f32),
}

/// One 64-byte tile row, aligned to a cache line: a tile row that straddles two lines loads at
/// a quarter of the speed (measured: 2.0 vs 0.5 TFLOP/s with both operands in L1).
#[repr(C, align(64))]
#[derive(Clone, Copy, Default)]
struct TileRow([u32; 16]);

/// Packed operands, one set per thread, grown as needed and kept between calls.
#[derive(Default)]
struct Packed {
    a: Vec<TileRow>,
    b: Vec<TileRow>,
}

thread_local! {
    static PACKED: RefCell<Packed> = RefCell::new(Packed::default());
}

/// How many bf16 terms each f32 operand becomes: one at medium, two (`hi`, `lo`) at high.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terms {
    One,
    Two,
}

impl Terms {
    fn count(self) -> usize {
        match self {
            Terms::One => 1,
            Terms::Two => 2,
        }
    }
}

/// Offset (in u32) of the first tile (`hi`, rows/columns 0–15) of k-step `q` of strip `strip`;
/// a step holds `2 × parts` tiles.
fn step_at(strip: usize, q: usize, ksteps: usize, parts: usize) -> usize {
    (strip * ksteps + q) * 2 * parts * TILE
}

/// bf16 of `len.min(16)` contiguous f32 at `src` (round to nearest even), zeros after them,
/// and with `SPLIT` the bf16 of what that rounding left (`x − hi`). Masked lanes are not read,
/// so `src` may point past the operand when `len` is 0.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn bf16x16<const SPLIT: bool>(src: *const f32, len: usize) -> [__m256i; 2] {
    let mask: __mmask16 = if len >= 16 { 0xffff } else { (1 << len) - 1 };
    let x = _mm512_maskz_loadu_ps(mask, src);
    let hi: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(x));
    if !SPLIT {
        return [hi, _mm256_setzero_si256()];
    }
    // hi back in f32 is its 16 bits shifted to the top of each lane (exact).
    let hi_f32 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)));
    let lo: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_sub_ps(x, hi_f32)));
    [hi, lo]
}

/// 32 contiguous values (`len` of them real) as 16 bf16 pairs: one row of an A tile, for each
/// term.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pairs_along<const SPLIT: bool>(src: *const f32, len: usize) -> [__m512i; 2] {
    let first = bf16x16::<SPLIT>(src, len);
    let second = bf16x16::<SPLIT>(src.wrapping_add(16), len.saturating_sub(16));
    [0, 1].map(|t| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first[t]), second[t]))
}

/// Pairs (x0[j], x1[j]) of 16 columns of two lines (`len` real): one row of a B tile, for each
/// term.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pairs_across<const SPLIT: bool>(
    x0: *const f32,
    x1: *const f32,
    len0: usize,
    len1: usize,
) -> [__m512i; 2] {
    let (even, odd) = (bf16x16::<SPLIT>(x0, len0), bf16x16::<SPLIT>(x1, len1));
    [0, 1].map(|t| {
        let (e, o) = (
            _mm512_cvtepu16_epi32(even[t]),
            _mm512_cvtepu16_epi32(odd[t]),
        );
        _mm512_or_si512(e, _mm512_slli_epi32::<16>(o))
    })
}

/// The 16×16 u32 block whose row c is column c of `r`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
    // Pairs of rows interleaved by u32, then by u64: b[4g + c] holds, in 128-bit lane L, rows
    // 4g..4g+3 of column c + 4L.
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut b = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (x0, x1, x2, x3) = (a[4 * g], a[4 * g + 1], a[4 * g + 2], a[4 * g + 3]);
        b[4 * g] = _mm512_unpacklo_epi64(x0, x2);
        b[4 * g + 1] = _mm512_unpackhi_epi64(x0, x2);
        b[4 * g + 2] = _mm512_unpacklo_epi64(x1, x3);
        b[4 * g + 3] = _mm512_unpackhi_epi64(x1, x3);
    }
    // Then gather lane L of the four row groups: output row c + 4L.
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let u0 = _mm512_shuffle_i32x4::<0x44>(b[c], b[4 + c]);
        let u1 = _mm512_shuffle_i32x4::<0xee>(b[c], b[4 + c]);
        let v0 = _mm512_shuffle_i32x4::<0x44>(b[8 + c], b[12 + c]);
        let v1 = _mm512_shuffle_i32x4::<0xee>(b[8 + c], b[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(u0, v0);
        out[c + 4] = _mm512_shuffle_i32x4::<0xdd>(u0, v0);
        out[c + 8] = _mm512_shuffle_i32x4::<0x88>(u1, v1);
        out[c + 12] = _mm512_shuffle_i32x4::<0xdd>(u1, v1);
    }
    out
}

/// Packs `lines` lines (rows of op(a), or columns of op(b)) of an operand into tiles: each line
/// a tile row (`as_a`) or a tile column (B's VNNI layout); with `SPLIT`, a `hi` and a `lo` tile.
///
/// Sixteen vectors of pairs are read per tile, either along lines (k contiguous: a line's 32
/// k values) or across them (lines contiguous: k and k+1 of 16 lines); when that is not the
/// tile's row order they are transposed.
///
/// SAFETY: `x` addresses `lines × k` readable elements (line index first).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack<const SPLIT: bool>(
    x: Operand,
    lines: usize,
    k: usize,
    as_a: bool,
    out: &mut Vec<TileRow>,
) {
    let ksteps = k.div_ceil(KSTEP);
    let strips = lines.div_ceil(32);
    let parts = if SPLIT { 2 } else { 1 };
    // Every tile is written in full below, so the buffer is only grown, never cleared.
    let need = strips * ksteps * 2 * parts * TILE / 16;
    if out.len() < need {
        out.resize(need, TileRow::default());
    }
    // Element (line, kk) of the operand.
    let at = |line: usize, kk: usize| {
        x.ptr
            .wrapping_offset(line as isize * x.rs + kk as isize * x.cs)
    };
    let transpose = x.k_contiguous != as_a;
    let base = out.as_mut_ptr().cast::<u32>();
    let tile = |strip: usize, half: usize, q: usize| {
        let (l0, k0) = (strip * 32 + half * 16, q * KSTEP);
        let real_lines = lines.saturating_sub(l0).min(16);
        // hi[i], lo[i]: row i of the hi tile and of the lo tile (with SPLIT).
        let mut hi = [_mm512_setzero_si512(); 16];
        let mut lo = [_mm512_setzero_si512(); 16];
        for (i, (hi, lo)) in hi.iter_mut().zip(&mut lo).enumerate() {
            [*hi, *lo] = if x.k_contiguous {
                // Line l0 + i, k0..k0+32.
                if i >= real_lines {
                    continue;
                }
                pairs_along::<SPLIT>(at(l0 + i, k0), k - k0)
            } else {
                // k0 + 2i and k0 + 2i + 1 of lines l0..l0+16.
                let (ka, kb) = (k0 + 2 * i, k0 + 2 * i + 1);
                let len = |kk: usize| if kk < k { real_lines } else { 0 };
                pairs_across::<SPLIT>(at(l0, ka), at(l0, kb), len(ka), len(kb))
            };
        }
        let mut v = [hi, lo];
        let step = base.add(step_at(strip, q, ksteps, parts));
        for (part, tile) in v.iter_mut().take(parts).enumerate() {
            if transpose {
                *tile = transpose_16x16(*tile);
            }
            let dst = step.add((part * 2 + half) * TILE);
            for (i, row) in tile.iter().enumerate() {
                _mm512_storeu_si512(dst.add(16 * i).cast(), *row);
            }
        }
    };
    // Walk memory in the order it is stored: line by line when k is contiguous, else k by k
    // (rows of a [k, lines] matrix; walking it by columns would touch a new page per row).
    if x.k_contiguous && as_a {
        // Each line is one row of its strip's tiles at every k-step: read it front to back,
        // what the hardware prefetcher follows (tile by tile, 16 lines at once, the whole GEMM
        // ran at about half the speed when A was not in cache, as after the previous layer).
        for line in 0..strips * 32 {
            let (strip, half, i) = (line / 32, line % 32 / 16, line % 16);
            for q in 0..ksteps {
                let [hi, lo] = if line < lines {
                    pairs_along::<SPLIT>(at(line, q * KSTEP), k - q * KSTEP)
                } else {
                    [_mm512_setzero_si512(); 2]
                };
                let step = base.add(step_at(strip, q, ksteps, parts));
                for (part, row) in [hi, lo].into_iter().take(parts).enumerate() {
                    let dst = step.add((part * 2 + half) * TILE + 16 * i);
                    _mm512_storeu_si512(dst.cast(), row);
                }
            }
        }
    } else if x.k_contiguous {
        for strip in 0..strips {
            for half in 0..2 {
                for q in 0..ksteps {
                    tile(strip, half, q);
                }
            }
        }
    } else {
        for q in 0..ksteps {
            for strip in 0..strips {
                for half in 0..2 {
                    tile(strip, half, q);
                }
            }
        }
    }
}

/// The tile configuration: palette 1, all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_full() -> Self {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t] = 64; // bytes per row, u16 little-endian
            cfg[48 + t] = 16; // rows
        }
        TileConfig(cfg)
    }
}

/// `op(b)` packed once into tiles (a weight used by many products): `gemm_bf16_packed` reads
/// it in place of packing B per call.
pub struct PackedB {
    tiles: Vec<TileRow>,
    n: usize,
    k: usize,
    terms: Terms,
}

impl PackedB {
    /// Packs `op(b)` (`k × n`) as `terms`.
    ///
    /// # Safety
    /// `available()` is true; `b` addresses `k × n` readable elements.
    pub unsafe fn new(b: Operand, n: usize, k: usize, terms: Terms) -> Self {
        let mut tiles = Vec::new();
        pack_b(b, n, k, terms, &mut tiles);
        PackedB { tiles, n, k, terms }
    }

    /// (n, k): C's width and A's depth.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

/// Packs the lines of `x` (rows of A when `as_a`, else columns of B) as `terms`.
unsafe fn pack_as(
    x: Operand,
    lines: usize,
    k: usize,
    as_a: bool,
    terms: Terms,
    out: &mut Vec<TileRow>,
) {
    match terms {
        Terms::One => pack::<false>(x, lines, k, as_a, out),
        Terms::Two => pack::<true>(x, lines, k, as_a, out),
    }
}

/// Packs `op(b)` (`k × n`): its columns are the lines, element (j, kk) at j·cs + kk·rs.
unsafe fn pack_b(b: Operand, n: usize, k: usize, terms: Terms, out: &mut Vec<TileRow>) {
    let lines = Operand {
        rs: b.cs,
        cs: b.rs,
        ..b
    };
    pack_as(lines, n, k, false, terms, out);
}

/// `c = init + op(a) · op(b)` for `m × n` of C with row stride `ldc`, on the calling thread,
/// each operand as `terms` bf16 values.
///
/// # Safety
/// `available()` is true; `a` addresses `m × k` and `b` `k × n` readable elements; `c`
/// addresses `m` rows of `n` writable elements `ldc` apart and overlaps neither; a bias holds
/// `n` readable values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: *mut f32,
    ldc: usize,
    init: Init,
    terms: Terms,
) {
    PACKED.with_borrow_mut(|p| {
        pack_b(b, n, k, terms, &mut p.b);
        products(m, n, k, a, &p.b, c, ldc, init, None, terms, &mut p.a);
    });
}

/// `gemm_bf16` with B packed beforehand: `c = epilogue(init + op(a) · b)` for `m` rows.
///
/// # Safety
/// As `gemm_bf16`, with `b` for `b.shape()` = (n, k) of C's width and A's depth.
pub unsafe fn gemm_bf16_packed(
    m: usize,
    a: Operand,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    init: Init,
    epilogue: Epilogue,
) {
    PACKED.with_borrow_mut(|p| {
        products(
            m, b.n, b.k, a, &b.tiles, c, ldc, init, epilogue, b.terms, &mut p.a,
        );
    });
}

/// The products of `gemm_bf16` from packed B tiles; A is packed here into `a_tiles`.
///
/// SAFETY: as `gemm_bf16`, with `b` holding op(b) packed as `terms` for this n and k.
#[allow(clippy::too_many_arguments)]
unsafe fn products(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: &[TileRow],
    c: *mut f32,
    ldc: usize,
    init: Init,
    epilogue: Epilogue,
    terms: Terms,
    a_tiles: &mut Vec<TileRow>,
) {
    let ksteps = k.div_ceil(KSTEP);
    let parts = terms.count();
    let cfg = TileConfig::all_full();
    asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let (a_strips, b_strips) = (m.div_ceil(32), n.div_ceil(32));
    // k is cut into equal chunks of at most KC_STEPS; the A strips of a block (up to 1 MiB
    // per chunk, in L2) pass under each B strip's chunk; C carries the sum from one chunk
    // to the next. A is packed one block of rows at a time, so its buffer stays a few MiB
    // however tall A is.
    let chunks = ksteps.div_ceil(KC_STEPS);
    let kc = ksteps.div_ceil(chunks);
    let chunk_bytes = kc * 2 * parts * TILE * 4;
    let per_block = (A_BLOCK_BYTES / chunk_bytes).max(1);
    for a0 in (0..a_strips).step_by(per_block) {
        let i_block = a0 * 32;
        let a_block = Operand {
            ptr: a.ptr.wrapping_offset(i_block as isize * a.rs),
            ..a
        };
        let lines = (m - i_block).min(per_block * 32);
        pack_as(a_block, lines, k, true, terms, a_tiles);
        for q0 in (0..ksteps).step_by(kc) {
            let steps = kc.min(ksteps - q0);
            let init = if q0 > 0 { Init::C } else { init };
            for sb in 0..b_strips {
                let b_chunk = b.as_ptr().cast::<u32>().add(step_at(sb, q0, ksteps, parts));
                for sa in a0..(a0 + per_block).min(a_strips) {
                    let a_chunk =
                        a_tiles
                            .as_ptr()
                            .cast::<u32>()
                            .add(step_at(sa - a0, q0, ksteps, parts));
                    let (i0, j0) = (sa * 32, sb * 32);
                    let (rows, cols) = ((m - i0).min(32), (n - j0).min(32));
                    let c_blk = c.add(i0 * ldc + j0);
                    let c_bytes = ldc * 4;
                    // The block's C lines, asked for ownership now so the stores at its end do
                    // not wait on memory (C is usually a buffer last written a layer ago).
                    for r in 0..rows {
                        let row = c_blk.add(r * ldc) as *const i8;
                        _mm_prefetch::<_MM_HINT_ET0>(row);
                        _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(4 * cols - 4));
                    }
                    if rows == 32 && cols == 32 {
                        let from = match init {
                            Init::Zero => None,
                            Init::C => Some((c_blk as *const f32, c_bytes)),
                            Init::Bias(bias) => Some((bias.add(j0), 0)),
                        };
                        let (a, b) = (a_chunk, b_chunk);
                        block_32x32(a, b, steps, terms, from, c_blk, c_bytes);
                    } else {
                        let (a, b) = (a_chunk, b_chunk);
                        edge_block(a, b, steps, terms, init, c_blk, ldc, rows, cols, j0);
                    }
                    // The block's sums are final: the epilogue gets its rows (the slice spans the
                    // columns between them, which only this thread writes).
                    if let (Some(f), true) = (epilogue, q0 + steps == ksteps) {
                        let len = (rows - 1) * ldc + cols;
                        f(std::slice::from_raw_parts_mut(c_blk, len), cols, ldc);
                    }
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// A block cut by C's edge (`rows` × `cols` of it real) through a full 32×32 copy.
///
/// SAFETY: as `block_32x32`, with `c` addressing `rows` rows of `cols` f32, `ldc` apart.
#[allow(clippy::too_many_arguments)]
unsafe fn edge_block(
    a: *const u32,
    b: *const u32,
    ksteps: usize,
    terms: Terms,
    init: Init,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    j0: usize,
) {
    let mut edge = [0f32; 32 * 32];
    for r in 0..rows {
        let src = match init {
            Init::Zero => break,
            Init::C => c.add(r * ldc) as *const f32,
            Init::Bias(bias) => bias.add(j0),
        };
        edge[r * 32..r * 32 + cols].copy_from_slice(std::slice::from_raw_parts(src, cols));
    }
    let e = edge.as_mut_ptr();
    block_32x32(a, b, ksteps, terms, Some((e, 32 * 4)), e, 32 * 4);
    for r in 0..rows {
        let dst = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        dst.copy_from_slice(&edge[r * 32..r * 32 + cols]);
    }
}

/// One 32×32 block of C from an A strip and a B strip over `ksteps` k-steps: the sums start
/// from the 32×32 f32 at `from` (row stride in bytes; 0 repeats one row) or from zero, and
/// end in `c` (row stride `c_stride` bytes).
///
/// SAFETY: tiles configured by `ldtilecfg`; both strips hold `ksteps` packed steps of `terms`;
/// `from` addresses its 32 rows (one row when its stride is 0) and `c` 32 rows, 32 f32 each.
unsafe fn block_32x32(
    a: *const u32,
    b: *const u32,
    ksteps: usize,
    terms: Terms,
    from: Option<(*const f32, usize)>,
    c: *mut f32,
    c_stride: usize,
) {
    // C tiles: tmm0 rows 0–15 × cols 0–15, tmm1 rows 0–15 × 16–31, tmm2 16–31 × 0–15, tmm3 both 16–31.
    if let Some((f, s)) = from {
        let (f1, f2) = (f.add(16), f.byte_add(16 * s));
        asm!(
            "tileloadd tmm0, [{f0} + {s}*1]",
            "tileloadd tmm1, [{f1} + {s}*1]",
            "tileloadd tmm2, [{f2} + {s}*1]",
            "tileloadd tmm3, [{f3} + {s}*1]",
            f0 = in(reg) f, f1 = in(reg) f1, f2 = in(reg) f2, f3 = in(reg) f2.add(16), s = in(reg) s,
            options(nostack, readonly),
        );
    } else {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }
    match terms {
        Terms::One => products_bf16(a, b, ksteps),
        Terms::Two => products_bf16x3(a, b, ksteps),
    }
    let (c1, c2) = (c.add(16), c.byte_add(16 * c_stride));
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c2.add(16), s = in(reg) c_stride,
        options(nostack),
    );
}

/// tmm0–3 += A strip · B strip over `ksteps` steps of one term each.
///
/// SAFETY: as `block_32x32`.
unsafe fn products_bf16(a: *const u32, b: *const u32, ksteps: usize) {
    for q in 0..ksteps {
        let (a0, b0) = (a.add(q * 2 * TILE), b.add(q * 2 * TILE));
        // Loads interleaved with the products that need them, so the first product starts early.
        asm!(
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0, a1 = in(reg) a0.add(TILE), b0 = in(reg) b0, b1 = in(reg) b0.add(TILE),
            s = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
}

/// tmm0–3 += A strip · B strip over `ksteps` steps of two terms each: hi·lo, then hi·hi, then
/// lo·hi, an order that keeps B's hi tiles loaded across the switch of A from hi to lo (eight
/// tile loads for twelve products). Tile registers are not renamed, so each load is placed
/// after the last product that reads the register it overwrites.
///
/// SAFETY: as `block_32x32`.
unsafe fn products_bf16x3(a: *const u32, b: *const u32, ksteps: usize) {
    for q in 0..ksteps {
        let (a0, b0) = (a.add(q * 4 * TILE), b.add(q * 4 * TILE));
        asm!(
            // A hi (tmm4, tmm5) · B lo (tmm6, tmm7)
            "tileloadd tmm4, [{a_hi0} + {s}*1]",
            "tileloadd tmm6, [{b_lo0} + {s}*1]",
            "tileloadd tmm5, [{a_hi1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b_lo1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            // A hi · B hi
            "tileloadd tmm6, [{b_hi0} + {s}*1]",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b_hi1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            // A lo · B hi
            "tileloadd tmm4, [{a_lo0} + {s}*1]",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a_lo1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a_hi0 = in(reg) a0, a_hi1 = in(reg) a0.add(TILE),
            a_lo0 = in(reg) a0.add(2 * TILE), a_lo1 = in(reg) a0.add(3 * TILE),
            b_hi0 = in(reg) b0, b_hi1 = in(reg) b0.add(TILE),
            b_lo0 = in(reg) b0.add(2 * TILE), b_lo1 = in(reg) b0.add(3 * TILE),
            s = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
}
