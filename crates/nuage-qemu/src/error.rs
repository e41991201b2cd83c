//! One error type for the driver, plus [`ImageError`] for the verdicts on an
//! uploaded image, which the API turns into a 4xx with a stable code.

use std::time::Duration;

/// The result of every fallible operation of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while driving QEMU or its tools. No variant ever
/// carries a key: messages come from QEMU or from us, never from secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered a QMP command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Qmp {
        command: String,
        class: String,
        desc: String,
    },
    /// The QMP peer said something we do not understand, or went away.
    #[error("QMP: {0}")]
    Protocol(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { after: Duration, what: String },
    /// An external tool (qemu-img, genisoimage, qemu) failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    /// A caller-supplied value is not acceptable (bad name, size …).
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// Disks only grow: shrinking would destroy data the guest may use.
    #[error("refusing to shrink the disk from {current} to {requested} bytes (disks only grow)")]
    Shrink { current: u64, requested: u64 },
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VM's QEMU process is gone (or was never there).
    #[error("VM is not running: {0}")]
    NotRunning(String),
    /// A run directory does not describe a QEMU we can safely re-attach to.
    #[error("cannot attach to {dir}: {why}")]
    Attach { dir: String, why: String },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            why: why.into(),
        }
    }

    pub(crate) fn timeout(after: Duration, what: impl Into<String>) -> Self {
        Error::Timeout {
            after,
            what: what.into(),
        }
    }
}

/// Why an uploaded image was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("unsupported image format {0} (only qcow2 and raw are accepted)")]
    UnsupportedFormat(String),
    #[error("a qcow2 image with a backing file is refused (it could read host files)")]
    BackingFile,
    #[error("a qcow2 image with an external data file is refused (it could read host files)")]
    ExternalDataFile,
    #[error("encrypted images cannot be uploaded (upload the plain image; nuage encrypts it)")]
    Encrypted,
    #[error("the qcow2 image is corrupt: {0}")]
    Corrupt(String),
    #[error("not a disk image: {0}")]
    NotAnImage(String),
    #[error("the image could not be inspected: {0}")]
    Unreadable(String),
}
