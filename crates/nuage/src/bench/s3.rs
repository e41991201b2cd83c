//! `nuage bench s3`: the S3 endpoint under load, against raw file I/O in the
//! same data directory, measured in the same run and process.
//!
//! A real server starts in-process on a temporary data directory; an
//! organization, a project, a bucket and an access key are made through the
//! REST API; then S3 clients with SigV4 header signing (`UNSIGNED-PAYLOAD`)
//! drive the S3 listener over loopback TCP: reqwest for large objects, and
//! for small ones one keep-alive connection per client driven by hyper's
//! connection API, so that the client, which shares the two CPUs with the
//! server, costs as little as a `wrk`-style load generator:
//!
//! - large objects: `--clients-large` concurrent PUTs of `--large-mib` MiB
//!   each (bodies generated on the fly, streamed), then GETs of the same
//!   objects, first with the object files evicted from the page cache, then
//!   warm; baseline: one file of the same total size written sequentially
//!   (fsync at the end) and read back, evicted, with direct I/O (how the
//!   GET reads large bodies) and cached;
//! - small objects (4 KiB): PUT, GET, HEAD and ListObjectsV2 (max-keys 100)
//!   with `--clients-small` concurrent clients for `--seconds` each;
//! - memory: the process's RSS and peak RSS around the large-object phase
//!   and around one `--stream-gib` GiB multipart upload and its GET (the
//!   client shares the process with the server).

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use nuage_api::ServerConfig;
use nuage_objects::engine::BodyFile;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::percentile;

#[derive(Debug, clap::Args)]
pub struct S3Args {
    /// Seconds each small-object scenario runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Size of each large object, MiB.
    #[arg(long, default_value_t = 256)]
    large_mib: u64,
    /// Concurrent clients (one object each) in the large-object phase.
    #[arg(long, default_value_t = 8)]
    clients_large: usize,
    /// Concurrent clients in the small-object phase.
    #[arg(long, default_value_t = 64)]
    clients_small: usize,
    /// Size of one multipart upload (64 MiB parts, one at a time) and its
    /// GET, to watch memory; 0 skips it.
    #[arg(long, default_value_t = 10)]
    stream_gib: u64,
}

const SMALL: usize = 4096;
const MIB: u64 = 1024 * 1024;
const BUCKET: &str = "bench-s3";

// ---------------------------------------------------------------- SigV4

/// SigV4 header signing with an unsigned payload, region us-east-1. The
/// signing key derived from the secret is kept for its day, as AWS SDKs do.
struct Signer {
    access_key: String,
    secret: String,
    host: String,
    base: String,
    day_key: std::sync::Mutex<Option<(String, [u8; 32])>>,
}

/// RFC 3986 percent-encoding as SigV4 wants it (`/` kept when `path`).
fn uri_encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if path => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; were it ever refused, the zero MAC
    // would only make the server answer SignatureDoesNotMatch.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// `YYYYMMDDTHHMMSSZ` for now, in UTC.
fn amz_date() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// A request signed by [`Signer::sign`].
struct Signed {
    /// `path?query`, encoded.
    target: String,
    date: String,
    authorization: String,
}

impl Signer {
    fn new(access_key: String, secret: String, addr: SocketAddr) -> Signer {
        Signer {
            access_key,
            secret,
            host: addr.to_string(),
            base: format!("http://{addr}"),
            day_key: std::sync::Mutex::new(None),
        }
    }

