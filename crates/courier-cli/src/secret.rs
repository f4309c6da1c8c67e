//! Credentials in the configuration. A secret key `k` has a sibling `k_file` naming a file that
//! holds the value, because Kubernetes and Docker mount secrets as files: the credential then sits
//! neither in the config file nor in the process environment.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

/// A credential. Its `Debug` shows `***`, so a logged configuration never carries it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl Secret {
    /// The credential itself, for the one place that hands it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The secret of `key`, given inline (`inline`, empty when unset) or read from the file named by
/// `key`_file (`file`, empty when unset); `None` when neither is set. The file's trailing line
/// break is dropped, since `echo secret > file` writes one. Both set at once is refused, because
/// which one wins would be a guess.
pub fn resolve(key: &str, inline: &Secret, file: &Path) -> anyhow::Result<Option<Secret>> {
    match (inline.0.is_empty(), file.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(inline.clone())),
        (true, false) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {key}_file {}", file.display()))?;
            let value = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
            anyhow::ensure!(!value.is_empty(), "{key}_file {} is empty", file.display());
            Ok(Some(Secret(value.to_owned())))
        }
        (false, false) => anyhow::bail!("both {key} and {key}_file are set; set one of them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret(s.to_owned())
    }

    #[test]
    fn an_unset_secret_is_none() {
        assert_eq!(resolve("k", &Secret::default(), Path::new("")).unwrap(), None);
    }

    #[test]
    fn an_inline_secret_is_taken_as_is() {
        assert_eq!(resolve("k", &secret("pw"), Path::new("")).unwrap(), Some(secret("pw")));
    }

    #[test]
    fn a_file_secret_loses_its_trailing_line_break_only() {
        let dir = tempfile::tempdir().unwrap();
        for (content, expected) in [("pw\n", "pw"), ("pw\r\n", "pw"), (" pw \n\n", " pw \n"), ("pw", "pw")] {
            let path = dir.path().join("secret");
            std::fs::write(&path, content).unwrap();
            assert_eq!(resolve("k", &Secret::default(), &path).unwrap(), Some(secret(expected)));
        }
    }

    #[test]
    fn a_missing_or_empty_file_and_two_sources_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = resolve("database.password", &Secret::default(), &missing).unwrap_err();
        assert!(format!("{error:#}").contains("cannot read database.password_file"), "{error:#}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = resolve("database.password", &Secret::default(), &empty).unwrap_err();
        assert!(error.to_string().contains("database.password_file"), "{error}");
        let error = resolve("database.password", &secret("pw"), &empty).unwrap_err();
        assert_eq!(
            error.to_string(),
            "both database.password and database.password_file are set; set one of them"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(format!("{:?}", secret("hunter2")), "***");
    }
}
