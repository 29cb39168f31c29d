//! The KV cache of a Llama-family decoder: per layer, the keys and values of the positions a
//! sequence has seen, in blocks of `BLOCK_TOKENS` positions allocated as the sequence grows.
//! A block holds one layer's keys or values head by head, f32 or f16 ([`KvType`]): values
//! [kv heads, BLOCK_TOKENS, head_dim], keys transposed [kv heads, head_dim, BLOCK_TOKENS] (a
//! position per column: decoding scores a block of positions at a time).
//!
//! Blocks are reference-counted so that sequences with a common prefix can share them (a
//! server's prefix cache): a full block is never written again, and only the block being
//! filled, always a sequence's own, is written. Blocks may be drawn from a [`KvPool`], which
//! counts them against a memory budget for the server's admission control.

use super::llama::LlamaConfig;
use crate::backend::half::{f16_slice_to_f32, f32_slice_to_f16};
use crate::backend::{attend_cached_group, CachedHead, KV_BLOCK_ROWS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Positions per KV-cache block.
pub const BLOCK_TOKENS: usize = KV_BLOCK_ROWS;

/// How a KV cache stores keys and values: f32, or f16 (llama.cpp's default), which halves
/// the memory a sequence holds and the bytes each decoding step reads, at a rounding of
/// about 5e-4 relative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl KvType {
    /// Bytes of one stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

/// A budget of KV-cache blocks shared by many sequences: it counts the blocks alive (a block
/// returns its count when its last holder drops it). It does not refuse allocations; whoever
/// starts sequences checks [`KvPool::free_blocks`] first.
#[derive(Debug)]
pub struct KvPool {
    /// Bytes of one block (one layer's keys or values of `BLOCK_TOKENS` positions).
    pub block_bytes: usize,
    pub capacity: usize,
    pub kv_type: KvType,
    used: AtomicUsize,
}

impl KvPool {
    /// A pool of `bytes` of `kv_type` blocks for a model of `config`'s shape.
    pub fn new(config: &LlamaConfig, bytes: usize, kv_type: KvType) -> Arc<Self> {
        let block_bytes = BLOCK_TOKENS * config.kv_dim() * kv_type.bytes();
        Arc::new(KvPool {
            block_bytes,
            capacity: bytes / block_bytes,
            kv_type,
            used: AtomicUsize::new(0),
        })
    }

    /// Blocks alive now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Blocks the budget has left (0 when over it).
    pub fn free_blocks(&self) -> usize {
        self.capacity.saturating_sub(self.used())
    }

    /// Blocks a sequence of `positions` needs (every layer's keys and values).
    pub fn blocks_for(config: &LlamaConfig, positions: usize) -> usize {
        positions.div_ceil(BLOCK_TOKENS) * config.num_hidden_layers * 2
    }
}

/// One layer's keys or values of `BLOCK_TOKENS` positions (layouts in the module documentation).
#[derive(Debug)]
pub struct KvBlock {
    data: KvData,
    pool: Option<Arc<KvPool>>,
}

#[derive(Debug)]
enum KvData {
    F32(Vec<f32>),
    /// f16 bits.
    F16(Vec<u16>),
}

impl KvBlock {
    fn new(len: usize, kv_type: KvType, pool: Option<&Arc<KvPool>>) -> Self {
        if let Some(p) = pool {
            p.used.fetch_add(1, Ordering::Relaxed);
        }
        KvBlock {
            data: match kv_type {
                KvType::F32 => KvData::F32(vec![0.0; len]),
                KvType::F16 => KvData::F16(vec![0; len]),
            },
            pool: pool.cloned(),
        }
    }

    /// Writes `src` at values at, at + stride, at + 2·stride, …
    fn write(&mut self, at: usize, stride: usize, src: &[f32]) {
        let span = (src.len() - 1) * stride + 1;
        match &mut self.data {
            KvData::F32(d) => {
                for (x, &v) in d[at..at + span].iter_mut().step_by(stride).zip(src) {
                    *x = v;
                }
            }
            KvData::F16(d) => {
                // Converted 64 at a time on the stack: this runs per head, layer and token.
                let mut halves = [0u16; 64];
                let mut dst = d[at..at + span].iter_mut().step_by(stride);
                for part in src.chunks(64) {
                    let h = &mut halves[..part.len()];
                    f32_slice_to_f16(part, h);
                    // The halves lead the zip: when they run out, no destination is taken.
                    for (&h, x) in h.iter().zip(dst.by_ref()) {
                        *x = h;
                    }
                }
            }
        }
    }

    /// Values at..at + out.len() as f32.
    fn read(&self, at: usize, out: &mut [f32]) {
        match &self.data {
            KvData::F32(d) => out.copy_from_slice(&d[at..at + out.len()]),
            KvData::F16(d) => f16_slice_to_f32(&d[at..at + out.len()], out),
        }
    }
}

impl Drop for KvBlock {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.used.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One layer's blocks: the keys and the values of the same positions.
pub type SharedBlocks = (Arc<KvBlock>, Arc<KvBlock>);

/// Keys and values of the positions a sequence has seen (see the module documentation).
#[derive(Clone, Debug)]
pub struct LlamaCache {
    kv_heads: usize,
    head_dim: usize,
    kv_type: KvType,
    len: usize,
    layers: Vec<LayerCache>,
    pool: Option<Arc<KvPool>>,
}

/// One layer's cached keys and values, block by block, as slices of their stored type.
pub(super) enum LayerView<'a> {
    F32(Vec<&'a [f32]>, Vec<&'a [f32]>),
    F16(Vec<&'a [u16]>, Vec<&'a [u16]>),
}

impl LayerView<'_> {
    /// One row's query heads `q` [group, d] that share key/value head `h`, attending over
    /// positions 0..n read where the blocks hold them (decoding: nothing gathered) → out
    /// [group, d]. `scratch` is the kernel's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &self,
        h: usize,
        d: usize,
        n: usize,
        q: &[f32],
        scale: f32,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let head = CachedHead {
            offset: h * BLOCK_TOKENS * d,
            d,
            n,
        };
        match self {
            LayerView::F32(k, v) => attend_cached_group(k, v, head, q, scale, scratch, out),
            LayerView::F16(k, v) => attend_cached_group(k, v, head, q, scale, scratch, out),
        }
    }
}

