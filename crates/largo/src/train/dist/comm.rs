//! The communicator boundary: what data-parallel training needs from the transport, and the
//! transports that need no system library (one process; a group of threads for tests).
//!
//! Every collective works on one flat, contiguous `f32` buffer (a gradient bucket, a parameter
//! shard), which is also what NCCL takes (`ncclAllReduce(sendbuf, recvbuf, count, ncclFloat32,
//! ncclSum, comm, stream)`): an NCCL communicator for the CUDA backend implements this trait over
//! device buffers (loaded at run time through cudarc), with `barrier` a stream synchronisation.
//! Small host-side values (metrics, flags, the configuration) go through `all_reduce_sum_f64`
//! and `broadcast_bytes`, which NCCL would send over its own bootstrap or MPI.
//!
//! Gradient buckets go through the non-blocking [`Communicator::start_all_reduce_sum`], so
//! their sums run while backward computes the next layers: it takes an owned buffer and
//! returns a [`PendingSum`] that gives the buffer back, summed, when waited on. A transport
//! that cannot overlap keeps the default (the blocking sum, done at the start); MPI posts an
//! `MPI_Iallreduce`; NCCL would enqueue `ncclAllReduce` on a communication stream and record an
//! event, with [`InFlight::test`] an event query and [`InFlight::wait`] its synchronisation.

use crate::{Error, Result};
use std::sync::{Arc, Barrier, Mutex};

/// Collective operations over a fixed group of ranks `0..world_size()`. Every rank must call
/// the same collectives in the same order with buffers of the same lengths.
pub trait Communicator {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Short name for messages: "single", "mpi", "threads".
    fn name(&self) -> &'static str;
    /// Element-wise sum over ranks; every rank ends with the sum.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Starts the element-wise sum of `buf` over the ranks without waiting for it: the
    /// returned [`PendingSum`] owns the buffer until [`PendingSum::wait`] gives it back summed.
    /// Non-blocking sums are ordered like every other collective (all ranks start the same
    /// ones in the same order), and each must be waited on before the job ends. The default
    /// sums at once, blocking; transports that can overlap override it.
    fn start_all_reduce_sum(&self, mut buf: Vec<f32>) -> Result<PendingSum> {
        self.all_reduce_sum(&mut buf)?;
        Ok(PendingSum::done(buf))
    }
    /// Every rank contributes `mine` (the same length on all ranks); `out` (world × that
    /// length) ends holding rank 0's piece, then rank 1's, and so on.
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()>;
    /// Every rank ends with `root`'s `buf`.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    /// Element-wise sum of a few f64 values (loss sums, counts, flags).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Every rank ends with `root`'s bytes (any length: the others' are replaced).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Ends the whole job now (this process and, where the transport can, the other ranks),
    /// after a rank has failed alone and the others would wait for it forever.
    fn abort(&self, code: i32) -> !;
}

/// What a transport keeps for one non-blocking sum in flight (an MPI request, an NCCL event,
/// …), with the buffers it must keep alive until the sum is done.
pub trait InFlight {
    /// Lets the transport make progress (some, as MPI's, only progress inside their calls);
    /// true once the sum is done.
    fn test(&mut self) -> Result<bool>;
    /// Blocks until the sum is done and gives the buffer back, summed.
    fn wait(self: Box<Self>) -> Result<Vec<f32>>;
}

/// A non-blocking sum started by [`Communicator::start_all_reduce_sum`].
pub struct PendingSum(Pending);

enum Pending {
    Done(Vec<f32>),
    InFlight(Box<dyn InFlight>),
}

impl PendingSum {
    /// A sum already complete (one process; transports without overlap).
    pub fn done(buf: Vec<f32>) -> Self {
        PendingSum(Pending::Done(buf))
    }

    /// A sum a transport is still carrying out.
    pub fn in_flight(op: Box<dyn InFlight>) -> Self {
        PendingSum(Pending::InFlight(op))
    }

    /// Lets the transport progress; true once the sum is done.
    pub fn test(&mut self) -> Result<bool> {
        match &mut self.0 {
            Pending::Done(_) => Ok(true),
            Pending::InFlight(op) => op.test(),
        }
    }

