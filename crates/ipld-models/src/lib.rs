#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod attention;
mod conv;
mod conv_decoder;
mod conv_eps;
mod decoder;
mod dense;
mod dit;
mod embedding;
mod encoder;
mod error;
mod init;
mod mlp;

pub use conv::{conv2d, conv2d_im2col};
pub use conv_decoder::{Conv, ConvDecoder, ConvDecoderConfig, ConvEncoder};
pub use conv_eps::{ConvEps, ConvEpsConfig};
pub use decoder::{Decoder, LinearDecoder, LinearDecoderConfig, gaussian_nll};
pub use dense::{Activation, dense, dense_reference, on_this_thread};
pub use dit::{Dit, DitConfig, sincos_2d};
pub use embedding::{sinusoidal_embedding, sinusoidal_frequencies};
pub use encoder::LinearGaussianEncoder;
pub use error::ModelError;
pub use init::{InitRule, seeded_init, seeded_init_with};
pub use mlp::{MlpEps, MlpEpsConfig};