    /// The signing key of `day` (`YYYYMMDD`).
    fn key_of(&self, day: &str) -> [u8; 32] {
        let mut cached = self.day_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, k)) = cached.as_ref() {
            if d == day {
                return *k;
            }
        }
        let mut key = hmac(format!("AWS4{}", self.secret).as_bytes(), day.as_bytes());
        for part in ["us-east-1", "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        *cached = Some((day.to_string(), key));
        key
    }

    /// Signs `method` on `path` (`/bucket/key`, unencoded) with `query`
    /// pairs (unencoded).
    fn sign(&self, method: &str, path: &str, query: &[(&str, &str)]) -> Signed {
        let date = amz_date();
        let path = uri_encode(path, true);
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical = format!(
            "{method}\n{path}\n{query}\nhost:{}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{date}\n\nhost;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD",
            self.host
        );
        let scope = format!("{}/us-east-1/s3/aws4_request", &date[..8]);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let signature = hex::encode(hmac(&self.key_of(&date[..8]), to_sign.as_bytes()));
        Signed {
            target: if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            },
            authorization: format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
                self.access_key
            ),
            date,
        }
    }

    /// A signed reqwest request.
    fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let s = self.sign(method.as_str(), path, query);
        http.request(method, format!("{}{}", self.base, s.target))
            .header("x-amz-date", s.date)
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .header("authorization", s.authorization)
    }

    /// A signed request for a [`Conn`], with `body`.
    fn raw(
        &self,
        method: http::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, http::Error> {
        let s = self.sign(method.as_str(), path, query);
        http::Request::builder()
            .method(method)
            .uri(s.target)
            .header(http::header::HOST, self.host.as_str())
            .header("x-amz-date", s.date)
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .header(http::header::AUTHORIZATION, s.authorization)
            .body(Full::new(body))
    }
}

