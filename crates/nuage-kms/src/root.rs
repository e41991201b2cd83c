//! The platform root key and how it is sealed.
//!
//! The root key wraps every key-encryption key nuage holds and the
//! platform's own secrets. It is stored only sealed — in the database, so
//! every server of a scale-out installation shares it — by an unseal key that
//! never sits next to it: a key file kept outside the data directory, or a key
//! derived with argon2id from an operator's passphrase given at each start.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::aead::{self, SecretKey};

pub(crate) const ROOT_AAD: &[u8] = b"nuage root key v1";

/// How this server unseals the root key.
#[derive(Debug, Clone)]
pub enum SealConfig {
    /// A 256-bit key in a file (created mode 0600 at first start).
    KeyFile(PathBuf),
    /// A passphrase, given now or later through the unseal call.
    Passphrase(Option<Zeroizing<String>>),
    /// A key on an external KMIP server (an HSM): the root key is sealed by
    /// its Encrypt and opened by its Decrypt, so it never opens without it.
    Kmip {
        config: crate::external::kmip::KmipConfig,
        key_id: String,
    },
}

impl SealConfig {
    pub fn method(&self) -> &'static str {
        match self {
            SealConfig::KeyFile(_) => "key_file",
            SealConfig::Passphrase(_) => "passphrase",
            SealConfig::Kmip { .. } => "kmip",
        }
    }
}

/// Public parameters stored beside the sealed root key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealParams {
    /// argon2id salt (base64), for the passphrase method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m_cost_kib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_cost: Option<u32>,
    /// The KMIP key that seals the root, for the kmip method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kmip_key_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Config(String),
    #[error("the unseal key does not open this installation's root key: {0}")]
    WrongKey(String),
    #[error("key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Minimum passphrase length, in characters.
pub const MIN_PASSPHRASE: usize = 12;

