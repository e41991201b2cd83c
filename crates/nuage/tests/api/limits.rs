//! Every listener's connection limits (issue 21): slow headers, stalled
//! bodies, idle keep-alive connections and too many connections from one
//! address, over raw TCP so the client does exactly what a slow or hostile
//! one would.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http::Method;
use nuage_api::ConnectionLimits;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::Srv;

const HEADER: Duration = Duration::from_secs(1);
const STALL: Duration = Duration::from_millis(1500);
const IDLE: Duration = Duration::from_secs(2);
/// What a loaded test machine may add to a deadline.
const SLACK: Duration = Duration::from_secs(3);

async fn server(max_per_ip: usize) -> Srv {
    Srv::start_with(|c| {
        c.connections = ConnectionLimits {
            header_read_timeout: HEADER,
            body_stall_timeout: STALL,
            idle_timeout: IDLE,
            max_connections_per_ip: max_per_ip,
        }
    })
    .await
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

async fn connect(url: &str) -> TcpStream {
    TcpStream::connect(host(url)).await.unwrap()
}

/// Reads until the server closes the connection (end of file or reset);
/// `None` if it is still open after `within`. What was read comes back too.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> (Option<Duration>, Vec<u8>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (None, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (Some(start.elapsed()), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length`: its status and body.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                return Some((status, body));
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

async fn get_healthz(stream: &mut TcpStream) -> Option<(u16, String)> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    read_response(stream).await
}

/// Headers sent a line every 300 ms never complete within the header
/// timeout: each listener closes the connection, as it does one that sends
/// nothing at all.
#[tokio::test]
async fn slow_headers_are_cut_on_every_listener() {
    let s = server(64).await;
    let slow = |url: String| async move {
        let stream = connect(&url).await;
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await;
            for i in 0..40 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if wr
                    .write_all(format!("x-slow-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let closed = loop {
            let left = (HEADER + SLACK).saturating_sub(start.elapsed());
            match tokio::time::timeout(left, rd.read(&mut buf)).await {
                Err(_) => break None,
                Ok(Ok(0)) | Ok(Err(_)) => break Some(start.elapsed()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        };
        writer.abort();
        (url, closed, got)
    };
    let silent = async {
        let mut stream = connect(&s.tenant).await;
        closed_within(&mut stream, HEADER + SLACK).await
    };
    let (a, b, c, (quiet, _)) = tokio::join!(
        slow(s.tenant.clone()),
        slow(s.admin.clone()),
        slow(s.s3.clone()),
        silent
    );
    for (url, closed, got) in [a, b, c] {
        let at = closed.unwrap_or_else(|| panic!("{url}: slow headers still open"));
        assert!(
            at >= HEADER - Duration::from_millis(200),
            "{url}: closed early, {at:?}"
        );
        assert!(
            !String::from_utf8_lossy(&got).contains(" 200 "),
            "{url}: slow headers were served"
        );
    }
    let at = quiet.expect("a connection that sends nothing is closed");
    assert!(
        at >= HEADER - Duration::from_millis(200),
        "closed early: {at:?}"
    );
    s.shutdown().await;
}

/// A keep-alive connection survives a pause longer than the header
/// timeout (it is idle, not reading headers) and is closed after the idle
/// timeout.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let s = server(64).await;
    let check = |url: String| async move {
        let mut c = connect(&url).await;
        let (status, _) = get_healthz(&mut c).await.expect("first answer");
        assert_eq!(status, 200);
        tokio::time::sleep(HEADER + Duration::from_millis(400)).await;
        let (status, _) = get_healthz(&mut c)
            .await
            .expect("the connection is still open past the header timeout");
        assert_eq!(status, 200);
        let (closed, got) = closed_within(&mut c, IDLE + SLACK).await;
        let at = closed.unwrap_or_else(|| panic!("{url}: idle connection still open"));
        assert!(
            at >= IDLE - Duration::from_millis(300),
            "{url}: closed early: {at:?}"
        );
        assert!(got.is_empty(), "{url}: nothing is sent on an idle close");
    };
    tokio::join!(check(s.tenant.clone()), check(s.admin.clone()));
    s.shutdown().await;
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// SigV4 header signing with `UNSIGNED-PAYLOAD`: the request head for
/// `method` on `path` (no query), ending with the headers' blank line.
fn signed_head(
    method: &str,
    path: &str,
    host: &str,
    id: &str,
    secret: &str,
    extra: &str,
) -> String {
    let now = time::OffsetDateTime::now_utc();
    let date = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let canonical = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{date}\n\n\
         host;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD"
    );
    let scope = format!("{}/us-east-1/s3/aws4_request", &date[..8]);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), &date.as_bytes()[..8]);
    for part in ["us-east-1", "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\n\
         x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: AWS4-HMAC-SHA256 \
         Credential={id}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
         Signature={signature}\r\n{extra}\r\n"
    )
}

