//! The crate's error type.

/// Errors from particle clouds and their updates.
#[derive(Debug, thiserror::Error)]
pub enum ParticleError {
    /// A configuration value is out of range.
    #[error("invalid parameter `{key}`: {reason}")]
    Param {
        /// Dotted name of the parameter.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Shapes, lengths or indices disagree.
    #[error("{0}")]
    Shape(String),
    /// The GPU (driver, NVRTC, memory) failed.
    #[error("CUDA: {0}")]
    Device(String),
}

impl ParticleError {
    pub(crate) fn param(key: &str, reason: impl Into<String>) -> Self {
        Self::Param {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix.` before a parameter's key: a library names keys relative to
    /// its own config struct, and the program that nests that struct adds the path to it.
    pub fn under(self, prefix: &str) -> Self {
        match self {
            Self::Param { key, reason } => Self::Param {
                key: format!("{prefix}.{key}"),
                reason,
            },
            other => other,
        }
    }
}
