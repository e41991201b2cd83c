//! Real QEMU under TCG, no guest OS: QMP, launch with an encrypted disk
//! added over QMP, keys kept off command lines and files, re-attach after
//! the handle is gone, kill -9 seen as failed, live resize and the running
//! snapshot into an encrypted overlay.

mod common;

use std::time::Duration;

use common::*;
use nuage_qemu::machine::{self, dir_status};
use nuage_qemu::{disk, DiskSpec, Error, Layer, Vm, VmState};
use serde_json::{json, Value};
use sha2::Digest as _;

#[tokio::test]
async fn qmp_launch_encrypted_disk_attach_and_kill() {
    if !have_qemu() {
        return;
    }
    let t = TestDir::new();
    let k = key(1);
    let chain = new_disk(&t.join("boot.qcow2"), 64, &k).await;
    let run = t.join("vm");
    let vm = Vm::launch(&spec("vm-test-1", DiskSpec::new("boot", chain)), &run)
        .await
        .expect("launch");

    // Every QEMU thread (vCPUs included) runs at the spec's niceness.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vm.pid())).unwrap();
    let mut threads = 0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the command's closing parenthesis; nice is field 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = rest.split(' ').nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, 3, "thread {:?} of QEMU", task.file_name());
        threads += 1;
    }
    assert!(threads > 1, "QEMU runs several threads");

    // QMP: answers, and errors carry QEMU's class and description.
    let v = vm
        .qmp()
        .execute("query-version", Value::Null)
        .await
        .unwrap();
    // The version QMP reports is the one of the binary that was started.
    let out = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .unwrap();
    let banner = String::from_utf8_lossy(&out.stdout).to_string();
    let expected = format!(
        "version {}.{}.{}",
        v["qemu"]["major"], v["qemu"]["minor"], v["qemu"]["micro"]
    );
    assert!(banner.contains(&expected), "{banner} vs {expected}");
    match vm.qmp().execute("no-such-command", Value::Null).await {
        Err(Error::Qmp { class, desc, .. }) => {
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("expected a QMP error, got {other:?}"),
    }
    match vm.qmp().execute("device_del", json!({"id": "nope"})).await {
        Err(Error::Qmp { class, .. }) => assert_eq!(class, "DeviceNotFound"),
        other => panic!("expected DeviceNotFound, got {other:?}"),
    }

    // The disk was added over QMP and is encrypted; the guest runs.
    let blocks = vm.qmp().execute("query-block", Value::Null).await.unwrap();
    let boot = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"].as_str().unwrap_or("").contains("/boot/"))
        .expect("boot disk in query-block");
    assert_eq!(boot["inserted"]["node-name"], "boot.l0");
    assert_eq!(boot["inserted"]["encrypted"], true);
    assert_eq!(vm.status().await.state, VmState::Running);

    // The key is on no command line and in no file of the run dir.
    assert_no_key_in_cmdlines(&[&k]);
    assert_no_key_in_files(&run, &[&k]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("boot.qcow2"));

    // The handle goes away, QEMU stays; a new handle re-attaches.
    let pid = vm.pid();
    drop(vm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let vm = Vm::attach(&run).await.expect("attach");
    assert_eq!(vm.pid(), pid);
    assert_eq!(vm.status().await.state, VmState::Running);
    assert_eq!(dir_status(&run).state, VmState::Running);
    assert!(
        machine::cleanup(&run).is_err(),
        "cleanup must refuse a live VM"
    );

    // kill -9 from outside: failed, with a reason.
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    vm.wait_exit(Duration::from_secs(10)).await.expect("exit");
    let st = vm.status().await;
    assert_eq!(st.state, VmState::Failed, "{st:?}");
    assert!(
        st.detail.contains("without a clean shutdown"),
        "{}",
        st.detail
    );
    assert_eq!(dir_status(&run).state, VmState::Failed);
    assert!(Vm::attach(&run).await.is_err());
    machine::cleanup(&run).expect("cleanup");
    assert!(!run.exists());
}

#[tokio::test]
async fn launch_errors_and_clean_exit() {
    if !have_qemu() {
        return;
    }
    let t = TestDir::new();
    let k = key(2);
    let chain = new_disk(&t.join("boot.qcow2"), 16, &k).await;

    // A wrong key: QEMU refuses the disk, launch fails and kills QEMU.
    let wrong = nuage_qemu::Chain::single(t.join("boot.qcow2"), key(3).key).unwrap();
    let run = t.join("bad");
    match Vm::launch(&spec("vm-bad", DiskSpec::new("boot", wrong)), &run).await {
        Err(Error::Qmp { command, desc, .. }) => {
            assert_eq!(command, "blockdev-add");
            assert!(desc.to_lowercase().contains("key"), "{desc}");
        }
        other => panic!("expected blockdev-add to fail, got {:?}", other.err()),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(dir_status(&run).state, VmState::Running);

    // Bad specs are refused before anything starts.
    let mut s = spec("vm,bad", DiskSpec::new("boot", chain.clone()));
    assert!(matches!(
        Vm::launch(&s, &t.join("x")).await,
        Err(Error::Invalid { .. })
    ));
    s.id = "ok".into();
    s.nics.push(Default::default());
    assert!(matches!(
        Vm::launch(&s, &t.join("x")).await,
        Err(Error::Invalid { .. })
    ));
    let long = format!("/tmp/{}", "d".repeat(100));
    let s = spec("ok", DiskSpec::new("boot", chain.clone()));
    assert!(matches!(
        Vm::launch(&s, std::path::Path::new(&long)).await,
        Err(Error::Invalid { .. })
    ));

    // A clean QEMU exit removes the pid file: stopped, not failed.
    let run = t.join("ok");
    let vm = Vm::launch(&s, &run).await.expect("launch");
    let _ = vm.qmp().execute("quit", Value::Null).await;
    vm.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert_eq!(vm.status().await.state, VmState::Stopped);
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[tokio::test]
async fn live_resize_and_running_snapshot_into_encrypted_overlay() {
    if !have_qemu() {
        return;
    }
    let t = TestDir::new();
    let (k1, k2) = (key(4), key(5));
    let base = t.join("data.qcow2");
    let chain = new_disk(&base, 32, &k1).await;
    let run = t.join("vm");
    let vm = Vm::launch(&spec("vm-snap", DiskSpec::new("boot", chain)), &run)
        .await
        .expect("launch");

    // Grow while running; shrinking is refused.
    vm.resize_disk("boot", 48 << 20).await.expect("grow");
    let size = |b: &Value| -> u64 {
        b.as_array()
            .unwrap()
            .iter()
            .find(|b| b["qdev"].as_str().unwrap_or("").contains("/boot/"))
            .unwrap()["inserted"]["image"]["virtual-size"]
            .as_u64()
            .unwrap()
    };
    let blocks = vm.qmp().execute("query-block", Value::Null).await.unwrap();
    assert_eq!(size(&blocks), 48 << 20);
    assert!(matches!(
        vm.resize_disk("boot", 16 << 20).await,
        Err(Error::Shrink { .. })
    ));

    // Writes through the device (HMP qemu-io: the block layer, as a guest
    // write would), then the snapshot.
    let write = |pattern: u8, offset: u64, len: &str| json!({"command-line": format!("qemu-io -d /machine/peripheral/boot/virtio-backend \"write -P {pattern} {offset} {len}\"")});
    let hmp = |v: Value| async {
        let out = vm.qmp().execute("human-monitor-command", v).await.unwrap();
        assert!(!out.as_str().unwrap_or("").contains("rror"), "hmp: {out}");
        out
    };
    hmp(write(0x11, 0, "512k")).await;
    let overlay = t.join("data-s1.qcow2");
    let frozen = vm
        .snapshot_disk("boot", &Layer::new(&overlay, k2.key.clone()))
        .await
        .expect("snapshot");
    assert_eq!(frozen, base);
    let info = disk::info_header(&overlay).await.unwrap();
    assert!(
        info.encrypted,
        "the overlay must be encrypted: {:?}",
        info.json
    );
    assert_eq!(
        info.backing_filename.as_deref(),
        Some(base.to_str().unwrap())
    );
    assert_eq!(info.virtual_size, 48 << 20);

    // The VM keeps writing, into the overlay; the frozen file does not move.
    let before = sha(&base);
    let overlay_size = std::fs::metadata(&overlay).unwrap().len();
    for i in 0..8 {
        hmp(write(0x22, (1 << 20) * i, "256k")).await;
    }
    hmp(json!({"command-line": "qemu-io -d /machine/peripheral/boot/virtio-backend flush"})).await;
    assert_eq!(sha(&base), before, "the frozen file changed");
    assert!(std::fs::metadata(&overlay).unwrap().len() > overlay_size);
    let blocks = vm.qmp().execute("query-block", Value::Null).await.unwrap();
    let top = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"].as_str().unwrap_or("").contains("/boot/"))
        .unwrap();
    assert_eq!(top["inserted"]["node-name"], "boot.s0");
    let filename = top["inserted"]["image"]["filename"].as_str().unwrap();
    assert!(filename.contains(overlay.to_str().unwrap()), "{filename}");
    assert_no_key_in_cmdlines(&[&k1, &k2]);
    assert_no_key_in_files(t.path(), &[&k1, &k2]);

    // Offline, the chain (overlay key, base key) reads back both writes.
    vm.kill().unwrap();
    vm.wait_exit(Duration::from_secs(10)).await.unwrap();
    let chain = nuage_qemu::Chain::new(vec![
        Layer::new(&overlay, k2.key.clone()),
        Layer::new(&base, k1.key.clone()),
    ])
    .unwrap();
    let copy = t.join("flat.qcow2");
    disk::snapshot_stopped(&chain, &copy, &k1.key)
        .await
        .unwrap();
    let raw = t.join("flat.raw");
    let mut tool = nuage_qemu::tool::Tool::new("qemu-img", Duration::from_secs(60));
    let obj = tool.key_fd("c.k0", &k1.key).unwrap();
    let flat = nuage_qemu::Chain::single(&copy, k1.key.clone()).unwrap();
    tool.args(["convert", "-O", "raw", "--object", &obj])
        .arg(flat.json_filename("c"))
        .arg(&raw);
    tool.run_ok(&[0]).await.unwrap();
    let data = std::fs::read(&raw).unwrap();
    assert!(
        data[..256 << 10].iter().all(|b| *b == 0x22),
        "overlay write"
    );
    assert!(
        data[(256 << 10)..(512 << 10)].iter().all(|b| *b == 0x11),
        "base write"
    );
    machine::cleanup(&run).unwrap();
}