fn f32_blocks(blocks: &[Arc<KvBlock>]) -> Vec<&[f32]> {
    blocks
        .iter()
        .map(|b| match &b.data {
            KvData::F32(d) => &d[..],
            KvData::F16(_) => unreachable!("an f32 cache holds f32 blocks"),
        })
        .collect()
}

fn f16_blocks(blocks: &[Arc<KvBlock>]) -> Vec<&[u16]> {
    blocks
        .iter()
        .map(|b| match &b.data {
            KvData::F16(d) => &d[..],
            KvData::F32(_) => unreachable!("an f16 cache holds f16 blocks"),
        })
        .collect()
}

/// One layer's keys and values, block by block.
#[derive(Clone, Debug, Default)]
struct LayerCache {
    keys: Vec<Arc<KvBlock>>,
    values: Vec<Arc<KvBlock>>,
}

impl LlamaCache {
    /// An empty f32 cache.
    pub fn new(config: &LlamaConfig) -> Self {
        Self::of_type(config, KvType::F32)
    }

    /// An empty cache storing `kv_type`.
    pub fn of_type(config: &LlamaConfig, kv_type: KvType) -> Self {
        LlamaCache {
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            kv_type,
            len: 0,
            layers: vec![LayerCache::default(); config.num_hidden_layers],
            pool: None,
        }
    }

    /// An empty cache whose blocks (of the pool's type) count against `pool`.
    pub fn in_pool(config: &LlamaConfig, pool: &Arc<KvPool>) -> Self {
        LlamaCache {
            pool: Some(Arc::clone(pool)),
            ..Self::of_type(config, pool.kv_type)
        }
    }

