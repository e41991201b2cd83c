//! A disk's LUKS key, held in zeroizing memory and never printed.
//!
//! QEMU reads LUKS passphrases as UTF-8, so the raw data key (32 random
//! bytes from the key service) is turned into its base64 text once, here;
//! that text is the passphrase. Because the key is high-entropy, the LUKS
//! PBKDF is set to a short iteration time ([`LUKS_ITER_TIME_MS`]): stretching
//! a random 256-bit key buys nothing and would cost seconds at every open.

use std::os::fd::OwnedFd;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// LUKS key-derivation time (ms) when a disk is created; see module docs.
pub const LUKS_ITER_TIME_MS: u32 = 10;

/// The smallest data key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The key of one encrypted qcow2 layer.
#[derive(Clone)]
pub struct DiskKey(Zeroizing<String>);

impl DiskKey {
    /// Wraps a data key (at least 32 random bytes).
    pub fn from_data_key(key: &[u8]) -> Result<Self> {
        if key.len() < MIN_KEY_BYTES {
            return Err(Error::invalid(
                "disk key",
                format!("need at least {MIN_KEY_BYTES} bytes, got {}", key.len()),
            ));
        }
        let mut text = Zeroizing::new(String::with_capacity(key.len() * 2));
        base64::engine::general_purpose::STANDARD.encode_string(key, &mut text);
        Ok(DiskKey(text))
    }

    /// The passphrase QEMU sees.
    pub(crate) fn passphrase(&self) -> &str {
        &self.0
    }

    /// The passphrase base64-encoded once more, for a QMP `secret` object
    /// with `format: base64`.
    pub(crate) fn qmp_data(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(self.0.len() * 2));
        base64::engine::general_purpose::STANDARD.encode_string(self.0.as_bytes(), &mut out);
        out
    }

    /// A memfd holding the passphrase, close-on-exec; a tool
    /// inherits it only through [`crate::tool::Tool::key_fd`].
    pub(crate) fn memfd(&self) -> Result<OwnedFd> {
        use rustix::fs::{memfd_create, MemfdFlags};
        let fd = memfd_create("nuage-disk-key", MemfdFlags::CLOEXEC)
            .map_err(|e| Error::io("memfd_create", e.into()))?;
        let mut rest = self.passphrase().as_bytes();
        while !rest.is_empty() {
            let n =
                rustix::io::write(&fd, rest).map_err(|e| Error::io("write key memfd", e.into()))?;
            rest = &rest[n..];
        }
        Ok(fd)
    }
}

impl std::fmt::Debug for DiskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused_and_debug_hides_the_key() {
        assert!(DiskKey::from_data_key(&[1; 16]).is_err());
        let k = DiskKey::from_data_key(&[7; 32]).unwrap();
        assert_eq!(format!("{k:?}"), "DiskKey(<redacted>)");
        assert!(!k.passphrase().is_empty());
    }
}
