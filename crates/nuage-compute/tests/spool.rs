//! The upload spool: what goes in sealed comes out whole, at any offset,
//! and QEMU's own tools read it through the NBD export.

use std::io::{Read, Seek, SeekFrom};
use std::process::Command;

use bytes::Bytes;
use nuage_compute::spool::{Spool, SpoolError};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn stream(data: &[u8], piece: usize) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin {
    let pieces: Vec<Result<Bytes, String>> = data
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(pieces)
}

fn qemu_img_present() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok();
    if !ok && std::env::var("NUAGE_TEST_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("qemu-img is required (NUAGE_TEST_REQUIRE_QEMU=1)");
    }
    ok
}

#[tokio::test]
async fn spool_reads_back_at_any_offset_and_never_holds_the_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not a multiple of the chunk size, several chunks, odd pieces.
    let data = pattern(300_001);
    let mut seen = 0;
    let spool = Spool::receive(dir.path().join("up"), stream(&data, 7_777), 1 << 30, |n| {
        seen = n
    })
    .await
    .expect("spool");
    assert_eq!(spool.len(), data.len() as u64);
    assert_eq!(seen, data.len() as u64);

    let on_disk = std::fs::read(dir.path().join("up")).expect("read spool");
    assert!(
        !on_disk.windows(64).any(|w| w == &data[1000..1064]),
        "the spool holds plaintext"
    );

    let mut r = spool.reader().expect("reader");
    let mut all = Vec::new();
    r.read_to_end(&mut all).expect("read all");
    assert_eq!(all, data);
    for at in [0u64, 1, 65_535, 65_536, 65_537, 200_000, 299_990] {
        r.seek(SeekFrom::Start(at)).expect("seek");
        let mut buf = [0u8; 100];
        let mut got = 0;
        while got < buf.len() {
            let n = r.read(&mut buf[got..]).expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        let want = &data[at as usize..(at as usize + 100).min(data.len())];
        assert_eq!(&buf[..got], want, "at {at}");
    }
    drop(r);
    drop(spool);
    assert!(
        !dir.path().join("up").exists(),
        "a dropped spool is removed"
    );
}

#[tokio::test]
async fn spool_refuses_too_large_and_empty_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = pattern(10_000);
    let err = Spool::receive(dir.path().join("a"), stream(&big, 1000), 5_000, |_| {})
        .await
        .err()
        .expect("over the limit");
    assert!(matches!(err, SpoolError::TooLarge(5_000)), "{err}");
    assert!(
        !dir.path().join("a").exists(),
        "a refused upload leaves nothing"
    );
    let err = Spool::receive(dir.path().join("b"), stream(&[], 1), 5_000, |_| {})
        .await
        .err()
        .expect("empty");
    assert!(matches!(err, SpoolError::Empty), "{err}");
    assert!(!dir.path().join("b").exists());
}

#[tokio::test]
async fn qemu_img_reads_a_spooled_qcow2_over_nbd() {
    if !qemu_img_present() {
        eprintln!("skipped: qemu-img missing");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("src.raw");
    let data = pattern(3 * 1024 * 1024);
    std::fs::write(&raw, &data).expect("write raw");
    let qcow = dir.path().join("src.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .expect("qemu-img convert");
    assert!(st.success());
    let upload = std::fs::read(&qcow).expect("read qcow2");

    let spool = Spool::receive(
        dir.path().join("spool"),
        stream(&upload, 65_000),
        1 << 30,
        |_| {},
    )
    .await
    .expect("spool");
    let export = spool.export(dir.path()).expect("export");
    let url = export.url();
    let info = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", &url])
        .output()
        .await
        .expect("qemu-img info");
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], data.len() as u64, "{info}");

    let out = dir.path().join("back.raw");
    let conv = tokio::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw", &url])
        .arg(&out)
        .output()
        .await
        .expect("qemu-img convert");
    assert!(
        conv.status.success(),
        "{}",
        String::from_utf8_lossy(&conv.stderr)
    );
    assert_eq!(std::fs::read(&out).expect("read back"), data);

    let socket_dir = url
        .rsplit_once("socket=")
        .map(|(_, s)| std::path::PathBuf::from(s))
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .expect("socket dir");
    drop(export);
    assert!(!socket_dir.exists(), "a dropped export removes its socket");
}
