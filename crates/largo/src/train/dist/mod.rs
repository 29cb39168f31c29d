//! Data-parallel training: N ranks (processes under `mpirun`, or threads in tests) train one
//! model as one process would with the same global batch.
//!
//! The pipeline of one step, on every rank:
//! 1. **Slice** — every rank draws the same global batch (same seeded order or RNG) and keeps
//!    its contiguous share ([`Dist::slice`]); its loss gradient is weighted by its share of the
//!    step's samples, so the sum over ranks is the gradient of the global mean.
//! 2. **Backward**, overlapped with the **all-reduce** of the gradients in buckets, last layer
//!    first ([`buckets::BucketPlan`], `--bucket-mb`), through a [`Communicator`]: the backward of
//!    the step's last micro-batch reports after each block which gradients are final
//!    ([`Dist::grad_hook`]), the buckets holding only those start their non-blocking sums, and
//!    after backward the step waits for them ([`Dist::reduce_grads`]). Earlier micro-batches
//!    only accumulate (DDP's `no_sync`).
//! 3. **Clip and update** — every rank holds the summed gradients, so the norm, the clipping
//!    and the update agree everywhere. With `--shard-optimizer` (ZeRO-1, [`zero`]) each rank
//!    updates its shard only, with moments for that shard only, and all-gathers the weights.
//! 4. **Side effects on rank 0 only**: metrics, the progress bar, checkpoints, `best/`,
//!    `model/`, curves. Validation is split over the ranks and summed.
//!
//! At the start rank 0 alone reads a checkpoint to resume from, and broadcasts the trainer's
//! state, the weights and the optimiser state, so all ranks continue from one checkpoint.
//! Dropout masks use a seed derived from the step's seed and the rank (rank 0 keeps the
//! single-process seed). Decisions that could differ between ranks (a time limit) are agreed
//! on with a collective; everything else follows from the step counter, which all ranks share.

pub mod buckets;
pub mod comm;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod zero;

#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
pub use comm::{Communicator, SingleProcess, ThreadGroup};

use super::checkpoint::{self, TrainState};
use super::optim::Optimizer;
use crate::config::Config;
use crate::nn::{Module, Param};
use crate::{Error, Result};
use buckets::{BucketPlan, BucketReducer};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::path::Path;
use std::time::Instant;
use zero::ShardedOptimizer;

/// Settings of data-parallel training that do not change what is learned.
#[derive(Clone, Debug)]
pub struct DistOptions {
    /// ZeRO-1: partition the optimiser state over the ranks.
    pub shard_optimizer: bool,
    /// Gradient bucket size in MB (10^6 bytes).
    pub bucket_mb: f64,
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions {
            shard_optimizer: false,
            bucket_mb: 25.0,
        }
    }
}

/// Counters of the communication of a run, for `dist.json` and the closing summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub backend: String,
    pub world_size: usize,
    pub shard_optimizer: bool,
    /// Optimiser steps taken in this session.
    pub steps: u64,
    pub buckets: usize,
    pub bucket_bytes: usize,
    /// Gradient bytes all-reduced per step (the payload; a ring moves 2(N−1)/N of it per rank).
    pub grad_bytes_per_step: u64,
    /// Weight bytes each rank contributes to the all-gather per step (ZeRO-1).
    pub gather_bytes_per_step: u64,
    /// Bytes each rank sends per step under ring algorithms: 2(N−1)/N × gradients
    /// + (N−1) × its all-gather piece.
    pub ring_bytes_sent_per_rank_per_step: u64,
    /// Seconds this rank (rank 0's in `dist.json`) spent in gradient all-reduce calls: packing
    /// and starting buckets and letting them progress during backward, then waiting for them
    /// and unpacking after it.
    pub all_reduce_secs: f64,
    /// Of `all_reduce_secs`, the seconds blocked after backward waiting for bucket sums to
    /// complete: the part of the all-reduce that backward did not hide.
    pub all_reduce_wait_secs: f64,
    /// `all_reduce_secs` of every rank.
    pub all_reduce_secs_per_rank: Vec<f64>,
    /// `all_reduce_wait_secs` of every rank.
    pub all_reduce_wait_secs_per_rank: Vec<f64>,
    pub all_gather_secs: f64,
    /// Seconds from the start of training to its end, this session.
    pub train_secs: f64,
    /// Gradient bytes all-reduced per second spent in all-reduce calls (algorithm bandwidth;
    /// with the sums overlapping backward, an effective figure: the transfer may also advance
    /// outside the calls).
    pub all_reduce_gb_per_s: f64,
    /// × 2(N−1)/N: the bandwidth each link carried (NCCL's "bus bandwidth").
    pub all_reduce_bus_gb_per_s: f64,
    /// Optimiser state held by each rank, in bytes.
    pub optimizer_bytes_per_rank: Vec<u64>,
    /// The optimiser state of one unsharded copy, in bytes.
    pub optimizer_bytes_unsharded: u64,
}

