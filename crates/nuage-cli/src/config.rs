//! Where the client remembers servers and tokens between runs.
//!
//! Settings and secrets live in two files so that the one holding tokens can
//! be kept private (mode 0600) while the other can be shared or inspected.
//! Both are replaced atomically, so an interrupted write never leaves a
//! truncated file behind.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const CONFIG_FILE: &str = "config.json";
const CREDENTIALS_FILE: &str = "credentials.json";

/// The configuration directory: `$NUAGE_CONFIG_DIR`, else `<config dir>/nuage`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NUAGE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::config_dir()
        .map(|d| d.join("nuage"))
        .ok_or_else(|| anyhow!("no configuration directory found; set NUAGE_CONFIG_DIR"))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// PEM file of a private CA to trust for `https://` servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl Config {
    pub fn load(dir: &Path) -> Result<Self> {
        load_json(&dir.join(CONFIG_FILE))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(dir, CONFIG_FILE, &to_json(self)?, 0o644)
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

/// Tokens must never reach logs or error messages, even through `{:?}`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |t: &Option<String>| if t.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Credentials")
            .field("token", &shown(&self.token))
            .field("admin_token", &shown(&self.admin_token))
            .finish()
    }
}

impl Credentials {
    pub fn load(dir: &Path) -> Result<Self> {
        load_json(&dir.join(CREDENTIALS_FILE))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(dir, CREDENTIALS_FILE, &to_json(self)?, 0o600)
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A missing file is an empty configuration, not an error.
fn load_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid: fix or delete it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

/// Writes `dir/name` through a temporary file in the same directory, created
/// with `mode` from the start so the content is never readable by others.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("could not write {}", dir.join(name).display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_files_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), Config::default());
        assert_eq!(
            Credentials::load(dir.path()).unwrap(),
            Credentials::default()
        );
    }

    #[test]
    fn config_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let config = Config {
            url: Some("https://nuage.example:8443".into()),
            admin_url: Some("http://127.0.0.1:8444".into()),
            org: Some("acme".into()),
            project: None,
            ca_cert: Some(PathBuf::from("/etc/nuage/ca.pem")),
        };
        config.save(&nested).unwrap();
        assert_eq!(Config::load(&nested).unwrap(), config);
        let raw = fs::read_to_string(nested.join(CONFIG_FILE)).unwrap();
        assert!(!raw.contains("project"), "unset fields are omitted: {raw}");
    }

    #[test]
    fn credentials_round_trip_private() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials {
            token: Some("nuage_secret1".into()),
            admin_token: None,
        };
        creds.save(dir.path()).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), creds);
        let path = dir.path().join(CREDENTIALS_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let updated = Credentials {
            token: None,
            admin_token: Some("nuage_secret2".into()),
        };
        updated.save(dir.path()).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), updated);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a rewrite keeps the file private");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn debug_hides_tokens() {
        let creds = Credentials {
            token: Some("nuage_topsecret".into()),
            admin_token: None,
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CONFIG_FILE), b"{not json").unwrap();
        let err = Config::load(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("config.json"));
    }
}
