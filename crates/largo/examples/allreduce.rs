//! All-reduce bandwidth over MPI, for docs/scaling.md:
//!
//! ```sh
//! cargo build --release -p largo --features mpi --example allreduce
//! mpirun --allow-run-as-root --oversubscribe -np 2 target/release/examples/allreduce
//! ```
//!
//! Prints, per buffer size, the mean time of one all-reduce (sum of f32), the algorithm
//! bandwidth (bytes / time) and the bus bandwidth (× 2(N−1)/N, what a ring puts on each link).

use largo::train::dist::comm::bench_all_reduce;
use largo::train::dist::{Communicator, Mpi};

fn main() -> largo::Result<()> {
    let comm = Mpi::init(std::time::Duration::from_secs(120))?;
    let sizes: Vec<usize> = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 25 << 20, 100 << 20].into();
    let rows = bench_all_reduce(&comm, &sizes, 1.0)?;
    if comm.rank() == 0 {
        println!("{} ranks (mpi): all-reduce of f32, sum", comm.world_size());
        println!(
            "{:>12} {:>8} {:>12} {:>10} {:>10}",
            "bytes", "iters", "time", "GB/s", "bus GB/s"
        );
        for r in &rows {
            println!(
                "{:>12} {:>8} {:>10.1}µs {:>10.2} {:>10.2}",
                r.bytes,
                r.iters,
                r.secs * 1e6,
                r.gb_per_s,
                r.bus_gb_per_s
            );
        }
        println!("{}", serde_json::to_string(&rows).expect("serialises"));
    }
    Ok(())
}
