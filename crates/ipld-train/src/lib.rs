//! The IPLD trainer as a library: configuration (presets mirroring the paper), the training state
//! and its step (Algorithm 2), evaluation, and runs on disk. The `ipld-train` binary only parses
//! arguments, builds a [`RunPlan`], and calls [`run`].
//! The workspace README follows (its example is compiled as a doctest here).
#![doc = include_str!("../../../README.md")]

pub mod config;
pub mod eval;
pub mod fid;
pub mod nets;
pub mod optim;
pub mod pictures;
pub mod plot;
pub mod run;
pub mod threads;
pub mod trainer;

pub use config::{
    ConfigError, DataConfig, DiffusionConfig, EvalConfig, Method, PRESETS, RunConfig,
};
pub use run::{
    Progress, RunError, RunPlan, RunSummary, default_run_dir, eval_run, run, sample_run,
};
pub use threads::{pin_thread_count, quiet_candle_pool};
pub use trainer::{StepMetrics, TrainError, Trainer};