    /// A cache in `pool` starting with shared full blocks (a prefix another sequence of the
    /// pool computed): `prefix[b][l]` is block b of layer l. Its length is the blocks'
    /// positions.
    pub fn with_prefix(
        config: &LlamaConfig,
        pool: &Arc<KvPool>,
        prefix: &[Vec<SharedBlocks>],
    ) -> Self {
        let mut c = Self::in_pool(config, pool);
        for blocks in prefix {
            for (layer, (k, v)) in c.layers.iter_mut().zip(blocks) {
                layer.keys.push(Arc::clone(k));
                layer.values.push(Arc::clone(v));
            }
        }
        c.len = prefix.len() * BLOCK_TOKENS;
        c
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    fn block_len(&self) -> usize {
        self.kv_heads * BLOCK_TOKENS * self.head_dim
    }

    /// Bytes held (whole blocks, shared ones included).
    pub fn bytes(&self) -> usize {
        let blocks: usize = self
            .layers
            .iter()
            .map(|c| c.keys.len() + c.values.len())
            .sum();
        blocks * self.block_len() * self.kv_type.bytes()
    }

    /// Full block `b` of every layer, to share with other sequences; `None` unless all
    /// `BLOCK_TOKENS` positions of block b are stored.
    pub fn full_block(&self, b: usize) -> Option<Vec<SharedBlocks>> {
        if (b + 1) * BLOCK_TOKENS > self.len {
            return None;
        }
        Some(
            self.layers
                .iter()
                .map(|l| (Arc::clone(&l.keys[b]), Arc::clone(&l.values[b])))
                .collect(),
        )
    }

    /// Stores k, v [t, kv heads · head_dim] of layer `l` at positions len..len+t (len moves
    /// in `advance`).
    pub(super) fn store(&mut self, l: usize, k: &[f32], v: &[f32], t: usize) {
        let (heads, d) = (self.kv_heads, self.head_dim);
        let (block_len, kv_type) = (self.block_len(), self.kv_type);
        let pool = self.pool.as_ref();
        let LayerCache {
            keys: kb,
            values: vb,
        } = &mut self.layers[l];
        for i in 0..t {
            let pos = self.len + i;
            let (block, off) = (pos / BLOCK_TOKENS, pos % BLOCK_TOKENS);
            if block == kb.len() {
                kb.push(Arc::new(KvBlock::new(block_len, kv_type, pool)));
                vb.push(Arc::new(KvBlock::new(block_len, kv_type, pool)));
            }
            // The block being filled is this sequence's own: only full blocks are shared.
            let (kblock, vblock) = (
                Arc::get_mut(&mut kb[block]).expect("a block being filled is not shared"),
                Arc::get_mut(&mut vb[block]).expect("a block being filled is not shared"),
            );
            for h in 0..heads {
                let src = (i * heads + h) * d;
                // Keys: column `off` of the head's [d, BLOCK_TOKENS]; values: row `off`.
                kblock.write(h * d * BLOCK_TOKENS + off, BLOCK_TOKENS, &k[src..src + d]);
                vblock.write((h * BLOCK_TOKENS + off) * d, 1, &v[src..src + d]);
            }
        }
    }

    /// Copies key (or value) head `h` of positions 0..n of layer `l` into `out` [n, head_dim]
    /// as f32.
    pub(super) fn gather_head(&self, l: usize, values: bool, h: usize, n: usize, out: &mut [f32]) {
        let d = self.head_dim;
        let layer = &self.layers[l];
        let blocks = if values { &layer.values } else { &layer.keys };
        let mut keys_t = vec![0f32; if values { 0 } else { d * BLOCK_TOKENS }];
        for (b, block) in blocks[..n.div_ceil(BLOCK_TOKENS)].iter().enumerate() {
            let p0 = b * BLOCK_TOKENS;
            let rows = BLOCK_TOKENS.min(n - p0);
            let at = h * BLOCK_TOKENS * d;
            if values {
                block.read(at, &mut out[p0 * d..(p0 + rows) * d]);
                continue;
            }
            // keys_t: [d, BLOCK_TOKENS] → out rows [rows, d].
            block.read(at, &mut keys_t);
            for r in 0..rows {
                for (i, o) in out[(p0 + r) * d..(p0 + r + 1) * d].iter_mut().enumerate() {
                    *o = keys_t[i * BLOCK_TOKENS + r];
                }
            }
        }
    }

    /// Layer `l`'s blocks as slices, for decoding rows to attend over in place (built once per
    /// layer and sequence, shared by all its rows and heads).
    pub(super) fn layer_view(&self, l: usize) -> LayerView<'_> {
        let c = &self.layers[l];
        match self.kv_type {
            KvType::F32 => LayerView::F32(f32_blocks(&c.keys), f32_blocks(&c.values)),
            KvType::F16 => LayerView::F16(f16_blocks(&c.keys), f16_blocks(&c.values)),
        }
    }