/// Test hook `LARGO_FAULT=<rank>:<step>:exit|hang`: that rank exits (status 3, without
/// finalising MPI, as a crash would) or hangs right after taking that step.
#[derive(Clone, Copy, Debug)]
struct Fault {
    rank: usize,
    step: u64,
    hang: bool,
}

fn parse_fault(s: &str) -> Option<Fault> {
    let mut it = s.split(':');
    let rank = it.next()?.trim().parse().ok()?;
    let step = it.next()?.trim().parse().ok()?;
    let hang = match it.next()?.trim() {
        "hang" => true,
        "exit" => false,
        _ => return None,
    };
    Some(Fault { rank, step, hang })
}

/// The optimiser a loop steps: whole, or this rank's shard (ZeRO-1).
pub enum TrainOptimizer {
    Full(Optimizer),
    Sharded(ShardedOptimizer),
}

impl TrainOptimizer {
    pub fn state_bytes(&self) -> usize {
        match self {
            TrainOptimizer::Full(o) => o.state_bytes(),
            TrainOptimizer::Sharded(o) => o.state_bytes(),
        }
    }
}

/// One rank's view of a data-parallel run: its communicator and what the loops need of it.
pub struct Dist {
    comm: Box<dyn Communicator>,
    opts: DistOptions,
    fault: Option<Fault>,
    shared_error: Cell<bool>,
    plan: RefCell<Option<BucketPlan>>,
    reducer: RefCell<BucketReducer>,
    /// An error of the backward hook, which cannot return one; reported by the next call.
    hook_error: RefCell<Option<Error>>,
    stats: RefCell<Stats>,
    started: Cell<Option<Instant>>,
}

impl Dist {
    /// One process: every collective is free and the loops behave exactly as without `Dist`.
    pub fn single() -> Self {
        Dist::new(Box::new(SingleProcess), DistOptions::default())
    }

