//! Gradient buckets: the parameters, last layer first (the order backward produces their
//! gradients), cut into flat buckets of at most `bucket_elems` values, each all-reduced with a
//! non-blocking sum as soon as backward has produced all of its gradients.
//!
//! Backward reports a *watermark* w after each block (last block first): every parameter with
//! index ≥ w (in `Module::params_mut` order) has its final gradient for the step. A bucket's
//! parameters are all ≥ its lowest one, so once w falls to that the [`BucketReducer`] packs the
//! bucket into its own buffer and starts its sum, then lets the started ones progress while the
//! next blocks compute. After backward it waits for every sum, in order, and unpacks them into
//! the gradients, before clipping and the optimiser read them. Packed copies, not views, go to
//! the transport, so backward may go on writing the gradients below the watermark; the cost
//! is a copy in and a copy out per bucket, and a buffer per bucket in flight (plus, for MPI,
//! which has no portable in-place flag here, a receive buffer each). At most
//! [`MAX_IN_FLIGHT`] buckets are in flight, so these buffers do not grow into another copy of
//! the gradients.
use super::comm::{Communicator, PendingSum};
use crate::nn::Param;
use crate::Result;
use std::collections::VecDeque;

/// A run of one parameter's gradient inside a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index into the parameter list (`Module::params_mut` order).
    pub param: usize,
    /// Range within that parameter's values.
    pub start: usize,
    pub len: usize,
}

/// The buckets of a model: each a list of pieces whose lengths sum to at most the bucket size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPlan {
    pub buckets: Vec<Vec<Piece>>,
}

impl BucketPlan {
    /// Plans buckets over parameters of `sizes` values, in reverse order; a parameter larger
    /// than a bucket is cut across several.
    pub fn new(sizes: &[usize], bucket_elems: usize) -> Self {
        let cap = bucket_elems.max(1);
        let mut buckets = Vec::new();
        let mut cur: Vec<Piece> = Vec::new();
        let mut fill = 0;
        for (param, &n) in sizes.iter().enumerate().rev() {
            let mut start = 0;
            while start < n {
                let len = (cap - fill).min(n - start);
                cur.push(Piece { param, start, len });
                fill += len;
                start += len;
                if fill == cap {
                    buckets.push(std::mem::take(&mut cur));
                    fill = 0;
                }
            }
        }
        if !cur.is_empty() {
            buckets.push(cur);
        }
        BucketPlan { buckets }
    }

    /// Values in the biggest bucket.
    pub fn max_bucket(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.iter().map(|p| p.len).sum::<usize>())
            .max()
            .unwrap_or(0)
    }

    /// Values over all buckets (every gradient once).
    pub fn total(&self) -> usize {
        self.buckets.iter().flatten().map(|p| p.len).sum()
    }

    /// The lowest parameter index in bucket `k`: its last piece's (buckets and the pieces in
    /// them run from the last parameter down).
    pub fn lowest_param(&self, k: usize) -> usize {
        self.buckets[k].last().map_or(0, |p| p.param)
    }

    /// How many buckets, from the first, hold only parameters ≥ `watermark`.
    pub fn ready(&self, watermark: usize) -> usize {
        self.buckets
            .partition_point(|b| b.last().map_or(0, |p| p.param) >= watermark)
    }

    /// Copies bucket `k`'s gradient pieces, in order, into `buf`.
    pub fn pack(&self, k: usize, params: &[(String, &mut Param)], buf: &mut Vec<f32>) {
        buf.clear();
        for p in &self.buckets[k] {
            buf.extend_from_slice(&params[p.param].1.grad[p.start..p.start + p.len]);
        }
    }

    /// Copies `buf` (bucket `k`, packed) back into the gradients.
    pub fn unpack(&self, k: usize, params: &mut [(String, &mut Param)], buf: &[f32]) {
        let mut at = 0;
        for p in &self.buckets[k] {
            params[p.param].1.grad[p.start..p.start + p.len].copy_from_slice(&buf[at..at + p.len]);
            at += p.len;
        }
    }
}

/// Buckets in flight at once, by default: one more starts once the oldest has completed
/// (checked at each report of backward, never waited for inside it) or, at the latest, after
/// backward. So the bucket buffers stay at two buckets (four for MPI, with its receive
/// buffers) however many buckets the model has.
pub const MAX_IN_FLIGHT: usize = 2;

