//! qemu-img with keys through inherited fds, offline resize, chains with a
//! key per layer, upload inspection, the NoCloud seed and the KVM probe.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nuage_qemu::disk::{self, ImageFormat};
use nuage_qemu::image::inspect;
use nuage_qemu::seed::Seed;
use nuage_qemu::{Chain, Error, ImageError, Layer};

fn qemu_img(args: &[&str]) {
    let st = std::process::Command::new("qemu-img")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img {args:?}");
}

/// A raw disk of `mib` MiB with an MBR signature and some data.
fn raw_disk(path: &Path, mib: usize) {
    let mut b = vec![0u8; mib << 20];
    b[510] = 0x55;
    b[511] = 0xaa;
    for (i, x) in b[4096..(1 << 20)].iter_mut().enumerate() {
        *x = (i * 7 % 251) as u8;
    }
    std::fs::write(path, b).unwrap();
}

#[tokio::test]
async fn qemu_img_keys_through_fds_resize_and_chains() {
    if !have_qemu() {
        return;
    }
    let t = TestDir::new();
    let (k1, k2, k3) = (key(11), key(12), key(13));

    // Import a raw image while watching every command line: qemu-img is
    // seen naming /dev/fd/N, never the key.
    let src = t.join("src.raw");
    raw_disk(&src, 64);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let forms: Vec<String> = k1.forms.clone();
        std::thread::spawn(move || {
            let mut saw_fd = false;
            while !done.load(Ordering::Relaxed) {
                for (pid, cmd) in all_cmdlines() {
                    for f in &forms {
                        assert!(
                            !cmd.contains(f.as_str()),
                            "key on the command line of {pid}"
                        );
                    }
                    saw_fd |= cmd.contains("qemu-img") && cmd.contains("file=/dev/fd/");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            saw_fd
        })
    };
    let base = t.join("base.qcow2");
    disk::import(&src, ImageFormat::Raw, &base, &k1.key)
        .await
        .expect("import");
    done.store(true, Ordering::Relaxed);
    assert!(watcher.join().unwrap(), "never saw qemu-img with a key fd");

    let info = disk::info_header(&base).await.unwrap();
    assert!(info.encrypted);
    assert_eq!(info.virtual_size, 64 << 20);
    let chain = Chain::single(&base, k1.key.clone()).unwrap();
    assert_eq!(disk::info(&chain).await.unwrap().virtual_size, 64 << 20);

    // The wrong key does not open it.
    let wrong = Chain::single(&base, k2.key.clone()).unwrap();
    assert!(disk::info(&wrong).await.is_err() || disk::resize(&wrong, 512 << 20).await.is_err());

    // Overlay with its own key; the chain opens with one key per layer.
    let top = t.join("top.qcow2");
    disk::create_overlay(&top, &base, 64 << 20, &k2.key)
        .await
        .unwrap();
    let chain = Chain::new(vec![
        Layer::new(&top, k2.key.clone()),
        Layer::new(&base, k1.key.clone()),
    ])
    .unwrap();
    let info = disk::info(&chain).await.unwrap();
    assert!(info.encrypted);
    assert_eq!(info.backing_filename.as_deref(), base.to_str());

    // Offline resize: grow works, shrink is refused, nothing changes.
    disk::resize(&chain, 512 << 20).await.unwrap();
    assert_eq!(disk::info(&chain).await.unwrap().virtual_size, 512 << 20);
    match disk::resize(&chain, 128 << 20).await {
        Err(Error::Shrink { current, requested }) => {
            assert_eq!((current, requested), (512 << 20, 128 << 20))
        }
        other => panic!("shrink must be refused: {other:?}"),
    }
    assert_eq!(disk::info(&chain).await.unwrap().virtual_size, 512 << 20);

    // Exact copy of the stopped chain, standalone under its own key.
    let copy = t.join("copy.qcow2");
    disk::snapshot_stopped(&chain, &copy, &k3.key)
        .await
        .unwrap();
    let info = disk::info_header(&copy).await.unwrap();
    assert!(info.encrypted && info.backing_filename.is_none());
    assert!(
        disk::create(&copy, 1 << 20, &k3.key).await.is_err(),
        "no overwrite"
    );
    assert_no_key_in_files(t.path(), &[&k1, &k2, &k3]);
}

/// A spare made ahead of need becomes the same disk as a fresh one: an
/// overlay that reads its base's bytes, grown to the asked size, or a
/// blank disk; it never overwrites a disk.
#[tokio::test]
async fn spares_become_overlays_and_blank_disks() {
    if !have_qemu() {
        return;
    }
    let t = TestDir::new();
    let (k1, k2, k3) = (key(21), key(22), key(23));
    let src = t.join("src.raw");
    raw_disk(&src, 8);
    let base = t.join("base.qcow2");
    disk::import(&src, ImageFormat::Raw, &base, &k1.key)
        .await
        .unwrap();

    let spare = t.join("spare.qcow2");
    disk::create_spare(&spare, &k2.key).await.unwrap();
    let top = t.join("top.qcow2");
    disk::adopt(&spare, &top, Some(&base), 32 << 20, &k2.key)
        .await
        .unwrap();
    assert!(!spare.exists(), "the spare is renamed into place");
    let chain = Chain::new(vec![
        Layer::new(&top, k2.key.clone()),
        Layer::new(&base, k1.key.clone()),
    ])
    .unwrap();
    let info = disk::info(&chain).await.unwrap();
    assert!(info.encrypted);
    assert_eq!(info.virtual_size, 32 << 20);
    assert_eq!(info.backing_filename.as_deref(), base.to_str());
    // Same bytes as the source (qemu-img compare reads past the source's
    // end as zeros, which the grown overlay must show).
    let secret = |id: &str, k: &TestKey| format!("secret,id={id},data={}", k.forms[0]);
    let st = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "--object"])
        .arg(secret(&Chain::secret_id("c", 0), &k2))
        .arg("--object")
        .arg(secret(&Chain::secret_id("c", 1), &k1))
        .arg(chain.json_filename("c"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "the adopted overlay must read as its base");

    // A blank disk, and no overwrite of an existing one.
    let spare = t.join("spare2.qcow2");
    disk::create_spare(&spare, &k3.key).await.unwrap();
    assert!(disk::adopt(&spare, &top, None, 16 << 20, &k3.key)
        .await
        .is_err());
    assert!(spare.exists(), "a refused adoption keeps the spare");
    let blank = t.join("blank.qcow2");
    disk::adopt(&spare, &blank, None, 16 << 20, &k3.key)
        .await
        .unwrap();
    let info = disk::info(&Chain::single(&blank, k3.key.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(info.virtual_size, 16 << 20);
    assert!(info.backing_filename.is_none());
    assert_no_key_in_files(t.path(), &[&k1, &k2, &k3]);
}

#[tokio::test]
async fn uploaded_images_are_inspected() {
    if !have_qemu() {
        return;
    }
    let t = TestDir::new();
    let p = |n: &str| t.join(n);

    let qcow = p("ok.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "64M"]);
    let r = inspect(&qcow).await.unwrap();
    assert_eq!((r.format, r.virtual_size), (ImageFormat::Qcow2, 64 << 20));

    let raw = p("ok.raw");
    raw_disk(&raw, 2);
    let r = inspect(&raw).await.unwrap();
    assert_eq!((r.format, r.virtual_size), (ImageFormat::Raw, 2 << 20));

    let backed = p("backed.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "/etc/hostname",
        "-u",
        backed.to_str().unwrap(),
        "1M",
    ]);
    assert_eq!(inspect(&backed).await, Err(ImageError::BackingFile));

    let data = p("data.qcow2");
    let opts = format!("data_file={}", p("data.bin").display());
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &opts,
        data.to_str().unwrap(),
        "1M",
    ]);
    assert_eq!(inspect(&data).await, Err(ImageError::ExternalDataFile));

    // Corrupt: the first L2 entry points past the end of the file.
    let bad = p("bad.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    let mut b = std::fs::read(&bad).unwrap();
    let be64 = |b: &[u8], o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    let l1 = be64(&b, 40) as usize;
    let l2 = (be64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let beyond = ((b.len() as u64 * 4) & !0xffff) | (1 << 63);
    b[l2..l2 + 8].copy_from_slice(&beyond.to_be_bytes());
    std::fs::write(&bad, b).unwrap();
    assert!(matches!(inspect(&bad).await, Err(ImageError::Corrupt(_))));

    let junk = p("junk.bin");
    let bytes: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&junk, &bytes).unwrap();
    assert!(matches!(
        inspect(&junk).await,
        Err(ImageError::NotAnImage(_))
    ));
    std::fs::write(&junk, &bytes[..1000]).unwrap();
    assert!(matches!(
        inspect(&junk).await,
        Err(ImageError::NotAnImage(_))
    ));
    std::fs::write(&junk, b"").unwrap();
    assert_eq!(inspect(&junk).await, Err(ImageError::Empty));

    let vmdk = p("x.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", vmdk.to_str().unwrap(), "1M"]);
    assert_eq!(
        inspect(&vmdk).await,
        Err(ImageError::UnsupportedFormat("vmdk".into()))
    );
    let msg = ImageError::BackingFile.to_string();
    assert!(msg.contains("backing file"), "{msg}");
}

