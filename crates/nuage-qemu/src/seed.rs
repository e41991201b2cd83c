//! The cloud-init NoCloud seed: `meta-data`, `user-data` and an optional
//! `network-config` on an ISO 9660 volume labelled `cidata`, which standard
//! cloud images (and the test guest) read at boot.
//!
//! Everything templated into YAML is validated first (a hostname is one DNS
//! label, an instance id a short token, an SSH key one line of a known
//! type), so no value can add keys or lines of its own. User-data given by
//! the tenant is passed through untouched: it is theirs to get right.

use std::path::Path;
use std::time::Duration;

use crate::chain::check_path;
use crate::error::{Error, Result};
use crate::tool::Tool;

/// The ISO tool (Debian `genisoimage`).
pub const GENISOIMAGE: &str = "genisoimage";

/// SSH public key types accepted in a seed.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// What the guest learns through its seed.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    pub instance_id: String,
    pub hostname: String,
    pub ssh_keys: Vec<String>,
    /// Tenant user-data, passed through; when `None` a `#cloud-config`
    /// with the hostname and SSH keys is written.
    pub user_data: Option<String>,
    /// A network-config (version 2) document, passed through; placeholder
    /// for private networks.
    pub network_config: Option<String>,
}

impl Seed {
    /// Checks every value that gets templated into YAML.
    pub fn validate(&self) -> Result<()> {
        check_instance_id(&self.instance_id)?;
        check_hostname(&self.hostname)?;
        for k in &self.ssh_keys {
            check_ssh_key(k)?;
        }
        Ok(())
    }

    /// The `meta-data` document. SSH keys live here (`public-keys`), not
    /// in the user-data: cloud-init merges them with whatever user-data the
    /// tenant gives, so a user-data of one's own never drops them.
    pub fn meta_data(&self) -> String {
        let mut s = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        );
        if !self.ssh_keys.is_empty() {
            s.push_str("public-keys:\n");
            for k in &self.ssh_keys {
                // Validated keys hold no quote or backslash; JSON string
                // syntax is YAML double-quoted syntax for them.
                s.push_str(&format!("  - {}\n", serde_json::Value::from(k.trim())));
            }
        }
        s
    }

    /// The `user-data` document: the tenant's, or a `#cloud-config` with
    /// the hostname.
    pub fn user_data(&self) -> String {
        match &self.user_data {
            Some(ud) => ud.clone(),
            None => format!("#cloud-config\nhostname: {}\n", self.hostname),
        }
    }

    /// Writes the seed ISO to `out` (which must not exist yet); its
    /// documents pass through a scratch directory beside it.
    pub async fn build(&self, out: &Path) -> Result<()> {
        self.validate()?;
        check_path(out)?;
        if out.exists() {
            return Err(Error::invalid(
                "seed path",
                format!("{} exists", out.display()),
            ));
        }
        // The documents are written beside the ISO, so a seed built in a
        // tmpfs (it carries the tenant's user-data) never touches a disk.
        let parent = out
            .parent()
            .ok_or_else(|| Error::invalid("seed path", "has no parent directory"))?;
        let dir = tempfile::Builder::new()
            .prefix(".seed-")
            .tempdir_in(parent)
            .map_err(|e| Error::io("seed temp dir", e))?;
        let write = |name: &str, body: &str| {
            std::fs::write(dir.path().join(name), body)
                .map_err(|e| Error::io(format!("write seed {name}"), e))
        };
        write("meta-data", &self.meta_data())?;
        write("user-data", &self.user_data())?;
        if let Some(nc) = &self.network_config {
            write("network-config", nc)?;
        }
        let mut t = Tool::new(GENISOIMAGE, Duration::from_secs(60));
        t.args(["-quiet", "-V", "cidata", "-J", "-r", "-o"])
            .arg(out)
            .arg(dir.path());
        t.run_ok(&[0]).await?;
        Ok(())
    }
}

/// A short token: letters, digits, `-`, `_`, `.`; 1 to 64 characters.
pub fn check_instance_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "instance id",
            format!(
                "{id:?}: use 1-64 letters, digits, '-', '_', '.', starting with a letter or digit"
            ),
        ))
    }
}

/// One DNS label: 1-63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
pub fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "hostname",
            format!("{h:?}: one DNS label of 1-63 lowercase letters, digits and '-'"),
        ))
    }
}

/// `<type> <base64> [comment]` on one line, a known type, a comment of
/// printable characters without quotes or backslashes.
pub fn check_ssh_key(key: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid("ssh key", why.to_string()));
    let key = key.trim();
    if key.len() > 16 * 1024 {
        return bad("longer than 16 KiB");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("must be one line without control characters");
    }
    let mut parts = key.splitn(3, ' ');
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return bad("expected '<type> <base64> [comment]'");
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return bad("unknown key type");
    }
    if blob.len() < 16
        || !blob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
    {
        return bad("the key data is not base64");
    }
    if let Some(comment) = parts.next() {
        if comment
            .chars()
            .any(|c| matches!(c, '"' | '\\') || !c.is_ascii())
        {
            return bad("the comment may not hold quotes, backslashes or non-ASCII");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_templated_into_yaml_are_checked() {
        assert!(check_hostname("web-1").is_ok());
        for h in ["", "-a", "a-", "Web", "a.b", "a b", "a\nb: x"] {
            assert!(check_hostname(h).is_err(), "{h}");
        }
        assert!(check_instance_id("i-123").is_ok());
        assert!(check_instance_id("i\n-").is_err());
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host";
        assert!(check_ssh_key(k).is_ok());
        assert!(check_ssh_key("ssh-dss AAAAB3NzaC1kc3MAAACBAP").is_err());
        assert!(check_ssh_key(&format!("{k}\nhostname: evil")).is_err());
        assert!(check_ssh_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA \"x").is_err());
        let mut s = Seed {
            instance_id: "i-1".into(),
            hostname: "web".into(),
            ssh_keys: vec![k.into()],
            ..Default::default()
        };
        let meta = format!("instance-id: i-1\nlocal-hostname: web\npublic-keys:\n  - \"{k}\"\n");
        assert_eq!(s.meta_data(), meta);
        assert_eq!(s.user_data(), "#cloud-config\nhostname: web\n");
        // the tenant's own user-data passes through; the keys stay
        s.user_data = Some("#cloud-config\npackages: [htop]\n".into());
        assert_eq!(s.user_data(), "#cloud-config\npackages: [htop]\n");
        assert_eq!(s.meta_data(), meta);
    }
}
