//! One error type for the library: every variant names the thing that was wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file whose content is not what was expected (format, magic, sizes).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Configuration problems: unknown keys, wrong types, bad values.
    #[error("config: {0}")]
    Config(String),
    /// Shapes or values that do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// Training diverged.
    #[error("{0}")]
    NonFinite(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Shorthand for `Err(Error::Invalid(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
