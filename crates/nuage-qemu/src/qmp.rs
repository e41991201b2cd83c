//! An async QMP client over QEMU's Unix socket.
//!
//! One reader task parses every line QEMU sends: replies are matched to
//! their command by `id`, events go to a broadcast channel so callers can
//! wait for `DEVICE_DELETED`, `SHUTDOWN`, `BLOCK_JOB_COMPLETED` … after
//! subscribing *before* the command that causes them. Every wait has a
//! timeout. Commands carrying a key ([`Qmp::add_secret`]) are serialised
//! into zeroizing memory and never logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, Mutex};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key::DiskKey;

/// How long a command may take unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

type Reply = std::result::Result<Value, (String, String)>;
type Pending = Arc<StdMutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

/// A connected, capability-negotiated QMP session.
pub struct Qmp {
    writer: Mutex<OwnedWriteHalf>,
    /// `None` once the connection is closed.
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| Error::timeout(timeout, "QMP connect"))?
            .map_err(|e| Error::io(format!("connect QMP {}", path.display()), e))?;
        let (rd, wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        let greeting = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| Error::timeout(timeout, "QMP greeting"))?
            .map_err(|e| Error::io("read QMP greeting", e))?
            .ok_or_else(|| Error::Protocol("closed before the greeting".into()))?;
        let g: Value = serde_json::from_str(&greeting)
            .map_err(|e| Error::Protocol(format!("bad greeting: {e}")))?;
        if g.get("QMP").is_none() {
            return Err(Error::Protocol(format!("not a QMP greeting: {greeting}")));
        }

        let pending: Pending = Arc::new(StdMutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(256);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events.clone()));
        let qmp = Qmp {
            writer: Mutex::new(wr),
            pending,
            events,
            next_id: AtomicU64::new(1),
            reader,
            timeout,
        };
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    /// Events from now on. Subscribe before the command whose event you
    /// wait for.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Whether the connection is still open.
    pub fn is_connected(&self) -> bool {
        self.pending.lock().map(|p| p.is_some()).unwrap_or(false)
    }

    /// Runs `command` with `args` (`Value::Null` for none) and returns its
    /// `return` value; a QMP error becomes [`Error::Qmp`].
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value> {
        self.execute_timeout(command, args, self.timeout).await
    }

    /// [`Qmp::execute`] with its own timeout.
    pub async fn execute_timeout(
        &self,
        command: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"execute": command, "id": id});
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&msg)
            .map_err(|e| Error::Protocol(format!("encode {command}: {e}")))?;
        line.push(b'\n');
        tracing::debug!(command, "qmp execute");
        self.send(command, id, &line, timeout).await
    }

    /// Adds a `secret` object `id` holding `key` (base64 over the socket;
    /// the serialized command lives only in zeroizing memory).
    pub async fn add_secret(&self, id: &str, key: &DiskKey) -> Result<()> {
        let data = key.qmp_data();
        let req = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Large enough that the buffer never reallocates (which would
        // leave a copy of the key behind).
        let mut line = Zeroizing::new(Vec::with_capacity(data.len() + id.len() * 2 + 256));
        let id_json = Value::from(id).to_string();
        line.extend_from_slice(b"{\"execute\":\"object-add\",\"id\":");
        line.extend_from_slice(req.to_string().as_bytes());
        line.extend_from_slice(b",\"arguments\":{\"qom-type\":\"secret\",\"id\":");
        line.extend_from_slice(id_json.as_bytes());
        line.extend_from_slice(b",\"format\":\"base64\",\"data\":\"");
        line.extend_from_slice(data.as_bytes()); // base64: nothing to escape
        line.extend_from_slice(b"\"}}\n");
        tracing::debug!(secret = id, "qmp object-add secret");
        self.send("object-add", req, &line, self.timeout).await?;
        Ok(())
    }

    async fn send(&self, command: &str, id: u64, line: &[u8], timeout: Duration) -> Result<Value> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self
                .pending
                .lock()
                .map_err(|_| Error::Protocol("poisoned".into()))?;
            let Some(map) = p.as_mut() else {
                return Err(Error::Protocol("the QMP connection is closed".into()));
            };
            map.insert(id, tx);
        }
        let written = async {
            let mut w = self.writer.lock().await;
            w.write_all(line).await?;
            w.flush().await
        };
        let forget = || {
            if let Ok(mut p) = self.pending.lock() {
                if let Some(map) = p.as_mut() {
                    map.remove(&id);
                }
            }
        };
        match tokio::time::timeout(timeout, written).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                forget();
                return Err(Error::io(format!("send QMP {command}"), e));
            }
            Err(_) => {
                forget();
                return Err(Error::timeout(timeout, format!("sending QMP {command}")));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(Error::Qmp {
                command: command.to_string(),
                class,
                desc,
            }),
            Ok(Err(_)) => Err(Error::Protocol(format!(
                "the connection closed before {command} was answered"
            ))),
            Err(_) => {
                forget();
                Err(Error::timeout(timeout, format!("QMP {command}")))
            }
        }
    }
}

/// Waits up to `timeout` for an event `name` whose data satisfies `pred`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<Event>,
    name: &str,
    pred: impl Fn(&Value) -> bool,
    timeout: Duration,
) -> Result<Event> {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.name == name && pred(&ev.data) => return Ok(ev),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "QMP events dropped while waiting for {name}");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Protocol(format!(
                        "the connection closed while waiting for {name}"
                    )))
                }
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| Error::timeout(timeout, format!("QMP event {name}")))?
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<Event>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!("QMP sent a line that is not JSON");
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let _ = events.send(Event {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let reply = if let Some(r) = msg.get("return") {
            Ok(r.clone())
        } else {
            let e = &msg["error"];
            Err((
                e["class"].as_str().unwrap_or("Unknown").to_string(),
                e["desc"].as_str().unwrap_or("").to_string(),
            ))
        };
        let tx = pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|m| m.remove(&id)));
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }
    // Closed: fail every waiting command and refuse new ones.
    if let Ok(mut p) = pending.lock() {
        *p = None;
    }
}
