//! The IPLD trainer as a library: configuration (presets mirroring the paper) and, from the
//! training issue on, the run itself. The `ipld-train` binary only parses arguments and calls in.
//! The workspace README follows (its example is compiled as a doctest here).
#![doc = include_str!("../../../README.md")]

pub mod config;

pub use config::{
    ConfigError, DataConfig, DataSource, DiffusionConfig, EvalConfig, Method, PRESETS, RunConfig,
};
