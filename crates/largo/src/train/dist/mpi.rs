//! The MPI communicator (cargo feature `mpi`): the `mpi` crate over the system's MPI library
//! (OpenMPI: `apt-get install libopenmpi-dev openmpi-bin libclang-dev`), launched with
//! `mpirun -np N largo train … --distributed mpi`.
//!
//! Failure: MPI's default error handler aborts the job on a communication error, and `mpirun`
//! kills every rank as soon as one exits without finalising (a crash, a kill, or `abort`
//! below). What neither catches is a rank that hangs, or one on a node that vanished
//! without a word: the other ranks would wait in their next collective forever. So every
//! collective here runs under a watchdog: a thread that, when a collective has waited longer
//! than the timeout (`largo train --dist-timeout`), prints which rank and which collective and
//! ends the process with status 1, upon which `mpirun` ends the rest.

use super::comm::{check_gather, Communicator as Comm};
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Watch {
    start: Instant,
    /// Milliseconds since `start` after which the current collective has failed; 0: idle.
    deadline_ms: AtomicU64,
    op: Mutex<&'static str>,
    timeout: Duration,
    rank: usize,
    world: usize,
}

/// Arms the watchdog for one collective; disarms it when dropped.
struct Armed<'a>(&'a Watch);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.deadline_ms.store(0, Ordering::SeqCst);
    }
}

impl Watch {
    fn arm(&self, op: &'static str) -> Armed<'_> {
        *self.op.lock().unwrap_or_else(|e| e.into_inner()) = op;
        let deadline = (self.start.elapsed() + self.timeout).as_millis() as u64;
        self.deadline_ms.store(deadline.max(1), Ordering::SeqCst);
        Armed(self)
    }

    fn run(self: Arc<Self>) {
        let poll = (self.timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            std::thread::sleep(poll);
            let d = self.deadline_ms.load(Ordering::SeqCst);
            if d != 0 && self.start.elapsed().as_millis() as u64 > d {
                let op = *self.op.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!(
                    "error: rank {} of {}: the {op} has waited {:.0} s for the other ranks: one of them has died or hangs; stopping (the limit is --dist-timeout; resume from the last checkpoint with --resume)",
                    self.rank,
                    self.world,
                    self.timeout.as_secs_f64()
                );
                // SAFETY: `_exit` ends the process at once, without running atexit handlers
                // that could block in MPI while the main thread is stuck in a collective.
                unsafe { libc::_exit(1) };
            }
        }
    }
}

/// `MPI_COMM_WORLD`, with a watchdog on every collective.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    watch: Arc<Watch>,
    scratch: RefCell<Vec<f32>>,
    scratch64: RefCell<Vec<f64>>,
    // Dropped last: finalises MPI.
    _universe: mpi::environment::Universe,
}

impl Mpi {
    /// Initialises MPI (once per process). `timeout`: how long any collective may wait for the
    /// other ranks before this rank gives up (zero: forever).
    pub fn init(timeout: Duration) -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Invalid("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watch = Arc::new(Watch {
            start: Instant::now(),
            deadline_ms: AtomicU64::new(0),
            op: Mutex::new(""),
            timeout,
            rank,
            world: size,
        });
        if !timeout.is_zero() && size > 1 {
            let w = watch.clone();
            std::thread::Builder::new()
                .name("largo-mpi-watchdog".into())
                .spawn(move || w.run())
                .map_err(|e| Error::Invalid(format!("cannot start the MPI watchdog: {e}")))?;
        }
        Ok(Mpi {
            world,
            rank,
            size,
            watch,
            scratch: RefCell::new(Vec::new()),
            scratch64: RefCell::new(Vec::new()),
            _universe: universe,
        })
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut send = self.scratch.borrow_mut();
        send.clear();
        send.extend_from_slice(buf);
        let _w = self.watch.arm("all-reduce");
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        check_gather(mine, out, self.size)?;
        if mine.is_empty() {
            return Ok(());
        }
        let _w = self.watch.arm("all-gather");
        self.world.all_gather_into(mine, out);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let _w = self.watch.arm("broadcast");
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        let _w = self.watch.arm("barrier");
        self.world.barrier();
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut send = self.scratch64.borrow_mut();
        send.clear();
        send.extend_from_slice(buf);
        let _w = self.watch.arm("all-reduce");
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        let _w = self.watch.arm("broadcast");
        let from = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        from.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        // Not for an empty buffer: its dangling pointer (1 for bytes) is OpenMPI's MPI_IN_PLACE.
        if !buf.is_empty() {
            from.broadcast_into(&mut buf[..]);
        }
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
