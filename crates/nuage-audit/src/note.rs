//! C2SP signed notes and tlog checkpoints.
//!
//! The audit log's root hash is published as a C2SP `tlog-checkpoint` body
//! wrapped in a C2SP `signed-note`, so anyone holding the verifier key string
//! can check an export offline with no access to the server, and the format
//! stays compatible with existing transparency-log tooling and witnesses.
//! Only Ed25519 keys (signature type `0x01`) are supported.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Signature type byte for Ed25519 keys in C2SP signed notes.
pub const ALG_ED25519: u8 = 0x01;

/// Prefix of every signature line: an EM DASH (U+2014) followed by a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Prefix of a signer (secret) key string.
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";

/// Errors from building, parsing, signing or verifying notes and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name is empty or contains `+`, whitespace or control characters.
    #[error("key name {0:?} is invalid: it must be non-empty and contain no '+', whitespace or control characters")]
    InvalidKeyName(String),
    /// A verifier key string could not be parsed.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(String),
    /// A signer (secret) key string could not be parsed. The key itself is
    /// never included in the message.
    #[error("malformed signer key: {0}")]
    MalformedSignerKey(String),
    /// Note text is empty, lacks a final newline or contains control characters.
    #[error("invalid note text: {0}")]
    InvalidText(String),
    /// The signed note does not have the body / blank line / signatures layout.
    #[error("malformed signed note: {0}")]
    MalformedNote(String),
    /// No signature line from the expected key is present.
    #[error("note has no signature from key {name} (key id {key_id})")]
    NoSignature { name: String, key_id: String },
    /// A signature line from the expected key is present but does not verify.
    #[error("signature from key {name} (key id {key_id}) does not verify over the note text")]
    BadSignature { name: String, key_id: String },
    /// A checkpoint origin is empty or contains control characters (such as newlines).
    #[error("checkpoint origin {0:?} is invalid: it must be non-empty and contain no newlines or control characters")]
    InvalidOrigin(String),
    /// A checkpoint body does not follow the tlog-checkpoint format.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
}

fn validate_key_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == '+' || c.is_whitespace() || c.is_control())
    {
        return Err(NoteError::InvalidKeyName(name.to_owned()));
    }
    Ok(())
}

/// Note text must be non-empty, end in a newline and contain no control
/// characters other than newline.
fn validate_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() {
        return Err(NoteError::InvalidText("text is empty".into()));
    }
    if !text.ends_with('\n') {
        return Err(NoteError::InvalidText(
            "text does not end with a newline".into(),
        ));
    }
    if text.chars().any(|c| c != '\n' && c.is_control()) {
        return Err(NoteError::InvalidText(
            "text contains a control character other than newline".into(),
        ));
    }
    Ok(())
}

/// The C2SP key id of an Ed25519 key: the first four bytes of
/// `SHA-256(name || "\n" || 0x01 || public key)`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Parses `<name>+<8 hex key id>+<base64 key>` into its parts, checking the
/// algorithm byte. Returns the name, claimed key id and the 32 key bytes.
fn parse_key_parts(s: &str) -> Result<(&str, [u8; 4], [u8; 32]), String> {
    let mut parts = s.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected <name>+<key id>+<key>".into());
    };
    validate_key_name(name).map_err(|e| e.to_string())?;
    if id_hex.len() != 8 {
        return Err("key id must be 8 hex digits".into());
    }
    let mut id = [0u8; 4];
    hex::decode_to_slice(id_hex, &mut id).map_err(|_| "key id must be 8 hex digits")?;
    let raw = B64
        .decode(b64)
        .map_err(|_| "key is not valid standard base64")?;
    let Some((&alg, key)) = raw.split_first() else {
        return Err("key is empty".into());
    };
    if alg != ALG_ED25519 {
        return Err(format!(
            "unsupported signature type 0x{alg:02x} (only Ed25519, 0x01)"
        ));
    }
    let key: [u8; 32] = key.try_into().map_err(|_| "Ed25519 key must be 32 bytes")?;
    Ok((name, id, key))
}

