//! ZeRO stage 1: the optimiser state partitioned over the ranks.
//!
//! The parameters, in `params_mut` order, are one flat vector of P values cut into `world`
//! shards of ⌈P/world⌉ (the last one shorter; padded for the all-gather). After the gradients
//! are all-reduced, each rank updates only the weights of its shard, with moments only for
//! those, then all-gathers the weights so every rank holds the whole model again. The update
//! is element-wise (`optim::update`), so the result is bit-identical to the
//! unsharded optimiser. Checkpoints gather the moments back into the ordinary format, so a run
//! resumes with any number of ranks, sharded or not.

use super::comm::Communicator;
use crate::nn::Param;
use crate::train::optim::{decay_of, update, OptimConfig, Optimizer, Slot};
use crate::Result;
use std::ops::Range;

/// The flat range of shard `rank` of `world` over `total` values, and the shard length with
/// padding (every rank's all-gather piece has that length).
pub fn shard_range(total: usize, rank: usize, world: usize) -> (Range<usize>, usize) {
    let per = total.div_ceil(world.max(1));
    let start = (rank * per).min(total);
    (start..((rank + 1) * per).min(total), per)
}

/// Calls `f` on each piece of the parameters' weights that falls in the flat range `range`, in
/// order (`offsets`: each parameter's first flat index).
fn copy_flat<T>(
    params: &mut [(String, &mut Param)],
    offsets: &[usize],
    range: Range<usize>,
    mut f: impl FnMut(&mut [f32], &mut T),
    state: &mut T,
) {
    if range.is_empty() {
        return;
    }
    let first = offsets.partition_point(|&o| o <= range.start) - 1;
    for (i, (_, p)) in params.iter_mut().enumerate().skip(first) {
        let o = offsets[i];
        if o >= range.end {
            break;
        }
        let n = p.value.data.len();
        let (lo, hi) = (range.start.max(o) - o, range.end.min(o + n) - o);
        if lo < hi {
            f(&mut p.value.data[lo..hi], state);
        }
    }
}

/// Copies `src` into the per-parameter vectors `dst` from flat index `start` on.
fn scatter_flat(dst: &mut [Vec<f32>], offsets: &[usize], start: usize, mut src: &[f32]) {
    if src.is_empty() {
        return;
    }
    let first = offsets.partition_point(|&o| o <= start) - 1;
    let mut at = start;
    for (d, &o) in dst.iter_mut().zip(offsets).skip(first) {
        if src.is_empty() {
            break;
        }
        let lo = at - o;
        if lo >= d.len() {
            continue;
        }
        let n = (d.len() - lo).min(src.len());
        d[lo..lo + n].copy_from_slice(&src[..n]);
        src = &src[n..];
        at += n;
    }
}

/// One parameter's part of this rank's shard, with its optimiser state.
#[derive(Clone, Debug)]
struct Segment {
    param: usize,
    range: Range<usize>,
    slot: Slot,
}

/// An optimiser that keeps state for one shard of the parameters.
#[derive(Clone, Debug)]
pub struct ShardedOptimizer {
    pub config: OptimConfig,
    pub step: u64,
    sizes: Vec<usize>,
    shard: Range<usize>,
    per: usize,
    /// Values of each rank's shard gathered per round, so the gather buffer holds
    /// world × `chunk` values rather than the whole model.
    chunk: usize,
    segments: Vec<Segment>,
    mine: Vec<f32>,
    gathered: Vec<f32>,
}

impl ShardedOptimizer {
    /// This rank's shard of `full` (its state, when it has any, is cut to the shard). The
    /// weights are all-gathered in rounds of at most `gather_elems` values over all ranks.
    pub fn from_full(
        full: Optimizer,
        sizes: &[usize],
        rank: usize,
        world: usize,
        gather_elems: usize,
    ) -> Self {
        let total: usize = sizes.iter().sum();
        let (shard, per) = shard_range(total, rank, world);
        let adam = full.config.kind == "adamw";
        let mut segments = Vec::new();
        let mut offset = 0;
        for (param, &n) in sizes.iter().enumerate() {
            let (lo, hi) = (shard.start.max(offset), shard.end.min(offset + n));
            if lo < hi {
                let range = lo - offset..hi - offset;
                let slot = match full.slots.get(param) {
                    Some(s) => Slot {
                        m: s.m[range.clone()].to_vec(),
                        v: if adam {
                            s.v[range.clone()].to_vec()
                        } else {
                            Vec::new()
                        },
                    },
                    None => Slot {
                        m: vec![0.0; range.len()],
                        v: if adam {
                            vec![0.0; range.len()]
                        } else {
                            Vec::new()
                        },
                    },
                };
                segments.push(Segment { param, range, slot });
            }
            offset += n;
        }
        ShardedOptimizer {
            config: full.config,
            step: full.step,
            sizes: sizes.to_vec(),
            shard,
            per,
            chunk: (gather_elems / world.max(1)).clamp(1, per.max(1)),
            segments,
            mine: Vec::new(),
            gathered: Vec::new(),
        }
    }

