//! Secrets (PINs, tokens) held in a newtype that never prints its contents, and the two
//! places a secret may come from: a file or an environment variable, never the config itself.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// A secret string. `Debug` and `Display` print `REDACTED`; the bytes are overwritten on drop.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(REDACTED)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite the heap buffer before it is freed.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// Where a secret is read from. Exactly one of `file` or `env`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} is not set or not valid UTF-8")]
    Env(String),
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretSource {
    pub fn read(&self) -> Result<Secret, SecretError> {
        let (value, origin) = match self {
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                (text, path.display().to_string())
            }
            SecretSource::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::Env(name.clone()))?,
                format!("${name}"),
            ),
        };
        let trimmed = value.trim_end_matches(['\n', '\r']).to_string();
        let secret = Secret::new(trimmed);
        drop(Secret::new(value));
        if secret.expose().is_empty() {
            return Err(SecretError::Empty(origin));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let s = Secret::new("1234-very-secret".into());
        assert!(!format!("{s:?}").contains("1234"));
    }

    #[test]
    fn file_source_trims_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "abcd\n").unwrap();
        assert_eq!(SecretSource::File(p).read().unwrap().expose(), "abcd");
    }

    #[test]
    fn empty_and_missing_sources_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            SecretSource::File(p).read(),
            Err(SecretError::Empty(_))
        ));
        assert!(matches!(
            SecretSource::Env("BSN_TEST_SURELY_UNSET_VAR".into()).read(),
            Err(SecretError::Env(_))
        ));
    }
}