/// Signs notes with an Ed25519 key under a C2SP key name.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    key_id: [u8; 4],
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for `name` using `key`.
    pub fn new(name: impl Into<String>, key: SigningKey) -> Result<Self, NoteError> {
        let name = name.into();
        validate_key_name(&name)?;
        let key_id = key_id(&name, &key.verifying_key());
        Ok(Self { name, key, key_id })
    }

    /// A signer for `name` with a fresh key from the operating system RNG.
    pub fn generate(name: impl Into<String>) -> Result<Self, NoteError> {
        Self::new(name, SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Parses `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`,
    /// checking that the key id matches the key.
    pub fn from_secret_string(s: &str) -> Result<Self, NoteError> {
        let rest = s
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or_else(|| NoteError::MalformedSignerKey("missing PRIVATE+KEY+ prefix".into()))?;
        let (name, id, seed) = parse_key_parts(rest).map_err(NoteError::MalformedSignerKey)?;
        let signer = Self::new(name, SigningKey::from_bytes(&seed))?;
        if signer.key_id != id {
            return Err(NoteError::MalformedSignerKey(
                "key id does not match the key".into(),
            ));
        }
        Ok(signer)
    }

    /// The secret key string, `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`.
    /// Treat it like a password.
    pub fn to_secret_string(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{PRIVATE_PREFIX}{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            B64.encode(&raw)
        )
    }

    /// The public verifier key string, `<name>+<hex key id>+<base64(0x01 || public key)>`.
    pub fn verifier_string(&self) -> String {
        self.verifier().to_string()
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte C2SP key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// This signer's signature line for `body` (including its newline).
    fn signature_line(&self, body: &str) -> String {
        let sig = self.key.sign(body.as_bytes());
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(&raw))
    }

    /// Signs `body` and returns the full signed note: the body, a blank line
    /// and one signature line. The body must be non-empty, end with a
    /// newline and contain no other control characters.
    pub fn sign(&self, body: &str) -> Result<String, NoteError> {
        sign_note(body, &[self])
    }
}

/// Signs `body` with several keys, producing one signature line per signer.
pub fn sign_note(body: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    validate_text(body)?;
    let mut note = String::with_capacity(body.len() + 1 + signers.len() * 120);
    note.push_str(body);
    note.push('\n');
    for signer in signers {
        note.push_str(&signer.signature_line(body));
    }
    Ok(note)
}

/// A parsed signature line.
struct SigLine<'a> {
    name: &'a str,
    key_id: [u8; 4],
    sig: Vec<u8>,
}

/// Splits a signed note into its body (with final newline) and signature lines.
fn split_note(note: &str) -> Result<(&str, Vec<SigLine<'_>>), NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| NoteError::MalformedNote("no blank line before the signatures".into()))?;
    let body = &note[..split + 1];
    let sigs = &note[split + 2..];
    validate_text(body)?;
    let Some(sigs) = sigs.strip_suffix('\n') else {
        return Err(NoteError::MalformedNote(
            "signature block is empty or does not end with a newline".into(),
        ));
    };
    let mut lines = Vec::new();
    for line in sigs.split('\n') {
        let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
            NoteError::MalformedNote(format!(
                "signature line {line:?} does not start with an em dash and a space"
            ))
        })?;
        let (name, b64) = rest.split_once(' ').ok_or_else(|| {
            NoteError::MalformedNote(format!("signature line {line:?} has no key name"))
        })?;
        validate_key_name(name)
            .map_err(|_| NoteError::MalformedNote(format!("invalid key name {name:?}")))?;
        let raw = B64.decode(b64).map_err(|_| {
            NoteError::MalformedNote(format!("signature by {name} is not valid base64"))
        })?;
        if raw.len() < 5 {
            return Err(NoteError::MalformedNote(format!(
                "signature by {name} is too short"
            )));
        }
        let (id, sig) = raw.split_at(4);
        lines.push(SigLine {
            name,
            key_id: [id[0], id[1], id[2], id[3]],
            sig: sig.to_vec(),
        });
    }
    Ok((body, lines))
}

