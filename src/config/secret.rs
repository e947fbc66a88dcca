//! A string that never prints itself: Debug and Display show `***`.

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from: the configuration (or its environment overrides) itself, or a file
/// read anew each time the secret is used, as Docker and Kubernetes mount secrets and rotate them
/// in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Value(Secret),
    File(std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret file {path} is empty")]
    Empty { path: String },
}

impl From<Secret> for SecretSource {
    fn from(s: Secret) -> Self {
        Self::Value(s)
    }
}

impl SecretSource {
    /// The secret now: a file is read again on every call, its trailing newline dropped.
    pub fn read(&self) -> Result<Secret, SecretFileError> {
        match self {
            Self::Value(s) => Ok(s.clone()),
            Self::File(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(SecretFileError::Empty {
                        path: path.display().to_string(),
                    });
                }
                Ok(Secret::new(value))
            }
        }
    }

    /// A warning when the secret's file can be read by other users than its owner.
    pub fn exposure(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let Self::File(path) = self else {
            return None;
        };
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "the secret file {} can be read by other users (mode {:o}); make it owner-only (chmod 600, or defaultMode: 0400 in Kubernetes)",
                path.display(),
                mode & 0o777
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_is_read_at_each_use_and_its_exposure_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client_secret");
        std::fs::write(&path, "first\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let source = SecretSource::File(path.clone());
        assert_eq!(source.read().unwrap().expose(), "first");
        assert_eq!(source.exposure(), None);
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(source.read().unwrap().expose(), "rotated");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(source.exposure().unwrap().contains("mode 644"));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(source.read(), Err(SecretFileError::Empty { .. })));
        std::fs::remove_file(&path).unwrap();
        let err = source.read().unwrap_err().to_string();
        assert!(err.contains("client_secret"), "{err}");
    }
}
