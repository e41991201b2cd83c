//! The serial console of an instance: a WebSocket whose binary messages
//! are the console's bytes both ways, bridged to the local terminal.
//!
//! At a terminal it behaves like telnet: the terminal is put in raw mode
//! (keys, Ctrl-C included, go to the guest), `Ctrl-]` leaves, and the
//! terminal is always restored. Piped (a script, a test), stdin is sent as
//! it is until it ends and the output is shown for `--for` seconds more, so
//! `echo uptime | nuage instance console vm1 --for 3` works.
//!
//! The connection is made here rather than by reqwest (which has no
//! WebSocket client): TCP, then rustls with the same ring provider as the
//! server and the same trust as the other commands (the webpki roots plus
//! the `--ca-cert` given at login), then the WebSocket handshake with the
//! bearer token.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::client::{error_from_body, Api, Query};

/// `Ctrl-]`, as in telnet.
const ESCAPE: u8 = 0x1d;

/// A byte stream a WebSocket runs over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a WebSocket did not open.
#[derive(Debug)]
pub enum WsError {
    /// The server was not reached, or the handshake broke.
    Unreachable(String),
    /// The server answered with `status` and `body` (a problem document)
    /// instead of switching to WebSocket.
    Refused(u16, Vec<u8>),
    /// The request could not be made (bad URL, token).
    Invalid(String),
}

/// Opens the WebSocket at `url` (http or https), with `bearer` if given,
/// trusting the webpki roots plus `ca_pem` — the CLI's console, and the
/// agent's end of a console relay.
pub async fn open_websocket(
    mut url: reqwest::Url,
    bearer: Option<&str>,
    ca_pem: Option<&[u8]>,
    user_agent: &'static str,
) -> std::result::Result<WebSocketStream<Box<dyn Io>>, WsError> {
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(WsError::Invalid(format!(
                "cannot open a WebSocket over {other}://"
            )))
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| WsError::Invalid("the server URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| WsError::Invalid("the server URL has no port".into()))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| WsError::Unreachable("timed out".into()))?
    .map_err(|e| WsError::Unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if tls {
        let config = tls_config(ca_pem).map_err(|e| WsError::Invalid(format!("{e:#}")))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
            WsError::Invalid(format!("{host:?} is not a server name TLS can check"))
        })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| WsError::Unreachable(format!("TLS: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let _ = url.set_scheme(if tls { "wss" } else { "ws" });
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| WsError::Invalid(format!("could not build the request: {e}")))?;
    if let Some(token) = bearer {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| WsError::Invalid("the token cannot be sent in a header".into()))?;
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static(user_agent));
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(WsError::Refused(
            resp.status().as_u16(),
            resp.body().clone().unwrap_or_default(),
        )),
        Err(e) => Err(WsError::Unreachable(format!("WebSocket: {e}"))),
    }
}

/// Opens the WebSocket at `path` of the API, with the API's token.
async fn connect(api: &Api, path: &[&str]) -> Result<WebSocketStream<Box<dyn Io>>> {
    let url = api.url(path, &Query::new())?;
    let agent = concat!("nuage-cli/", env!("CARGO_PKG_VERSION"));
    match open_websocket(url, api.token(), api.ca_pem(), agent).await {
        Ok(ws) => Ok(ws),
        // Refusals (not running, not found, no permission) come as the
        // usual problem body instead of the switch to WebSocket.
        Err(WsError::Refused(status, body)) => {
            let shown = api.url(path, &Query::new())?;
            let status = tungstenite::http::StatusCode::from_u16(status)
                .unwrap_or(tungstenite::http::StatusCode::BAD_GATEWAY);
            Err(error_from_body(&shown, status, &body))
        }
        Err(WsError::Unreachable(reason)) => Err(api.unreachable_because(reason)),
        Err(WsError::Invalid(reason)) => bail!("{reason}"),
    }
}

