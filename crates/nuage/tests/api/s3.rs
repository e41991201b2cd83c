//! The S3 endpoint with real clients (aws-cli and boto3 from the test
//! virtualenv) against an in-process server: protocol, IAM, audit,
//! isolation and encryption at rest.

use std::path::{Path, PathBuf};
use std::process::Output;

use http::Method;
use serde_json::{json, Value};

use crate::common::{contains_bytes, files_under, into_resp, pg_database, Resp, Srv};

fn venv_bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-venv/bin")
        .join(name)
}

/// Whether aws-cli and boto3 are installed (scripts/test installs them);
/// a machine set up by the test command must have them.
fn clients_present() -> bool {
    let ok = venv_bin("aws").exists() && venv_bin("python").exists();
    if !ok {
        assert!(
            std::env::var("NUAGE_TEST_REQUIRE_S3_CLIENTS").is_err()
                && std::env::var("NUAGE_TEST_REQUIRE_KMIP").is_err(),
            "aws-cli and boto3 are required (run scripts/test to install them)"
        );
        println!("skipped: aws-cli or boto3 missing from target/test-venv (run scripts/test)");
    }
    ok
}

struct Key {
    id: String,
    secret: String,
}

/// Creates project `project` (if missing) and an access key for the
/// holder of `token`.
async fn access_key(s: &Srv, org: &str, token: &str) -> Key {
    let r = s
        .t(
            Method::POST,
            &format!("/v1/orgs/{org}/access-keys"),
            token,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    Key {
        id: r.body["access_key"]["id"].as_str().unwrap().to_string(),
        secret: r.body["secret_access_key"].as_str().unwrap().to_string(),
    }
}

async fn project(s: &Srv, org: &str, token: &str, name: &str) {
    let r = s
        .t(
            Method::POST,
            &format!("/v1/orgs/{org}/projects"),
            token,
            Some(json!({"name": name})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// An aws-cli with its own home and configuration.
struct Aws {
    home: tempfile::TempDir,
    endpoint: String,
}

impl Aws {
    fn new(s: &Srv) -> Aws {
        let home = tempfile::tempdir().unwrap();
        // aws-cli's defaults: files over 8 MiB go up as multipart uploads.
        std::fs::write(
            home.path().join("config"),
            "[default]\nregion = us-east-1\n",
        )
        .unwrap();
        Aws {
            home,
            endpoint: s.s3.clone(),
        }
    }

    async fn run(&self, key: &Key, args: &[&str]) -> Output {
        tokio::process::Command::new(venv_bin("aws"))
            .args(["--endpoint-url", &self.endpoint])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("AWS_CONFIG_FILE", self.home.path().join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.home.path().join("none"))
            .env("AWS_ACCESS_KEY_ID", &key.id)
            .env("AWS_SECRET_ACCESS_KEY", &key.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .current_dir(self.home.path())
            .output()
            .await
            .unwrap()
    }

    async fn ok(&self, key: &Key, args: &[&str]) -> String {
        let o = self.run(key, args).await;
        assert!(
            o.status.success(),
            "aws {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// Runs a command that must fail with S3 error `code`.
    async fn fails(&self, key: &Key, args: &[&str], code: &str) -> String {
        let o = self.run(key, args).await;
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "aws {args:?} succeeded");
        assert!(
            err.contains(code),
            "aws {args:?}: expected {code}, got {err}"
        );
        err
    }

    fn path(&self, name: &str) -> String {
        self.home.path().join(name).display().to_string()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[tokio::test]
async fn s3_aws_cli_buckets_objects_ranges_metadata() {
    if !clients_present() {
        return;
    }
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
    let aws = Aws::new(&s);

    aws.ok(&key, &["s3", "mb", "s3://cli-bucket"]).await;
    let listed = aws.ok(&key, &["s3", "ls"]).await;
    assert!(listed.contains("cli-bucket"), "{listed}");

    // a body over 8 MiB, up and down
    let big = pattern(9 * 1024 * 1024 + 123, 7);
    std::fs::write(aws.path("big.bin"), &big).unwrap();
    aws.ok(
        &key,
        &[
            "s3",
            "cp",
            &aws.path("big.bin"),
            "s3://cli-bucket/dir/big.bin",
        ],
    )
    .await;
    aws.ok(
        &key,
        &[
            "s3",
            "cp",
            "s3://cli-bucket/dir/big.bin",
            &aws.path("back.bin"),
        ],
    )
    .await;
    assert!(std::fs::read(aws.path("back.bin")).unwrap() == big);
    // it went up in two parts (8 MiB chunks): the ETag says so
    let head = aws
        .ok(
            &key,
            &[
                "s3api",
                "head-object",
                "--bucket",
                "cli-bucket",
                "--key",
                "dir/big.bin",
            ],
        )
        .await;
    let head: Value = serde_json::from_str(&head).unwrap();
    assert!(
        head["ETag"].as_str().is_some_and(|e| e.ends_with("-2\"")),
        "{head}"
    );
    assert_eq!(head["ContentLength"], json!(big.len()));

    std::fs::write(aws.path("small.txt"), b"hello object storage").unwrap();
    aws.ok(
        &key,
        &[
            "s3",
            "cp",
            &aws.path("small.txt"),
            "s3://cli-bucket/top.txt",
        ],
    )
    .await;
    let ls = aws.ok(&key, &["s3", "ls", "s3://cli-bucket/dir/"]).await;
    assert!(ls.contains("big.bin") && !ls.contains("top.txt"), "{ls}");
    let ls = aws.ok(&key, &["s3", "ls", "s3://cli-bucket/"]).await;
    assert!(ls.contains("PRE dir/") && ls.contains("top.txt"), "{ls}");

    // s3api: metadata, standard headers, ranges, ETag = MD5
    aws.ok(
        &key,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "cli-bucket",
            "--key",
            "meta.txt",
            "--body",
            &aws.path("small.txt"),
            "--content-type",
            "text/plain",
            "--content-disposition",
            "attachment; filename=\"x.txt\"",
            "--cache-control",
            "max-age=60",
            "--metadata",
            "colour=blue,owner=alice",
        ],
    )
    .await;
    let head: Value = serde_json::from_str(
        &aws.ok(
            &key,
            &[
                "s3api",
                "head-object",
                "--bucket",
                "cli-bucket",
                "--key",
                "meta.txt",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(head["ContentType"], "text/plain", "{head}");
    assert_eq!(head["CacheControl"], "max-age=60", "{head}");
    assert_eq!(head["ContentDisposition"], "attachment; filename=\"x.txt\"");
    assert_eq!(head["Metadata"]["colour"], "blue", "{head}");
    assert_eq!(head["Metadata"]["owner"], "alice", "{head}");
    assert_eq!(head["ContentLength"], 20);
    assert_eq!(
        head["ETag"],
        format!("\"{:032x}\"", md5_of(b"hello object storage"))
    );
    let got: Value = serde_json::from_str(
        &aws.ok(
            &key,
            &[
                "s3api",
                "get-object",
                "--bucket",
                "cli-bucket",
                "--key",
                "dir/big.bin",
                "--range",
                "bytes=65530-65545",
                &aws.path("range.bin"),
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        got["ContentRange"],
        format!("bytes 65530-65545/{}", big.len())
    );
    assert_eq!(
        std::fs::read(aws.path("range.bin")).unwrap(),
        &big[65530..65546]
    );
    aws.fails(
        &key,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "cli-bucket",
            "--key",
            "top.txt",
            "--range",
            "bytes=500-600",
            &aws.path("none.bin"),
        ],
        "InvalidRange",
    )
    .await;
    aws.fails(
        &key,
        &["s3api", "head-bucket", "--bucket", "no-such-bucket-here"],
        "404",
    )
    .await;

    aws.fails(&key, &["s3", "rb", "s3://cli-bucket"], "BucketNotEmpty")
        .await;
    aws.ok(&key, &["s3", "rm", "--recursive", "s3://cli-bucket/"])
        .await;
    aws.ok(&key, &["s3", "rb", "s3://cli-bucket"]).await;
    let listed = aws.ok(&key, &["s3", "ls"]).await;
    assert!(!listed.contains("cli-bucket"), "{listed}");
    s.shutdown().await;
}

fn md5_of(b: &[u8]) -> u128 {
    // Only for expected values: a tiny MD5 would be overkill, ask python.
    let out = std::process::Command::new(venv_bin("python"))
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.md5(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    u128::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 16).unwrap()
}

#[tokio::test]
async fn s3_boto3_suite() {
    if !clients_present() {
        return;
    }
    boto3_suite(Srv::start().await).await;
}

/// The same suite on PostgreSQL (the object and multipart queries are
/// hand-written for both engines), when the test command provides one.
#[tokio::test]
async fn s3_boto3_suite_postgres() {
    if !clients_present() {
        return;
    }
    let Some(url) = pg_database().await else {
        println!("skipped: no test PostgreSQL (run scripts/test)");
        return;
    };
    boto3_suite(Srv::start_with(|c| c.database_url = Some(url.clone())).await).await;
}

/// Bucket and project storage quotas, set over the REST APIs, enforced on
/// S3 writes.
#[tokio::test]
async fn s3_boto3_quotas() {
    if !clients_present() {
        return;
    }
    run_boto3(Srv::start().await, "boto3_quotas.py").await;
}

/// The quota queries are hand-written for both engines.
#[tokio::test]
async fn s3_boto3_quotas_postgres() {
    if !clients_present() {
        return;
    }
    let Some(url) = pg_database().await else {
        println!("skipped: no test PostgreSQL (run scripts/test)");
        return;
    };
    run_boto3(
        Srv::start_with(|c| c.database_url = Some(url.clone())).await,
        "boto3_quotas.py",
    )
    .await;
}

/// Conditional requests, checksums, copies and tagging with boto3.
#[tokio::test]
async fn s3_boto3_objects() {
    if !clients_present() {
        return;
    }
    run_boto3(Srv::start().await, "boto3_objects.py").await;
}

async fn boto3_suite(s: Srv) {
    run_boto3(s, "boto3_suite.py").await;
}

/// Runs one boto3 script of `tests/s3/` against `s` with the access key
/// of a fresh organization "acme" (project "web") and one of another
/// organization "rival" (`S3_OTHER_*`); the script must print
/// "<script name without .py>: ok".
pub(crate) async fn run_boto3(s: Srv, script: &str) {
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
    // A second tenant, for isolation checks.
    let rival_owner = s.org("rival").await;
    project(&s, "rival", &rival_owner, "web").await;
    let rival = access_key(&s, "rival", &rival_owner).await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/s3")
        .join(script);
    let home = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(venv_bin("python"))
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", home.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"))
        .env("S3_ENDPOINT", &s.s3)
        .env("S3_KEY_ID", &key.id)
        .env("S3_SECRET", &key.secret)
        .env("S3_OTHER_KEY_ID", &rival.id)
        .env("S3_OTHER_SECRET", &rival.secret)
        .env("NUAGE_API", &s.tenant)
        .env("NUAGE_ADMIN", &s.admin)
        .env("NUAGE_ADMIN_TOKEN", &s.bootstrap)
        .env("NUAGE_TOKEN", &owner)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done = format!("{}: ok", script.trim_end_matches(".py").replace('_', " "));
    assert!(
        out.status.success() && stdout.contains(&done),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.shutdown().await;
}

async fn audit_entries(s: &Srv, org: &str, token: &str) -> Vec<Value> {
    let r = s
        .t(
            Method::GET,
            &format!("/v1/orgs/{org}/audit/entries?limit=1000"),
            token,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn s3_iam_isolation_audit_encryption() {
    if !clients_present() {
        return;
    }
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
    let viewer = s.user("acme", &owner, "vic", Some("viewer")).await;
    let vkey = access_key(&s, "acme", &viewer).await;
    let other = s.org("globex").await;
    project(&s, "globex", &other, "ops").await;
    let okey = access_key(&s, "globex", &other).await;
    let aws = Aws::new(&s);

    // REST and S3 see the same buckets
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/buckets",
            &owner,
            Some(json!({"name": "secret-stuff"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["key"], "default");
    let r = s
        .t(Method::DELETE, "/v1/orgs/acme/projects/web", &owner, None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "project_not_empty"),
        "a project with buckets stays: {}",
        r.text
    );

    let canary = b"CANARY-7f3a9c-plaintext-must-never-reach-disk";
    let mut body = canary.repeat(3000);
    body.extend_from_slice(canary);
    std::fs::write(aws.path("canary.bin"), &body).unwrap();
    let put = aws
        .run(
            &key,
            &[
                "s3api",
                "put-object",
                "--bucket",
                "secret-stuff",
                "--key",
                "canary.bin",
                "--body",
                &aws.path("canary.bin"),
                "--metadata",
                "note=CANARY-7f3a9c-metadata",
                "--debug",
            ],
        )
        .await;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let debug = String::from_utf8_lossy(&put.stderr);
    let rid = debug
        .split("x-amz-request-id': '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("x-amz-request-id in the response")
        .to_string();

    // a multipart upload (aws-cli splits over 8 MiB) of the canary too
    let mut big = canary.repeat(9 * 1024 * 1024 / canary.len() + 1);
    big.extend_from_slice(b"tail");
    std::fs::write(aws.path("canary-big.bin"), &big).unwrap();
    aws.ok(
        &key,
        &[
            "s3",
            "cp",
            &aws.path("canary-big.bin"),
            "s3://secret-stuff/canary-big.bin",
        ],
    )
    .await;
    let parts = files_under(&s.data_dir.join("objects/parts"));
    assert_eq!(parts.len(), 2, "part files: {parts:?}");
    // and a small one, whose sealed body lives in its row in the database
    let small = canary.repeat(20);
    std::fs::write(aws.path("canary-small.bin"), &small).unwrap();
    aws.ok(
        &key,
        &[
            "s3",
            "cp",
            &aws.path("canary-small.bin"),
            "s3://secret-stuff/canary-small.bin",
        ],
    )
    .await;
    let bodies = files_under(&s.data_dir.join("objects/bodies"));
    assert_eq!(
        bodies.len(),
        1,
        "only the large single PUT has a file: {bodies:?}"
    );

    // nothing in clear in the data directory (bodies, parts, database, logs)
    for f in files_under(&s.data_dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !contains_bytes(&bytes, b"CANARY-7f3a9c"),
            "{} holds plaintext",
            f.display()
        );
    }

    // the viewer reads but may not write; the refusal is audited
    aws.ok(
        &vkey,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "secret-stuff",
            "--key",
            "canary.bin",
            &aws.path("v.bin"),
        ],
    )
    .await;
    assert!(std::fs::read(aws.path("v.bin")).unwrap() == body);
    aws.ok(
        &vkey,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "secret-stuff",
            "--key",
            "canary-small.bin",
            "--range",
            "bytes=40-99",
            &aws.path("vs.bin"),
        ],
    )
    .await;
    assert_eq!(std::fs::read(aws.path("vs.bin")).unwrap(), &small[40..100]);
    aws.fails(
        &vkey,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "secret-stuff",
            "--key",
            "x",
            "--body",
            &aws.path("v.bin"),
        ],
        "AccessDenied",
    )
    .await;

    // multipart needs s3.put_object (listing uploads, s3.list_bucket)
    aws.fails(
        &vkey,
        &[
            "s3api",
            "create-multipart-upload",
            "--bucket",
            "secret-stuff",
            "--key",
            "x",
        ],
        "AccessDenied",
    )
    .await;
    let ups = aws
        .ok(
            &vkey,
            &[
                "s3api",
                "list-multipart-uploads",
                "--bucket",
                "secret-stuff",
            ],
        )
        .await;
    assert!(!ups.contains("UploadId"), "{ups}");

    // another organization learns nothing: same answers as a missing bucket
    for bucket in ["secret-stuff", "never-created-bucket"] {
        aws.fails(&okey, &["s3api", "head-bucket", "--bucket", bucket], "404")
            .await;
        aws.fails(
            &okey,
            &[
                "s3api",
                "get-object",
                "--bucket",
                bucket,
                "--key",
                "canary.bin",
                &aws.path("o.bin"),
            ],
            "NoSuchBucket",
        )
        .await;
        aws.fails(
            &okey,
            &["s3api", "list-objects-v2", "--bucket", bucket],
            "NoSuchBucket",
        )
        .await;
    }
    let theirs = aws.ok(&okey, &["s3", "ls"]).await;
    assert!(!theirs.contains("secret-stuff"), "{theirs}");
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/globex/projects/ops/buckets/secret-stuff",
            &other,
            None,
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // the audit log: request id, decisions, key use
    let entries = audit_entries(&s, "acme", &owner).await;
    let put_entry = entries
        .iter()
        .find(|e| e["record"]["request_id"] == json!(rid))
        .unwrap_or_else(|| panic!("no audit entry for {rid}"));
    let rec = &put_entry["record"];
    assert_eq!(rec["action"], "s3.put_object", "{rec}");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(
        rec["details"]["key_operation"], "generate_data_key",
        "{rec}"
    );
    assert_eq!(rec["details"]["justification"], "service_for_principal");
    assert!(rec["details"]["key_id"]
        .as_str()
        .is_some_and(|k| k.starts_with("key_")));
    assert!(entries
        .iter()
        .any(|e| e["record"]["action"] == "s3.put_object"
            && e["record"]["decision"] == "deny"
            && e["record"]["status"] == 403));
    assert!(entries
        .iter()
        .any(|e| e["record"]["action"] == "s3.get_object"
            && e["record"]["details"]["key_operation"] == "unwrap_data_key"));

    // every part of the multipart upload is audited with its upload id
    let parts: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["record"]["action"] == "s3.put_object"
                && e["record"]["details"]["part_number"].is_string()
        })
        .collect();
    assert!(parts.len() >= 2, "{parts:?}");
    assert!(parts.iter().all(|e| {
        let d = &e["record"]["details"];
        d["upload_id"]
            .as_str()
            .is_some_and(|u| u.starts_with("mpu_"))
            && d["key_operation"] == "generate_data_key"
    }));

    // disabling the project key makes the objects unreadable, clearly
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/keys/default/disable",
            &owner,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let err = aws
        .fails(
            &key,
            &[
                "s3api",
                "get-object",
                "--bucket",
                "secret-stuff",
                "--key",
                "canary.bin",
                &aws.path("d.bin"),
            ],
            "AccessDenied",
        )
        .await;
    assert!(err.contains("disabled"), "{err}");
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/keys/default/enable",
            &owner,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    aws.ok(
        &key,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "secret-stuff",
            "--key",
            "canary.bin",
            &aws.path("e.bin"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// Part files a crash left without a row (written, not yet committed) are
/// removed at start, like orphan bodies and temporary files.
#[tokio::test]
async fn s3_gc_removes_orphan_part_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let part = data.join("objects/parts/ab/obp_0000000000000000000000000000ab");
    let body = data.join("objects/bodies/cd/obv_0000000000000000000000000000cd");
    let tmp = data.join("objects/tmp/obp_00000000000000000000000000000ef");
    for f in [&part, &body, &tmp] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b"leftover").unwrap();
    }
    // GC only touches files older than the start.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let s = Srv::start_with(|c| c.data_dir = data.clone()).await;
    let mut left = 0;
    for _ in 0..100 {
        left = [&part, &body, &tmp].iter().filter(|f| f.exists()).count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "crash leftovers were not collected");
    s.shutdown().await;
}

/// Data keys drawn for versions or parts that never committed (a crash
/// mid-PUT) are deleted at start once a day old; younger ones may belong
/// to a body another server is still receiving, and keys of live objects
/// stay.
#[tokio::test]
async fn s3_gc_removes_orphan_data_keys() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Srv::start_with(|c| {
        c.data_dir = data.clone();
        c.seal = nuage_kms::root::SealConfig::KeyFile(dir.path().join("seal.key"));
    })
    .await;
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/buckets",
            &owner,
            Some(json!({"name": "gc-keys"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    s.shutdown().await;

    let url = format!("sqlite://{}", data.join("nuage.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (key_id, version): (String, i64) =
        sqlx::query_as("SELECT key_id, key_version FROM kms_data_keys LIMIT 1")
            .fetch_optional(&mut db)
            .await
            .unwrap()
            .unwrap_or_default();
    let key_id = if key_id.is_empty() {
        let (id,): (String,) = sqlx::query_as("SELECT id FROM kms_keys LIMIT 1")
            .fetch_one(&mut db)
            .await
            .unwrap();
        id
    } else {
        key_id
    };
    let now = nuage_core::time::now_ms();
    for (id, owner, at) in [
        ("dek_old_version", "obv_crashed", now - 2 * 86_400_000),
        ("dek_old_part", "obp_crashed", now - 2 * 86_400_000),
        ("dek_young", "obv_in_flight", now),
        ("dek_other", "something_else", 0),
    ] {
        sqlx::query(
            "INSERT INTO kms_data_keys (id, key_id, key_version, owner, wrapped, created_at) \
             VALUES ($1, $2, $3, $4, 'x', $5)",
        )
        .bind(id)
        .bind(&key_id)
        .bind(version.max(1))
        .bind(owner)
        .bind(at)
        .execute(&mut db)
        .await
        .unwrap();
    }
    db.close().await.unwrap();

    let s = Srv::start_with(|c| {
        c.data_dir = data.clone();
        c.seal = nuage_kms::root::SealConfig::KeyFile(dir.path().join("seal.key"));
    })
    .await;
    let mut left = Vec::new();
    for _ in 0..100 {
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        left = sqlx::query_as::<_, (String,)>(
            "SELECT id FROM kms_data_keys WHERE id LIKE 'dek_%' ORDER BY id",
        )
        .fetch_all(&mut db)
        .await
        .unwrap()
        .into_iter()
        .map(|(id,)| id)
        .collect();
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, ["dek_other", "dek_young"]);
    s.shutdown().await;
}

/// Versioning through boto3: version ids, delete markers, reads and
/// deletes of one version, ListObjectVersions pagination, suspension and
/// lifecycle configuration checks (tests/s3/boto3_versioning.py).
#[tokio::test]
async fn s3_boto3_versioning() {
    if !clients_present() {
        return;
    }
    run_boto3(Srv::start().await, "boto3_versioning.py").await;
}

/// The same on PostgreSQL, whose partial indexes and row locks the
/// versioning queries rely on, when the test command provides one.
#[tokio::test]
async fn s3_boto3_versioning_postgres() {
    if !clients_present() {
        return;
    }
    let Some(url) = pg_database().await else {
        println!("skipped: no test PostgreSQL (run scripts/test)");
        return;
    };
    run_boto3(
        Srv::start_with(|c| c.database_url = Some(url.clone())).await,
        "boto3_versioning.py",
    )
    .await;
}

const DAY_MS: i64 = 86_400_000;

/// Data key owners (object version and part ids) in the key service's table.
async fn data_key_owners(db_url: &str) -> Vec<String> {
    column_of(db_url, "SELECT owner AS v FROM kms_data_keys").await
}

/// Version ids in the object table (whose rows hold small bodies).
async fn version_rows(db_url: &str) -> Vec<String> {
    column_of(db_url, "SELECT version_id AS v FROM objects").await
}

async fn column_of(db_url: &str, sql: &str) -> Vec<String> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(db_url).await.unwrap();
    sqlx::query(sql)
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("v"))
        .collect()
}

fn body_file(s: &Srv, version_id: &str) -> PathBuf {
    let fan = &version_id[version_id.len() - 2..];
    s.data_dir.join("objects/bodies").join(fan).join(version_id)
}

/// Lifecycle rules set with aws-cli, applied by passes run "days later":
/// current versions expire behind a delete marker (versioned bucket) or
/// for good (unversioned), noncurrent versions and lone delete markers go,
/// old multipart uploads are aborted; bodies and data keys are removed,
/// keys outside the rules' prefixes are untouched, and every action is in
/// the organization's audit log.
#[tokio::test]
async fn s3_lifecycle_pass_expires_versions_and_audits() {
    if !clients_present() {
        return;
    }
    let s = Srv::start().await;
    let url = format!("sqlite://{}", s.data_dir.join("nuage.db").display());
    lifecycle_pass(s, &url).await;
}

/// The same on PostgreSQL, when the test command provides one.
#[tokio::test]
async fn s3_lifecycle_pass_postgres() {
    if !clients_present() {
        return;
    }
    let Some(url) = pg_database().await else {
        println!("skipped: no test PostgreSQL (run scripts/test)");
        return;
    };
    lifecycle_pass(
        Srv::start_with(|c| c.database_url = Some(url.clone())).await,
        &url,
    )
    .await;
}

async fn lifecycle_pass(s: Srv, db_url: &str) {
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
    let aws = Aws::new(&s);
    let json = |out: String| -> Value { serde_json::from_str(&out).unwrap() };
    std::fs::write(aws.path("body.txt"), b"some body").unwrap();
    let body = aws.path("body.txt");

    aws.ok(&key, &["s3", "mb", "s3://life"]).await;
    aws.ok(
        &key,
        &[
            "s3api",
            "put-bucket-versioning",
            "--bucket",
            "life",
            "--versioning-configuration",
            "Status=Enabled",
        ],
    )
    .await;
    let put = |k: &'static str| {
        let aws = &aws;
        let key = &key;
        let body = body.clone();
        async move {
            let out = aws
                .ok(
                    key,
                    &[
                        "s3api",
                        "put-object",
                        "--bucket",
                        "life",
                        "--key",
                        k,
                        "--body",
                        &body,
                    ],
                )
                .await;
            json(out)["VersionId"].as_str().unwrap().to_string()
        }
    };
    let del = |k: &'static str, v: Option<String>| {
        let aws = &aws;
        let key = &key;
        async move {
            let mut args = vec!["s3api", "delete-object", "--bucket", "life", "--key", k];
            if let Some(v) = &v {
                args.extend(["--version-id", v.as_str()]);
            }
            aws.ok(key, &args).await
        }
    };
    let a1 = put("logs/a").await;
    let a2 = put("logs/a").await;
    let b1 = put("logs/b").await;
    del("logs/b", None).await;
    let c1 = put("logs/c").await;
    del("logs/c", None).await;
    del("logs/c", Some(c1.clone())).await;
    let kept = put("keep/x").await;
    let mut hist = Vec::new();
    for _ in 0..5 {
        hist.push(put("hist/h").await);
    }
    let upload = |k: &'static str| {
        let aws = &aws;
        let key = &key;
        let body = body.clone();
        async move {
            let out = aws
                .ok(
                    key,
                    &[
                        "s3api",
                        "create-multipart-upload",
                        "--bucket",
                        "life",
                        "--key",
                        k,
                    ],
                )
                .await;
            let id = json(out)["UploadId"].as_str().unwrap().to_string();
            aws.ok(
                key,
                &[
                    "s3api",
                    "upload-part",
                    "--bucket",
                    "life",
                    "--key",
                    k,
                    "--part-number",
                    "1",
                    "--upload-id",
                    &id,
                    "--body",
                    &body,
                ],
            )
            .await;
            id
        }
    };
    let old_upload = upload("logs/big").await;
    let kept_upload = upload("keep/big").await;
    assert_eq!(files_under(&s.data_dir.join("objects/parts")).len(), 2);

    // an unversioned bucket whose tmp/ expires at a date
    aws.ok(&key, &["s3", "mb", "s3://plain"]).await;
    for k in ["tmp/old", "other/z"] {
        aws.ok(
            &key,
            &[
                "s3api",
                "put-object",
                "--bucket",
                "plain",
                "--key",
                k,
                "--body",
                &body,
            ],
        )
        .await;
    }
    let now = nuage_core::time::now_ms();
    let date_ms = (now / DAY_MS + 200) * DAY_MS;
    let date = time::OffsetDateTime::from_unix_timestamp(date_ms / 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();

    std::fs::write(
        aws.path("life.json"),
        json!({"Rules": [
            {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
             "Expiration": {"Days": 30},
             "NoncurrentVersionExpiration": {"NoncurrentDays": 10},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 5}},
            {"ID": "markers", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
             "Expiration": {"ExpiredObjectDeleteMarker": true}},
            {"ID": "hist", "Status": "Enabled", "Filter": {"Prefix": "hist/"},
             "NoncurrentVersionExpiration": {"NoncurrentDays": 1, "NewerNoncurrentVersions": 2}},
            {"ID": "off", "Status": "Disabled", "Filter": {"Prefix": ""},
             "Expiration": {"Days": 1}}
        ]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        aws.path("plain.json"),
        json!({"Rules": [{"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
                          "Expiration": {"Date": date}}]})
        .to_string(),
    )
    .unwrap();
    for (bucket, file) in [("life", "life.json"), ("plain", "plain.json")] {
        let f = format!("file://{}", aws.path(file));
        aws.ok(
            &key,
            &[
                "s3api",
                "put-bucket-lifecycle-configuration",
                "--bucket",
                bucket,
                "--lifecycle-configuration",
                &f,
            ],
        )
        .await;
    }
    let got = json(
        aws.ok(
            &key,
            &[
                "s3api",
                "get-bucket-lifecycle-configuration",
                "--bucket",
                "life",
            ],
        )
        .await,
    );
    assert_eq!(got["Rules"].as_array().unwrap().len(), 4, "{got}");

    // at once: only logs/c's marker, alone, is an expired delete marker
    let r = s.lifecycle_pass(now).await;
    assert_eq!(
        (
            r.expired,
            r.noncurrent_removed,
            r.markers_removed,
            r.uploads_aborted
        ),
        (0, 0, 1, 0),
        "{r:?}"
    );

    // 400 days later: logs/a expires behind a marker, logs/b's old version
    // goes and then its marker, hist/h keeps its current and two newest
    // noncurrent versions, the old upload is aborted, tmp/old is deleted;
    // the disabled rule does nothing
    let r = s.lifecycle_pass(now + 400 * DAY_MS).await;
    assert_eq!(
        (
            r.expired,
            r.noncurrent_removed,
            r.markers_removed,
            r.uploads_aborted
        ),
        (2, 3, 1, 1),
        "{r:?}"
    );
    // 800 days later: logs/a's versions are noncurrent long enough, and
    // its marker is then alone
    let r = s.lifecycle_pass(now + 800 * DAY_MS).await;
    assert_eq!(
        (
            r.expired,
            r.noncurrent_removed,
            r.markers_removed,
            r.uploads_aborted
        ),
        (0, 2, 1, 0),
        "{r:?}"
    );
    let r = s.lifecycle_pass(now + 1200 * DAY_MS).await;
    assert_eq!(r, Default::default(), "a pass with nothing left to do");

    let versions = json(
        aws.ok(&key, &["s3api", "list-object-versions", "--bucket", "life"])
            .await,
    );
    let listed: Vec<(&str, &str)> = versions["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["Key"].as_str().unwrap(), v["VersionId"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("hist/h", hist[4].as_str()),
            ("hist/h", hist[3].as_str()),
            ("hist/h", hist[2].as_str()),
            ("keep/x", kept.as_str())
        ],
        "{versions}"
    );
    assert!(versions.get("DeleteMarkers").is_none(), "{versions}");
    let ups = json(
        aws.ok(
            &key,
            &["s3api", "list-multipart-uploads", "--bucket", "life"],
        )
        .await,
    );
    let ups: Vec<&str> = ups["Uploads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["UploadId"].as_str().unwrap())
        .collect();
    assert_eq!(ups, [kept_upload.as_str()]);
    assert!(!ups.contains(&old_upload.as_str()));
    assert_eq!(files_under(&s.data_dir.join("objects/parts")).len(), 1);
    let plain = json(
        aws.ok(&key, &["s3api", "list-objects-v2", "--bucket", "plain"])
            .await,
    );
    assert_eq!(plain["Contents"].as_array().unwrap().len(), 1, "{plain}");
    assert_eq!(plain["Contents"][0]["Key"], "other/z");

    // removed versions are crypto-shredded: no row (small bodies live in
    // it), no body file, no data key
    let owners = data_key_owners(db_url).await;
    let rows = version_rows(db_url).await;
    for v in [&a1, &a2, &b1, &c1, &hist[0], &hist[1]] {
        assert!(!rows.contains(v), "version {v} left in the store");
        assert!(!body_file(&s, v).exists(), "body of {v} left on disk");
        assert!(!owners.contains(v), "data key of {v} left in the store");
    }
    assert!(rows.contains(&kept));
    assert!(owners.contains(&kept));

    // every action is audited, as the lifecycle rules' doing
    let entries = audit_entries(&s, "acme", &owner).await;
    let count = |action: &str| {
        entries
            .iter()
            .filter(|e| {
                let r = &e["record"];
                r["action"] == action && r["principal"] == "system" && r["decision"] == "allow"
            })
            .count()
    };
    assert_eq!(count("s3.lifecycle.expire_object"), 2);
    assert_eq!(count("s3.lifecycle.delete_version"), 5);
    assert_eq!(count("s3.lifecycle.delete_marker"), 3);
    assert_eq!(count("s3.lifecycle.abort_upload"), 1);
    assert!(entries.iter().any(|e| {
        let r = &e["record"];
        r["action"] == "s3.lifecycle.delete_version"
            && r["resource"] == "bucket:life/logs/b"
            && r["details"]["version_id"] == json!(b1)
            && r["policies"] == json!(["lifecycle:logs"])
    }));
    assert!(entries.iter().any(|e| {
        let r = &e["record"];
        r["action"] == "s3.lifecycle.expire_object" && r["resource"] == "bucket:plain/tmp/old"
    }));
    s.shutdown().await;
}

/// Who may do what with versions: an object writer adds versions and
/// delete markers but cannot erase a version or change the bucket's
/// versioning or lifecycle (bucket admin); a reader reads old versions;
/// another organization learns nothing. Refusals are audited.
#[tokio::test]
async fn s3_versioning_authz_and_isolation() {
    if !clients_present() {
        return;
    }
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
    let writer = s.user("acme", &owner, "wri", Some("object-writer")).await;
    let wkey = access_key(&s, "acme", &writer).await;
    let reader = s.user("acme", &owner, "rea", Some("object-reader")).await;
    let rkey = access_key(&s, "acme", &reader).await;
    let other = s.org("globex").await;
    project(&s, "globex", &other, "ops").await;
    let okey = access_key(&s, "globex", &other).await;
    let aws = Aws::new(&s);
    std::fs::write(aws.path("b.txt"), b"body").unwrap();
    let body = aws.path("b.txt");
    let bucket = ["--bucket", "vers"];

    aws.ok(&key, &["s3", "mb", "s3://vers"]).await;
    let enable = [
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        "vers",
        "--versioning-configuration",
        "Status=Enabled",
    ];
    aws.fails(&wkey, &enable, "AccessDenied").await;
    aws.ok(&key, &enable).await;
    let put = [
        "s3api",
        "put-object",
        "--bucket",
        "vers",
        "--key",
        "k",
        "--body",
        &body,
    ];
    let v1: Value = serde_json::from_str(&aws.ok(&wkey, &put).await).unwrap();
    let v1 = v1["VersionId"].as_str().unwrap().to_string();
    aws.ok(&wkey, &put).await;
    let marker: Value = serde_json::from_str(
        &aws.ok(
            &wkey,
            &["s3api", "delete-object", "--bucket", "vers", "--key", "k"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(marker["DeleteMarker"], true, "{marker}");
    let erase = [
        "s3api",
        "delete-object",
        "--bucket",
        "vers",
        "--key",
        "k",
        "--version-id",
        &v1,
    ];
    aws.fails(&wkey, &erase, "AccessDenied").await;
    aws.fails(&rkey, &erase, "AccessDenied").await;
    std::fs::write(
        aws.path("l.json"),
        json!({"Rules": [{"ID": "x", "Status": "Enabled", "Filter": {"Prefix": ""},
                          "Expiration": {"Days": 1}}]})
        .to_string(),
    )
    .unwrap();
    let lc = format!("file://{}", aws.path("l.json"));
    let put_lc = [
        "s3api",
        "put-bucket-lifecycle-configuration",
        "--bucket",
        "vers",
        "--lifecycle-configuration",
        &lc,
    ];
    aws.fails(&wkey, &put_lc, "AccessDenied").await;
    let get_old = [
        "s3api",
        "get-object",
        "--bucket",
        "vers",
        "--key",
        "k",
        "--version-id",
        &v1,
        &aws.path("old.txt"),
    ];
    for k in [&key, &wkey, &rkey] {
        aws.ok(
            k,
            &[&["s3api", "get-bucket-versioning"][..], &bucket[..]].concat(),
        )
        .await;
        let l = aws
            .ok(
                k,
                &[&["s3api", "list-object-versions"][..], &bucket[..]].concat(),
            )
            .await;
        assert!(l.contains(&v1), "{l}");
        aws.ok(k, &get_old).await;
    }
    assert_eq!(std::fs::read(aws.path("old.txt")).unwrap(), b"body");

    // another organization: the same answer as a missing bucket
    for args in [
        &[&["s3api", "get-bucket-versioning"][..], &bucket[..]].concat()[..],
        &[&["s3api", "list-object-versions"][..], &bucket[..]].concat()[..],
        &enable[..],
        &erase[..],
        &get_old[..],
        &put_lc[..],
    ] {
        aws.fails(&okey, args, "NoSuchBucket").await;
    }

    // the bucket admin (here the owner) may erase the version and set rules
    aws.ok(&key, &erase).await;
    aws.ok(&key, &put_lc).await;
    let entries = audit_entries(&s, "acme", &owner).await;
    assert!(entries.iter().any(|e| {
        let r = &e["record"];
        r["action"] == "s3.delete_object_version" && r["decision"] == "deny" && r["status"] == 403
    }));
    assert!(entries.iter().any(|e| {
        let r = &e["record"];
        r["action"] == "s3.delete_object_version"
            && r["decision"] == "allow"
            && r["details"]["version_id"] == json!(v1)
    }));
    assert!(entries.iter().any(|e| {
        let r = &e["record"];
        r["action"] == "s3.put_bucket_versioning" && r["decision"] == "deny"
    }));
    s.shutdown().await;
}

/// An image imported from an object put with aws-cli (a multipart upload:
/// more than 8 MiB), read by the compute service through the object
/// engine; a caller who may not read the bucket gets no image.
#[tokio::test]
async fn images_import_from_objects() {
    if !clients_present() || !crate::compute::qemu_present() {
        return;
    }
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/buckets",
            &owner,
            Some(json!({"name": "acme-images"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let aws = Aws::new(&s);
    let mut disk = crate::compute::raw_disk(b"IMAGE-FROM-AN-OBJECT");
    disk.resize(12 << 20, 0);
    std::fs::write(aws.path("disk.raw"), &disk).unwrap();
    aws.ok(
        &key,
        &[
            "s3",
            "cp",
            &aws.path("disk.raw"),
            "s3://acme-images/disk.raw",
        ],
    )
    .await;

    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/images",
            &owner,
            Some(json!({"name": "from-object",
                        "source": {"bucket": "acme-images", "key": "disk.raw"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["state"], "available", "{}", r.text);
    assert_eq!(r.body["source_format"], "raw");
    assert_eq!(r.body["virtual_size"], 12 << 20);

    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/images",
            &owner,
            Some(json!({"name": "missing",
                        "source": {"bucket": "acme-images", "key": "nope"}})),
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.text);

    // A viewer of the project may not create images; an object writer of
    // the bucket may not either: each is refused, and no image appears.
    for role in ["viewer", "object-reader"] {
        let name = format!("u-{role}");
        let t = s.user("acme", &owner, &name, Some(role)).await;
        let r = s
            .t(
                Method::POST,
                "/v1/orgs/acme/projects/web/images",
                &t,
                Some(json!({"name": format!("by-{role}"),
                            "source": {"bucket": "acme-images", "key": "disk.raw"}})),
            )
            .await;
        assert_eq!(r.status, 403, "{role}: {}", r.text);
    }
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/projects/web/images",
            &owner,
            None,
        )
        .await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["from-object"], "{}", r.text);
    s.shutdown().await;
}

/// SigV4 by hand, dated as the test chooses (real clients sign with the
/// clock).
struct V4 {
    base: String,
    host: String,
    access_key: String,
    secret: String,
}

fn hmac256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// `YYYYMMDDTHHMMSSZ`.
fn amz_date(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The `<Code>` of an S3 error answer.
fn s3_code(xml: &str) -> &str {
    xml.split("<Code>")
        .nth(1)
        .and_then(|c| c.split("</Code>").next())
        .unwrap_or("")
}

impl V4 {
    fn new(s: &Srv, key: &Key) -> V4 {
        V4 {
            base: s.s3.clone(),
            host: s.s3.trim_start_matches("http://").to_string(),
            access_key: key.id.clone(),
            secret: key.secret.clone(),
        }
    }

    fn scope(date: &str) -> String {
        format!("{}/us-east-1/s3/aws4_request", &date[..8])
    }

    fn signature(&self, date: &str, canonical: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{}\n{}",
            Self::scope(date),
            sha256_hex(canonical.as_bytes())
        );
        hex::encode(hmac256(&self.key(date), to_sign.as_bytes()))
    }

    fn key(&self, date: &str) -> [u8; 32] {
        let mut k = hmac256(
            format!("AWS4{}", self.secret).as_bytes(),
            &date.as_bytes()[..8],
        );
        for part in ["us-east-1", "s3", "aws4_request"] {
            k = hmac256(&k, part.as_bytes());
        }
        k
    }

    /// `method` on `path` (plain characters only) signed in headers, dated
    /// `date`, whose body hashes to `payload`; returns the request and the
    /// seed signature.
    fn request(
        &self,
        http: &reqwest::Client,
        method: Method,
        path: &str,
        date: &str,
        payload: &str,
        extra: &[(&str, String)],
    ) -> (reqwest::RequestBuilder, String) {
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), self.host.clone()),
            ("x-amz-content-sha256".into(), payload.into()),
            ("x-amz-date".into(), date.into()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical = format!("{method}\n{path}\n\n{canonical_headers}\n{signed}\n{payload}");
        let signature = self.signature(date, &canonical);
        let mut r = http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            r = r.header(k, v);
        }
        let r = r.header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={signed}, Signature={signature}",
                self.access_key,
                Self::scope(date)
            ),
        );
        (r, signature)
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        method: Method,
        path: &str,
        date: &str,
        body: &[u8],
    ) -> Resp {
        let (r, _) = self.request(http, method, path, date, &sha256_hex(body), &[]);
        into_resp(r.body(body.to_vec()).send().await.unwrap()).await
    }

    /// A PUT of `body` as aws-chunked, every chunk signed.
    async fn put_chunked(
        &self,
        http: &reqwest::Client,
        path: &str,
        date: &str,
        body: &[u8],
    ) -> Resp {
        let extra = [
            ("content-encoding", "aws-chunked".to_string()),
            ("x-amz-decoded-content-length", body.len().to_string()),
        ];
        let (r, seed) = self.request(
            http,
            Method::PUT,
            path,
            date,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            &extra,
        );
        let mut prev = seed;
        let mut encoded = Vec::new();
        for chunk in body.chunks(1000).chain(std::iter::once(&[][..])) {
            let to_sign = format!(
                "AWS4-HMAC-SHA256-PAYLOAD\n{date}\n{}\n{prev}\n{}\n{}",
                Self::scope(date),
                sha256_hex(b""),
                sha256_hex(chunk)
            );
            prev = hex::encode(hmac256(&self.key(date), to_sign.as_bytes()));
            encoded.extend_from_slice(
                format!("{:x};chunk-signature={prev}\r\n", chunk.len()).as_bytes(),
            );
            encoded.extend_from_slice(chunk);
            encoded.extend_from_slice(b"\r\n");
        }
        into_resp(r.body(encoded).send().await.unwrap()).await
    }

    /// A presigned URL of `method` on `path`, dated `date`.
    fn presign(&self, method: &Method, path: &str, date: &str, expires: &str) -> String {
        let query = format!(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}%2F{}&X-Amz-Date={date}\
             &X-Amz-Expires={expires}&X-Amz-SignedHeaders=host",
            self.access_key,
            Self::scope(date).replace('/', "%2F")
        );
        let canonical = format!(
            "{method}\n{path}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
            self.host
        );
        let signature = self.signature(date, &canonical);
        format!("{}{path}?{query}&X-Amz-Signature={signature}", self.base)
    }
}

/// A captured request must not replay forever: a request signed in headers
/// (aws-chunked bodies included) is good for 15 minutes either way of the
/// server's clock, a presigned URL for 7 days at most. Refusals store and
/// delete nothing and are audited.
#[tokio::test]
async fn s3_signatures_expire() {
    use time::{Duration, OffsetDateTime};
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/buckets",
            &owner,
            Some(json!({"name": "fresh"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v4 = V4::new(&s, &key);
    let http = &s.http;
    let now = OffsetDateTime::now_utc();
    let today = amz_date(now);

    // dated now, and 10 minutes either way: accepted (the signer is right)
    let r = v4
        .send(http, Method::PUT, "/fresh/kept", &today, b"kept")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for m in [-10, 10] {
        let date = amz_date(now + Duration::minutes(m));
        let r = v4
            .send(
                http,
                Method::PUT,
                &format!("/fresh/near{m}"),
                &date,
                b"near",
            )
            .await;
        assert_eq!(r.status, 200, "{m} minutes: {}", r.text);
        let r = v4
            .put_chunked(http, &format!("/fresh/chunked{m}"), &date, &[7u8; 2500])
            .await;
        assert_eq!(r.status, 200, "chunked, {m} minutes: {}", r.text);
    }
    let r = v4
        .send(http, Method::GET, "/fresh/chunked10", &today, b"")
        .await;
    assert_eq!((r.status, r.text.len()), (200, 2500));

    // 1999, year 0, 9999, 20 minutes either way: too skewed, for every verb
    let mut refused_ids = Vec::new();
    for date in [
        "19990101T000000Z".to_string(),
        "00000101T000000Z".to_string(),
        "99991231T235959Z".to_string(),
        amz_date(now - Duration::minutes(20)),
        amz_date(now + Duration::minutes(20)),
    ] {
        let r = v4
            .send(http, Method::PUT, "/fresh/stale", &date, b"stale")
            .await;
        assert_eq!(
            (r.status, s3_code(&r.text)),
            (403, "RequestTimeTooSkewed"),
            "PUT {date}: {}",
            r.text
        );
        refused_ids.push(r.headers["x-amz-request-id"].to_str().unwrap().to_string());
        let r = v4
            .put_chunked(http, "/fresh/stale-chunked", &date, &[1u8; 2500])
            .await;
        assert_eq!(
            (r.status, s3_code(&r.text)),
            (403, "RequestTimeTooSkewed"),
            "chunked PUT {date}: {}",
            r.text
        );
        let r = v4.send(http, Method::GET, "/fresh/kept", &date, b"").await;
        assert_eq!(
            (r.status, s3_code(&r.text)),
            (403, "RequestTimeTooSkewed"),
            "GET {date}: {}",
            r.text
        );
        assert!(!r.text.contains("kept"), "{}", r.text);
        let r = v4
            .send(http, Method::DELETE, "/fresh/kept", &date, b"")
            .await;
        assert_eq!(
            (r.status, s3_code(&r.text)),
            (403, "RequestTimeTooSkewed"),
            "DELETE {date}: {}",
            r.text
        );
    }
    // a time that is no time (a day that is no day is s3s's to refuse)
    let nonsense = format!("{}T256000Z", &today[..8]);
    let r = v4
        .send(http, Method::PUT, "/fresh/stale", &nonsense, b"stale")
        .await;
    assert_eq!(
        (r.status, s3_code(&r.text)),
        (403, "AccessDenied"),
        "{}",
        r.text
    );

    // nothing stored, nothing deleted
    let r = v4.send(http, Method::GET, "/fresh/kept", &today, b"").await;
    assert_eq!((r.status, r.text.as_str()), (200, "kept"));
    for gone in ["/fresh/stale", "/fresh/stale-chunked"] {
        let r = v4.send(http, Method::GET, gone, &today, b"").await;
        assert_eq!(
            (r.status, s3_code(&r.text)),
            (404, "NoSuchKey"),
            "{gone}: {}",
            r.text
        );
    }

    // every refusal is in the organization's log, with the key's holder
    let entries = audit_entries(&s, "acme", &owner).await;
    for id in &refused_ids {
        let e = entries
            .iter()
            .find(|e| e["record"]["request_id"] == json!(id))
            .unwrap_or_else(|| panic!("no audit entry for {id}"));
        let rec = &e["record"];
        assert_eq!(rec["status"], 403, "{rec}");
        assert_eq!(rec["method"], "PUT", "{rec}");
        assert_eq!(rec["principal_name"], "owner", "{rec}");
        assert_eq!(
            rec["details"]["auth_error"], "RequestTimeTooSkewed",
            "{rec}"
        );
        assert_eq!(rec["details"]["access_key"], json!(key.id), "{rec}");
    }

    // presigned URLs: 7 days at most, expired ones refused
    let get = |url: String| async move { into_resp(http.get(url).send().await.unwrap()).await };
    let r = get(v4.presign(&Method::GET, "/fresh/kept", &today, "604800")).await;
    assert_eq!((r.status, r.text.as_str()), (200, "kept"));
    let r = get(v4.presign(&Method::GET, "/fresh/kept", &today, "604801")).await;
    assert_eq!(
        (r.status, s3_code(&r.text)),
        (400, "AuthorizationQueryParametersError"),
        "{}",
        r.text
    );
    let r = get(v4.presign(&Method::GET, "/fresh/kept", &today, "-1")).await;
    assert_eq!(
        (r.status, s3_code(&r.text)),
        (403, "AccessDenied"),
        "{}",
        r.text
    );
    let two_hours_ago = amz_date(now - Duration::hours(2));
    let r = get(v4.presign(&Method::GET, "/fresh/kept", &two_hours_ago, "3600")).await;
    assert_eq!(
        (r.status, s3_code(&r.text)),
        (403, "AccessDenied"),
        "{}",
        r.text
    );
    let ahead = amz_date(now + Duration::minutes(20));
    let r = get(v4.presign(&Method::GET, "/fresh/kept", &ahead, "3600")).await;
    assert_eq!(
        (r.status, s3_code(&r.text)),
        (403, "RequestTimeTooSkewed"),
        "{}",
        r.text
    );
    let url = v4.presign(&Method::PUT, "/fresh/long", &today, "604801");
    let r = into_resp(http.put(url).body("long").send().await.unwrap()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = v4.send(http, Method::GET, "/fresh/long", &today, b"").await;
    assert_eq!(r.status, 404, "{}", r.text);
    s.shutdown().await;
}

/// Anyone can send refused S3 requests (anonymous, badly signed, for a
/// missing bucket): the audit log has them, the server's log must not fill
/// with ERROR lines for them. The real binary, with `RUST_LOG=info`.
#[tokio::test]
async fn s3_refusals_are_not_logged_as_errors() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (tp, ap, sp) = (port(), port(), port());
    let log = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args(["server", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            &format!("127.0.0.1:{tp}"),
            "--admin-listen",
            &format!("127.0.0.1:{ap}"),
            "--s3-listen",
            &format!("127.0.0.1:{sp}"),
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let c = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = c.get(format!("http://127.0.0.1:{tp}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited early: {status}");
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "server not ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let s3 = format!("http://127.0.0.1:{sp}");
    let bad_sig = "AWS4-HMAC-SHA256 Credential=NKNOSUCHKEY/20261208/us-east-1/s3/aws4_request, \
                   SignedHeaders=host;x-amz-date, Signature=00";
    let requests = [
        c.put(format!("{s3}/bucket/key")).body("x"),
        c.get(format!("{s3}/bucket/key")),
        c.delete(format!("{s3}/bucket/key")),
        c.get(format!("{s3}/")),
        c.put(format!("{s3}/bucket/key"))
            .header("x-amz-date", "20261208T000000Z")
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .header("authorization", bad_sig)
            .body("x"),
    ];
    for r in requests {
        let r = r.send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") && (l.contains("s3s") || l.contains("S3")))
        .collect();
    assert!(
        errors.is_empty(),
        "refusals logged as errors:\n{}",
        errors.join("\n")
    );
}
