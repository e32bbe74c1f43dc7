#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod dataset;
mod error;
mod io;
mod synthetic;

pub use dataset::{Dataset, InMemoryDataset};
pub use error::DataError;
pub use io::{SAFETENSORS_KEY, load_matrix, save_matrix, write_atomically};
pub use synthetic::{
    CIRCLE_NOISE_STD, CIRCLE_RADII, GMM_SPACING, LATENT_DIM, SyntheticConfig, SyntheticData,
    SyntheticKind, orthonormal_rows,
};
