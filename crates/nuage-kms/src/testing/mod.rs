//! Real external key managers started for tests: PyKMIP's `pykmip-server`
//! and OpenBao's `bao server -dev`, each on 127.0.0.1 with a free port, in a
//! temporary directory, stopped when dropped.
//!
//! The binaries come from the Python virtual environment that
//! `scripts/test` prepares (`target/test-venv`), or from the paths in
//! `NUAGE_TEST_PYKMIP_SERVER` and `NUAGE_TEST_BAO`.

pub mod kmip_server;
pub mod openbao_server;

use std::path::PathBuf;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The workspace's `target/test-venv/bin/<name>`, if it exists.
pub fn venv_tool(name: &str) -> Option<PathBuf> {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("target/test-venv/bin").join(name);
        if candidate.exists() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}
