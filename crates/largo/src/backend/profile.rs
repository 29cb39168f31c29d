//! Where a step's time goes (`largo bench gpt --profile`): wall time per op kind, GEMMs by
//! shape. Kernels open a [`Span`] at their entry; while profiling is on, spans on the thread
//! that started it are timed, and a span inside another (a GEMM inside attention) counts only
//! in the outer one, so the tallies add up to no more than the step. Spans on pool workers are
//! not timed: their work is inside a span of the calling thread. Off, a span costs one relaxed
//! atomic load.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What a span times: a named kernel or a GEMM `c[m,n] (+)= op(a)[m,k]·op(b)[k,n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Kernel(&'static str),
    Gemm {
        /// a and b transposed (`[k,m]`, `[n,k]`).
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
    },
}

impl Op {
    /// `layernorm forward`, or `gemm NT 2048×768×256` (m×n×k, N/T per operand).
    pub fn label(&self) -> String {
        match *self {
            Op::Kernel(name) => name.to_string(),
            Op::Gemm { ta, tb, m, n, k } => {
                let t = |x: bool| if x { 'T' } else { 'N' };
                format!("gemm {}{} {m}×{n}×{k}", t(ta), t(tb))
            }
        }
    }

    /// Floating-point operations of one call: 2·m·n·k for a GEMM, none counted otherwise.
    pub fn flops(&self) -> f64 {
        match *self {
            Op::Kernel(_) => 0.0,
            Op::Gemm { m, n, k, .. } => 2.0 * (m * n * k) as f64,
        }
    }
}

/// Calls and seconds of one op kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    pub calls: u64,
    pub seconds: f64,
}

static ON: AtomicBool = AtomicBool::new(false);
static TALLIES: Mutex<Option<HashMap<Op, Tally>>> = Mutex::new(None);

thread_local! {
    /// Whether this thread started the profile (only its spans are timed).
    static RECORDING: Cell<bool> = const { Cell::new(false) };
    /// Open spans on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn tallies() -> std::sync::MutexGuard<'static, Option<HashMap<Op, Tally>>> {
    // A panic while holding the lock leaves plain numbers behind; they are still usable.
    TALLIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts timing spans opened on the calling thread, from empty tallies.
pub fn start() {
    *tallies() = Some(HashMap::new());
    RECORDING.with(|r| r.set(true));
    ON.store(true, Ordering::Relaxed);
}

/// Stops timing and returns the tallies since [`start`].
pub fn stop() -> HashMap<Op, Tally> {
    ON.store(false, Ordering::Relaxed);
    RECORDING.with(|r| r.set(false));
    tallies().take().unwrap_or_default()
}

/// Times from its creation to its drop, while profiling is on.
#[must_use = "a span times until it is dropped"]
pub struct Span {
    op: Op,
    /// Some when this span is timed; entered when it counts in this thread's depth.
    start: Option<Instant>,
    entered: bool,
}

#[inline]
pub fn span(name: &'static str) -> Span {
    open(Op::Kernel(name))
}

#[inline]
pub fn gemm_span(ta: bool, tb: bool, m: usize, n: usize, k: usize) -> Span {
    open(Op::Gemm { ta, tb, m, n, k })
}

#[inline]
fn open(op: Op) -> Span {
    if !ON.load(Ordering::Relaxed) || !RECORDING.with(|r| r.get()) {
        return Span {
            op,
            start: None,
            entered: false,
        };
    }
    let depth = DEPTH.with(|d| {
        let v = d.get();
        d.set(v + 1);
        v
    });
    Span {
        op,
        start: (depth == 0).then(Instant::now),
        entered: true,
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.entered {
            return;
        }
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if let Some(start) = self.start {
            let secs = start.elapsed().as_secs_f64();
            if let Some(map) = tallies().as_mut() {
                let t = map.entry(self.op).or_default();
                t.calls += 1;
                t.seconds += secs;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_spans_count_once_and_other_threads_not_at_all() {
        start();
        {
            let _outer = span("outer");
            let _inner = gemm_span(false, true, 2, 3, 4);
            std::thread::spawn(|| drop(span("elsewhere")))
                .join()
                .unwrap();
        }
        drop(span("outer"));
        let t = stop();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[&Op::Kernel("outer")].calls, 2);
        drop(span("after"));
        assert!(stop().is_empty());
        assert_eq!(
            Op::Gemm {
                ta: false,
                tb: true,
                m: 2,
                n: 3,
                k: 4
            }
            .label(),
            "gemm NT 2×3×4"
        );
    }
}