fn derive_from_passphrase(passphrase: &str, params: &SealParams) -> Result<SecretKey, SealError> {
    let salt = params
        .salt
        .as_deref()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| SealError::Config("sealed root key lacks its argon2 salt".into()))?;
    let p = argon2::Params::new(
        params.m_cost_kib.unwrap_or(64 * 1024),
        params.t_cost.unwrap_or(3),
        1,
        Some(aead::KEY_LEN),
    )
    .map_err(|e| SealError::Config(format!("argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = Zeroizing::new([0u8; aead::KEY_LEN]);
    argon
        .hash_password_into(passphrase.as_bytes(), &salt, out.as_mut())
        .map_err(|e| SealError::Config(format!("argon2: {e}")))?;
    SecretKey::from_slice(out.as_ref()).ok_or_else(|| SealError::Config("argon2 output".into()))
}

/// Reads the key file, or creates it (mode 0600, parent 0700) when `create`.
pub fn key_file(path: &Path, create: bool) -> Result<SecretKey, SealError> {
    let err = |source| SealError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let raw = Zeroizing::new(B64.decode(s.trim()).map_err(|_| {
                SealError::Config(format!("{}: not a base64 256-bit key", path.display()))
            })?);
            SecretKey::from_slice(&raw).ok_or_else(|| {
                SealError::Config(format!("{}: not a base64 256-bit key", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() && !dir.exists() {
                    std::fs::create_dir_all(dir).map_err(err)?;
                    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
                }
            }
            let key = SecretKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(err)?;
            let text = Zeroizing::new(format!("{}\n", B64.encode(key.expose())));
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
            Ok(key)
        }
        Err(e) => Err(err(e)),
    }
}

/// Seals a fresh root key: returns it with the stored parameters and sealed
/// form. `None` when the configuration cannot seal without more input (a
/// passphrase method started without its passphrase).
pub fn seal_new(cfg: &SealConfig) -> Result<Option<(SecretKey, SealParams, String)>, SealError> {
    let root = SecretKey::generate();
    let (unseal, params) = match cfg {
        SealConfig::KeyFile(path) => (
            key_file(path, true)?,
            SealParams {
                salt: None,
                m_cost_kib: None,
                t_cost: None,
                kmip_key_id: None,
            },
        ),
        SealConfig::Passphrase(None) | SealConfig::Kmip { .. } => return Ok(None),
        SealConfig::Passphrase(Some(p)) => {
            if p.chars().count() < MIN_PASSPHRASE {
                return Err(SealError::Config(format!(
                    "the unseal passphrase must have at least {MIN_PASSPHRASE} characters"
                )));
            }
            let mut salt = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
            let params = SealParams {
                salt: Some(B64.encode(salt)),
                m_cost_kib: Some(64 * 1024),
                t_cost: Some(3),
                kmip_key_id: None,
            };
            (derive_from_passphrase(p, &params)?, params)
        }
    };
    let sealed = B64.encode(aead::wrap_key(&unseal, ROOT_AAD, &root));
    Ok(Some((root, params, sealed)))
}

/// Opens the stored root key with what `cfg` provides; `Ok(None)` when a
/// passphrase is needed and was not given.
pub fn unseal(
    cfg: &SealConfig,
    stored_method: &str,
    params: &SealParams,
    sealed: &str,
) -> Result<Option<SecretKey>, SealError> {
    if stored_method != cfg.method() {
        return Err(SealError::Config(format!(
            "the root key of this installation is sealed with method {stored_method:?}, but the \
             server was started with {:?} (see --seal)",
            cfg.method()
        )));
    }
    let unseal = match cfg {
        SealConfig::KeyFile(path) => key_file(path, false)?,
        SealConfig::Passphrase(None) | SealConfig::Kmip { .. } => return Ok(None),
        SealConfig::Passphrase(Some(p)) => derive_from_passphrase(p, params)?,
    };
    open_sealed(&unseal, sealed).map(Some)
}

/// Opens with a passphrase given through the unseal call.
pub fn unseal_with_passphrase(
    passphrase: &str,
    params: &SealParams,
    sealed: &str,
) -> Result<SecretKey, SealError> {
    open_sealed(&derive_from_passphrase(passphrase, params)?, sealed)
}

fn open_sealed(unseal: &SecretKey, sealed: &str) -> Result<SecretKey, SealError> {
    let raw = B64
        .decode(sealed)
        .map_err(|_| SealError::Config("the stored sealed root key is not base64".into()))?;
    aead::unwrap_key(unseal, ROOT_AAD, &raw).map_err(|e| SealError::WrongKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_seals_and_unseals_and_a_wrong_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/seal.key");
        let cfg = SealConfig::KeyFile(path.clone());
        let (root, params, sealed) = seal_new(&cfg).unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = unseal(&cfg, "key_file", &params, &sealed).unwrap().unwrap();
        assert_eq!(again.expose(), root.expose());
        let other = SealConfig::KeyFile(dir.path().join("other.key"));
        key_file(&dir.path().join("other.key"), true).unwrap();
        assert!(matches!(
            unseal(&other, "key_file", &params, &sealed),
            Err(SealError::WrongKey(_))
        ));
        assert!(matches!(
            unseal(&cfg, "passphrase", &params, &sealed),
            Err(SealError::Config(_))
        ));
    }

    #[test]
    fn passphrase_seals_and_a_wrong_one_is_refused() {
        let cfg = SealConfig::Passphrase(Some(Zeroizing::new("correct horse battery".into())));
        let (root, params, sealed) = seal_new(&cfg).unwrap().unwrap();
        assert!(!sealed.contains("correct"));
        let opened = unseal_with_passphrase("correct horse battery", &params, &sealed).unwrap();
        assert_eq!(opened.expose(), root.expose());
        assert!(matches!(
            unseal_with_passphrase("wrong horse battery", &params, &sealed),
            Err(SealError::WrongKey(_))
        ));
        assert!(seal_new(&SealConfig::Passphrase(None)).unwrap().is_none());
        assert!(seal_new(&SealConfig::Passphrase(Some(Zeroizing::new(
            "short".into()
        ))))
        .is_err());
    }
}
