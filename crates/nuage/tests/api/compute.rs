//! Compute over the REST API, against the real `qemu-img`: images uploaded,
//! inspected and stored encrypted (never in clear on our disk), volumes
//! blank or from images, and the refusals that change nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use http::Method;
use serde_json::json;

use crate::common::{contains_bytes, files_under, into_resp, Resp, Srv};

/// True when qemu-img is here; with `NUAGE_TEST_REQUIRE_QEMU=1` its absence
/// fails the test instead of skipping it.
pub(crate) fn qemu_present() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("NUAGE_TEST_REQUIRE_QEMU").as_deref() != Ok("1"),
            "qemu-img is required (NUAGE_TEST_REQUIRE_QEMU=1)"
        );
        eprintln!("skipped: qemu-img is not installed");
    }
    ok
}

async fn upload(s: &Srv, token: &str, path: &str, bytes: Vec<u8>) -> Resp {
    let r = s
        .http
        .put(format!("{}{path}", s.tenant))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .expect("upload sent");
    into_resp(r).await
}

/// A 4 MiB raw disk: an MBR signature and a marker text we can look for.
pub(crate) fn raw_disk(marker: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 4 << 20];
    d[510] = 0x55;
    d[511] = 0xaa;
    for at in [4096usize, 1 << 20, 3 << 20] {
        d[at..at + marker.len()].copy_from_slice(marker);
    }
    d
}

fn qemu_img(args: &[&str], dir: &Path) {
    let st = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img {args:?}");
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img info");
    serde_json::from_slice(&out.stdout).expect("qemu-img json")
}

fn compute_dir(s: &Srv) -> PathBuf {
    s.data_dir.join("compute")
}