/// Verifies signed notes against one Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `name` and `key`.
    pub fn new(name: impl Into<String>, key: VerifyingKey) -> Result<Self, NoteError> {
        let name = name.into();
        validate_key_name(&name)?;
        let key_id = key_id(&name, &key);
        Ok(Self { name, key_id, key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte C2SP key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks that `note` carries a valid signature by this key and returns
    /// the signed body (ending in a newline). Signature lines from other keys
    /// are ignored; a line from this key that fails to verify is an error.
    pub fn verify(&self, note: &str) -> Result<String, NoteError> {
        let (body, sigs) = split_note(note)?;
        let mut found = false;
        for line in sigs {
            if line.name != self.name || line.key_id != self.key_id {
                continue;
            }
            let ok = Signature::from_slice(&line.sig)
                .map(|sig| self.key.verify_strict(body.as_bytes(), &sig).is_ok())
                .unwrap_or(false);
            if !ok {
                return Err(NoteError::BadSignature {
                    name: self.name.clone(),
                    key_id: hex::encode(self.key_id),
                });
            }
            found = true;
        }
        if !found {
            return Err(NoteError::NoSignature {
                name: self.name.clone(),
                key_id: hex::encode(self.key_id),
            });
        }
        Ok(body.to_owned())
    }

    /// Verifies `note` and parses its body as a checkpoint.
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, NoteError> {
        Checkpoint::parse(&self.verify(note)?)
    }
}

impl FromStr for NoteVerifier {
    type Err = NoteError;

    /// Parses `<name>+<8 hex key id>+<base64(0x01 || public key)>`, checking
    /// that the key id matches the name and key.
    fn from_str(s: &str) -> Result<Self, NoteError> {
        let (name, id, key) = parse_key_parts(s.trim()).map_err(NoteError::MalformedVerifierKey)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| {
            NoteError::MalformedVerifierKey("not a valid Ed25519 public key".into())
        })?;
        let verifier = Self::new(name, key)?;
        if verifier.key_id != id {
            return Err(NoteError::MalformedVerifierKey(
                "key id does not match the name and key".into(),
            ));
        }
        Ok(verifier)
    }
}

impl fmt::Display for NoteVerifier {
    /// Formats the verifier key string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            B64.encode(&raw)
        )
    }
}

/// A C2SP tlog checkpoint: the log's origin, tree size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Unique log name, e.g. `nuage.local/audit/org_...`.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 9162 root hash of the tree.
    pub root: Hash,
}

impl Checkpoint {
    /// Checks that an origin is non-empty and has no control characters.
    pub fn validate_origin(origin: &str) -> Result<(), NoteError> {
        if origin.is_empty() || origin.chars().any(char::is_control) {
            return Err(NoteError::InvalidOrigin(origin.to_owned()));
        }
        Ok(())
    }

