//! The crate's errors: [`TrainError`] for a training state (building, stepping, checkpoints),
//! wrapping each library's typed error, and [`RunError`] for a run on disk (its directory,
//! files and commands). Every message names the key, file or step at fault.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// Errors while building, stepping, saving or loading a training state.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration does not fit the data or the checkpoint.
    #[error("{0}")]
    Invalid(String),
    /// The loss or a gradient became NaN/Inf.
    #[error("training diverged at step {step}: {what} is not finite")]
    NonFinite {
        /// The step at which it happened.
        step: u64,
        /// What turned non-finite.
        what: String,
    },
    /// A checkpoint file is unreadable, truncated or does not match the run.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Data loading or generation failed.
    #[error(transparent)]
    Data(#[from] ipld_data::DataError),
    /// A schedule, loss, sampler or EMA failed.
    #[error(transparent)]
    Diffusion(#[from] ipld_diffusion::DiffusionError),
    /// A particle cloud or its update failed.
    #[error(transparent)]
    Particle(#[from] ipld_particles::ParticleError),
    /// A network could not be built or run.
    #[error(transparent)]
    Model(#[from] ipld_models::ModelError),
    /// A metric failed.
    #[error(transparent)]
    Eval(#[from] ipld_eval::EvalError),
    /// Serialising a checkpoint failed.
    #[error("writing the checkpoint: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Errors of a run; each names the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file or directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// What was asked does not fit the run directory or the command (a directory that already
    /// holds a run, a resume that changes a fixed key, too few samples, ...).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The run directory or file concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Training stopped on a non-finite loss or gradient.
    #[error("{}: {source}; training stopped and {kept}", path.display())]
    Diverged {
        /// The run directory.
        path: PathBuf,
        /// The non-finite value.
        source: Box<TrainError>,
        /// What is left of the run ("the last good checkpoint is kept", ...).
        kept: &'static str,
    },
    /// A signal stopped training; the checkpoint at `step` was written.
    #[error(
        "{}: interrupted at step {step} of {total}; the checkpoint is written: continue with \
         `ipld-train --resume {}`",
        path.display(),
        path.display()
    )]
    Interrupted {
        /// The run directory.
        path: PathBuf,
        /// The step the checkpoint holds.
        step: u64,
        /// The run's total steps.
        total: u64,
    },
    /// Drawing a picture failed.
    #[error("{}: drawing: {message}", path.display())]
    Plot {
        /// The picture.
        path: PathBuf,
        /// The plotting library's message.
        message: String,
    },
    /// A metric (FID, Inception) failed on the named input.
    #[error("{}: {source}", path.display())]
    Eval {
        /// The input, weights or statistics file.
        path: PathBuf,
        /// The metric's error.
        source: ipld_eval::EvalError,
    },
    /// Reading or writing data failed; `hint` says where the data was looked for.
    #[error("{source}{hint}")]
    Data {
        /// The data error (it names the file).
        source: ipld_data::DataError,
        /// Empty, or a hint that starts with a space.
        hint: String,
    },
    /// Configuration error.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Training error.
    #[error(transparent)]
    Train(#[from] TrainError),
}

impl From<ipld_data::DataError> for RunError {
    fn from(source: ipld_data::DataError) -> Self {
        Self::Data {
            source,
            hint: String::new(),
        }
    }
}

impl RunError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A request that does not fit `path`.
    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// A metric's error on `path`.
    pub fn eval(path: &Path, source: ipld_eval::EvalError) -> Self {
        Self::Eval {
            path: path.to_path_buf(),
            source,
        }
    }
}