/// One step's gradient sum over the ranks, bucket by bucket in the plan's order, started as
/// backward produces the buckets ([`BucketReducer::ready`]) and completed after it
/// ([`BucketReducer::finish`]). Every rank starts the same buckets in the same order, whenever
/// its backward reaches them. Keeps its buffers between steps.
pub struct BucketReducer {
    /// Buckets started this step: a prefix of the plan.
    started: usize,
    /// Sums in flight, in the order started, with their bucket.
    pending: VecDeque<(usize, PendingSum)>,
    max_in_flight: usize,
    /// Packing buffers not in flight.
    free: Vec<Vec<f32>>,
    /// Seconds spent blocked waiting for sums to complete, since the last `take_wait_secs`.
    wait_secs: f64,
}

impl Default for BucketReducer {
    fn default() -> Self {
        BucketReducer::new(MAX_IN_FLIGHT)
    }
}

impl BucketReducer {
    /// A reducer with at most `max_in_flight` (≥ 1) buckets in flight at once.
    pub fn new(max_in_flight: usize) -> Self {
        BucketReducer {
            started: 0,
            pending: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            free: Vec::new(),
            wait_secs: 0.0,
        }
    }

    /// Whether some bucket of this step has been started.
    pub fn in_progress(&self) -> bool {
        self.started > 0
    }

    /// The seconds spent blocked waiting for sums since the last call.
    pub fn take_wait_secs(&mut self) -> f64 {
        std::mem::take(&mut self.wait_secs)
    }

    /// Every gradient of a parameter ≥ `watermark` is final: starts the sum of each bucket
    /// not yet started that holds only such parameters, then lets the started ones progress.
    /// With `max_in_flight` sums in flight, the next starts only once the oldest has completed
    /// (it is then unpacked); the rest wait for a later call. Never blocks.
    pub fn ready(
        &mut self,
        plan: &BucketPlan,
        watermark: usize,
        params: &mut [(String, &mut Param)],
        comm: &dyn Communicator,
    ) -> Result<()> {
        self.start_upto(plan, plan.ready(watermark), false, params, comm)?;
        self.progress()
    }

    /// Starts buckets up to (not including) `upto`, blocking for the oldest sum when
    /// `max_in_flight` are in flight if `block`, else stopping there.
    fn start_upto(
        &mut self,
        plan: &BucketPlan,
        upto: usize,
        block: bool,
        params: &mut [(String, &mut Param)],
        comm: &dyn Communicator,
    ) -> Result<()> {
        while self.started < upto {
            if self.pending.len() >= self.max_in_flight {
                let done = match self.pending.front_mut() {
                    Some((_, p)) => p.test()?,
                    None => true,
                };
                if !done && !block {
                    break;
                }
                self.complete_oldest(plan, params)?;
            }
            let k = self.started;
            let mut buf = self.buffer(plan.buckets[k].iter().map(|p| p.len).sum());
            plan.pack(k, params, &mut buf);
            self.pending.push_back((k, comm.start_all_reduce_sum(buf)?));
            self.started += 1;
        }
        Ok(())
    }

    /// A free buffer for `len` values: one of that length if there is one (buckets keep
    /// their sizes from step to step), else the roomiest.
    fn buffer(&mut self, len: usize) -> Vec<f32> {
        let at = self
            .free
            .iter()
            .position(|b| b.len() == len)
            .or_else(|| (0..self.free.len()).max_by_key(|&i| self.free[i].capacity()));
        at.map_or_else(Vec::new, |i| self.free.swap_remove(i))
    }

    /// Waits for the oldest sum in flight and unpacks it into the gradients.
    fn complete_oldest(
        &mut self,
        plan: &BucketPlan,
        params: &mut [(String, &mut Param)],
    ) -> Result<()> {
        if let Some((k, p)) = self.pending.pop_front() {
            let t = std::time::Instant::now();
            let buf = p.wait()?;
            self.wait_secs += t.elapsed().as_secs_f64();
            plan.unpack(k, params, &buf);
            self.free.push(buf);
        }
        Ok(())
    }

