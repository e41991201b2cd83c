//! The whole VM life with the test guest under TCG: boot from an encrypted
//! overlay on an imported (encrypted) image with a NoCloud seed, the seed's
//! values on the console, an interactive console, hot-attach of an
//! encrypted volume that gets a marker, a running snapshot, detach, a new
//! volume from the snapshot showing the marker, ACPI power-off.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use nuage_qemu::disk::{self, ImageFormat};
use nuage_qemu::machine::{self, dir_status};
use nuage_qemu::seed::Seed;
use nuage_qemu::{Chain, DiskSpec, Layer, Vm, VmState};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@nuage";
const BOOT: Duration = Duration::from_secs(90);

fn fingerprint(key: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let blob = b64.decode(key.split(' ').nth(1).unwrap()).unwrap();
    let fp = base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(blob));
    format!("SHA256:{fp}")
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[tokio::test]
async fn guest_lifecycle_with_encrypted_volumes_and_snapshot() {
    if !have_qemu() {
        return;
    }
    let Some(guest) = guest_image() else { return };
    let t = TestDir::new();
    let (kimg, kboot, kvol, ksnap, knew) = (key(21), key(22), key(23), key(24), key(25));

    // The uploaded image is checked, imported encrypted; the boot disk is
    // an overlay with its own key.
    let report = nuage_qemu::image::inspect(&guest)
        .await
        .expect("inspect guest");
    let image = t.join("image.qcow2");
    disk::import(&guest, report.format, &image, &kimg.key)
        .await
        .unwrap();
    assert_eq!(report.format, ImageFormat::Qcow2);
    let boot = t.join("boot.qcow2");
    disk::create_overlay(&boot, &image, report.virtual_size, &kboot.key)
        .await
        .unwrap();
    let boot_chain = Chain::new(vec![
        Layer::new(&boot, kboot.key.clone()),
        Layer::new(&image, kimg.key.clone()),
    ])
    .unwrap();
    let seed_iso = t.join("seed.iso");
    Seed {
        instance_id: "i-guest-1".into(),
        hostname: "nuage-test".into(),
        ssh_keys: vec![SSH_KEY.into()],
        ..Default::default()
    }
    .build(&seed_iso)
    .await
    .unwrap();

    let run = t.join("vm");
    let mut spec = spec("vm-guest-1", DiskSpec::new("boot", boot_chain));
    spec.seed = Some(seed_iso);
    let vm = Vm::launch(&spec, &run).await.expect("launch");

    // The seed's values on the console.
    wait_console(&run, "nuage-guest: ready", BOOT).await;
    let log = machine::console_log(&run, 1 << 20).unwrap();
    assert!(log.contains("nuage-guest: instance-id=i-guest-1"), "{log}");
    assert!(log.contains("nuage-guest: hostname=nuage-test"), "{log}");
    let fp = format!("nuage-guest: ssh-key={}", fingerprint(SSH_KEY));
    assert!(log.contains(&fp), "want {fp} in:\n{log}");

    // The interactive console. A connected client must keep reading: an
    // undrained socket stalls the guest's serial output.
    let con = tokio::net::UnixStream::connect(machine::serial_socket(&run))
        .await
        .unwrap();
    let (mut rd, mut con) = con.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let _ = tx.send(buf[..n].to_vec());
        }
    });
    con.write_all(b"\necho hello-$((40+2))\n").await.unwrap();
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = rx.recv().await {
            seen.extend_from_slice(&chunk);
            if String::from_utf8_lossy(&seen).contains("hello-42") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        got,
        Ok(true),
        "no hello-42: {}",
        String::from_utf8_lossy(&seen)
    );
    drop(rx); // the drain task keeps reading, and discards

    // Hot-attach an encrypted volume: the guest writes its marker.
    let vol = t.join("vol.qcow2");
    let vol_chain = new_disk(&vol, 32, &kvol).await;
    vm.attach_disk(&DiskSpec::new("vol1", vol_chain.clone()))
        .await
        .unwrap();
    let log = wait_console(&run, "serial=vol1 wrote-marker=i-guest-1 vol1", BOOT).await;
    let dev = log
        .lines()
        .find(|l| l.contains("serial=vol1 wrote-marker="))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_string();

    // Snapshot it while running; the guest keeps writing, into the overlay.
    let snap_top = t.join("vol-s1.qcow2");
    let frozen = vm
        .snapshot_disk("vol1", &Layer::new(&snap_top, ksnap.key.clone()))
        .await
        .unwrap();
    assert_eq!(frozen, vol);
    assert!(disk::info_header(&snap_top).await.unwrap().encrypted);
    let before = sha(&vol);
    let top_size = std::fs::metadata(&snap_top).unwrap().len();
    con.write_all(
        format!("dd if=/dev/urandom of=/dev/{dev} bs=64k seek=4 count=16 conv=fsync; echo dd-done-$((1+1))\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    wait_console(&run, "dd-done-2", Duration::from_secs(30)).await;
    assert_eq!(sha(&vol), before, "the snapshot file changed");
    assert!(std::fs::metadata(&snap_top).unwrap().len() > top_size);

    // Detach: the guest sees it go.
    vm.detach_disk("vol1", Duration::from_secs(30))
        .await
        .unwrap();
    wait_console(&run, "serial=vol1 gone", Duration::from_secs(30)).await;

    // A new volume from the snapshot shows the marker.
    let newvol = t.join("vol2.qcow2");
    disk::create_overlay(&newvol, &vol, 32 << 20, &knew.key)
        .await
        .unwrap();
    let chain = Chain::new(vec![
        Layer::new(&newvol, knew.key.clone()),
        Layer::new(&vol, kvol.key.clone()),
    ])
    .unwrap();
    vm.attach_disk(&DiskSpec::new("vol2", chain)).await.unwrap();
    wait_console(&run, "serial=vol2 marker=i-guest-1 vol1", BOOT).await;

    let all = [&kimg, &kboot, &kvol, &ksnap, &knew];
    assert_no_key_in_cmdlines(&all);
    assert_no_key_in_files(t.path(), &all);

    // ACPI power-off: the guest powers off, QEMU exits, the VM is stopped.
    drop(con);
    drain.abort();
    vm.powerdown().await.unwrap();
    wait_console(&run, "nuage-guest: powering off", Duration::from_secs(30)).await;
    vm.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert_eq!(dir_status(&run).state, VmState::Stopped);
    machine::cleanup(&run).unwrap();
}