    /// The checkpoint body: `<origin>\n<size>\n<base64 root>\n`.
    pub fn to_body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Validates the origin and returns the checkpoint signed by `signer`.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        Self::validate_origin(&self.origin)?;
        signer.sign(&self.to_body())
    }

    /// Parses a checkpoint body. Extension lines are not used by this log
    /// and are rejected, so `parse(b).to_body() == b` for every accepted `b`.
    pub fn parse(body: &str) -> Result<Checkpoint, NoteError> {
        let bad = |msg: &str| NoteError::MalformedCheckpoint(msg.to_owned());
        let Some(text) = body.strip_suffix('\n') else {
            return Err(bad("body does not end with a newline"));
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(bad(
                "expected exactly three lines: origin, tree size and root hash",
            ));
        };
        Self::validate_origin(origin)?;
        let canonical_number = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        if !canonical_number {
            return Err(bad("tree size is not a canonical decimal number"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad("tree size does not fit in 64 bits"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|raw| raw.try_into().ok())
            .ok_or_else(|| bad("root hash is not 32 bytes of standard base64"))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "nuage.local/audit/org_0192abcd".into(),
            size: 12345,
            root: leaf_hash(b"root"),
        }
    }

    #[test]
    fn checkpoint_body_round_trip() {
        let cp = checkpoint();
        let body = cp.to_body();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "nuage.local/audit/org_0192abcd");
        assert_eq!(lines[1], "12345");
        assert_eq!(B64.decode(lines[2]).unwrap(), cp.root.to_vec());
        assert_eq!(Checkpoint::parse(&body).unwrap(), cp);
    }

    #[test]
    fn checkpoint_parse_rejects_malformed() {
        let root = B64.encode([0u8; 32]);
        for body in [
            format!("o\n1\n{root}"),
            format!("o\n1\n{root}\nextension\n"),
            format!("\n1\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            format!("o\n1\n{}\n", B64.encode([0u8; 31])),
            "o\n1\nnot base64!\n".to_string(),
            format!("o\r\n1\n{root}\n"),
        ] {
            assert!(Checkpoint::parse(&body).is_err(), "accepted {body:?}");
        }
        assert!(Checkpoint::parse(&format!("o\n0\n{root}\n")).is_ok());
        let cp = Checkpoint {
            origin: "a\nb".into(),
            ..checkpoint()
        };
        let signer = NoteSigner::generate("k").unwrap();
        assert!(matches!(cp.sign(&signer), Err(NoteError::InvalidOrigin(_))));
    }

    #[test]
    fn sign_verify_round_trip() {
        let signer = NoteSigner::generate("nuage.local/audit").unwrap();
        let verifier: NoteVerifier = signer.verifier_string().parse().unwrap();
        assert_eq!(verifier, signer.verifier());
        let body = checkpoint().to_body();
        let note = signer.sign(&body).unwrap();
        assert!(note.starts_with(&format!("{body}\n\u{2014} nuage.local/audit ")));
        assert!(note.ends_with('\n'));
        assert_eq!(verifier.verify(&note).unwrap(), body);
        assert_eq!(verifier.verify_checkpoint(&note).unwrap(), checkpoint());

        // The signature bytes are key id || 64-byte signature.
        let sig_line = note.lines().last().unwrap();
        let b64 = sig_line.rsplit(' ').next().unwrap();
        let raw = B64.decode(b64).unwrap();
        assert_eq!(raw.len(), 68);
        assert_eq!(raw[..4], signer.key_id());
    }

    #[test]
    fn interoperates_with_published_reference_vector() {
        // The example key pair and note published with the Go reference
        // implementation of signed notes (golang.org/x/mod/sumdb/note).
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let note = format!(
            "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        let verifier: NoteVerifier = vkey.parse().unwrap();
        assert_eq!(verifier.to_string(), vkey);
        assert_eq!(verifier.verify(&note).unwrap(), text);
        let signer = NoteSigner::from_secret_string(skey).unwrap();
        assert_eq!(signer.to_secret_string(), skey);
        assert_eq!(signer.verifier_string(), vkey);
        assert_eq!(signer.sign(text).unwrap(), note);
    }

    #[test]
    fn key_strings_round_trip() {
        let signer = NoteSigner::generate("example.com/log").unwrap();
        let secret = signer.to_secret_string();
        assert!(secret.starts_with("PRIVATE+KEY+example.com/log+"));
        let again = NoteSigner::from_secret_string(&secret).unwrap();
        assert_eq!(again.verifier_string(), signer.verifier_string());
        assert_eq!(again.to_secret_string(), secret);
        // Debug output never shows the secret.
        let dbg = format!("{signer:?}");
        assert!(!dbg.contains(&secret[secret.len() - 20..]));

        let vs = signer.verifier_string();
        let parts: Vec<&str> = vs.splitn(3, '+').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].len(), 8);
        assert_eq!(parts[1], hex::encode(signer.key_id()));
        let key = B64.decode(parts[2]).unwrap();
        assert_eq!(key[0], 0x01);
        assert_eq!(key.len(), 33);

        // Wrong key id, bad algorithm, bad names are rejected.
        let wrong_id = format!("{}+00000000+{}", parts[0], parts[2]);
        assert!(wrong_id.parse::<NoteVerifier>().is_err());
        let mut bad_alg = key.clone();
        bad_alg[0] = 0x02;
        let bad = format!("{}+{}+{}", parts[0], parts[1], B64.encode(&bad_alg));
        assert!(bad.parse::<NoteVerifier>().is_err());
        assert!("nokey".parse::<NoteVerifier>().is_err());
        assert!(NoteSigner::generate("bad name").is_err());
        assert!(NoteSigner::generate("").is_err());
        assert!(NoteSigner::generate("a+b").is_err());
        assert!(NoteSigner::from_secret_string(&secret[1..]).is_err());
        let tampered = secret.replace(&hex::encode(signer.key_id()), "deadbeef");
        assert!(NoteSigner::from_secret_string(&tampered).is_err());
    }

    #[test]
    fn key_id_matches_definition() {
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let mut data = b"name\n\x01".to_vec();
        data.extend_from_slice(key.as_bytes());
        let digest = Sha256::digest(&data);
        assert_eq!(key_id("name", &key), digest[..4]);
    }

    #[test]
    fn tampering_fails() {
        let signer = NoteSigner::generate("log").unwrap();
        let verifier = signer.verifier();
        let note = signer.sign(&checkpoint().to_body()).unwrap();
        let bytes = note.as_bytes();
        let sig_start = note.rfind('\u{2014}').unwrap();
        // Change every alphanumeric byte: body, key name and signature.
        for i in 0..bytes.len() {
            if !bytes[i].is_ascii_alphanumeric() {
                continue;
            }
            let mut changed = bytes.to_vec();
            changed[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(changed).unwrap();
            assert!(verifier.verify(&changed).is_err(), "byte {i} changed");
        }
        // Missing blank line, missing trailing newline, truncated.
        assert!(verifier.verify(&note.replacen("\n\n", "\n", 1)).is_err());
        assert!(verifier.verify(note.trim_end()).is_err());
        assert!(verifier.verify(&note[..sig_start]).is_err());
    }

    #[test]
    fn wrong_key_fails() {
        let signer = NoteSigner::generate("log").unwrap();
        let other = NoteSigner::generate("log").unwrap();
        let note = signer.sign("hello\n").unwrap();
        assert!(matches!(
            other.verifier().verify(&note),
            Err(NoteError::NoSignature { .. })
        ));
        // Same name and key id but a different key: the signature fails.
        let impostor = NoteVerifier {
            key: other.verifier().key,
            ..signer.verifier()
        };
        assert!(matches!(
            impostor.verify(&note),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn two_signers_verify_under_each() {
        let a = NoteSigner::generate("alpha").unwrap();
        let b = NoteSigner::generate("beta").unwrap();
        let body = checkpoint().to_body();
        let note = sign_note(&body, &[&a, &b]).unwrap();
        assert_eq!(
            note.lines().filter(|l| l.starts_with('\u{2014}')).count(),
            2
        );
        assert_eq!(a.verifier().verify(&note).unwrap(), body);
        assert_eq!(b.verifier().verify(&note).unwrap(), body);
        let c = NoteSigner::generate("gamma").unwrap();
        assert!(c.verifier().verify(&note).is_err());
    }

    #[test]
    fn invalid_text_is_not_signed() {
        let signer = NoteSigner::generate("log").unwrap();
        assert!(signer.sign("").is_err());
        assert!(signer.sign("no newline").is_err());
        assert!(signer.sign("tab\there\n").is_err());
        assert!(signer.sign("multi\nline body\n").is_ok());
    }
}
