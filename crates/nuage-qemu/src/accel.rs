//! Decides at start whether VMs run under KVM or TCG, and says why.
//!
//! `/dev/kvm` being there is not enough: under nested virtualisation
//! `KVM_CREATE_VM` succeeds and SeaBIOS (16/32-bit) even runs, yet real
//! guests stop with "KVM internal error … emulation failure". So the probe
//! boots OVMF (UEFI firmware, which goes to 64-bit long mode and uses the
//! FPU at once) under `-accel kvm` for about a second and watches QMP
//! `query-status`: `internal-error`, or the process dying, means KVM is not
//! usable. Still running after the probe time means KVM works. No OVMF
//! firmware (Debian package `ovmf`) means we cannot tell, so TCG.
//!
//! `NUAGE_ACCEL=tcg|kvm` overrides the probe.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::qmp::Qmp;

/// The environment variable that overrides the probe.
pub const ENV: &str = "NUAGE_ACCEL";

/// How long the probe guest must run under KVM without failing.
const PROBE_RUN: Duration = Duration::from_millis(1000);

/// The firmware files the probe boots (first one present).
const OVMF: &[&str] = &["/usr/share/qemu/OVMF.fd", "/usr/share/ovmf/OVMF.fd"];

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of QEMU's `accel=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The probe's verdict, reported in the node's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelProbe {
    pub accel: Accel,
    pub reason: String,
}

/// Honours `NUAGE_ACCEL`, else probes KVM (about a second).
pub async fn detect() -> AccelProbe {
    match std::env::var(ENV).as_deref() {
        Ok("kvm") => AccelProbe {
            accel: Accel::Kvm,
            reason: format!("{ENV}=kvm"),
        },
        Ok("tcg") => AccelProbe {
            accel: Accel::Tcg,
            reason: format!("{ENV}=tcg"),
        },
        Ok(other) => {
            tracing::warn!("ignoring {ENV}={other:?} (want tcg or kvm)");
            probe().await
        }
        Err(_) => probe().await,
    }
}

/// Probes KVM (see module docs), ignoring the environment.
pub async fn probe() -> AccelProbe {
    match probe_kvm().await {
        Ok(why) => AccelProbe {
            accel: Accel::Kvm,
            reason: why,
        },
        Err(why) => AccelProbe {
            accel: Accel::Tcg,
            reason: why,
        },
    }
}

async fn probe_kvm() -> Result<String, String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata("/dev/kvm").map_err(|e| format!("/dev/kvm is not usable: {e}"))?;
    if !meta.file_type().is_char_device() {
        return Err("/dev/kvm is not a character device".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let firmware = OVMF
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("no OVMF firmware to probe KVM with (install the ovmf package)")?;

    let dir = tempfile::Builder::new()
        .prefix("nuage-kvm-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("probe temp dir: {e}"))?;
    let sock = dir.path().join("qmp.sock");
    let mut child = tokio::process::Command::new(crate::machine::QEMU)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "q35,accel=kvm", "-m", "128", "-bios"])
        .arg(&firmware)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", crate::machine::QEMU))?;

    let verdict = watch(&mut child, &sock).await;
    let _ = child.start_kill();
    let out = child.wait_with_output().await;
    verdict.map_err(|why| {
        let stderr = out
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        match stderr
            .lines()
            .find(|l| l.contains("KVM internal error") || l.contains("error"))
        {
            Some(line) => format!("{why} ({})", line.trim()),
            None => why,
        }
    })
}

async fn watch(child: &mut tokio::process::Child, sock: &Path) -> Result<String, String> {
    let start = Instant::now();
    let qmp = loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("QEMU under KVM exited at once ({st})"));
        }
        if let Ok(q) = Qmp::connect(sock, Duration::from_millis(500)).await {
            break q;
        }
        if start.elapsed() > Duration::from_secs(3) {
            return Err("QEMU under KVM did not open its QMP socket".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ran = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("QEMU died running OVMF under KVM ({st})"));
        }
        let status = qmp
            .execute_timeout("query-status", Value::Null, Duration::from_secs(1))
            .await
            .map_err(|e| format!("query-status under KVM: {e}"))?;
        let s = status["status"].as_str().unwrap_or("?");
        if s != "running" {
            return Err(format!("guest firmware under KVM stopped with status {s}"));
        }
        if ran.elapsed() >= PROBE_RUN {
            return Ok(format!(
                "OVMF ran {} ms under KVM without error",
                ran.elapsed().as_millis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