#[tokio::test]
async fn seed_iso_is_cidata_with_the_documents() {
    if !have_qemu() {
        return;
    }
    let t = TestDir::new();
    let iso = t.join("seed.iso");
    let seed = Seed {
        instance_id: "i-abc".into(),
        hostname: "web-1".into(),
        ssh_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t@x"
                .into(),
        ],
        ..Default::default()
    };
    seed.build(&iso).await.expect("seed");
    let out = std::process::Command::new("isoinfo")
        .args(["-d", "-i", iso.to_str().unwrap()])
        .output()
        .unwrap();
    let d = String::from_utf8_lossy(&out.stdout);
    assert!(d.contains("Volume id: cidata"), "{d}");
    let out = std::process::Command::new("isoinfo")
        .args(["-R", "-f", "-i", iso.to_str().unwrap()])
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&out.stdout);
    assert!(
        files.contains("/meta-data") && files.contains("/user-data"),
        "{files}"
    );
    let bad = Seed {
        hostname: "evil\nssh_authorized_keys: []".into(),
        ..seed.clone()
    };
    assert!(bad.build(&t.join("bad.iso")).await.is_err());
    assert!(!t.join("bad.iso").exists());
}

#[tokio::test]
async fn kvm_probe_gives_a_reason() {
    if !have_qemu() {
        return;
    }
    let start = std::time::Instant::now();
    let p = nuage_qemu::accel::probe().await;
    eprintln!("accel probe: {p:?} in {:?}", start.elapsed());
    assert!(!p.reason.is_empty());
    assert!(start.elapsed() < Duration::from_secs(4));
    // On the test machines nested KVM fails on real guest code.
    if std::path::Path::new("/dev/kvm").exists() && p.accel == nuage_qemu::Accel::Tcg {
        assert!(
            p.reason.contains("KVM") || p.reason.contains("OVMF"),
            "{}",
            p.reason
        );
    }
}