/// One keep-alive HTTP/1.1 connection of a small-object client.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
        tokio::spawn(conn);
        Ok(Conn { send })
    }

    /// True when the answer has `status` and its body arrived whole.
    async fn call(
        &mut self,
        req: Result<http::Request<Full<Bytes>>, http::Error>,
        status: u16,
    ) -> bool {
        let Ok(req) = req else {
            return false;
        };
        if self.send.ready().await.is_err() {
            return false;
        }
        match self.send.send_request(req).await {
            Ok(r) => {
                let right = r.status().as_u16() == status;
                r.into_body().collect().await.is_ok() && right
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------- bodies

/// A body of `left` bytes made on the fly from one shared 1 MiB block, so a
/// client never holds more than that block.
struct Generated {
    left: u64,
    block: Bytes,
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.block.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.block.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Pseudo-random bytes (xorshift), so nothing downstream can compress them.
fn block(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

// ---------------------------------------------------------------- helpers

struct Figures {
    name: &'static str,
    requests: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `clients` loops of `call` for `seconds`; returns the figures and the
/// number of calls each client made.
async fn load<F, Fut>(
    name: &'static str,
    clients: usize,
    seconds: u64,
    call: F,
) -> (Figures, Vec<usize>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i) = (Vec::new(), 0, 0);
            while Instant::now() < deadline {
                let t = Instant::now();
                if !call(c, i).await {
                    errors += 1;
                }
                lat.push(t.elapsed());
                i += 1;
            }
            (lat, errors, i)
        }));
    }
    let (mut all, mut errors, mut counts) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (l, e, n) = t.await.unwrap_or_default();
        all.extend(l);
        errors += e;
        counts.push(n);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let f = Figures {
        name,
        requests: all.len(),
        errors,
        rps: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    };
    (f, counts)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// (VmRSS, VmHWM) of this process, MiB.
fn rss() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Evicts a file's pages from the page cache (they must be clean: written
/// and fsynced). No privileges needed, unlike `drop_caches`.
fn evict(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: a valid open descriptor; fadvise only hints the kernel.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Evicts every file under `dir`; returns how many.
fn evict_tree(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            n += evict_tree(&e.path())?;
        } else {
            evict(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Times of the raw baseline.
struct RawIo {
    write: Duration,
    /// Read through the page cache, the file evicted from it first.
    cold: Duration,
    /// Read with direct I/O; None where the file system refuses it.
    direct: Option<Duration>,
    /// Read from the page cache.
    warm: Duration,
}

/// Sequential raw write (1 MiB writes, fsync at the end) and read of
/// `bytes`; the read is done evicted, with direct I/O, and cached.
fn raw_io(path: &Path, bytes: u64) -> std::io::Result<RawIo> {
    let data = block(MIB as usize, 7);
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&data[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    let write = t.elapsed();
    let read = |path: &Path| -> std::io::Result<Duration> {
        let mut buf = vec![0u8; MIB as usize];
        let t = Instant::now();
        let mut f = std::fs::File::open(path)?;
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        if total != bytes {
            return Err(std::io::Error::other("short read"));
        }
        Ok(t.elapsed())
    };
    evict(path)?;
    let cold = read(path)?;
    let direct = direct_read(path, bytes)?;
    let warm = read(path)?;
    std::fs::remove_file(path)?;
    Ok(RawIo {
        write,
        cold,
        direct,
        warm,
    })
}

/// Sequential read of `path` in 1 MiB direct reads (`dd iflag=direct
/// bs=1M`): the disk without the page cache, as the S3 GET reads large
/// bodies. None where the file system refuses direct I/O.
fn direct_read(path: &Path, bytes: u64) -> std::io::Result<Option<Duration>> {
    let file = BodyFile::open(path)?;
    if !file.is_direct() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    let t = Instant::now();
    let mut at = 0u64;
    while at < bytes {
        let end = (at + MIB).min(bytes);
        let got = file.read(at, end, &mut buf)?;
        std::hint::black_box(&buf[got]);
        at = end;
    }
    Ok(Some(t.elapsed()))
}

/// Text between `<tag>` and `</tag>` in an XML answer.
fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// One multipart upload of `size` bytes in `PART` parts sent one after
/// the other, then one GET of it; returns each one's time and the peak RSS
/// (MiB) during each.
async fn stream_object(
    http: &reqwest::Client,
    s: &Signer,
    size: u64,
    blk: &Bytes,
) -> Result<(Duration, f64, Duration, f64), String> {
    const PART: u64 = 64 * MIB;
    let path = format!("/{BUCKET}/stream");
    let text = |r: reqwest::Response| async move {
        let status = r.status();
        let t = r.text().await.map_err(|x| x.to_string())?;
        if !status.is_success() {
            return Err(format!("{status} {t}"));
        }
        Ok::<_, String>(t)
    };
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let r = s
        .request(http, reqwest::Method::POST, &path, &[("uploads", "")])
        .send()
        .await
        .map_err(|x| x.to_string())?;
    let created = text(r)
        .await
        .map_err(|x| format!("CreateMultipartUpload: {x}"))?;
    let upload = xml_field(&created, "UploadId")
        .ok_or_else(|| format!("CreateMultipartUpload: no UploadId in {created}"))?
        .to_string();
    let mut complete = String::from("<CompleteMultipartUpload>");
    let (mut sent, mut n) = (0u64, 0u32);
    while sent < size {
        n += 1;
        let len = PART.min(size - sent);
        let number = n.to_string();
        let r = s
            .request(
                http,
                reqwest::Method::PUT,
                &path,
                &[("partNumber", &number), ("uploadId", &upload)],
            )
            .header("content-length", len)
            .body(reqwest::Body::wrap(Generated {
                left: len,
                block: blk.clone(),
            }))
            .send()
            .await
            .map_err(|x| x.to_string())?;
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        text(r).await.map_err(|x| format!("UploadPart {n}: {x}"))?;
        complete.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
        sent += len;
    }
    complete.push_str("</CompleteMultipartUpload>");
    let r = s
        .request(http, reqwest::Method::POST, &path, &[("uploadId", &upload)])
        .body(complete)
        .send()
        .await
        .map_err(|x| x.to_string())?;
    let done = text(r)
        .await
        .map_err(|x| format!("CompleteMultipartUpload: {x}"))?;
    if done.contains("<Error>") {
        return Err(format!("CompleteMultipartUpload: {done}"));
    }
    let put = t.elapsed();
    let (_, put_hwm) = rss();

    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let mut r = s
        .request(http, reqwest::Method::GET, &path, &[])
        .send()
        .await
        .map_err(|x| x.to_string())?;
    if !r.status().is_success() {
        return Err(format!("GET stream: {}", r.status()));
    }
    let mut got = 0u64;
    while let Some(chunk) = r.chunk().await.map_err(|x| x.to_string())? {
        got += chunk.len() as u64;
    }
    if got != size {
        return Err(format!("GET stream: {got} bytes, not {size}"));
    }
    let get = t.elapsed();
    let (_, get_hwm) = rss();
    Ok((put, put_hwm, get, get_hwm))
}

// ---------------------------------------------------------------- run

pub async fn run(a: S3Args) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let dir = tempfile::tempdir().map_err(|x| e(&x))?;
    let data_dir = dir.path().join("data");
    let mut cfg = ServerConfig::new(data_dir.clone());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.s3_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = nuage_api::start(cfg).await.map_err(|x| e(&x))?;
    println!(
        "nuage bench s3: large {} × {} MiB, small 4 KiB × {} clients × {} s per scenario; data dir {}",
        a.clients_large,
        a.large_mib,
        a.clients_small,
        a.seconds,
        data_dir.display()
    );
    println!(
        "machine: {} CPUs; client and server share them and the process",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // Organization, project, bucket and access key through the REST API.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients_small.max(a.clients_large))
        .build()
        .map_err(|x| e(&x))?;
    let bootstrap = server.bootstrap_token.clone().ok_or("no bootstrap token")?;
    let admin = format!("http://{}", server.admin_addr);
    let tenant = format!("http://{}", server.tenant_addr);
    let post = |url: String, token: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|x| x.to_string())?;
            let status = r.status();
            let v: serde_json::Value = r.json().await.map_err(|x| x.to_string())?;
            if !status.is_success() {
                return Err(format!("POST {url}: {status} {v}"));
            }
            Ok::<_, String>(v)
        }
    };
    let created = post(
        format!("{admin}/admin/v1/orgs"),
        bootstrap,
        json!({"name": "bench", "owner": {"name": "owner"}}),
    )
    .await?;
    let token = created["owner_token"]["secret"]
        .as_str()
        .ok_or_else(|| format!("organization not created: {created}"))?
        .to_string();
    post(
        format!("{tenant}/v1/orgs/bench/projects"),
        token.clone(),
        json!({"name": "web"}),
    )
    .await?;
    post(
        format!("{tenant}/v1/orgs/bench/projects/web/buckets"),
        token.clone(),
        json!({"name": BUCKET}),
    )
    .await?;
    let key = post(
        format!("{tenant}/v1/orgs/bench/access-keys"),
        token.clone(),
        json!({"description": "nuage bench s3"}),
    )
    .await?;
    let signer = Arc::new(Signer::new(
        key["access_key"]["id"]
            .as_str()
            .ok_or_else(|| format!("no access key: {key}"))?
            .to_string(),
        key["secret_access_key"]
            .as_str()
            .ok_or("no secret access key")?
            .to_string(),
        server.s3_addr,
    ));

    // ------------------------------------------------ large objects
    let large = a.large_mib * MIB;
    let total = large * a.clients_large as u64;
    println!();
    println!(
        "large objects: raw baseline, {} MiB in {}",
        total / MIB,
        data_dir.display()
    );
    let raw_path = data_dir.join("bench-raw.bin");
    let raw = tokio::task::spawn_blocking(move || raw_io(&raw_path, total))
        .await
        .map_err(|x| e(&x))?
        .map_err(|x| format!("raw I/O: {x}"))?;

    let (rss_before, _) = rss();
    // Resets VmHWM to the current RSS (Linux ≥ 4.0), so the peak below is
    // the large-object phase's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    println!(
        "large objects: {} PUTs of {} MiB in parallel",
        a.clients_large, a.large_mib
    );
    let blk = block(MIB as usize, 42);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.clients_large {
        let (http, signer, blk) = (http.clone(), signer.clone(), blk.clone());
        tasks.push(tokio::spawn(async move {
            let body = reqwest::Body::wrap(Generated {
                left: large,
                block: blk,
            });
            let r = signer
                .request(
                    &http,
                    reqwest::Method::PUT,
                    &format!("/{BUCKET}/large/{c}"),
                    &[],
                )
                .header("content-length", large)
                .body(body)
                .send()
                .await
                .map_err(|x| x.to_string())?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(format!("PUT large/{c}: {status} {text}"));
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|x| e(&x))??;
    }
    let put = t.elapsed();
    let (rss_after_put, hwm_put) = rss();

    let get_all = |label: &'static str| {
        let (http, signer, blk) = (http.clone(), signer.clone(), blk.clone());
        let clients = a.clients_large;
        async move {
            println!("large objects: {clients} GETs in parallel, {label}");
            let t = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let (http, signer, blk) = (http.clone(), signer.clone(), blk.clone());
                tasks.push(tokio::spawn(async move {
                    let mut r = signer
                        .request(
                            &http,
                            reqwest::Method::GET,
                            &format!("/{BUCKET}/large/{c}"),
                            &[],
                        )
                        .send()
                        .await
                        .map_err(|x| x.to_string())?;
                    if !r.status().is_success() {
                        return Err(format!("GET large/{c}: {}", r.status()));
                    }
                    let (mut got, mut first) = (0u64, true);
                    while let Some(chunk) = r.chunk().await.map_err(|x| x.to_string())? {
                        // Spot check: the body starts as it was generated.
                        if first && !chunk.is_empty() {
                            let n = chunk.len().min(blk.len());
                            if chunk[..n] != blk[..n] {
                                return Err(format!("GET large/{c}: wrong bytes"));
                            }
                            first = false;
                        }
                        got += chunk.len() as u64;
                    }
                    if got != large {
                        return Err(format!("GET large/{c}: {got} bytes, not {large}"));
                    }
                    Ok(())
                }));
            }
            for t in tasks {
                t.await.map_err(|x| x.to_string())??;
            }
            Ok::<_, String>(t.elapsed())
        }
    };
    let evicted = evict_tree(&data_dir.join("objects"))
        .map_err(|x| format!("evicting the object files: {x}"))?;
    let get_cold = get_all("object files evicted from the page cache").await?;
    let get_warm = get_all("object files in the page cache").await?;
    let (rss_after, hwm) = rss();
    let stream = if a.stream_gib > 0 {
        println!(
            "memory: one multipart upload of {} GiB (64 MiB parts, one at a time), then its GET",
            a.stream_gib
        );
        let r = stream_object(&http, &signer, a.stream_gib * 1024 * MIB, &blk).await?;
        // The object is deleted so the small-object phase starts alike.
        let _ = signer
            .request(
                &http,
                reqwest::Method::DELETE,
                &format!("/{BUCKET}/stream"),
                &[],
            )
            .send()
            .await;
        Some(r)
    } else {
        None
    };

    // ------------------------------------------------ small objects
    println!();
    println!(
        "small objects: 4 KiB, {} clients, {} s per scenario",
        a.clients_small, a.seconds
    );
    let small = block(SMALL, 99);
    let mut conns = Vec::with_capacity(a.clients_small);
    for _ in 0..a.clients_small {
        conns.push(tokio::sync::Mutex::new(Conn::open(server.s3_addr).await?));
    }
    let conns = Arc::new(conns);
    let mut results = Vec::new();
    let (f, counts) = {
        let (conns, s, body) = (conns.clone(), signer.clone(), small.clone());
        load("PUT 4 KiB", a.clients_small, a.seconds, move |c, i| {
            let (conns, s) = (conns.clone(), s.clone());
            let req = s.raw(
                http::Method::PUT,
                &format!("/{BUCKET}/small/{c:03}/{i:08}"),
                &[],
                body.clone(),
            );
            async move { conns[c].lock().await.call(req, 200).await }
        })
        .await
    };
    results.push(f);
    let counts = Arc::new(counts);
    for (name, method) in [
        ("GET 4 KiB", http::Method::GET),
        ("HEAD 4 KiB", http::Method::HEAD),
    ] {
        let (conns, s, counts) = (conns.clone(), signer.clone(), counts.clone());
        let (f, _) = load(name, a.clients_small, a.seconds, move |c, i| {
            let conns = conns.clone();
            let k = i % counts[c].max(1);
            let req = s.raw(
                method.clone(),
                &format!("/{BUCKET}/small/{c:03}/{k:08}"),
                &[],
                Bytes::new(),
            );
            async move { conns[c].lock().await.call(req, 200).await }
        })
        .await;
        results.push(f);
    }
    {
        let (conns, s) = (conns.clone(), signer.clone());
        let (f, _) = load(
            "LIST v2, 100 keys",
            a.clients_small,
            a.seconds,
            move |c, _| {
                let conns = conns.clone();
                let prefix = format!("small/{c:03}/");
                let req = s.raw(
                    http::Method::GET,
                    &format!("/{BUCKET}"),
                    &[("list-type", "2"), ("max-keys", "100"), ("prefix", &prefix)],
                    Bytes::new(),
                );
                async move { conns[c].lock().await.call(req, 200).await }
            },
        )
        .await;
        results.push(f);
    }
    drop(conns);
    server.shutdown().await;

    // ------------------------------------------------ report
    let put_mbs = mbs(total, put);
    let (cold_mbs, warm_mbs) = (mbs(total, get_cold), mbs(total, get_warm));
    let (rw, rc, rwarm) = (
        mbs(total, raw.write),
        mbs(total, raw.cold),
        mbs(total, raw.warm),
    );
    let rdirect = raw.direct.map(|d| mbs(total, d));
    // The GET is held to the faster way of reading the disk.
    let rread = rc.max(rdirect.unwrap_or(0.0));
    println!();
    println!(
        "large objects: {} × {} MiB = {} MiB (MB/s = 10^6 bytes/s)",
        a.clients_large,
        a.large_mib,
        total / MIB
    );
    println!(
        "{:<52} {:>10} {:>10} {:>8}",
        "scenario", "time", "MB/s", "of raw"
    );
    let row = |name: &str, d: Duration, v: f64, base: f64| {
        println!(
            "{:<52} {:>8.2} s {:>10.0} {:>7.1} %",
            name,
            d.as_secs_f64(),
            v,
            v / base * 100.0
        )
    };
    row(
        "raw write, 1 MiB writes + fsync (baseline)",
        raw.write,
        rw,
        rw,
    );
    row(
        "raw read, evicted from the page cache (baseline)",
        raw.cold,
        rc,
        rread,
    );
    match (raw.direct, rdirect) {
        (Some(d), Some(v)) => row("raw read, direct I/O (baseline)", d, v, rread),
        _ => println!("raw read, direct I/O: refused by this file system"),
    }
    row("raw read, page cache (baseline)", raw.warm, rwarm, rwarm);
    row("S3 PUT, encrypted, parallel", put, put_mbs, rw);
    row(
        &format!("S3 GET, {evicted} object files evicted (vs faster raw read)"),
        get_cold,
        cold_mbs,
        rread,
    );
    row(
        "S3 GET, page cache (vs cached raw read)",
        get_warm,
        warm_mbs,
        rwarm,
    );
    println!();
    println!(
        "memory (client and server share the process): RSS {rss_before:.0} MiB before the large objects, {rss_after_put:.0} MiB after the PUTs (peak {hwm_put:.0} MiB), {rss_after:.0} MiB after the GETs (peak {hwm:.0} MiB)"
    );

    if let Some((put, put_hwm, get, get_hwm)) = stream {
        let size = a.stream_gib * 1024 * MIB;
        println!(
            "memory, one {} GiB multipart upload: {:.0} MB/s, peak RSS {put_hwm:.0} MiB; its GET: {:.0} MB/s, peak RSS {get_hwm:.0} MiB",
            a.stream_gib,
            mbs(size, put),
            mbs(size, get)
        );
    }

    println!();
    println!(
        "{:<20} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "scenario", "requests", "errors", "ops/s", "p50", "p99"
    );
    for f in &results {
        println!(
            "{:<20} {:>10} {:>8} {:>10.0} {:>10} {:>10}",
            f.name,
            f.requests,
            f.errors,
            f.rps,
            ms(f.p50),
            ms(f.p99)
        );
    }

    println!();
    let put_pct = put_mbs / rw * 100.0;
    let get_pct = cold_mbs / rread * 100.0;
    println!(
        "goal large PUT ≥ 60 % of raw write: {put_pct:.1} %: {}",
        met(put_pct >= 60.0)
    );
    println!(
        "goal large GET ≥ 70 % of raw read (the faster of evicted and direct): {get_pct:.1} %: {}",
        met(get_pct >= 70.0)
    );
    println!(
        "  (page cache on both sides: {:.1} %)",
        warm_mbs / rwarm * 100.0
    );
    let (sput, sget) = (&results[0], &results[1]);
    println!(
        "goal small PUT ≥ 3,000/s: {:.0}/s: {}",
        sput.rps,
        met(sput.rps >= 3000.0 && sput.errors == 0)
    );
    println!(
        "goal small GET ≥ 10,000/s: {:.0}/s: {}",
        sget.rps,
        met(sget.rps >= 10000.0 && sget.errors == 0)
    );
    if let Some((_, put_hwm, _, get_hwm)) = stream {
        let peak = put_hwm.max(get_hwm);
        println!(
            "goal {} GiB upload streams, RSS < 256 MiB (client included): peak {peak:.0} MiB: {}",
            a.stream_gib,
            met(peak < 256.0)
        );
    }
    let errors: usize = results.iter().map(|f| f.errors).sum();
    if errors > 0 {
        return Err(format!("{errors} small-object requests failed"));
    }
    Ok(())
}
