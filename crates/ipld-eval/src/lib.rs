#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod error;
mod mmd;

pub use error::EvalError;
pub use mmd::{MmdConfig, mmd2_unbiased, mmd2_unbiased_tensors};