    /// Waits for the sum; the buffer, summed over the ranks.
    pub fn wait(self) -> Result<Vec<f32>> {
        match self.0 {
            Pending::Done(buf) => Ok(buf),
            Pending::InFlight(op) => op.wait(),
        }
    }
}

/// One process: every collective is the identity and costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn start_all_reduce_sum(&self, buf: Vec<f32>) -> Result<PendingSum> {
        Ok(PendingSum::done(buf))
    }
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        check_gather(mine, out, 1)?;
        out.copy_from_slice(mine);
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>, _root: usize) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

pub(crate) fn check_gather(mine: &[f32], out: &mut [f32], world: usize) -> Result<()> {
    if out.len() != mine.len() * world {
        return Err(Error::Invalid(format!(
            "all_gather: {} values from each of {world} ranks do not fill {} values",
            mine.len(),
            out.len()
        )));
    }
    Ok(())
}

/// What the ranks of a [`ThreadGroup`] post for one another.
#[derive(Default)]
struct Board {
    f32s: Vec<Vec<f32>>,
    f64s: Vec<Vec<f64>>,
    bytes: Vec<u8>,
}

/// Ranks as threads of one process, exchanging through shared memory: the in-process stand-in
/// for MPI with which the default `cargo test` proves that N ranks train exactly as one process.
/// Sums are taken in rank order, so every rank gets the same bits.
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<(Barrier, Mutex<Board>)>,
}

impl ThreadGroup {
    /// `world` communicators, one per rank; hand each to its own thread.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new((
            Barrier::new(world),
            Mutex::new(Board {
                f32s: vec![Vec::new(); world],
                f64s: vec![Vec::new(); world],
                bytes: Vec::new(),
            }),
        ));
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.shared.1.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self) {
        self.shared.0.wait();
    }

    /// Posts this rank's values and waits for every rank's.
    fn post(&self, mine: &[f32]) {
        {
            let mut b = self.board();
            b.f32s[self.rank].clear();
            b.f32s[self.rank].extend_from_slice(mine);
        }
        self.wait();
    }

    /// Lets `read` see every rank's posted values, then waits again (so nobody posts the next
    /// collective's values before everyone has read these).
    fn read<R>(&self, read: impl FnOnce(&[Vec<f32>]) -> R) -> R {
        let r = read(&self.board().f32s);
        self.wait();
        r
    }
}

impl Communicator for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn name(&self) -> &'static str {
        "threads"
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let n = buf.len();
        self.post(buf);
        self.read(|all| {
            if all.iter().any(|v| v.len() != n) {
                return Err(Error::Invalid(
                    "all_reduce_sum: buffer lengths differ".into(),
                ));
            }
            buf.copy_from_slice(&all[0]);
            for other in &all[1..] {
                buf.iter_mut().zip(other).for_each(|(a, b)| *a += b);
            }
            Ok(())
        })
    }
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        check_gather(mine, out, self.world)?;
        self.post(mine);
        self.read(|all| {
            for (dst, src) in out.chunks_mut(mine.len().max(1)).zip(all) {
                dst.copy_from_slice(src);
            }
        });
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.post(buf);
        self.read(|all| buf.copy_from_slice(&all[root]));
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.wait();
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.board().f64s[self.rank] = buf.to_vec();
        self.wait();
        {
            let b = self.board();
            buf.copy_from_slice(&b.f64s[0]);
            for other in &b.f64s[1..] {
                buf.iter_mut().zip(other).for_each(|(a, b)| *a += b);
            }
        }
        self.wait();
        Ok(())
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        if self.rank == root {
            self.board().bytes = buf.clone();
        }
        self.wait();
        if self.rank != root {
            *buf = self.board().bytes.clone();
        }
        self.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// One size of [`bench_all_reduce`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllReduceTiming {
    pub bytes: usize,
    pub iters: usize,
    /// Mean seconds per all-reduce (the slowest rank's, as every rank waits for it).
    pub secs: f64,
    /// bytes / secs: the algorithm bandwidth.
    pub gb_per_s: f64,
    /// × 2(N−1)/N: what each link carried under a ring (NCCL's "bus bandwidth").
    pub bus_gb_per_s: f64,
}

