//! The IPLD trainer as a library: configuration (presets mirroring the paper), the training state
//! and its step (Algorithm 2), evaluation, and runs on disk. The `ipld-train` binary only parses
//! arguments, builds a [`RunPlan`], and calls [`run()`]. docs/architecture.md maps the modules.
//! The workspace README follows (its example is compiled as a doctest here).
#![doc = include_str!("../../../README.md")]

pub mod canvas;
pub mod charts;
pub mod checkpoint;
pub mod collective;
pub mod commands;
pub mod config;
pub mod csv;
pub mod data;
pub mod diagnostics;
pub mod error;
pub mod eval;
pub mod fid;
pub mod history;
pub mod interrupt;
pub mod lock;
pub mod nets;
pub mod optim;
pub mod periodic;
pub mod pictures;
pub mod plot;
pub mod progress;
pub mod recognise;
pub mod record;
pub mod run;
pub mod rundir;
pub mod sampler_args;
mod start;
pub mod streams;
pub mod threads;
pub mod trainer;

pub use commands::{eval_run, sample_run};
pub use config::{
    ConfigError, DataConfig, DiffusionConfig, EvalConfig, Method, PRESETS, RunConfig, ValidConfig,
};
pub use error::{RunError, TrainError};
pub use progress::Progress;
pub use run::{RunSummary, run, run_on};
pub use rundir::default_run_dir;
pub use sampler_args::SamplerArgs;
pub use start::RunPlan;
pub use threads::{pin_thread_count, quiet_candle_pool};
pub use trainer::{StepMetrics, Trainer};
