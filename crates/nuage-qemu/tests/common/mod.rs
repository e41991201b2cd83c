//! Shared by the integration tests: skip rules, short temp dirs, a guard
//! that kills a test's QEMU whatever happens, keys, the test guest.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nuage_qemu::{Accel, Chain, DiskKey, DiskSpec, VmSpec};

/// True when QEMU is installed; false (after saying why) to skip, unless
/// NUAGE_TEST_REQUIRE_QEMU=1 makes a missing QEMU a failure.
pub fn have_qemu() -> bool {
    let ok = ["qemu-system-x86_64", "qemu-img"].iter().all(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        assert!(
            std::env::var("NUAGE_TEST_REQUIRE_QEMU").as_deref() != Ok("1"),
            "qemu-system-x86_64/qemu-img missing and NUAGE_TEST_REQUIRE_QEMU=1"
        );
        eprintln!("SKIP: qemu-system-x86_64 or qemu-img is not installed");
    }
    ok
}

/// A short temp dir under /tmp (Unix socket paths must stay < 108 bytes)
/// that kills the QEMU of any run dir inside it when dropped.
pub struct TestDir {
    tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("nq-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        TestDir { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.tmp.path()) else {
            return;
        };
        for e in entries.flatten() {
            if e.path().join(nuage_qemu::machine::PID_FILE).exists() {
                nuage_qemu::machine::kill_dir(&e.path());
            }
        }
    }
}

/// Key number `n` and the two forms it takes on its way to QEMU: the
/// passphrase (base64 of the raw key) and its QMP `data` (base64 again).
pub struct TestKey {
    pub key: DiskKey,
    pub forms: Vec<String>,
}

pub fn key(n: u8) -> TestKey {
    let raw: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(n))
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    let pass = b64.encode(&raw);
    let data = b64.encode(pass.as_bytes());
    TestKey {
        key: DiskKey::from_data_key(&raw).expect("key"),
        forms: vec![pass, data, hex(&raw)],
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every process's command line, joined with spaces.
pub fn all_cmdlines() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            out.push((pid, String::from_utf8_lossy(&c).replace('\0', " ")));
        }
    }
    out
}

pub fn assert_no_key_in_cmdlines(keys: &[&TestKey]) {
    for (pid, cmd) in all_cmdlines() {
        for k in keys {
            for f in &k.forms {
                assert!(
                    !cmd.contains(f.as_str()),
                    "key on the command line of {pid}: {cmd}"
                );
            }
        }
    }
}

/// No file under `dir` holds the key in any of its forms.
pub fn assert_no_key_in_files(dir: &Path, keys: &[&TestKey]) {
    for e in walk(dir) {
        let Ok(bytes) = std::fs::read(&e) else {
            continue;
        };
        for k in keys {
            for f in &k.forms {
                assert!(
                    !bytes.windows(f.len()).any(|w| w == f.as_bytes()),
                    "key found in {}",
                    e.display()
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

pub fn spec(id: &str, boot: DiskSpec) -> VmSpec {
    VmSpec {
        id: id.into(),
        vcpus: 1,
        memory_mib: 256,
        accel: Accel::Tcg,
        boot_disk: boot,
        data_disks: vec![],
        seed: None,
        nics: vec![],
        nice: 3,
    }
}

/// An encrypted qcow2 of `mib` MiB at `path`, as a one-layer chain.
pub async fn new_disk(path: &Path, mib: u64, k: &TestKey) -> Chain {
    nuage_qemu::disk::create(path, mib << 20, &k.key)
        .await
        .expect("create disk");
    Chain::single(path, k.key.clone()).expect("chain")
}

/// Waits for `needle` in the console log of run dir `dir`.
pub async fn wait_console(dir: &Path, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let log = nuage_qemu::machine::console_log(dir, 1 << 20).expect("console log");
        if log.contains(needle) {
            return log;
        }
        if start.elapsed() > timeout {
            panic!("no {needle:?} on the console after {timeout:?}; console:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test guest's qcow2: NUAGE_TEST_GUEST, else `scripts/test-guest` of
/// the workspace. None (after saying why) to skip, unless
/// NUAGE_TEST_REQUIRE_QEMU=1.
pub fn guest_image() -> Option<PathBuf> {
    let require = std::env::var("NUAGE_TEST_REQUIRE_QEMU").as_deref() == Ok("1");
    if let Ok(p) = std::env::var("NUAGE_TEST_GUEST") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NUAGE_TEST_GUEST={} is not a file",
            p.display()
        );
        return Some(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-guest");
    if !script.exists() {
        assert!(
            !require,
            "no test guest: set NUAGE_TEST_GUEST or add scripts/test-guest"
        );
        eprintln!("SKIP: no test guest (set NUAGE_TEST_GUEST or add scripts/test-guest)");
        return None;
    }
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/test-guest");
    assert!(out.status.success(), "scripts/test-guest failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .expect("test-guest printed nothing")
        .trim();
    Some(PathBuf::from(last))
}