/// Times `all_reduce_sum` of f32 buffers of each size (bytes) on every rank of `comm` (a
/// collective: all ranks call it with the same sizes), after a warm-up, for at least
/// `min_secs` per size.
pub fn bench_all_reduce(
    comm: &dyn Communicator,
    sizes: &[usize],
    min_secs: f64,
) -> Result<Vec<AllReduceTiming>> {
    let n = comm.world_size() as f64;
    let mut out = Vec::new();
    for &bytes in sizes {
        let mut buf = vec![1.0f32; (bytes / 4).max(1)];
        comm.all_reduce_sum(&mut buf)?;
        comm.barrier()?;
        // Every rank runs as many iterations as rank 0 decides from the first one.
        let t = std::time::Instant::now();
        comm.all_reduce_sum(&mut buf)?;
        let mut it = [(min_secs / t.elapsed().as_secs_f64().max(1e-7)).clamp(3.0, 1e5) as f32];
        comm.broadcast(&mut it[..], 0)?;
        let iters = it[0] as usize;
        comm.barrier()?;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            comm.all_reduce_sum(&mut buf)?;
        }
        let mine = t.elapsed().as_secs_f64() / iters as f64;
        // The slowest rank's time.
        let mut all = vec![0.0f32; comm.world_size()];
        comm.all_gather(&[mine as f32], &mut all)?;
        let secs = all.iter().fold(0f32, |m, &x| m.max(x)) as f64;
        let bytes = buf.len() * 4;
        let gb = bytes as f64 / secs / 1e9;
        out.push(AllReduceTiming {
            bytes,
            iters,
            secs,
            gb_per_s: gb,
            bus_gb_per_s: gb * 2.0 * (n - 1.0) / n,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_group_sums_gathers_and_broadcasts_in_rank_order() {
        let handles: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let r = c.rank() as f32;
                    let mut s = vec![r, 10.0 * r];
                    c.all_reduce_sum(&mut s).unwrap();
                    let p = c.start_all_reduce_sum(vec![1.0, r]).unwrap();
                    assert_eq!(p.wait().unwrap(), [3.0, 3.0]);
                    let mut g = vec![0.0; 6];
                    c.all_gather(&[r, -r], &mut g).unwrap();
                    let mut b = vec![r; 2];
                    c.broadcast(&mut b, 2).unwrap();
                    let mut d = vec![1.5, r as f64];
                    c.all_reduce_sum_f64(&mut d).unwrap();
                    let mut bytes = format!("from {}", c.rank()).into_bytes();
                    c.broadcast_bytes(&mut bytes, 1).unwrap();
                    c.barrier().unwrap();
                    (s, g, b, d, bytes)
                })
            })
            .collect();
        for h in handles {
            let (s, g, b, d, bytes) = h.join().unwrap();
            assert_eq!(s, [3.0, 30.0]);
            assert_eq!(g, [0.0, 0.0, 1.0, -1.0, 2.0, -2.0]);
            assert_eq!(b, [2.0, 2.0]);
            assert_eq!(d, [4.5, 3.0]);
            assert_eq!(bytes, b"from 1");
        }
    }

    #[test]
    fn one_process_is_the_identity() {
        let c = SingleProcess;
        let mut s = vec![1.0, 2.0];
        c.all_reduce_sum(&mut s).unwrap();
        assert_eq!(s, [1.0, 2.0]);
        let mut p = c.start_all_reduce_sum(vec![3.0, 4.0]).unwrap();
        assert!(p.test().unwrap());
        assert_eq!(p.wait().unwrap(), [3.0, 4.0]);
        let mut g = vec![0.0; 2];
        c.all_gather(&s, &mut g).unwrap();
        assert_eq!(g, s);
        assert!(c.all_gather(&s, &mut [0.0; 3]).is_err());
    }
}
