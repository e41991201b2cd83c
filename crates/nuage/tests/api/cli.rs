//! The CLI as a user runs it: the real `nuage` binary against a real
//! server, with its own config directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::common::Srv;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn nuage(config: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args(args)
        .env("NUAGE_CONFIG_DIR", config)
        .env_remove("NUAGE_URL")
        .env_remove("NUAGE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_new_user_drives_the_cloud_from_the_cli() {
    let s = Srv::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let run = |args: Vec<&str>, stdin: Option<&'static str>| {
        let cfg = cfg.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            nuage(&cfg, &refs, stdin).await
        }
    };

    let o = run(vec!["project", "list"], None).await;
    assert_eq!(o.code, 4, "not logged in: {}", o.stderr);
    assert!(o.stderr.contains("nuage login"), "{}", o.stderr);

    let o = run(
        vec![
            "login",
            "--admin",
            "--url",
            &s.admin,
            "--token",
            &s.bootstrap,
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let creds = std::fs::metadata(cfg.join("credentials.json")).unwrap();
    assert_eq!(creds.permissions().mode() & 0o777, 0o600);
    assert!(!std::fs::read_to_string(cfg.join("config.json"))
        .unwrap()
        .contains(&s.bootstrap));

    let o = run(
        vec![
            "admin",
            "org",
            "create",
            "acme",
            "--owner",
            "alice",
            "--owner-password-stdin",
        ],
        Some("alice's long passphrase\n"),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(
        vec![
            "login",
            "--url",
            &s.tenant,
            "--org",
            "acme",
            "--user",
            "alice",
            "--password-stdin",
        ],
        Some("alice's long passphrase\n"),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let o = run(
        vec!["project", "create", "web", "--label", "env=prod"],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["project", "create", "api"], None).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["project", "list"], None).await;
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.contains("web") && o.stdout.contains("api"),
        "{}",
        o.stdout
    );
    let o = run(vec!["project", "list", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("--json prints JSON");
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["api", "web"]);

    let o = run(vec!["project", "show", "nope"], None).await;
    assert_eq!(o.code, 1);
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
    assert!(
        o.stderr.contains("not_found") && o.stderr.contains("req_"),
        "{}",
        o.stderr
    );
    let o = run(vec!["project", "create", "Bad_Name"], None).await;
    assert_eq!(o.code, 1);

    let o = run(
        vec![
            "policy",
            "test",
            "--principal",
            "user:alice",
            "--action",
            "project.delete",
            "--resource",
            "project:web",
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("allow") && o.stdout.contains("role:owner"),
        "{}",
        o.stdout
    );
    let o = run(vec!["user", "create", "bob"], None).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(
        vec![
            "policy",
            "test",
            "--principal",
            "user:bob",
            "--action",
            "project.get",
            "--resource",
            "project:web",
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 3, "deny exits 3: {}", o.stdout);

    let export = dir.path().join("audit.jsonl");
    let key = dir.path().join("audit.pub");
    let o = run(
        vec!["audit", "export", "--out", export.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(
        vec!["audit", "public-key", "--save", key.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(
        vec![
            "audit",
            "verify",
            "--file",
            export.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    // tamper with one entry: verify names it and fails
    let text = std::fs::read_to_string(&export).unwrap();
    let tampered = text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1);
    assert_ne!(text, tampered);
    std::fs::write(&export, tampered).unwrap();
    let o = run(
        vec![
            "audit",
            "verify",
            "--file",
            export.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(
        format!("{}{}", o.stdout, o.stderr).contains("entry 0 was altered"),
        "{} {}",
        o.stdout,
        o.stderr
    );

    let o = run(vec!["logout"], None).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["project", "list"], None).await;
    assert_eq!(o.code, 4);
    s.shutdown().await;
}

#[tokio::test]
async fn keys_from_the_cli() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let r = s
        .t(
            http::Method::POST,
            "/v1/orgs/acme/projects",
            &owner,
            Some(serde_json::json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let run = |args: Vec<&str>, stdin: Option<&'static str>| {
        let cfg = cfg.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            nuage(&cfg, &refs, stdin).await
        }
    };
    let o = run(
        vec![
            "login",
            "--url",
            &s.tenant,
            "--org",
            "acme",
            "--user",
            "owner",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let o = run(vec!["key", "create", "billing"], None).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("--project"), "{}", o.stderr);
    let o = run(
        vec![
            "key",
            "create",
            "billing",
            "-p",
            "web",
            "--allow",
            "tenant_request",
            "--allow",
            "rewrap",
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(
        vec!["key", "create", "x", "-p", "web", "--allow", "whim"],
        None,
    )
    .await;
    assert_eq!(o.code, 2, "clap rejects an unknown purpose: {}", o.stderr);
    assert!(o.stderr.contains("tenant_request"), "{}", o.stderr);
    // the owner manages keys but does not use them
    let o = run(vec!["key", "encrypt", "billing", "-p", "web"], Some("hi")).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("forbidden"), "{}", o.stderr);
    let o = run(
        vec![
            "role",
            "grant",
            "user:owner",
            "crypto-user",
            "--project",
            "web",
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(
        vec!["key", "encrypt", "billing", "-p", "web", "--aad", "ctx"],
        Some("the tenant's secret"),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let envelope = o.stdout.trim().to_string();
    assert!(!envelope.contains("secret"));
    let file = dir.path().join("envelope");
    std::fs::write(&file, &envelope).unwrap();
    let o = run(
        vec![
            "key",
            "decrypt",
            "billing",
            "-p",
            "web",
            "--aad",
            "ctx",
            "--input",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "the tenant's secret"),
        "{}",
        o.stderr
    );

    let o = run(
        vec!["key", "rotate", "billing", "-p", "web", "--rewrap"],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("re-wrapping data keys"), "{}", o.stderr);
    assert!(
        o.stdout.contains("primary version") && o.stdout.contains('2'),
        "{}",
        o.stdout
    );
    let o = run(vec!["key", "list", "-p", "web", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["items"][0]["primary_version"], 2);
    let o = run(vec!["key", "list", "-p", "web"], None).await;
    assert!(
        o.stdout.contains("billing") && o.stdout.contains("enabled"),
        "{}",
        o.stdout
    );

    let o = run(
        vec!["key", "destroy", "billing", "-p", "web", "--days", "3"],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("destroy_scheduled"), "{}", o.stdout);
    let o = run(
        vec!["key", "destroy", "billing", "-p", "web", "--now"],
        None,
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("--confirm"), "{}", o.stderr);
    let o = run(
        vec!["key", "cancel-destruction", "billing", "-p", "web"],
        None,
    )
    .await;
    assert!(o.stdout.contains("disabled"), "{}", o.stdout);
    s.shutdown().await;
}

/// Bucket quotas and project storage from the CLI, tables and --json.
#[tokio::test]
async fn bucket_quotas_from_the_cli() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let r = s
        .t(
            http::Method::POST,
            "/v1/orgs/acme/projects",
            &owner,
            Some(serde_json::json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let run = |args: Vec<&str>| {
        let cfg = cfg.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            nuage(&cfg, &refs, Some("correct horse battery\n")).await
        }
    };
    let o = run(vec![
        "login",
        "--url",
        &s.tenant,
        "--org",
        "acme",
        "--user",
        "owner",
        "--password-stdin",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["bucket", "create", "quota-cli", "-p", "web"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec![
        "bucket",
        "set-quota",
        "quota-cli",
        "-p",
        "web",
        "--max-bytes",
        "1000000",
        "--json",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let b: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(b["quota"], serde_json::json!({"max_bytes": 1000000}));
    assert_eq!(b["usage"], serde_json::json!({"bytes": 0, "objects": 0}));
    let o = run(vec!["bucket", "show", "quota-cli", "-p", "web"]).await;
    assert!(
        o.stdout.contains("max bytes") && o.stdout.contains("1000000"),
        "{}",
        o.stdout
    );
    let o = run(vec![
        "bucket",
        "set-quota",
        "quota-cli",
        "-p",
        "web",
        "--max-objects=-5",
    ])
    .await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("positive"), "{}", o.stderr);
    let o = run(vec!["bucket", "usage", "-p", "web", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let u: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(u["usage"]["objects"], 0);
    s.shutdown().await;
}

/// The names of the items of a `--json` listing.
fn names(stdout: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("--json prints JSON");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_string())
        .collect()
}

/// Images and volumes from the CLI with the real qemu-img: a raw disk and
/// a qcow2 uploaded from files, listed, a volume made from an image, a
/// refused file reported on one line with what became of the image, and
/// an image in use kept until its volume is gone.
#[tokio::test]
async fn images_and_volumes_from_the_cli() {
    if !crate::compute::qemu_present() {
        return;
    }
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let r = s
        .t(
            http::Method::POST,
            "/v1/orgs/acme/projects",
            &owner,
            Some(serde_json::json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let run = |args: Vec<&str>| {
        let cfg = cfg.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            nuage(&cfg, &refs, Some("correct horse battery\n")).await
        }
    };
    let o = run(vec![
        "login",
        "--url",
        &s.tenant,
        "--org",
        "acme",
        "--user",
        "owner",
        "--password-stdin",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let raw = dir.path().join("disk.img");
    std::fs::write(&raw, crate::compute::raw_disk(b"CLI-MARKER")).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "disk.qcow2", "8M"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let qcow2 = dir.path().join("disk.qcow2");
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, b"this is not a disk image at all".repeat(100)).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // For people: the image as a table, with its size readable.
    let o = run(vec![
        "image",
        "create",
        "base",
        "-p",
        "web",
        "--file",
        &path(&raw),
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    for want in ["available", "raw", "4.0 MiB (4194304 bytes)", "project"] {
        assert!(o.stdout.contains(want), "{want}: {}", o.stdout);
    }
    // For scripts: the API's JSON and nothing on stderr (no meter off a
    // terminal).
    let o = run(vec![
        "image",
        "create",
        "qc",
        "-p",
        "web",
        "--file",
        &path(&qcow2),
        "--visibility",
        "org",
        "--json",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stderr, "", "no meter when stderr is not a terminal");
    let qc: serde_json::Value = serde_json::from_str(&o.stdout).expect("--json prints JSON");
    assert_eq!(qc["state"], "available", "{qc}");
    assert_eq!(qc["source_format"], "qcow2", "{qc}");
    assert_eq!(qc["virtual_size"], 8 << 20, "{qc}");
    assert_eq!(qc["visibility"], "org", "{qc}");

    let o = run(vec!["image", "list", "-p", "web", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(names(&o.stdout), ["base", "qc"]);
    let o = run(vec!["image", "list", "-p", "web"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("VISIBILITY"),
        "{}",
        o.stdout
    );
    let row = lines.iter().find(|l| l.starts_with("qc ")).expect("qc row");
    for want in ["available", "qcow2", "8.0 MiB", "org"] {
        assert!(row.contains(want), "{want}: {row}");
    }
    let o = run(vec![
        "image",
        "set-visibility",
        "qc",
        "project",
        "-p",
        "web",
        "--json",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["visibility"], "project");

    // A volume from the image: its size by default, the image by name.
    let o = run(vec![
        "volume", "create", "root", "-p", "web", "--image", "base", "--json",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let root: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let base_id = {
        let o = run(vec!["image", "show", "base", "-p", "web", "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    assert_eq!(root["source_image_id"], base_id.as_str(), "{root}");
    assert_eq!(root["size_bytes"], 4 << 20, "{root}");
    assert_eq!(root["state"], "available", "{root}");
    let o = run(vec![
        "volume", "create", "scratch", "-p", "web", "--size", "16M",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("16.0 MiB"), "{}", o.stdout);
    let o = run(vec!["volume", "list", "-p", "web", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(names(&o.stdout), ["root", "scratch"]);
    let o = run(vec!["volume", "list", "-p", "web"]).await;
    assert!(o.stdout.starts_with("NAME"), "{}", o.stdout);
    assert!(o.stdout.contains("ATTACHED TO"), "{}", o.stdout);
    let row = o
        .stdout
        .lines()
        .find(|l| l.starts_with("root "))
        .expect("root row");
    for want in ["available", "4.0 MiB", " base "] {
        assert!(row.contains(want), "{want:?}: {row}");
    }
    let o = run(vec![
        "volume", "create", "bad", "-p", "web", "--size", "1.5G",
    ])
    .await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("invalid_size"), "{}", o.stderr);

    // A refused file: one line with the server's reason and what to do;
    // the image stays, failed, with that reason.
    let o = run(vec![
        "image",
        "create",
        "junk",
        "-p",
        "web",
        "--file",
        &path(&junk),
    ])
    .await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
    for want in ["not_an_image", "failed", "nuage image delete junk -p web"] {
        assert!(o.stderr.contains(want), "{want}: {}", o.stderr);
    }
    let refused = o.stderr;
    let o = run(vec!["image", "show", "junk", "-p", "web", "--json"]).await;
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(j["state"], "failed", "{j}");
    let reason = j["status_message"].as_str().unwrap();
    assert!(
        !reason.is_empty() && refused.contains(reason),
        "the line gives the reason the image keeps: {j} {refused}"
    );
    // The way out the message gives works: another file for the image.
    let o = run(vec![
        "image",
        "upload",
        "junk",
        "-p",
        "web",
        "--file",
        &path(&raw),
        "--json",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (j["state"].as_str(), j["status_message"].as_str()),
        (Some("available"), Some("")),
        "{j}"
    );
    // An image has one file.
    let o = run(vec![
        "image",
        "upload",
        "qc",
        "-p",
        "web",
        "--file",
        &path(&raw),
    ])
    .await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("image_available"), "{}", o.stderr);

    // A file that is not there creates no image.
    let o = run(vec![
        "image",
        "create",
        "ghost",
        "-p",
        "web",
        "--file",
        "/nonexistent/disk.img",
    ])
    .await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("/nonexistent/disk.img"), "{}", o.stderr);
    let o = run(vec!["image", "list", "-p", "web", "--json"]).await;
    assert_eq!(names(&o.stdout), ["base", "junk", "qc"]);

    // An image in use stays; once its volume is gone it can go.
    let o = run(vec!["image", "delete", "base", "-p", "web"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
    assert!(
        o.stderr.contains("image_in_use") && o.stderr.contains("delete them first"),
        "{}",
        o.stderr
    );
    let o = run(vec!["volume", "delete", "root", "-p", "web"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["volume", "list", "-p", "web", "--json"]).await;
    assert_eq!(names(&o.stdout), ["scratch"]);
    let o = run(vec!["image", "delete", "base", "-p", "web"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("Deleted image base"), "{}", o.stdout);
    let o = run(vec!["image", "show", "base", "-p", "web"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("not_found"), "{}", o.stderr);
    s.shutdown().await;
}

/// Nodes and instance types from the CLI: the operator's commands and the
/// tenant's list, tables and --json.
#[tokio::test]
async fn nodes_and_instance_types_from_the_cli() {
    let s = Srv::start_with(|c| c.node_name = "cli-host".into()).await;
    s.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let run = |args: Vec<&str>| {
        let cfg = cfg.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            nuage(&cfg, &refs, Some("correct horse battery\n")).await
        }
    };
    let o = run(vec![
        "login",
        "--admin",
        "--url",
        &s.admin,
        "--token",
        &s.bootstrap,
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let o = run(vec!["admin", "node", "list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("cli-host") && o.stdout.contains("ready"),
        "{}",
        o.stdout
    );
    let o = run(vec![
        "admin",
        "node",
        "set-overcommit",
        "cli-host",
        "--cpu",
        "8",
        "--json",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let n: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (
            n["cpu_overcommit"].as_f64(),
            n["memory_overcommit"].as_f64()
        ),
        (Some(8.0), Some(1.0))
    );
    let o = run(vec![
        "admin",
        "node",
        "set-overcommit",
        "cli-host",
        "--memory",
        "5",
    ])
    .await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("at most 4"), "{}", o.stderr);
    let o = run(vec!["admin", "node", "list", "--json"]).await;
    let l: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(l["items"][0]["cpu_overcommit"], 8.0);
    assert_eq!(l["items"][0]["memory_overcommit"], 1.0);

    // Enrolling a host for `nuage agent`: the credential goes to a new
    // file only its owner reads, never to the terminal.
    let token_file = s.dir.path().join("edge.token");
    let o = run(vec![
        "admin",
        "node",
        "enroll",
        "edge-cli",
        "--token-file",
        token_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("enrolled"), "{}", o.stdout);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.trim().starts_with("nuage_"), "{token}");
    assert!(!o.stdout.contains(token.trim()) && !o.stderr.contains(token.trim()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The file is never overwritten; the name stays taken.
    let o = run(vec![
        "admin",
        "node",
        "enroll",
        "edge-cli-2",
        "--token-file",
        token_file.to_str().unwrap(),
    ])
    .await;
    assert_ne!(o.code, 0);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    let o = run(vec!["admin", "node", "list", "--json"]).await;
    assert!(
        o.stdout.contains("edge-cli") && !o.stdout.contains("edge-cli-2"),
        "a node was enrolled without a place for its credential: {}",
        o.stdout
    );
    let o = run(vec![
        "admin",
        "node",
        "rotate-credential",
        "edge-cli",
        "--json",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let rotated: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let rotated = rotated["token"].as_str().unwrap_or_default();
    assert!(rotated.starts_with("nuage_") && rotated != token.trim());
    let o = run(vec!["admin", "node", "delete", "edge-cli"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["admin", "node", "delete", "cli-host"]).await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("running server"), "{}", o.stderr);
    let o = run(vec!["admin", "node", "list", "--json"]).await;
    assert!(!o.stdout.contains("edge-cli"), "{}", o.stdout);

    let o = run(vec![
        "admin",
        "instance-type",
        "set",
        "tiny",
        "--vcpus",
        "1",
        "--memory",
        "256M",
        "--description",
        "for tests",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("256"), "{}", o.stdout);
    let o = run(vec![
        "admin",
        "instance-type",
        "set",
        "big",
        "--vcpus",
        "99",
        "--memory",
        "1G",
    ])
    .await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("1 to 64 vCPUs"), "{}", o.stderr);
    let o = run(vec!["admin", "instance-type", "delete", "large"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["admin", "instance-type", "list", "--json"]).await;
    let l: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let names: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["medium", "small", "tiny"]);

    let o = run(vec![
        "login",
        "--url",
        &s.tenant,
        "--org",
        "acme",
        "--user",
        "owner",
        "--password-stdin",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["instance-type", "list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("tiny") && o.stdout.contains("for tests") && !o.stdout.contains("large"),
        "{}",
        o.stdout
    );
    let o = run(vec!["instance-type", "list", "--json"]).await;
    let l: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(l["items"].as_array().map(Vec::len), Some(3), "{}", o.stdout);
    s.shutdown().await;
}

/// Instances, volume attachment, resizing and snapshots from the CLI, on
/// the real QEMU with the test guest: created with `--wait` until running,
/// its console log and its interactive console (piped), a volume attached,
/// snapshotted, copied, detached and grown (a shrink refused on one line),
/// the console refused once stopped, and delete `--wait` leaves no VM.
#[tokio::test]
async fn instances_volumes_and_snapshots_from_the_cli() {
    use crate::instances::{guest, qemu_pid, SSH_FP, SSH_KEY};
    let Some(guest) = guest() else { return };
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let r = s
        .t(
            http::Method::POST,
            "/v1/orgs/acme/projects",
            &owner,
            Some(serde_json::json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let run_in = |args: Vec<&str>, stdin: &str| {
        let cfg = cfg.clone();
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        if args.first().is_some_and(|a| a != "login") {
            args.extend(["-p".to_string(), "web".to_string()]);
        }
        let stdin = stdin.to_string();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            nuage(&cfg, &refs, Some(&stdin)).await
        }
    };
    let run = |args: Vec<&str>| run_in(args, "");
    let json = |o: &Out| -> serde_json::Value {
        assert_eq!(o.code, 0, "{}", o.stderr);
        serde_json::from_str(&o.stdout).expect("--json prints JSON")
    };
    let o = run_in(
        vec![
            "login",
            "--url",
            &s.tenant,
            "--org",
            "acme",
            "--user",
            "owner",
            "--password-stdin",
        ],
        "correct horse battery\n",
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec![
        "image",
        "create",
        "guest",
        "--file",
        guest.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(json(&o)["state"], "available");
    let pubkey = dir.path().join("id_ed25519.pub");
    std::fs::write(&pubkey, format!("{SSH_KEY}\n")).unwrap();
    // A user-data of the tenant's own must not drop the key.
    let user_data = dir.path().join("cloud-config.yaml");
    std::fs::write(&user_data, "#cloud-config\npackages: []\n").unwrap();

    // Created and waited for: running when the command returns; nothing
    // on stderr off a terminal.
    let o = run(vec![
        "instance",
        "create",
        "vm1",
        "--image",
        "guest",
        "--vcpus",
        "1",
        "--memory",
        "256M",
        "--ssh-key",
        pubkey.to_str().unwrap(),
        "--user-data",
        user_data.to_str().unwrap(),
        "--wait",
        "--json",
    ])
    .await;
    let vm = json(&o);
    assert_eq!(o.stderr, "", "no state line off a terminal");
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["memory_mib"], 256, "{vm}");
    assert_eq!(vm["ssh_keys"], serde_json::json!([SSH_KEY]), "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    let o = run(vec!["instance", "list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let header = o.stdout.lines().next().unwrap_or("");
    for col in [
        "NAME", "STATE", "VCPUS", "MEMORY", "IMAGE", "NODE", "CREATED",
    ] {
        assert!(header.contains(col), "{col}: {}", o.stdout);
    }
    let row = o.stdout.lines().find(|l| l.starts_with("vm1 ")).unwrap();
    for want in ["running", " 1 ", "256.0 MiB", " guest "] {
        assert!(row.contains(want), "{want:?}: {row}");
    }
    let o = run(vec!["instance", "show", "vm1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    for want in ["vm1-boot", "ssh-ed25519 test@nuage", "256.0 MiB"] {
        assert!(o.stdout.contains(want), "{want}: {}", o.stdout);
    }

    // The console log shows the guest up with what the seed told it.
    let start = std::time::Instant::now();
    let log = loop {
        let o = run(vec!["instance", "console-log", "vm1"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        if o.stdout.contains("nuage-guest: ready") {
            break o.stdout;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "the guest did not come up: {}",
            o.stdout
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        log.contains(&format!("nuage-guest: instance-id={id}")),
        "{log}"
    );
    assert!(log.contains(&format!("ssh-key={SSH_FP}")), "{log}");
    let o = run(vec!["instance", "console-log", "vm1", "--bytes", "100"]).await;
    assert!(o.stdout.len() <= 101, "{}", o.stdout);

    // The interactive console, piped: the guest's shell runs the line.
    let o = run_in(
        vec!["instance", "console", "vm1", "--for", "5"],
        "echo hello-$((40+2))\n",
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("hello-42"), "{:?}", o.stdout);

    // A volume attached to the running VM, snapshotted, copied, detached.
    let o = run(vec!["volume", "create", "data", "--size", "64M", "--json"]).await;
    assert_eq!(json(&o)["state"], "available");
    let o = run(vec![
        "volume",
        "attach",
        "data",
        "--instance",
        "vm1",
        "--wait",
        "--json",
    ])
    .await;
    let v = json(&o);
    assert_eq!(
        (v["state"].as_str(), v["instance_id"].as_str()),
        (Some("attached"), Some(id.as_str())),
        "{v}"
    );
    let o = run(vec![
        "snapshot", "create", "s1", "--volume", "data", "--json",
    ])
    .await;
    let snap = json(&o);
    assert_eq!(snap["volume_id"], v["id"], "{snap}");
    assert_eq!(snap["size_bytes"], 64 << 20, "{snap}");
    let o = run(vec!["snapshot", "list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.starts_with("NAME") && o.stdout.contains("VOLUME"),
        "{}",
        o.stdout
    );
    let row = o.stdout.lines().find(|l| l.starts_with("s1 ")).unwrap();
    assert!(row.contains(" data ") && row.contains("64.0 MiB"), "{row}");
    // The size is given: the server does not yet default it to the
    // snapshot's (it answers size_required).
    let o = run(vec![
        "volume",
        "create",
        "copy",
        "--snapshot",
        "s1",
        "--size",
        "64M",
        "--json",
    ])
    .await;
    let copy = json(&o);
    assert_eq!(copy["source_snapshot_id"], snap["id"], "{copy}");
    assert_eq!(copy["size_bytes"], 64 << 20, "{copy}");
    let o = run(vec!["volume", "delete", "copy"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec![
        "volume",
        "detach",
        "data",
        "--instance",
        "vm1",
        "--wait",
    ])
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("Detached volume data"), "{}", o.stdout);
    let o = run(vec!["volume", "show", "data", "--json"]).await;
    assert_eq!(json(&o)["state"], "available");

    // Volumes grow; a shrink is refused on one line with the code.
    let o = run(vec!["volume", "resize", "data", "--size", "128M"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("134217728 bytes"), "{}", o.stdout);
    let o = run(vec!["volume", "show", "data", "--json"]).await;
    assert_eq!(json(&o)["size_bytes"], 134217728u64);
    let o = run(vec!["volume", "resize", "data", "--size", "64M"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
    assert!(o.stderr.contains("volume_shrink"), "{}", o.stderr);
    let o = run(vec!["volume", "show", "data", "--json"]).await;
    assert_eq!(json(&o)["size_bytes"], 134217728u64);

    // Stopped and waited for; the console is then refused on one line.
    let o = run(vec!["instance", "stop", "vm1", "--wait", "--json"]).await;
    assert_eq!(json(&o)["state"], "stopped");
    assert!(
        qemu_pid(&s, &id).is_none(),
        "a stopped instance has no QEMU"
    );
    let o = run(vec!["instance", "console", "vm1", "--for", "1"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
    assert!(o.stderr.contains("instance_not_running"), "{}", o.stderr);

    // Deleted and waited for: gone, nothing left running.
    let o = run(vec!["instance", "delete", "vm1", "--wait"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("Deleted instance vm1"), "{}", o.stdout);
    let o = run(vec!["instance", "show", "vm1"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("not_found"), "{}", o.stderr);
    assert!(
        !s.data_dir.join("compute/vm").join(&id).exists(),
        "run dir left"
    );
    let o = run(vec!["snapshot", "delete", "s1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(vec!["snapshot", "list", "--json"]).await;
    assert!(names(&o.stdout).is_empty(), "{}", o.stdout);
    let o = run(vec!["instance", "list", "--json"]).await;
    assert!(names(&o.stdout).is_empty(), "{}", o.stdout);
    s.shutdown().await;
}

/// A new organization's first request is an export of its audit log, still
/// empty: a 200 with a signed export that `nuage audit verify` accepts
/// (it was a 404 until the first checkpoint).
#[tokio::test]
async fn a_new_organizations_first_export_verifies() {
    let s = Srv::start().await;
    let r = s
        .a(
            http::Method::POST,
            "/admin/v1/orgs",
            Some(serde_json::json!({"name": "acme", "owner": {"name": "owner"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let tok = r.body["owner_token"]["secret"]
        .as_str()
        .expect("owner token")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("audit.jsonl");
    let r = s
        .t(http::Method::GET, "/v1/orgs/acme/audit/export", &tok, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    std::fs::write(&export, &r.text).unwrap();
    let r = s
        .t(
            http::Method::GET,
            "/v1/orgs/acme/audit/public-key",
            &tok,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let key = r.body["verifier_key"].as_str().expect("key").to_string();
    let o = nuage(
        &dir.path().join("config"),
        &[
            "audit",
            "verify",
            "--json",
            "--file",
            export.to_str().unwrap(),
            "--public-key",
            &key,
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    let report: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    // The export itself is now in the log: the next one holds it.
    let r = s
        .t(http::Method::GET, "/v1/orgs/acme/audit/export", &tok, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("/audit/export"), "{}", r.text);
    s.shutdown().await;
}
