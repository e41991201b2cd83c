//! The README's walkthroughs run as written: each `sh` block of a section
//! is run by bash with the real `nuage` binary against a fresh server, the
//! only change being the server's addresses and the bootstrap token.

use std::path::Path;

use crate::common::Srv;

/// The first ```sh block under the heading `heading` of the README.
fn block(readme: &str, heading: &str) -> String {
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no section {heading:?} in the README"));
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = section[start..].find("```").expect("the block ends");
    section[start..start + len].to_string()
}

#[tokio::test]
async fn the_first_steps_run_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let script = block(&readme, "## First steps");
    assert!(script.contains("nuage audit verify"), "{script}");

    let s = Srv::start().await;
    let script = script
        .replace("http://127.0.0.1:8444", &s.admin)
        .replace("http://127.0.0.1:8443", &s.tenant)
        .replace("<bootstrap token>", &s.bootstrap);
    let home = tempfile::tempdir().expect("home");
    let bin = Path::new(env!("CARGO_BIN_EXE_nuage"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Each line runs in one shell, in order; its exit status is noted so
    // that a failing line is named.
    let lines: Vec<&str> = script
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let traced: String = lines
        .iter()
        .map(|l| format!("{l}\necho \"__rc $?\"\n"))
        .collect();
    let out = tokio::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &traced])
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("PATH", path)
        .env_remove("NUAGE_URL")
        .env_remove("NUAGE_TOKEN")
        .env_remove("NUAGE_ORG")
        .env_remove("NUAGE_CONFIG_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let codes: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("__rc "))
        .collect();
    assert_eq!(codes.len(), lines.len(), "{stdout}\n{stderr}");
    for (line, code) in lines.iter().zip(&codes) {
        // `policy test` answers with its exit status too: 3 is a denial.
        let want = if line.contains("nuage policy test") {
            "3"
        } else {
            "0"
        };
        assert_eq!(*code, want, "{line}\n{stdout}\n{stderr}");
    }
    // what the walkthrough shows: bob may not delete the project, and the
    // exported log verifies with the saved key
    assert!(stdout.contains("deny"), "{stdout}");
    assert!(home.path().join("audit.jsonl").exists());
    assert!(home.path().join("audit.pub").exists());
    s.shutdown().await;
}
