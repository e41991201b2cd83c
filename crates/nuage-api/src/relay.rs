//! Console relays: the serial console of a VM on a node of its own
//! reaches its tenant through the control plane. The tenant's WebSocket
//! request registers a one-time session and asks the node's agent (a
//! node task) to dial back; the agent's WebSocket, on the admin listener
//! with its node credential, is handed to the waiting request, and the
//! two are bridged. A session is good for its node only, once.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::oneshot;

/// Sessions waiting for their agent, by session id.
#[derive(Default)]
pub struct Relays {
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<WebSocket>)>>,
}

impl Relays {
    /// A new session for node `node_id`: its id, and where the agent's
    /// WebSocket will arrive.
    pub fn open(&self, node_id: &str) -> (String, oneshot::Receiver<WebSocket>) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.clone(), (node_id.to_string(), tx));
        }
        (id, rx)
    }

    /// Forgets a session nobody answered.
    pub fn close(&self, id: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(id);
        }
    }

    /// Takes session `id` for node `node_id`, once.
    pub fn take(&self, id: &str, node_id: &str) -> Option<oneshot::Sender<WebSocket>> {
        let mut w = self.waiting.lock().ok()?;
        match w.get(id) {
            Some((n, _)) if n == node_id => w.remove(id).map(|(_, tx)| tx),
            _ => None,
        }
    }
}

/// Copies messages both ways between the tenant and the agent until
/// either side closes.
pub async fn bridge(tenant: WebSocket, agent: WebSocket) {
    use futures::{SinkExt, StreamExt};
    let (mut t_tx, mut t_rx) = tenant.split();
    let (mut a_tx, mut a_rx) = agent.split();
    let up = async {
        while let Some(Ok(m)) = t_rx.next().await {
            let close = matches!(m, Message::Close(_));
            if a_tx.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = a_tx.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(m)) = a_rx.next().await {
            let close = matches!(m, Message::Close(_));
            if t_tx.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = t_tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