/// TLS like the rest of the CLI: the webpki roots, plus the CA given at login.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(mut pem) = ca_pem {
        for cert in rustls_pemfile::certs(&mut pem) {
            let cert = cert.context("the CA certificate does not parse")?;
            roots
                .add(cert)
                .context("the CA certificate is not usable")?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("could not set up TLS")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The local terminal in raw mode for as long as this lives.
struct RawMode;

impl RawMode {
    fn enter() -> Result<RawMode> {
        crossterm::terminal::enable_raw_mode().context("could not put the terminal in raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Why the bridge stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Escape,
    Closed,
    Linger,
    Signal,
}

/// Runs the console of instance `name` at `path` until `Ctrl-]`, the
/// server closes it, or (piped) `linger` after the input ended.
pub async fn run(api: &Api, path: &[&str], name: &str, linger: Option<Duration>) -> Result<()> {
    let ws = connect(api, path).await?;
    let interactive = std::io::stdin().is_terminal();
    let _raw = if interactive {
        eprintln!("Connected to the console of {name}. Escape character is '^]'.");
        Some(RawMode::enter()?)
    } else {
        None
    };
    let end = bridge(ws, interactive, linger).await;
    drop(_raw);
    if interactive {
        match end {
            Ok(End::Closed) => eprintln!("\nThe server closed the console of {name}."),
            Ok(_) => eprintln!("\nConnection to the console of {name} closed."),
            Err(_) => eprintln!(),
        }
    }
    end.map(|_| ())
}

/// Reads stdin on a thread of its own: a blocking read cannot be
/// cancelled, and a tokio blocking task would hold up the exit until the
/// next key press.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}

async fn bridge(
    ws: WebSocketStream<Box<dyn Io>>,
    interactive: bool,
    linger: Option<Duration>,
) -> Result<End> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut tx, mut rx) = ws.split();
    let mut input = stdin_chunks();
    let mut input_open = true;
    let mut deadline: Option<tokio::time::Instant> = None;
    // The terminal is restored on the way out, also when killed politely.
    let mut term = signal(SignalKind::terminate()).context("could not watch for SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("could not watch for SIGHUP")?;
    let mut out = std::io::stdout();
    let end = loop {
        let linger_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => write_out(&mut out, &b)?,
                Some(Ok(Message::Text(t))) => write_out(&mut out, t.as_bytes())?,
                Some(Ok(Message::Close(_))) | None => break End::Closed,
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the console connection broke: {e}"),
            },
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => {
                    let (send, escaped) = split_escape(&bytes, interactive);
                    if !send.is_empty() {
                        tx.send(Message::Binary(send.to_vec().into()))
                            .await
                            .context("could not send to the console")?;
                    }
                    if escaped {
                        break End::Escape;
                    }
                }
                None => {
                    // The input ended: keep the socket open (closing it
                    // would end the console) and show output a while more.
                    input_open = false;
                    if let Some(d) = linger {
                        deadline = Some(tokio::time::Instant::now() + d);
                    }
                }
            },
            () = linger_over => break End::Linger,
            _ = term.recv() => break End::Signal,
            _ = hup.recv() => break End::Signal,
        }
    };
    if end != End::Closed {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = tx.send(Message::Close(None)).await;
            let _ = tx.close().await;
        })
        .await;
    }
    Ok(end)
}

fn write_out(out: &mut std::io::Stdout, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("could not write the console output")
}

/// The part of `bytes` to send, and whether `Ctrl-]` came (at a terminal
/// only: piped input is sent as it is).
fn split_escape(bytes: &[u8], interactive: bool) -> (&[u8], bool) {
    if !interactive {
        return (bytes, false);
    }
    match bytes.iter().position(|b| *b == ESCAPE) {
        Some(i) => (&bytes[..i], true),
        None => (bytes, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_only_at_a_terminal() {
        assert_eq!(split_escape(b"ls\r", true), (&b"ls\r"[..], false));
        assert_eq!(split_escape(b"ab\x1dcd", true), (&b"ab"[..], true));
        assert_eq!(split_escape(b"\x1d", true), (&b""[..], true));
        assert_eq!(split_escape(b"ab\x1dcd", false), (&b"ab\x1dcd"[..], false));
    }

    #[test]
    fn tls_trusts_the_given_ca_too() {
        assert!(tls_config(None).is_ok());
        let bad = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
        assert!(tls_config(Some(bad)).is_err());
    }
}