/// Project `web` of `acme` with bucket `bucket`, and an S3 access key
/// (id, secret) of the holder of `owner`.
async fn s3_bucket(s: &Srv, owner: &str, bucket: &str) -> (String, String) {
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            owner,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/web/buckets",
            owner,
            Some(json!({"name": bucket})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/access-keys",
            owner,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["access_key"]["id"].as_str().unwrap().to_string();
    let secret = r.body["secret_access_key"].as_str().unwrap().to_string();
    (id, secret)
}

/// A body that stops arriving ends its request with a timeout answer (a
/// 408 problem on the API, S3's RequestTimeout on S3, and no object
/// stored), while a body that arrives slowly but steadily, over longer
/// than the stall timeout, is served.
#[tokio::test]
async fn stalled_bodies_end_with_a_timeout_answer() {
    let s = server(64).await;
    let owner = s.org("acme").await;
    let host_t = host(&s.tenant).to_string();
    let post = |len: usize, extra: &str| {
        format!(
            "POST /v1/orgs/acme/projects HTTP/1.1\r\nHost: {host_t}\r\nAuthorization: Bearer {owner}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n"
        )
    };

    // The REST API: half a body, then nothing; with an Idempotency-Key the
    // body is read by the replay layer first.
    for extra in ["", "Idempotency-Key: stall-1\r\n"] {
        let mut c = connect(&s.tenant).await;
        c.write_all(post(200, extra).as_bytes()).await.unwrap();
        c.write_all(br#"{"name": "#).await.unwrap();
        let start = Instant::now();
        let (status, body) = read_response(&mut c).await.expect("an answer");
        let at = start.elapsed();
        assert_eq!(status, 408, "{body}");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], "request_timeout", "{body}");
        assert!(problem["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
        assert!(
            at >= STALL - Duration::from_millis(200),
            "answered early: {at:?}"
        );
        assert!(at <= STALL + SLACK, "answered late: {at:?}");
        let (closed, _) = closed_within(&mut c, SLACK).await;
        assert!(closed.is_some(), "the connection ends after a stalled body");
    }
    // The pipeline itself (its metrics, its audit entry) saw the timeout,
    // not a malformed or oversized body.
    let r = s.a(Method::GET, "/metrics", None).await;
    let timeouts = r
        .text
        .lines()
        .find(|l| {
            l.starts_with("nuage_http_requests_total{")
                && l.contains(r#"listener="tenant""#)
                && l.contains(r#"method="POST""#)
                && l.contains(r#"status="408""#)
        })
        .unwrap_or_else(|| panic!("no 408 in the request metrics: {}", r.text));
    assert!(timeouts.ends_with(" 2"), "{timeouts}");

    // The same request, its body sent in pieces every 300 ms over about
    // three times the stall timeout, is served.
    let body = format!("{:<45}", r#"{"name": "slow"}"#);
    let mut c = connect(&s.tenant).await;
    c.write_all(post(body.len(), "").as_bytes()).await.unwrap();
    let start = Instant::now();
    for piece in body.as_bytes().chunks(3) {
        c.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(start.elapsed() > STALL * 2);
    let (status, text) = read_response(&mut c).await.expect("an answer");
    assert_eq!(status, 201, "{text}");

    // S3: a PUT whose body stops half-way.
    let (id, secret) = s3_bucket(&s, &owner, "stalls").await;
    let host_s = host(&s.s3).to_string();
    let mut c = connect(&s.s3).await;
    let head = signed_head(
        "PUT",
        "/stalls/half",
        &host_s,
        &id,
        &secret,
        "Content-Length: 100000\r\n",
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&[7u8; 5000]).await.unwrap();
    let start = Instant::now();
    let (status, body) = read_response(&mut c).await.expect("an S3 answer");
    let at = start.elapsed();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("<Code>RequestTimeout</Code>"), "{body}");
    assert!(at <= STALL + SLACK, "answered late: {at:?}");
    let mut c = connect(&s.s3).await;
    let head = signed_head("GET", "/stalls/half", &host_s, &id, &secret, "");
    c.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut c).await.expect("an S3 answer");
    assert_eq!(status, 404, "a stalled PUT stores nothing: {body}");
    assert!(body.contains("NoSuchKey"), "{body}");

    let r = s.a(Method::GET, "/metrics", None).await;
    assert!(
        r.text
            .contains(r#"nuage_http_limit_hits_total{listener="s3",limit="body_stall"} 1"#),
        "{}",
        r.text
    );
    s.shutdown().await;
}

/// A fifth connection from 127.0.0.1 is closed unanswered when four are
/// allowed, while the four keep working; closing one frees its place.
#[tokio::test]
async fn connections_over_the_per_ip_limit_are_refused() {
    let s = server(4).await;
    for url in [&s.tenant, &s.admin, &s.s3] {
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut c = connect(url).await;
            // Any answer shows the connection was admitted (S3 answers
            // an anonymous GET of /healthz with an error).
            get_healthz(&mut c)
                .await
                .expect("an admitted connection answers");
            open.push(c);
        }
        let mut extra = connect(url).await;
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        let (closed, got) = closed_within(&mut extra, SLACK).await;
        assert!(closed.is_some(), "{url}: a fifth connection stays open");
        assert!(got.is_empty(), "{url}: a fifth connection was answered");
        for c in &mut open {
            get_healthz(c)
                .await
                .expect("admitted connections keep working");
        }
        drop(open.pop());
        // The server notices the close and frees the place.
        let start = Instant::now();
        loop {
            let mut c = connect(url).await;
            if get_healthz(&mut c).await.is_some() {
                break;
            }
            assert!(
                start.elapsed() < SLACK,
                "{url}: a closed connection's place is not freed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    s.shutdown().await;
}

const BIG: usize = 24 << 20;

/// Stores a [`BIG`]-byte object `/big/object` and returns a signer of
/// requests to it: `signed(method)` is the request head.
async fn big_object(s: &Srv) -> impl Fn(&str) -> String {
    let owner = s.org("acme").await;
    let (id, secret) = s3_bucket(s, &owner, "big").await;
    let host_s = host(&s.s3).to_string();
    let mut c = connect(&s.s3).await;
    let head = signed_head(
        "PUT",
        "/big/object",
        &host_s,
        &id,
        &secret,
        &format!("Content-Length: {BIG}\r\n"),
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&vec![1u8; BIG]).await.unwrap();
    let (status, body) = read_response(&mut c).await.expect("an S3 answer");
    assert_eq!(status, 200, "{body}");
    move |method| signed_head(method, "/big/object", &host_s, &id, &secret, "")
}

/// A large answer read late (the server waiting on a write, not a read,
/// when it ends) still leaves an idle connection that is closed after the
/// idle timeout.
#[tokio::test]
async fn connections_idle_after_a_slowly_read_answer_are_closed() {
    let s = Srv::start_with(|c| {
        c.connections = ConnectionLimits {
            header_read_timeout: HEADER,
            body_stall_timeout: Duration::from_secs(60),
            idle_timeout: IDLE,
            max_connections_per_ip: 64,
        }
    })
    .await;
    let signed = big_object(&s).await;
    let mut c = connect(&s.s3).await;
    c.write_all(signed("GET").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (closed, got) = closed_within(&mut c, IDLE + SLACK * 2).await;
    assert!(got.len() > BIG, "the object was cut: {} bytes", got.len());
    assert!(
        closed.is_some(),
        "idle after a slowly read answer, still open"
    );
    s.shutdown().await;
}

/// A client that stops reading a large answer loses its connection after
/// the stall timeout instead of holding it (and the object's reader) open.
#[tokio::test]
async fn unread_answers_lose_their_connection() {
    let s = server(64).await;
    let signed = big_object(&s).await;
    let mut c = connect(&s.s3).await;
    c.write_all(signed("GET").as_bytes()).await.unwrap();
    // Far more than the socket buffers hold stays unread past the timeout.
    tokio::time::sleep(STALL + SLACK).await;
    let (closed, got) = closed_within(&mut c, Duration::from_secs(20)).await;
    assert!(closed.is_some(), "the answer was never cut");
    assert!(
        got.len() < BIG,
        "the whole object arrived ({} bytes)",
        got.len()
    );
    s.shutdown().await;
}
