#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod decoder;
mod embedding;
mod encoder;
mod error;
mod init;
mod mlp;

pub use decoder::{Decoder, LinearDecoder, LinearDecoderConfig, gaussian_nll};
pub use embedding::{sinusoidal_embedding, sinusoidal_frequencies};
pub use encoder::LinearGaussianEncoder;
pub use error::ModelError;
pub use init::seeded_init;
pub use mlp::{MlpEps, MlpEpsConfig};
