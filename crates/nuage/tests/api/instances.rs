//! Virtual machines end to end, under TCG with the real QEMU and the test
//! guest (`scripts/test-guest`): create → running → the console shows the
//! cloud-init seed → a volume hot-plugged, marked, unplugged → stop (ACPI)
//! → start → the server restarts while the VM runs and the VM keeps
//! running → QEMU killed is `failed` → delete leaves nothing behind. And
//! the refusals that change nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::common::{into_resp, Srv};

pub(crate) const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPKEyB/7F/4pWHJXLkISVcYVcmzDawmxRvt2EF7k7LAP test@nuage";
/// `ssh-keygen -lf` of [`SSH_KEY`].
pub(crate) const SSH_FP: &str = "SHA256:03TTQdexnZpZRV49XTD/n9YCJ465lX49AIhfYaEduXU";
pub(crate) const BASE: &str = "/v1/orgs/acme/projects/web";

/// The test guest's qcow2: `NUAGE_TEST_GUEST`, or built by
/// `scripts/test-guest`. None (skip) when QEMU is missing, unless
/// `NUAGE_TEST_REQUIRE_QEMU=1`.
pub(crate) fn guest() -> Option<PathBuf> {
    let require = std::env::var("NUAGE_TEST_REQUIRE_QEMU").as_deref() == Ok("1");
    if let Ok(p) = std::env::var("NUAGE_TEST_GUEST") {
        return Some(PathBuf::from(p));
    }
    let have_qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !have_qemu {
        assert!(!require, "QEMU is required (NUAGE_TEST_REQUIRE_QEMU=1)");
        eprintln!("skipped: QEMU is not installed");
        return None;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(root.join("scripts/test-guest"))
        .output()
        .expect("scripts/test-guest runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_string)
        .expect("a guest path");
    Some(PathBuf::from(path))
}

/// Polls `path` until `done` holds for its JSON body (or panics after
/// `secs`).
pub(crate) async fn wait_for(
    s: &Srv,
    token: &str,
    path: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let r = s.t(Method::GET, path, token, None).await;
        if done(&r.body) {
            return r.body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{path} did not converge in {secs} s: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) async fn console_until(
    s: &Srv,
    token: &str,
    instance: &str,
    secs: u64,
    needle: &str,
) -> String {
    let path = format!("{BASE}/instances/{instance}/console-log");
    let body = wait_for(s, token, &path, secs, |b| {
        b["output"].as_str().is_some_and(|o| o.contains(needle))
    })
    .await;
    body["output"].as_str().unwrap_or("").to_string()
}

/// Spare disks ready in `dir` (`<data dir>/compute/spares`).
fn ready_spares(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("spare-"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits (at most two minutes) until `dir` holds `n` ready spares.
async fn wait_spares(dir: &std::path::Path, n: usize, when: &str) {
    let t = Instant::now();
    while ready_spares(dir) < n {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "fewer than {n} spare disks {when}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn qemu_pid(s: &Srv, instance_id: &str) -> Option<i32> {
    let pid = std::fs::read_to_string(
        s.data_dir
            .join("compute/vm")
            .join(instance_id)
            .join("qemu.pid"),
    )
    .ok()?;
    pid.trim().parse().ok()
}

pub(crate) fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|st| !st.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn instance_lifecycle_on_qemu_with_seed_volumes_restart_and_failure() {
    let Some(guest) = guest() else { return };
    let mut s = Srv::start().await;
    let a = s.org("acme").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &a,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/images"),
            &a,
            Some(json!({"name": "guest"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let bytes = std::fs::read(&guest).expect("read the test guest");
    let r = s
        .http
        .put(format!("{}{BASE}/images/guest/file", s.tenant))
        .bearer_auth(&a)
        .body(bytes)
        .send()
        .await
        .expect("upload");
    let r = into_resp(r).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // An image on the node has it make spare disks ahead of need: empty
    // encrypted files whose keys only the server's memory holds.
    let spares = s.data_dir.join("compute/spares");
    wait_spares(&spares, 2, "made at first").await;

    // Refusals first: nothing is created by any of them.
    let bad: [(Value, u16, &str); 5] = [
        (json!({"name": "x", "image": "nope"}), 404, "not_found"),
        (
            json!({"name": "x", "image": "guest", "vcpus": 4096}),
            400,
            "invalid_instance_size",
        ),
        (
            json!({"name": "x", "image": "guest", "vcpus": 64, "memory": "256G"}),
            409,
            "insufficient_capacity",
        ),
        (
            json!({"name": "x", "image": "guest", "ssh_keys": ["ssh-rsa not-a-key"]}),
            400,
            "invalid_ssh_key",
        ),
        (
            json!({"name": "Bad_Name", "image": "guest"}),
            400,
            "invalid_name",
        ),
    ];
    for (body, status, code) in bad {
        let r = s
            .t(
                Method::POST,
                &format!("{BASE}/instances"),
                &a,
                Some(body.clone()),
            )
            .await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {}", r.text);
    }
    let r = s
        .t(Method::GET, &format!("{BASE}/instances"), &a, None)
        .await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r.text
    );

    // Create → running, and the guest prints what the seed told it.
    let t0 = Instant::now();
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/instances"),
            &a,
            Some(
                json!({"name": "vm1", "image": "guest", "vcpus": 1, "memory": "256M",
                        "ssh_keys": [SSH_KEY]}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["state"], "creating");
    // The boot disk took a spare (making another costs QEMU's LUKS
    // benchmark, over a second of CPU: it cannot be ready yet).
    assert_eq!(
        ready_spares(&spares),
        1,
        "the boot disk must come from a spare"
    );
    let id = r.body["id"].as_str().expect("id").to_string();
    let inst = format!("{BASE}/instances/vm1");
    wait_for(&s, &a, &inst, 60, |b| b["state"] == "running").await;
    let out = console_until(&s, &a, "vm1", 90, "nuage-guest: ready").await;
    eprintln!("create → guest ready: {:?}", t0.elapsed());
    assert!(
        out.contains(&format!("nuage-guest: instance-id={id}")),
        "{out}"
    );
    assert!(out.contains("nuage-guest: hostname=vm1"), "{out}");
    assert!(
        out.contains(&format!("nuage-guest: ssh-key={SSH_FP}")),
        "{out}"
    );
    let r = s.t(Method::POST, &format!("{inst}/start"), &a, None).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "instance_running"),
        "{}",
        r.text
    );

    // A volume hot-plugged while it runs: the guest marks it; unplugged:
    // the guest sees it go; an attached volume cannot be deleted.
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/volumes"),
            &a,
            Some(json!({"name": "data", "size": "64M"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let vol_id = r.body["id"].as_str().expect("vol id").to_string();
    let serial = &vol_id[vol_id.len() - 20..];
    let r = s
        .t(
            Method::POST,
            &format!("{inst}/volumes"),
            &a,
            Some(json!({"volume": "data"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &format!("{BASE}/volumes/data"), 60, |b| {
        b["state"] == "attached"
    })
    .await;
    console_until(&s, &a, "vm1", 60, &format!("serial={serial} wrote-marker=")).await;
    let r = s
        .t(Method::DELETE, &format!("{BASE}/volumes/data"), &a, None)
        .await;
    assert_eq!((r.status, r.code()), (409, "volume_attached"), "{}", r.text);

    // Grown while attached; never shrunk.
    let r = s
        .t(
            Method::PATCH,
            &format!("{BASE}/volumes/data"),
            &a,
            Some(json!({"size": "128M"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["size_bytes"], 128 << 20, "{}", r.text);
    let r = s
        .t(
            Method::PATCH,
            &format!("{BASE}/volumes/data"),
            &a,
            Some(json!({"size": "64M"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "volume_shrink"), "{}", r.text);

    // A snapshot while the VM runs; a new volume from it carries the
    // marker the guest wrote on the original.
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/snapshots"),
            &a,
            Some(json!({"name": "s1", "volume": "data"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(Method::DELETE, &format!("{inst}/volumes/data"), &a, None)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &format!("{BASE}/volumes/data"), 60, |b| {
        b["state"] == "available"
    })
    .await;
    console_until(&s, &a, "vm1", 30, &format!("serial={serial} gone")).await;
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/volumes"),
            &a,
            Some(json!({"name": "copy", "snapshot": "s1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["size_bytes"], 128 << 20, "{}", r.text);
    let copy_id = r.body["id"].as_str().expect("copy id").to_string();
    let copy_serial = copy_id[copy_id.len() - 20..].to_string();
    let r = s
        .t(
            Method::POST,
            &format!("{inst}/volumes"),
            &a,
            Some(json!({"volume": "copy"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let out = console_until(&s, &a, "vm1", 60, &format!("serial={copy_serial} marker=")).await;
    assert!(
        out.contains(&format!("serial={copy_serial} marker={id} {serial}")),
        "the snapshot's copy holds the marker written on the original: {out}"
    );
    let r = s
        .t(Method::DELETE, &format!("{inst}/volumes/copy"), &a, None)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &format!("{BASE}/volumes/copy"), 60, |b| {
        b["state"] == "available"
    })
    .await;

    // A volume of another project cannot be attached: it is not found.
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &a,
            Some(json!({"name": "other"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/other/volumes",
            &a,
            Some(json!({"name": "foreign", "size": "8M"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            &format!("{inst}/volumes"),
            &a,
            Some(json!({"volume": "foreign"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.text);

    // Stop asks the guest (ACPI); it powers off; start boots it again.
    let r = s.t(Method::POST, &format!("{inst}/stop"), &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &inst, 60, |b| b["state"] == "stopped").await;
    assert!(
        qemu_pid(&s, &id).is_none(),
        "a stopped instance has no QEMU"
    );
    let r = s.t(Method::POST, &format!("{inst}/start"), &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &inst, 60, |b| b["state"] == "running").await;
    console_until(&s, &a, "vm1", 90, "nuage-guest: ready").await;

    // The control plane restarts; the VM does not.
    let pid = qemu_pid(&s, &id).expect("a running instance has a QEMU");
    s.restart().await;
    assert!(alive(pid), "restarting the server killed the VM");
    let b = wait_for(&s, &a, &inst, 30, |b| b["state"] == "running").await;
    assert_eq!(b["state"], "running");
    assert_eq!(qemu_pid(&s, &id), Some(pid), "the VM was started again");
    // The old spares went with the old process's keys; a node holding an
    // image makes new ones.
    wait_spares(&spares, 1, "after a restart").await;

    // QEMU dies: the instance is failed, with the reason; volumes intact.
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let b = wait_for(&s, &a, &inst, 30, |b| b["state"] == "failed").await;
    assert!(
        b["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("without a clean shutdown")),
        "{b}"
    );
    let r = s
        .t(Method::GET, &format!("{BASE}/volumes/vm1-boot"), &a, None)
        .await;
    assert_eq!(r.body["state"], "attached", "{}", r.text);

    // Delete: the VM, its run directory, seed and boot volume go; the data
    // volume stays, detached.
    let r = s.t(Method::DELETE, &inst, &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &inst, 60, |b| b["code"] == "not_found").await;
    assert!(
        !s.data_dir.join("compute/vm").join(&id).exists(),
        "run dir left"
    );
    let r = s
        .t(Method::GET, &format!("{BASE}/volumes/vm1-boot"), &a, None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s
        .t(Method::GET, &format!("{BASE}/volumes/data"), &a, None)
        .await;
    assert_eq!(r.body["state"], "available", "{}", r.text);
    // Files shared with the snapshot stay until nothing names them.
    let boot_id = b["boot_volume_id"].as_str().unwrap_or("none").to_string();
    let files = || -> Vec<String> {
        std::fs::read_dir(s.data_dir.join("compute/volumes"))
            .expect("volumes dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect()
    };
    assert!(
        !files().iter().any(|f| f.contains(&boot_id)),
        "the boot volume's files are gone: {:?}",
        files()
    );
    assert!(
        files().contains(&format!("{vol_id}.qcow2")),
        "{:?}",
        files()
    );
    for path in [
        format!("{BASE}/snapshots/s1"),
        format!("{BASE}/volumes/copy"),
        format!("{BASE}/volumes/data"),
    ] {
        let r = s.t(Method::DELETE, &path, &a, None).await;
        assert_eq!(r.status, 204, "{path}: {}", r.text);
    }
    assert!(
        !files()
            .iter()
            .any(|f| f.contains(&vol_id) || f.contains(&copy_id)),
        "deleting the snapshot and its volumes removes their files: {:?}",
        files()
    );
    s.shutdown().await;
}