#[tokio::test]
async fn images_and_volumes_are_encrypted_checked_and_refused_cleanly() {
    if !qemu_present() {
        return;
    }
    let s = Srv::start().await;
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
    let base = "/v1/orgs/acme/projects/web";

    // A raw image goes in, comes out an encrypted qcow2; the marker is
    // nowhere under the data directory, and no spool is left.
    let marker = b"NUAGE-PLAINTEXT-MARKER-7f3a";
    let r = s
        .t(
            Method::POST,
            &format!("{base}/images"),
            &a,
            Some(json!({"name": "disk"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["state"], "uploading");
    let r = upload(
        &s,
        &a,
        &format!("{base}/images/disk/file"),
        raw_disk(marker),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "available", "{}", r.text);
    assert_eq!(r.body["source_format"], "raw");
    assert_eq!(r.body["virtual_size"], 4 << 20);
    let image_id = r.body["id"].as_str().expect("id").to_string();
    let stored = compute_dir(&s)
        .join("images")
        .join(format!("{image_id}.qcow2"));
    let info = qemu_img_info(&stored);
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["encrypted"], true, "{info}");
    for f in files_under(&s.data_dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !contains_bytes(&bytes, marker),
            "{} holds the plaintext",
            f.display()
        );
    }
    assert!(
        files_under(&compute_dir(&s).join("spool")).is_empty(),
        "an upload spool was left behind"
    );
    // An available image takes no second file.
    let r = upload(
        &s,
        &a,
        &format!("{base}/images/disk/file"),
        raw_disk(marker),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "image_available"), "{}", r.text);

    // Refusals: junk and a qcow2 with a backing file leave the image
    // `failed` with the reason; an empty body is no verdict on a file, so
    // the image still waits for one. None leaves a file.
    let tmp = tempfile::tempdir().expect("tempdir");
    qemu_img(
        &["create", "-q", "-f", "qcow2", "base.qcow2", "1M"],
        tmp.path(),
    );
    qemu_img(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-u",
            "evil.qcow2",
            "1M",
        ],
        tmp.path(),
    );
    let evil = std::fs::read(tmp.path().join("evil.qcow2")).expect("evil");
    let cases: [(&str, Vec<u8>, u16, &str, &str); 3] = [
        (
            "junk",
            b"this is not a disk image at all".repeat(100),
            400,
            "not_an_image",
            "failed",
        ),
        ("evil", evil, 400, "image_has_backing_file", "failed"),
        ("empty", Vec::new(), 400, "empty_image", "uploading"),
    ];
    for (name, body, status, code, state) in cases {
        let r = s
            .t(
                Method::POST,
                &format!("{base}/images"),
                &a,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["id"].as_str().expect("id").to_string();
        let r = upload(&s, &a, &format!("{base}/images/{name}/file"), body).await;
        assert_eq!((r.status, r.code()), (status, code), "{name}: {}", r.text);
        let r = s
            .t(Method::GET, &format!("{base}/images/{name}"), &a, None)
            .await;
        assert_eq!(r.body["state"], state, "{name}: {}", r.text);
        assert!(
            !compute_dir(&s)
                .join("images")
                .join(format!("{id}.qcow2"))
                .exists(),
            "{name}: a refused image left a file"
        );
    }

    // Volumes: blank, from the image (size defaults to the image's), bad
    // sizes and sources refused with nothing created.
    let r = s
        .t(
            Method::POST,
            &format!("{base}/volumes"),
            &a,
            Some(json!({"name": "blank", "size": "64M"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["state"], "available", "{}", r.text);
    assert_eq!(r.body["size_bytes"], 64 << 20);
    let blank_id = r.body["id"].as_str().expect("id").to_string();
    let info = qemu_img_info(
        &compute_dir(&s)
            .join("volumes")
            .join(format!("{blank_id}.qcow2")),
    );
    assert_eq!(info["encrypted"], true, "{info}");
    assert_eq!(info["virtual-size"], 64 << 20, "{info}");

    let r = s
        .t(
            Method::POST,
            &format!("{base}/volumes"),
            &a,
            Some(json!({"name": "root", "image": "disk"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["size_bytes"], 4 << 20);
    assert_eq!(r.body["source_image_id"], image_id.as_str());
    let root_id = r.body["id"].as_str().expect("id").to_string();
    let info = qemu_img_info(
        &compute_dir(&s)
            .join("volumes")
            .join(format!("{root_id}.qcow2")),
    );
    assert_eq!(info["encrypted"], true, "{info}");
    assert!(
        info["backing-filename"]
            .as_str()
            .is_some_and(|b| b.ends_with(&format!("{image_id}.qcow2"))),
        "a volume from an image is an overlay of it: {info}"
    );

    let bad: [(serde_json::Value, u16, &str); 6] = [
        (json!({"name": "v1"}), 400, "size_required"),
        (json!({"name": "v1", "size": "1.5G"}), 400, "invalid_size"),
        (json!({"name": "v1", "size": "0"}), 400, "invalid_size"),
        (
            json!({"name": "v1", "image": "disk", "size": "1M"}),
            400,
            "volume_too_small",
        ),
        (
            json!({"name": "v1", "image": "nope", "size": "1G"}),
            404,
            "not_found",
        ),
        (
            json!({"name": "v1", "image": "junk", "size": "1G"}),
            409,
            "image_not_available",
        ),
    ];
    for (body, status, code) in bad {
        let r = s
            .t(
                Method::POST,
                &format!("{base}/volumes"),
                &a,
                Some(body.clone()),
            )
            .await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {}", r.text);
    }
    let r = s
        .t(
            Method::POST,
            &format!("{base}/volumes"),
            &a,
            Some(json!({"name": "blank", "size": "1G"})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = s.t(Method::GET, &format!("{base}/volumes"), &a, None).await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["blank", "root"], "{}", r.text);

    // An image in use stays; once its volume is gone it can go.
    let r = s
        .t(Method::DELETE, &format!("{base}/images/disk"), &a, None)
        .await;
    assert_eq!((r.status, r.code()), (409, "image_in_use"), "{}", r.text);
    let r = s
        .t(Method::DELETE, &format!("{base}/volumes/root"), &a, None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!compute_dir(&s)
        .join("volumes")
        .join(format!("{root_id}.qcow2"))
        .exists());
    let r = s
        .t(Method::DELETE, &format!("{base}/images/disk"), &a, None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!stored.exists(), "a deleted image's file is removed");

    // The audit log has the upload with its key use.
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?action=compute.upload_image",
            &a,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["items"].as_array().is_some_and(|i| i.len() >= 4),
        "each upload is audited: {}",
        r.text
    );
    // A node that never ran a VM made no seed directory in /dev/shm (so
    // even a killed server leaves nothing there).
    let seeds = nuage_compute::ComputeConfig::under(&s.data_dir).seed_dir;
    assert!(!seeds.exists(), "{} exists", seeds.display());
    s.shutdown().await;
}

/// Disabling the project key stops every use of the project's disks with a
/// clear error and writes nothing; scheduling its destruction keeps them
/// unreadable until it is gone for good (destroying at once needs an MFA
/// session, which the key service's own tests cover). The files stay
/// encrypted on disk.
#[tokio::test]
async fn a_revoked_project_key_makes_volumes_unusable() {
    if !qemu_present() {
        return;
    }
    let s = Srv::start().await;
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
    let base = "/v1/orgs/acme/projects/web";
    let r = s
        .t(
            Method::POST,
            &format!("{base}/volumes"),
            &a,
            Some(json!({"name": "v1", "size": "8M"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let r = s
        .t(
            Method::POST,
            &format!("{base}/keys/default/disable"),
            &a,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let attempts: [(Method, String, serde_json::Value); 3] = [
        (
            Method::POST,
            format!("{base}/snapshots"),
            json!({"name": "s1", "volume": "v1"}),
        ),
        (
            Method::PATCH,
            format!("{base}/volumes/v1"),
            json!({"size": "16M"}),
        ),
        (
            Method::POST,
            format!("{base}/volumes"),
            json!({"name": "v2", "size": "8M"}),
        ),
    ];
    for (m, path, body) in &attempts {
        let r = s.t(m.clone(), path, &a, Some(body.clone())).await;
        assert_eq!(r.code(), "key_disabled", "{m} {path}: {}", r.text);
    }
    let r = s
        .t(Method::GET, &format!("{base}/snapshots"), &a, None)
        .await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r.text
    );
    let r = s
        .t(Method::GET, &format!("{base}/volumes/v1"), &a, None)
        .await;
    assert_eq!(r.body["size_bytes"], 8 << 20, "nothing changed: {}", r.text);
    let r = s
        .t(Method::GET, &format!("{base}/volumes/v2"), &a, None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    let r = s
        .t(
            Method::POST,
            &format!("{base}/keys/default/schedule-destruction"),
            &a,
            Some(json!({"days": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (m, path, body) in &attempts[..2] {
        let r = s.t(m.clone(), path, &a, Some(body.clone())).await;
        assert_eq!(r.code(), "key_destroy_scheduled", "{m} {path}: {}", r.text);
    }
    let id = s
        .t(Method::GET, &format!("{base}/volumes/v1"), &a, None)
        .await
        .body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let info = qemu_img_info(&compute_dir(&s).join("volumes").join(format!("{id}.qcow2")));
    assert_eq!(info["encrypted"], true, "{info}");
    s.shutdown().await;
}

/// Two instances asking at once for a node's last room: one gets it, the
/// other a clear `insufficient_capacity`, never both (the node's usage is
/// summed again inside the creating transaction).
#[tokio::test]
async fn concurrent_creations_never_overcommit_a_node() {
    if !qemu_present() {
        return;
    }
    let s = Srv::start().await;
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
    let base = "/v1/orgs/acme/projects/web";
    let r = s
        .t(
            Method::POST,
            &format!("{base}/images"),
            &a,
            Some(json!({"name": "disk"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = upload(&s, &a, &format!("{base}/images/disk/file"), raw_disk(b"x")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Room for exactly one 1-vCPU instance.
    let nodes = s.a(Method::GET, "/admin/v1/nodes", None).await;
    let node = nodes.body["items"][0]["name"]
        .as_str()
        .or_else(|| nodes.body[0]["name"].as_str())
        .expect("a node")
        .to_string();
    let vcpus = nodes.body["items"][0]["vcpus"]
        .as_i64()
        .or_else(|| nodes.body[0]["vcpus"].as_i64())
        .expect("vcpus") as f64;
    let r = s
        .a(
            Method::PATCH,
            &format!("/admin/v1/nodes/{node}"),
            Some(json!({"cpu_overcommit": 1.0 / vcpus})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let create = |name: &'static str| {
        s.t(
            Method::POST,
            "/v1/orgs/acme/projects/web/instances",
            &a,
            Some(json!({"name": name, "image": "disk", "vcpus": 1, "memory": "64M"})),
        )
    };
    let (one, two) = tokio::join!(create("one"), create("two"));
    let mut codes = [
        (one.status, one.code().to_string()),
        (two.status, two.code().to_string()),
    ];
    codes.sort();
    assert_eq!(
        codes,
        [
            (201, String::new()),
            (409, "insufficient_capacity".to_string())
        ],
        "{} / {}",
        one.text,
        two.text
    );
    let r = s
        .t(Method::GET, &format!("{base}/instances"), &a, None)
        .await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );
    s.shutdown().await;
}