    pub fn new(comm: Box<dyn Communicator>, opts: DistOptions) -> Self {
        let fault = std::env::var("LARGO_FAULT")
            .ok()
            .and_then(|s| parse_fault(&s));
        let stats = Stats {
            backend: comm.name().into(),
            world_size: comm.world_size(),
            shard_optimizer: opts.shard_optimizer,
            ..Stats::default()
        };
        Dist {
            comm,
            opts,
            fault,
            shared_error: Cell::new(false),
            plan: RefCell::new(None),
            reducer: RefCell::new(BucketReducer::default()),
            hook_error: RefCell::new(None),
            stats: RefCell::new(stats),
            started: Cell::new(None),
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    /// Rank 0: the one that writes files and talks to the user.
    pub fn is_lead(&self) -> bool {
        self.comm.rank() == 0
    }
    pub fn comm(&self) -> &dyn Communicator {
        &*self.comm
    }
    pub fn options(&self) -> &DistOptions {
        &self.opts
    }
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }
    /// More than one rank, or a sharded optimiser: worth a `dist.json` and a summary.
    pub fn is_distributed(&self) -> bool {
        self.world_size() > 1 || self.opts.shard_optimizer
    }

    /// Whether the last error came from rank 0 and every rank has it (so no rank is left
    /// waiting and the job can end normally instead of aborting).
    pub fn error_was_shared(&self) -> bool {
        self.shared_error.get()
    }

    /// Ends the whole job (see [`Communicator::abort`]).
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    /// This rank's contiguous share of `n` items: ranks differ by at most one item.
    pub fn slice(&self, n: usize) -> Range<usize> {
        slice_of(n, self.rank(), self.world_size())
    }

    /// The dropout seed of this rank for a micro-batch whose single-process seed is `base`.
    pub fn rank_seed(&self, base: u64) -> u64 {
        match self.rank() {
            0 => base,
            r => {
                let mut x = base ^ (r as u64).wrapping_mul(0xA076_1D64_78BD_642F);
                crate::rng::splitmix64(&mut x)
            }
        }
    }

    /// Sums a few values over the ranks (nothing to do in one process).
    pub fn sum_f64(&self, xs: &mut [f64]) -> Result<()> {
        if self.world_size() > 1 {
            self.comm.all_reduce_sum_f64(xs)?;
        }
        Ok(())
    }

    /// True on every rank when it is true on any.
    pub fn any(&self, flag: bool) -> Result<bool> {
        let mut x = [f64::from(u8::from(flag))];
        self.sum_f64(&mut x)?;
        Ok(x[0] > 0.0)
    }

    /// `train.max_minutes` on every rank's clock, agreed on (one tiny collective per call, and
    /// none without a limit).
    pub fn out_of_time(&self, start: Instant, max_minutes: f64) -> Result<bool> {
        if max_minutes <= 0.0 {
            return Ok(false);
        }
        self.any(start.elapsed().as_secs_f64() >= max_minutes * 60.0)
    }

    pub fn barrier(&self) -> Result<()> {
        if self.world_size() > 1 {
            self.comm.barrier()?;
        }
        Ok(())
    }

    /// Runs `f` on rank 0 only and gives its outcome to every rank: rank 0's error becomes
    /// every rank's (no rank is left waiting for rank 0).
    pub fn lead_then_share(&self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.world_size() == 1 {
            return f();
        }
        let mut msg = Vec::new();
        let res = if self.is_lead() {
            let r = f();
            if let Err(e) = &r {
                msg = e.to_string().into_bytes();
            }
            r
        } else {
            Ok(())
        };
        self.comm.broadcast_bytes(&mut msg, 0)?;
        if msg.is_empty() {
            return res;
        }
        self.shared_error.set(true);
        if self.is_lead() {
            res
        } else {
            Err(Error::Invalid(format!(
                "rank 0 failed: {}",
                String::from_utf8_lossy(&msg)
            )))
        }
    }

    /// Rank 0's configuration on every rank (loaded, numbered and checked there only, so the
    /// other ranks need neither the config file nor the run directory).
    pub fn share_config(&self, lead: impl FnOnce() -> Result<Config>) -> Result<Config> {
        if self.world_size() == 1 {
            return lead();
        }
        let mut cfg = None;
        let mut text = Vec::new();
        self.lead_then_share(|| {
            let c = lead()?;
            text = c.to_toml().into_bytes();
            cfg = Some(c);
            Ok(())
        })?;
        self.comm.broadcast_bytes(&mut text, 0)?;
        match cfg {
            Some(c) => Ok(c),
            None => {
                let s = String::from_utf8_lossy(&text);
                let table: toml::Table = toml::from_str(&s)
                    .map_err(|e| Error::Config(format!("rank 0's configuration: {e}")))?;
                Config::from_table(table)
            }
        }
    }

    /// Gives every rank rank 0's trainer state, weights and (when resuming) optimiser state.
    pub(crate) fn sync_start(
        &self,
        model: &mut dyn Module,
        opt: &mut Optimizer,
        state: &mut TrainState,
    ) -> Result<()> {
        self.started.set(Some(Instant::now()));
        if self.world_size() == 1 {
            return Ok(());
        }
        let mut params = model.params_mut();
        let lead = self.is_lead();
        let mut head = if lead {
            serde_json::to_vec(&(&*state, opt.step, opt.slots.len() == params.len()))
                .expect("state serialises")
        } else {
            Vec::new()
        };
        self.comm.broadcast_bytes(&mut head, 0)?;
        let (s, step, has_slots): (TrainState, u64, bool) = serde_json::from_slice(&head)
            .map_err(|e| Error::Invalid(format!("rank 0's trainer state: {e}")))?;
        if !lead {
            *state = s;
            opt.step = step;
        }
        for (_, p) in params.iter_mut() {
            self.comm.broadcast(&mut p.value.data, 0)?;
        }
        if has_slots {
            let sizes: Vec<usize> = params.iter().map(|(_, p)| p.value.numel()).collect();
            opt.ensure_slots(&sizes);
            for slot in &mut opt.slots {
                self.comm.broadcast(&mut slot.m, 0)?;
                self.comm.broadcast(&mut slot.v, 0)?;
            }
        }
        Ok(())
    }

    /// The optimiser this rank steps (its shard with `shard_optimizer`), after reporting the
    /// optimiser memory of every rank.
    pub(crate) fn optimizer(&self, full: Optimizer, model: &dyn Module) -> Result<TrainOptimizer> {
        let sizes: Vec<usize> = model
            .params()
            .iter()
            .map(|(_, p)| p.value.numel())
            .collect();
        let total: usize = sizes.iter().sum();
        let per_value = if full.config.kind == "adamw" { 8 } else { 4 };
        let opt = if self.opts.shard_optimizer {
            TrainOptimizer::Sharded(ShardedOptimizer::from_full(
                full,
                &sizes,
                self.rank(),
                self.world_size(),
                self.bucket_elems(),
            ))
        } else {
            TrainOptimizer::Full(full)
        };
        // Full optimisers allocate lazily; count what they will hold.
        let mine = match &opt {
            TrainOptimizer::Full(_) => total * per_value,
            TrainOptimizer::Sharded(o) => o.state_bytes(),
        };
        let mut per_rank = vec![0.0; self.world_size()];
        per_rank[self.rank()] = mine as f64;
        self.sum_f64(&mut per_rank)?;
        let plan = BucketPlan::new(&sizes, self.bucket_elems());
        let mut st = self.stats.borrow_mut();
        st.optimizer_bytes_per_rank = per_rank.iter().map(|&b| b as u64).collect();
        st.optimizer_bytes_unsharded = (total * per_value) as u64;
        if self.world_size() > 1 {
            st.buckets = plan.buckets.len();
            st.bucket_bytes = 4 * plan.max_bucket();
            st.grad_bytes_per_step = 4 * plan.total() as u64;
            *self.plan.borrow_mut() = Some(plan);
        }
        if self.opts.shard_optimizer {
            let (_, per) = zero::shard_range(total, self.rank(), self.world_size());
            st.gather_bytes_per_step = 4 * per as u64;
        }
        let n = self.world_size() as u64;
        st.ring_bytes_sent_per_rank_per_step =
            2 * (n - 1) * st.grad_bytes_per_step / n + (n - 1) * st.gather_bytes_per_step;
        if self.is_lead() && self.is_distributed() {
            let mb = |b: f64| b / 1e6;
            let list: Vec<String> = per_rank.iter().map(|&b| format!("{:.2}", mb(b))).collect();
            let buckets = if self.world_size() > 1 {
                format!(
                    "; gradients all-reduced in {} bucket(s) of ≤ {:.2} MB",
                    st.buckets,
                    mb(st.bucket_bytes as f64)
                )
            } else {
                String::new()
            };
            eprintln!(
                "{} rank(s) ({}): optimiser state per rank {} MB ({}; one whole copy {:.2} MB){buckets}",
                self.world_size(),
                self.comm.name(),
                list.join(", "),
                if self.opts.shard_optimizer {
                    "sharded, ZeRO-1"
                } else {
                    "replicated"
                },
                mb((total * per_value) as f64),
            );
        }
        Ok(opt)
    }

    fn bucket_elems(&self) -> usize {
        ((self.opts.bucket_mb * 1e6 / 4.0) as usize).max(1)
    }

    /// The hook for the backward of a step's micro-batch (`last`: the step's last one; the
    /// others only accumulate, as DDP's `no_sync`): `GradHook::ready`, which the model calls
    /// with a watermark w after each block, starts the non-blocking sums of the buckets that
    /// hold only parameters ≥ w, whose gradients are final, and lets those in flight progress.
    /// `None` in one process and for the other micro-batches: call the plain backward then.
    pub(crate) fn grad_hook(&self, last: bool) -> Option<GradHook<'_>> {
        (last && self.plan.borrow().is_some()).then_some(GradHook(self))
    }

