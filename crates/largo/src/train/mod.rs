//! Training: optimisers, schedules, the loop, checkpoints, metrics and curves.

pub mod checkpoint;
pub mod lm;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod trainer;

pub use trainer::{train, TrainOptions, TrainOutcome};
