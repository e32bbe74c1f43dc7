//! The crate's error type. Every variant names the file (or the in-memory source) at fault.

use std::path::PathBuf;

/// Errors from loading, generating or indexing datasets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A configuration value is out of range.
    #[error("invalid parameter `{key}`: {reason}")]
    Param {
        /// Dotted name of the parameter.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid matrix in the expected format.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A value is NaN or infinite.
    #[error("{source_name}: row {row}, column {col} is {value} (data must be finite)")]
    NonFinite {
        /// File path or a description of the in-memory source.
        source_name: String,
        /// 0-based row of the first bad value.
        row: usize,
        /// 0-based column.
        col: usize,
        /// The value.
        value: f32,
    },
    /// Shapes or indices disagree.
    #[error("{0}")]
    Shape(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
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

impl DataError {
    pub(crate) fn format(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
