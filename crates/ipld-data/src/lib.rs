#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod dataset;
mod error;
mod images;
mod io;
mod normalize;
mod synthetic;

pub use dataset::{Dataset, InMemoryDataset};
pub use error::DataError;
pub use images::{
    ImageSet, ImageSourceConfig, default_data_dir, image_grid, load_cifar10, load_csv_images,
    load_image_folder, load_image_folder_native, load_mnist_idx, load_svhn_mat, save_image_folder,
    save_image_grid, save_png,
};
pub use io::{SAFETENSORS_KEY, load_matrix, save_matrix, write_atomically};
pub use normalize::{Normalize, Normalizer};
pub use synthetic::{
    CIRCLE_NOISE_STD, CIRCLE_RADII, GMM_SPACING, KnownStructure, LATENT_DIM, PPCA_DIMS,
    SyntheticConfig, SyntheticData, SyntheticKind, orthonormal_rows, probabilistic_pca,
};