    /// Lets the transport progress the sums in flight.
    pub fn progress(&mut self) -> Result<()> {
        for (_, p) in self.pending.iter_mut() {
            p.test()?;
        }
        Ok(())
    }

    /// Starts every bucket not yet started (all gradients are final now), waits for every
    /// sum in order and unpacks it into the gradients; the next step starts afresh.
    pub fn finish(
        &mut self,
        plan: &BucketPlan,
        params: &mut [(String, &mut Param)],
        comm: &dyn Communicator,
    ) -> Result<()> {
        self.start_all(plan, params, comm)?;
        while !self.pending.is_empty() {
            self.complete_oldest(plan, params)?;
        }
        self.started = 0;
        Ok(())
    }

    /// Starts every bucket not yet started (waiting for older sums as `max_in_flight` needs).
    pub fn start_all(
        &mut self,
        plan: &BucketPlan,
        params: &mut [(String, &mut Param)],
        comm: &dyn Communicator,
    ) -> Result<()> {
        self.start_upto(plan, plan.buckets.len(), true, params, comm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_run_last_parameter_first_and_cut_big_ones() {
        let plan = BucketPlan::new(&[3, 10, 2], 4);
        let flat: Vec<Vec<(usize, usize, usize)>> = plan
            .buckets
            .iter()
            .map(|b| b.iter().map(|p| (p.param, p.start, p.len)).collect())
            .collect();
        assert_eq!(
            flat,
            vec![
                vec![(2, 0, 2), (1, 0, 2)],
                vec![(1, 2, 4)],
                vec![(1, 6, 4)],
                vec![(0, 0, 3)],
            ]
        );
        assert_eq!(plan.total(), 15);
        assert_eq!(plan.max_bucket(), 4);
        // One bucket when everything fits.
        assert_eq!(BucketPlan::new(&[3, 10, 2], 100).buckets.len(), 1);
        assert!(BucketPlan::new(&[], 4).buckets.is_empty());
        // A bucket is ready once the watermark reaches its lowest parameter.
        assert_eq!(
            (0..4).map(|k| plan.lowest_param(k)).collect::<Vec<_>>(),
            [1, 1, 1, 0]
        );
        assert_eq!([3, 2, 1, 0].map(|w| plan.ready(w)), [0, 0, 3, 4]);
    }

    #[test]
    fn buckets_started_during_backward_sum_like_one_blocking_reduce() {
        use super::super::comm::ThreadGroup;
        let sizes = [3usize, 10, 2];
        let plan = BucketPlan::new(&sizes, 4);
        let handles: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|c| {
                let plan = plan.clone();
                std::thread::spawn(move || {
                    let r = c.rank() as f32;
                    let mut ps: Vec<Param> = sizes.iter().map(|&n| Param::zeros(&[n])).collect();
                    let mut red = BucketReducer::default();
                    for step in 0..2 {
                        for (i, p) in ps.iter_mut().enumerate() {
                            for (j, g) in p.grad.iter_mut().enumerate() {
                                *g = (r + 1.0) * (100 * i + j + step) as f32;
                            }
                        }
                        let mut params: Vec<(String, &mut Param)> =
                            ps.iter_mut().map(|p| (String::new(), p)).collect();
                        // As backward would report: the last parameter, then the middle one.
                        red.ready(&plan, 2, &mut params, &c).unwrap();
                        assert!(!red.in_progress());
                        // Three buckets ready: the third starts once the first is done (at
                        // once here: thread ranks sum as they start), two stay in flight.
                        red.ready(&plan, 1, &mut params, &c).unwrap();
                        assert_eq!((red.started, red.pending.len()), (3, 2));
                        // Backward may still write the gradients below the watermark.
                        params[0].1.grad.iter_mut().for_each(|g| *g += 1.0);
                        red.finish(&plan, &mut params, &c).unwrap();
                        assert!(!red.in_progress());
                        for (i, (_, p)) in params.iter().enumerate() {
                            for (j, &g) in p.grad.iter().enumerate() {
                                let one = (100 * i + j + step) as f32 + f32::from(i == 0);
                                // Ranks hold 1× and 2× (plus one each for parameter 0).
                                let want = if i == 0 { 3.0 * one - 1.0 } else { 3.0 * one };
                                assert_eq!(g, want, "step {step} param {i} value {j}");
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