    fn grads_ready(&self, watermark: usize, params: &mut [(String, &mut Param)]) {
        let plan = self.plan.borrow();
        let Some(plan) = plan.as_ref() else {
            return;
        };
        if self.hook_error.borrow().is_some() {
            return;
        }
        let t = Instant::now();
        let mut reducer = self.reducer.borrow_mut();
        let r = reducer.ready(plan, watermark, params, &*self.comm);
        let mut st = self.stats.borrow_mut();
        st.all_reduce_secs += t.elapsed().as_secs_f64();
        st.all_reduce_wait_secs += reducer.take_wait_secs();
        if let Err(e) = r {
            *self.hook_error.borrow_mut() = Some(e);
        }
    }

    fn take_hook_error(&self) -> Result<()> {
        match self.hook_error.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// All of the step's gradients are produced: starts the sums of the buckets the backward
    /// hook has not started (all of them on a rank whose last micro-batch was empty). Every
    /// rank calls it at the same point, before its next collective, so that all ranks start
    /// the buckets in the same order relative to their other collectives.
    pub(crate) fn grads_done(&self, model: &mut dyn Module) -> Result<()> {
        self.take_hook_error()?;
        let plan = self.plan.borrow();
        let Some(plan) = plan.as_ref() else {
            return Ok(());
        };
        let t = Instant::now();
        let mut params = model.params_mut();
        let mut reducer = self.reducer.borrow_mut();
        let r = reducer.start_all(plan, &mut params, &*self.comm);
        let mut st = self.stats.borrow_mut();
        st.all_reduce_secs += t.elapsed().as_secs_f64();
        st.all_reduce_wait_secs += reducer.take_wait_secs();
        r
    }

    /// Completes the sum of the gradients over the ranks: starts any bucket not yet started,
    /// waits for each in order and unpacks it (nothing to do in one process).
    pub(crate) fn reduce_grads(&self, params: &mut [(String, &mut Param)]) -> Result<()> {
        self.take_hook_error()?;
        let plan = self.plan.borrow();
        let Some(plan) = plan.as_ref() else {
            return Ok(());
        };
        let t = Instant::now();
        let mut reducer = self.reducer.borrow_mut();
        let r = reducer.finish(plan, params, &*self.comm);
        let mut st = self.stats.borrow_mut();
        st.all_reduce_secs += t.elapsed().as_secs_f64();
        st.all_reduce_wait_secs += reducer.take_wait_secs();
        r
    }

    /// One optimiser update with learning rate `lr` of the (summed, clipped) gradients.
    pub(crate) fn update(
        &self,
        opt: &mut TrainOptimizer,
        params: Vec<(String, &mut Param)>,
        lr: f32,
    ) -> Result<()> {
        match opt {
            TrainOptimizer::Full(o) => o.step(params, lr),
            TrainOptimizer::Sharded(o) => {
                let t = Instant::now();
                o.step(params, lr, &*self.comm)?;
                self.stats.borrow_mut().all_gather_secs += t.elapsed().as_secs_f64();
            }
        }
        self.stats.borrow_mut().steps += 1;
        Ok(())
    }

    /// The fault-injection hook (see `LARGO_FAULT`), after step `step`.
    pub(crate) fn after_step(&self, step: u64) {
        if let Some(f) = self.fault {
            if f.rank == self.rank() && f.step == step {
                eprintln!(
                    "rank {}: LARGO_FAULT: {} after step {step}",
                    f.rank,
                    if f.hang { "hanging" } else { "exiting" }
                );
                if f.hang {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                std::process::exit(3);
            }
        }
    }

    /// Writes a checkpoint from rank 0; with a sharded optimiser the state is gathered first
    /// (every rank takes part), so the checkpoint has the ordinary, world-size-free format.
    pub(crate) fn save_checkpoint(
        &self,
        run: &Path,
        state: &TrainState,
        model: &dyn Module,
        opt: &TrainOptimizer,
        keep: usize,
    ) -> Result<()> {
        match opt {
            TrainOptimizer::Full(o) => {
                if self.is_lead() {
                    checkpoint::save(run, state, model, o, keep)?;
                }
            }
            TrainOptimizer::Sharded(o) => {
                if let Some(full) = o.gather_full(&*self.comm, self.is_lead())? {
                    checkpoint::save(run, state, model, &full, keep)?;
                }
            }
        }
        Ok(())
    }

    /// Closes the session's counters (a collective: every rank's all-reduce times are
    /// gathered); rank 0 writes them to `<run>/dist.json` when the run is distributed (a
    /// single-process run writes nothing new).
    pub(crate) fn finish(&self, run: &Path) -> Result<()> {
        let world = self.world_size();
        let mut times = vec![0.0; 2 * world];
        {
            let st = self.stats.borrow();
            times[self.rank()] = st.all_reduce_secs;
            times[world + self.rank()] = st.all_reduce_wait_secs;
        }
        self.sum_f64(&mut times)?;
        let mut st = self.stats.borrow_mut();
        st.all_reduce_secs_per_rank = times[..world].to_vec();
        st.all_reduce_wait_secs_per_rank = times[world..].to_vec();
        if let Some(t) = self.started.get() {
            st.train_secs = t.elapsed().as_secs_f64();
        }
        let moved = (st.grad_bytes_per_step * st.steps) as f64;
        if st.all_reduce_secs > 0.0 {
            st.all_reduce_gb_per_s = moved / st.all_reduce_secs / 1e9;
            let n = st.world_size as f64;
            st.all_reduce_bus_gb_per_s = st.all_reduce_gb_per_s * 2.0 * (n - 1.0) / n;
        }
        if self.is_lead() && self.is_distributed() {
            let json = serde_json::to_string_pretty(&*st).expect("stats serialise");
            crate::io::write_atomic(&run.join("dist.json"), json.as_bytes())?;
        }
        if self.is_lead() && world > 1 {
            let per_rank: Vec<String> = (0..world)
                .map(|r| format!("{:.2} s ({:.2} s waiting)", times[r], times[world + r]))
                .collect();
            eprintln!(
                "{} ranks: {:.2} MB of gradients all-reduced per step at {:.2} GB/s ({:.2} GB/s bus), {:.1} s of {:.1} s in collectives; all-reduce per rank {}",
                st.world_size,
                st.grad_bytes_per_step as f64 / 1e6,
                st.all_reduce_gb_per_s,
                st.all_reduce_bus_gb_per_s,
                st.all_reduce_secs + st.all_gather_secs,
                st.train_secs,
                per_rank.join(", ")
            );
        }
        Ok(())
    }
}

/// The backward hook of [`Dist::grad_hook`].
pub(crate) struct GradHook<'a>(&'a Dist);

impl GradHook<'_> {
    /// Every parameter ≥ `watermark` has its final gradient (see [`crate::nn::GradsReady`]).
    pub(crate) fn ready(&self, watermark: usize, params: &mut [(String, &mut Param)]) {
        self.0.grads_ready(watermark, params);
    }
}

