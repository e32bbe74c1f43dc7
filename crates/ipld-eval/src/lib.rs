#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod classifier;
mod error;
mod fid;
pub mod inception;
mod mmd;
mod posterior;
mod structure;
pub mod torchscript;

pub use classifier::{Classifier, ClassifierConfig, Recognisability};
pub use error::EvalError;
pub use fid::{GaussianStats, frechet_distance, trace_sqrt_product};
pub use inception::InceptionV3;
pub use mmd::{MmdConfig, median_heuristic_gamma, mmd2_unbiased, mmd2_unbiased_tensors};
pub use posterior::{PosteriorSpread, linear_gaussian_spread};
pub use structure::{ModeReport, RingReport, mode_metrics, ring_metrics};
