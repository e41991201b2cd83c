//! The S3 endpoint with real clients (aws-cli and boto3 from the test
//! virtualenv) against an in-process server: protocol, IAM, audit,
//! isolation and encryption at rest.

use std::path::{Path, PathBuf};
use std::process::Output;

use http::Method;
use serde_json::{json, Value};

use crate::common::{contains_bytes, files_under, pg_database, Srv};

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

async fn boto3_suite(s: Srv) {
    run_boto3(s, "boto3_suite.py").await;
}

/// Runs one boto3 script of `tests/s3/` against `s` with the access key
/// of a fresh organization "acme" (project "web"); the script must print
/// "<script name without .py>: ok".
pub(crate) async fn run_boto3(s: Srv, script: &str) {
    let owner = s.org("acme").await;
    project(&s, "acme", &owner, "web").await;
    let key = access_key(&s, "acme", &owner).await;
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
        .env("NUAGE_API", &s.tenant)
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
