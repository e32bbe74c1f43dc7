//! The crate's error type.

/// Errors from building or running models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of range.
    #[error("invalid parameter `{key}`: {reason}")]
    Param {
        /// Dotted name of the parameter.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
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
