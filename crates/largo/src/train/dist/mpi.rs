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
//!
//! Gradient buckets are summed with `MPI_Iallreduce` ([`Comm::start_all_reduce_sum`]): the
//! request owns its buffers until it completes, `MPI_Test` lets the library progress between
//! backward's layers (OpenMPI's non-blocking collectives advance only inside MPI calls on a
//! single-threaded rank), and the final `MPI_Wait` runs under the watchdog like any collective.

use super::comm::{check_gather, Communicator as Comm, InFlight, PendingSum};
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::ffi;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::raw::c_int;
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
    /// Buffers of finished non-blocking sums, reused to receive the next ones.
    spare: Arc<Mutex<Vec<Vec<f32>>>>,
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
            spare: Arc::new(Mutex::new(Vec::new())),
            _universe: universe,
        })
    }

    /// The blocking sum of `buf` over the ranks, through a copy in `scratch` (the send buffer).
    fn sum_into<T: Equivalence + Copy>(&self, scratch: &RefCell<Vec<T>>, buf: &mut [T]) {
        if buf.is_empty() {
            return;
        }
        let mut send = scratch.borrow_mut();
        send.clear();
        send.extend_from_slice(buf);
        let _w = self.watch.arm("all-reduce");
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }
}

/// One `MPI_Iallreduce` in flight: its request and the two buffers MPI reads (`send`, the
/// caller's) and writes (`recv`, a spare) until the request completes. Neither is touched,
/// resized or freed before; then `recv` goes to the caller and `send` becomes a spare.
struct MpiSum {
    request: ffi::MPI_Request,
    send: Vec<f32>,
    recv: Vec<f32>,
    done: bool,
    watch: Arc<Watch>,
    spare: Arc<Mutex<Vec<Vec<f32>>>>,
}

impl MpiSum {
    fn finished(&mut self) -> Vec<f32> {
        self.done = true;
        let send = std::mem::take(&mut self.send);
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(send);
        std::mem::take(&mut self.recv)
    }
}

fn check(rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{what} failed with MPI error {rc}")))
    }
}

impl InFlight for MpiSum {
    fn test(&mut self) -> Result<bool> {
        if self.done {
            return Ok(true);
        }
        let mut flag: c_int = 0;
        // SAFETY: `request` came from `MPI_Iallreduce` and has not completed (`done` is false);
        // MPI_Test writes the flag and, once complete, sets the request to MPI_REQUEST_NULL.
        // The status is ignored. Called on the thread that initialised MPI (Funneled).
        let rc = unsafe { ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
        check(rc, "MPI_Test")?;
        if flag != 0 {
            self.done = true;
        }
        Ok(self.done)
    }

    fn wait(mut self: Box<Self>) -> Result<Vec<f32>> {
        if !self.done {
            let _w = self.watch.arm("all-reduce");
            // SAFETY: as in `test`: a live request of this process, waited on once; after it
            // returns MPI no longer reads `send` nor writes `recv`.
            let rc = unsafe { ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE) };
            check(rc, "MPI_Wait")?;
        }
        Ok(self.finished())
    }
}

impl Drop for MpiSum {
    fn drop(&mut self) {
        if !self.done {
            // Dropped without a wait (an error elsewhere ended the step): MPI may still read
            // and write the buffers, and a collective's request may not be freed, so both
            // buffers are leaked rather than handed back to the allocator.
            std::mem::forget(std::mem::take(&mut self.send));
            std::mem::forget(std::mem::take(&mut self.recv));
        }
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
        self.sum_into(&self.scratch, buf);
        Ok(())
    }
    fn start_all_reduce_sum(&self, send: Vec<f32>) -> Result<PendingSum> {
        if send.is_empty() {
            return Ok(PendingSum::done(send));
        }
        let count = c_int::try_from(send.len()).map_err(|_| {
            Error::Invalid(format!(
                "all-reduce of {} values: MPI counts stop at {}",
                send.len(),
                c_int::MAX
            ))
        })?;
        // No portable MPI_IN_PLACE in the bindings: the sum lands in a second buffer, a spare
        // one of the same length when there is one (then the resize below writes nothing).
        let mut recv = {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            let fits = spare
                .iter()
                .position(|b| b.len() == send.len())
                .or_else(|| spare.iter().position(|b| b.capacity() >= send.len()));
            match fits {
                Some(i) => spare.swap_remove(i),
                None => spare.pop().unwrap_or_default(),
            }
        };
        recv.resize(send.len(), 0.0);
        let mut request = MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `send` and `recv` hold `count` f32 values each, in two heap allocations that
        // move, untouched, into the `MpiSum` below (moving a Vec does not move its values),
        // which keeps them alive until the request completes (`wait`; `Drop` leaks them
        // otherwise). The datatype, the operation and the communicator are valid handles of
        // this initialised MPI, called from the thread that initialised it (Funneled).
        let rc = unsafe {
            ffi::MPI_Iallreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                count,
                f32::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                self.world.as_raw(),
                request.as_mut_ptr(),
            )
        };
        check(rc, "MPI_Iallreduce")?;
        let op = Box::new(MpiSum {
            // SAFETY: MPI_Iallreduce succeeded, so it wrote the request handle.
            request: unsafe { request.assume_init() },
            send,
            recv,
            done: false,
            watch: self.watch.clone(),
            spare: self.spare.clone(),
        });
        Ok(PendingSum::in_flight(op))
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
        self.sum_into(&self.scratch64, buf);
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