    pub(super) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Forgets every position (the blocks are released).
    pub fn clear(&mut self) {
        self.len = 0;
        for c in &mut self.layers {
            c.keys.clear();
            c.values.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        serde_json::from_value(serde_json::json!({
            "arch": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 4, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "rope_scaling": null, "tie_word_embeddings": true,
            "attention_bias": false
        }))
        .expect("a config")
    }

    #[test]
    fn an_f16_cache_gives_back_what_it_stored_for_heads_wider_than_a_conversion_chunk() {
        // Head size 80 > the 64 values converted at a time; 2 KV heads, 3 positions.
        let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
            "arch": "llama", "vocab_size": 8, "hidden_size": 160, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
            "head_dim": 80, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "rope_scaling": null, "tie_word_embeddings": true,
            "attention_bias": false
        }))
        .expect("a config");
        let kv = cfg.kv_dim();
        // Halves exactly: i/8 for small i.
        let k: Vec<f32> = (0..3 * kv).map(|i| (i % 512) as f32 / 8.0).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        let mut c = LlamaCache::of_type(&cfg, KvType::F16);
        c.store(0, &k, &v, 3);
        c.advance(3);
        for h in 0..2 {
            let (mut keys, mut values) = (vec![0f32; 3 * 80], vec![0f32; 3 * 80]);
            c.gather_head(0, false, h, 3, &mut keys);
            c.gather_head(0, true, h, 3, &mut values);
            for p in 0..3 {
                let want = &k[p * kv + h * 80..p * kv + (h + 1) * 80];
                assert_eq!(
                    &keys[p * 80..(p + 1) * 80],
                    want,
                    "keys of head {h}, position {p}"
                );
                let want: Vec<f32> = want.iter().map(|x| -x).collect();
                assert_eq!(
                    &values[p * 80..(p + 1) * 80],
                    &want[..],
                    "values of head {h}"
                );
            }
        }
    }

    #[test]
    fn the_pool_counts_blocks_until_their_last_holder_drops_them() {
        let cfg = config();
        let pool = KvPool::new(&cfg, 10 * BLOCK_TOKENS * cfg.kv_dim() * 4, KvType::F32);
        assert_eq!((pool.capacity, pool.used()), (10, 0));
        let mut a = LlamaCache::in_pool(&cfg, &pool);
        let kv = vec![1.0; 40 * cfg.kv_dim()];
        for l in 0..2 {
            a.store(l, &kv, &kv, 40);
        }
        a.advance(40);
        // 2 blocks × 2 layers × keys and values.
        assert_eq!(pool.used(), 8);
        assert_eq!(KvPool::blocks_for(&cfg, 40), 8);
        assert!(a.full_block(1).is_none());
        let shared = vec![a.full_block(0).expect("block 0 is full")];
        let mut b = LlamaCache::with_prefix(&cfg, &pool, &shared);
        drop(shared);
        assert_eq!((b.len(), pool.used()), (32, 8));
        for l in 0..2 {
            b.store(l, &kv[..cfg.kv_dim()], &kv[..cfg.kv_dim()], 1);
        }
        b.advance(1);
        assert_eq!(pool.used(), 12);
        drop(a);
        // b still holds the shared block 0 (4 blocks) and its own block 1 (4).
        assert_eq!(pool.used(), 8);
        b.clear();
        assert_eq!((pool.used(), pool.free_blocks()), (0, 10));
    }
}