    /// Bytes of optimiser state this rank holds.
    pub fn state_bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| 4 * (s.slot.m.len() + s.slot.v.len()))
            .sum()
    }

    /// Updates this rank's shard of the (already all-reduced) gradients, then all-gathers the
    /// weights. Returns the number of f32 values each rank contributed to the all-gather.
    pub fn step(
        &mut self,
        mut params: Vec<(String, &mut Param)>,
        lr: f32,
        comm: &dyn Communicator,
    ) -> Result<usize> {
        self.step += 1;
        for seg in &mut self.segments {
            let p = &mut *params[seg.param].1;
            let wd = decay_of(&self.config, p);
            let r = seg.range.clone();
            update(
                &self.config,
                self.step,
                lr,
                wd,
                &mut p.value.data[r.clone()],
                &p.grad[r],
                &mut seg.slot.m,
                &mut seg.slot.v,
            );
        }
        // The shards' new weights, gathered from every rank in rounds of `chunk` values each.
        let world = comm.world_size();
        let total: usize = self.sizes.iter().sum();
        let mut offsets = Vec::with_capacity(params.len());
        let mut o = 0;
        for (_, p) in params.iter() {
            offsets.push(o);
            o += p.value.numel();
        }
        let mut at = 0;
        while at < self.per {
            let c = self.chunk.min(self.per - at);
            self.mine.clear();
            let lo = (self.shard.start + at).min(self.shard.end);
            let hi = (self.shard.start + at + c).min(self.shard.end);
            copy_flat(
                &mut params,
                &offsets,
                lo..hi,
                |w, buf| buf.extend_from_slice(w),
                &mut self.mine,
            );
            self.mine.resize(c, 0.0);
            self.gathered.resize(c * world, 0.0);
            comm.all_gather(&self.mine, &mut self.gathered)?;
            for r in 0..world {
                let start = (r * self.per + at).min(total);
                let end = (r * self.per + at + c).min((r + 1) * self.per).min(total);
                let mut src = &self.gathered[r * c..r * c + (end - start)];
                copy_flat(
                    &mut params,
                    &offsets,
                    start..end,
                    |w, src: &mut &[f32]| {
                        let (head, rest) = src.split_at(w.len());
                        w.copy_from_slice(head);
                        *src = rest;
                    },
                    &mut src,
                );
            }
            at += c;
        }
        Ok(self.per)
    }

    /// The whole optimiser state, gathered from every rank (a collective: all ranks call it)
    /// in rounds of one bucket, for a checkpoint in the ordinary, world-size-free format. Only
    /// the rank that `keep`s it (rank 0, which writes checkpoints) holds the whole state; the
    /// others return `None` and never hold more than a round.
    pub fn gather_full(&self, comm: &dyn Communicator, keep: bool) -> Result<Option<Optimizer>> {
        let adam = self.config.kind == "adamw";
        let world = comm.world_size();
        let total: usize = self.sizes.iter().sum();
        let mut offsets = Vec::with_capacity(self.sizes.len());
        let mut o = 0;
        for &n in &self.sizes {
            offsets.push(o);
            o += n;
        }
        // Straight into one vector per parameter: rank 0 never holds the state twice.
        let gather = |pick: fn(&Slot) -> &Vec<f32>| -> Result<Vec<Vec<f32>>> {
            let mut all: Vec<Vec<f32>> = if keep {
                self.sizes.iter().map(|&n| vec![0.0; n]).collect()
            } else {
                Vec::new()
            };
            let (mut mine, mut got) = (Vec::new(), Vec::new());
            let mut at = 0;
            while at < self.per {
                let c = self.chunk.min(self.per - at);
                // Values [at, at + c) of this rank's shard of the state.
                mine.clear();
                let mut seg_start = 0;
                for seg in &self.segments {
                    let v = pick(&seg.slot);
                    let (lo, hi) = (at.max(seg_start), (at + c).min(seg_start + v.len()));
                    if lo < hi {
                        mine.extend_from_slice(&v[lo - seg_start..hi - seg_start]);
                    }
                    seg_start += v.len();
                }
                mine.resize(c, 0.0);
                got.resize(c * world, 0.0);
                comm.all_gather(&mine, &mut got)?;
                if keep {
                    for r in 0..world {
                        let start = (r * self.per + at).min(total);
                        let end = (r * self.per + at + c).min((r + 1) * self.per).min(total);
                        scatter_flat(
                            &mut all,
                            &offsets,
                            start,
                            &got[r * c..r * c + (end - start)],
                        );
                    }
                }
                at += c;
            }
            Ok(all)
        };
        let m = gather(|s| &s.m)?;
        let v = if adam { gather(|s| &s.v)? } else { Vec::new() };
        if !keep {
            return Ok(None);
        }
        let mut full = Optimizer::new(self.config.clone());
        full.step = self.step;
        let mut v = v.into_iter();
        for m in m {
            let v = if adam {
                v.next().unwrap_or_default()
            } else {
                Vec::new()
            };
            full.slots.push(Slot { m, v });
        }
        Ok(Some(full))
    }

    /// The flat range of the parameters this rank updates.
    pub fn shard(&self) -> Range<usize> {
        self.shard.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dist::comm::ThreadGroup;

    #[test]
    fn shards_cover_the_values_once() {
        for (total, world) in [(10, 3), (9, 3), (2, 4), (0, 2), (7, 1)] {
            let mut covered = Vec::new();
            for r in 0..world {
                let (range, per) = shard_range(total, r, world);
                assert!(range.len() <= per);
                covered.extend(range);
            }
            assert_eq!(covered, (0..total).collect::<Vec<_>>(), "{total}/{world}");
        }
    }

    fn params(seed: f32) -> Vec<Param> {
        [vec![3, 2], vec![2], vec![5]]
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let mut p = Param::zeros(shape);
                for (j, (w, g)) in p.value.data.iter_mut().zip(&mut p.grad).enumerate() {
                    *w = (i * 10 + j) as f32 * 0.1 - 0.7;
                    *g = ((i + j) as f32 * 0.37 + seed).sin();
                }
                p
            })
            .collect()
    }

    fn named(ps: &mut [Param]) -> Vec<(String, &mut Param)> {
        ps.iter_mut().map(|p| (String::new(), p)).collect()
    }

    /// Three steps of AdamW, whole and sharded over 3 thread ranks: the same bits, and the
    /// gathered state equals the whole optimiser's.
    #[test]
    fn sharded_adamw_equals_the_whole_one() {
        let config = OptimConfig {
            weight_decay: 0.1,
            no_decay_1d: true,
            ..OptimConfig::default()
        };
        let mut whole = params(0.0);
        let mut opt = Optimizer::new(config.clone());
        for s in 0..3 {
            for (i, p) in whole.iter_mut().enumerate() {
                p.grad = params(s as f32)[i].grad.clone();
            }
            opt.step(named(&mut whole), 0.01);
        }
        let sizes = [6, 2, 5];
        let handles: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|c| {
                let config = config.clone();
                std::thread::spawn(move || {
                    let mut ps = params(0.0);
                    let mut z =
                        // Gather rounds of 3 values per rank: several rounds per step.
                        ShardedOptimizer::from_full(Optimizer::new(config), &sizes, c.rank(), 3, 9);
                    for s in 0..3 {
                        for (i, p) in ps.iter_mut().enumerate() {
                            p.grad = params(s as f32)[i].grad.clone();
                        }
                        z.step(named(&mut ps), 0.01, &c).unwrap();
                    }
                    let full = z.gather_full(&c, c.rank() == 1).unwrap();
                    assert_eq!(full.is_some(), c.rank() == 1);
                    (ps, full, z.state_bytes())
                })
            })
            .collect();
        for h in handles {
            let (ps, full, bytes) = h.join().unwrap();
            for (a, b) in ps.iter().zip(&whole) {
                assert_eq!(a.value.data, b.value.data);
            }
            assert!(bytes <= 4 * 2 * 5, "{bytes}");
            let Some(full) = full else { continue };
            assert_eq!(full.step, opt.step);
            for (a, b) in full.slots.iter().zip(&opt.slots) {
                assert_eq!(a.m, b.m);
                assert_eq!(a.v, b.v);
            }
        }
    }
}
