//! The KV cache of a Llama-family decoder: per layer, the keys and values of the positions a
//! sequence has seen, f32, in blocks of `BLOCK_TOKENS` positions ([BLOCK_TOKENS, kv heads ×
//! head_dim]) allocated as the sequence grows.
//!
//! Blocks are reference-counted so that sequences with a common prefix can share them (a
//! server's prefix cache): a full block is never written again, and only the block being
//! filled, always a sequence's own, is written. Blocks may be drawn from a [`KvPool`], which
//! counts them against a memory budget for the server's admission control.

use super::llama::LlamaConfig;
use crate::backend::{attend_cached_head, CachedHead};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Positions per KV-cache block.
pub const BLOCK_TOKENS: usize = 32;

/// A budget of KV-cache blocks shared by many sequences: it counts the blocks alive (a block
/// returns its count when its last holder drops it). It does not refuse allocations; whoever
/// starts sequences checks [`KvPool::free_blocks`] first.
#[derive(Debug)]
pub struct KvPool {
    /// Bytes of one block (one layer's keys or values of `BLOCK_TOKENS` positions).
    pub block_bytes: usize,
    pub capacity: usize,
    used: AtomicUsize,
}

impl KvPool {
    /// A pool of `bytes` for a model of `config`'s shape.
    pub fn new(config: &LlamaConfig, bytes: usize) -> Arc<Self> {
        let block_bytes = BLOCK_TOKENS * config.kv_dim() * 4;
        Arc::new(KvPool {
            block_bytes,
            capacity: bytes / block_bytes,
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

/// One layer's keys or values of `BLOCK_TOKENS` positions.
#[derive(Debug)]
pub struct KvBlock {
    data: Vec<f32>,
    pool: Option<Arc<KvPool>>,
}

impl KvBlock {
    fn new(len: usize, pool: Option<&Arc<KvPool>>) -> Self {
        if let Some(p) = pool {
            p.used.fetch_add(1, Ordering::Relaxed);
        }
        KvBlock {
            data: vec![0.0; len],
            pool: pool.cloned(),
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
    kv_dim: usize,
    len: usize,
    layers: Vec<LayerCache>,
    pool: Option<Arc<KvPool>>,
}

/// One layer's cached keys and values, block by block, as slices.
pub(super) struct LayerView<'a> {
    keys: Vec<&'a [f32]>,
    values: Vec<&'a [f32]>,
    kv_dim: usize,
}

impl LayerView<'_> {
    /// One query row's attention over key/value head `h` of positions 0..n, read where the
    /// blocks hold them (decoding: nothing gathered). `scores` is scratch of n.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &self,
        h: usize,
        d: usize,
        n: usize,
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let head = CachedHead {
            block_rows: BLOCK_TOKENS,
            row_width: self.kv_dim,
            offset: h * d,
            d,
            n,
        };
        attend_cached_head(&self.keys, &self.values, head, q, scale, scores, out);
    }
}

/// One layer's keys and values, block by block ([BLOCK_TOKENS, kv_dim] each).
#[derive(Clone, Debug, Default)]
struct LayerCache {
    keys: Vec<Arc<KvBlock>>,
    values: Vec<Arc<KvBlock>>,
}

impl LlamaCache {
    pub fn new(config: &LlamaConfig) -> Self {
        LlamaCache {
            kv_dim: config.kv_dim(),
            len: 0,
            layers: vec![LayerCache::default(); config.num_hidden_layers],
            pool: None,
        }
    }

    /// An empty cache whose blocks count against `pool`.
    pub fn in_pool(config: &LlamaConfig, pool: &Arc<KvPool>) -> Self {
        LlamaCache {
            pool: Some(Arc::clone(pool)),
            ..Self::new(config)
        }
    }

    /// A cache starting with shared full blocks (a prefix another sequence computed):
    /// `prefix[b][l]` is block b of layer l. Its length is the blocks' positions.
    pub fn with_prefix(
        config: &LlamaConfig,
        pool: Option<&Arc<KvPool>>,
        prefix: &[Vec<SharedBlocks>],
    ) -> Self {
        let mut c = Self::new(config);
        c.pool = pool.cloned();
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

    /// Bytes held (whole blocks, shared ones included).
    pub fn bytes(&self) -> usize {
        let blocks: usize = self
            .layers
            .iter()
            .map(|c| c.keys.len() + c.values.len())
            .sum();
        blocks * BLOCK_TOKENS * self.kv_dim * 4
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

    /// Stores k, v [t, kv_dim] of layer `l` at positions len..len+t (len moves in `advance`).
    pub(super) fn store(&mut self, l: usize, k: &[f32], v: &[f32], t: usize) {
        let kv = self.kv_dim;
        let pool = self.pool.as_ref();
        let LayerCache {
            keys: kb,
            values: vb,
        } = &mut self.layers[l];
        for i in 0..t {
            let pos = self.len + i;
            let (block, off) = (pos / BLOCK_TOKENS, pos % BLOCK_TOKENS);
            if block == kb.len() {
                kb.push(Arc::new(KvBlock::new(BLOCK_TOKENS * kv, pool)));
                vb.push(Arc::new(KvBlock::new(BLOCK_TOKENS * kv, pool)));
            }
            // The block being filled is this sequence's own: only full blocks are shared.
            let (kblock, vblock) = (
                Arc::get_mut(&mut kb[block]).expect("a block being filled is not shared"),
                Arc::get_mut(&mut vb[block]).expect("a block being filled is not shared"),
            );
            kblock.data[off * kv..(off + 1) * kv].copy_from_slice(&k[i * kv..(i + 1) * kv]);
            vblock.data[off * kv..(off + 1) * kv].copy_from_slice(&v[i * kv..(i + 1) * kv]);
        }
    }

    /// Copies key (or value) head `h` of positions 0..n of layer `l` into `out` [n, head_dim].
    pub(super) fn gather_head(
        &self,
        l: usize,
        values: bool,
        h: usize,
        d: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let kv = self.kv_dim;
        let blocks = if values {
            &self.layers[l].values
        } else {
            &self.layers[l].keys
        };
        for pos in 0..n {
            let src = &blocks[pos / BLOCK_TOKENS].data[(pos % BLOCK_TOKENS) * kv + h * d..][..d];
            out[pos * d..(pos + 1) * d].copy_from_slice(src);
        }
    }

    /// Layer `l`'s blocks as slices, for decoding rows to attend over in place (built once per
    /// layer and sequence, shared by all its rows and heads).
    pub(super) fn layer_view(&self, l: usize) -> LayerView<'_> {
        let c = &self.layers[l];
        LayerView {
            keys: c.keys.iter().map(|b| &b.data[..]).collect(),
            values: c.values.iter().map(|b| &b.data[..]).collect(),
            kv_dim: self.kv_dim,
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
    fn the_pool_counts_blocks_until_their_last_holder_drops_them() {
        let cfg = config();
        let pool = KvPool::new(&cfg, 10 * BLOCK_TOKENS * cfg.kv_dim() * 4);
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
        let mut b = LlamaCache::with_prefix(&cfg, Some(&pool), &shared);
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