/// The kernel threads of this process: `threads` when given (non-zero); under an MPI launcher
/// that says how many ranks share this machine (OpenMPI's `OMPI_COMM_WORLD_LOCAL_SIZE`,
/// MPICH's `MPI_LOCALNRANKS`), the cores divided among them; else 0 (all cores).
pub fn threads_per_rank(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(1);
    if local <= 1 {
        return 0;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local).max(1)
}

/// Items `[r·n/N, (r+1)·n/N)` of `n` for rank `r` of `N`.
pub fn slice_of(n: usize, rank: usize, world: usize) -> Range<usize> {
    let w = world.max(1);
    (rank * n / w)..((rank + 1) * n / w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_split_evenly_in_order() {
        for (n, w) in [(10, 3), (2, 4), (64, 2), (7, 1)] {
            let all: Vec<usize> = (0..w).flat_map(|r| slice_of(n, r, w)).collect();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            for r in 0..w {
                let len = slice_of(n, r, w).len();
                assert!(len == n / w || len == n / w + 1);
            }
        }
    }

    #[test]
    fn rank_zero_keeps_the_single_process_seed() {
        let d = Dist::single();
        assert_eq!(d.rank_seed(42), 42);
        let seeds: Vec<u64> = ThreadGroup::new(2)
            .into_iter()
            .map(|c| Dist::new(Box::new(c), DistOptions::default()).rank_seed(42))
            .collect();
        assert_eq!(seeds[0], 42);
        assert_ne!(seeds[1], 42);
    }

    #[test]
    fn fault_specs_parse() {
        let f = parse_fault("1:8:hang").unwrap();
        assert_eq!((f.rank, f.step, f.hang), (1, 8, true));
        assert!(!parse_fault("0:3:exit").unwrap().hang);
        assert!(parse_fault("x").is_none());
        assert!(parse_fault("1:2:boom").is_none());
    }
}
