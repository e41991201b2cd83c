//! A node of its own, end to end: a real `nuage agent` process, enrolled
//! by the operator and sharing the control plane's compute directory,
//! runs a VM under TCG with the real QEMU and the test guest — create →
//! running with its seed → reset → a volume plugged, grown and
//! snapshotted while it runs, unplugged → the agent restarts and the VM
//! keeps running → stop (ACPI) → start → delete leaves nothing → the
//! volume moves to a VM on the server's own node with its data. Another
//! node learns nothing of that VM and gets none of its keys; the tenant's
//! own audit log names the node that received them.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::common::{into_resp, Srv};
use crate::instances::{alive, console_until, guest, wait_for, BASE, SSH_FP, SSH_KEY};

fn agent(s: &Srv, token_file: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args([
            "agent",
            "--control-plane",
            &s.admin,
            "--heartbeat-seconds",
            "1",
            "--stop-timeout-seconds",
            "30",
        ])
        .arg("--token-file")
        .arg(token_file)
        .arg("--compute-dir")
        .arg(s.data_dir.join("compute"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("nuage agent starts")
}

async fn sigterm(child: &mut tokio::process::Child) {
    let pid = child.id().expect("agent pid").to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("the agent stops on SIGTERM")
        .expect("wait");
    assert!(out.success(), "{out:?}");
}

async fn enroll(s: &Srv, name: &str) -> (String, std::path::PathBuf) {
    let r = s
        .a(Method::POST, "/admin/v1/nodes", Some(json!({"name": name})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().expect("token").to_string();
    let file = s.dir.path().join(format!("{name}.token"));
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    (token, file)
}

async fn node(s: &Srv, name: &str) -> serde_json::Value {
    let r = s.a(Method::GET, "/admin/v1/nodes", None).await;
    r.body["items"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_node_of_its_own_runs_vms_through_nuage_agent() {
    let Some(guest) = guest() else { return };
    let s = Srv::start_with(|c| c.node_name = "host-a".into()).await;
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
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/images"),
            &a,
            Some(json!({"name": "guest"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .http
        .put(format!("{}{BASE}/images/guest/file", s.tenant))
        .bearer_auth(&a)
        .body(std::fs::read(&guest).expect("read the test guest"))
        .send()
        .await
        .expect("upload");
    assert_eq!(into_resp(r).await.status, 200);

    // The server's own node takes nothing more; edge-1 joins.
    let r = s
        .a(
            Method::PATCH,
            "/admin/v1/nodes/host-a",
            Some(json!({"memory_overcommit": 0.001})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, edge1_file) = enroll(&s, "edge-1").await;
    let (edge2, _) = enroll(&s, "edge-2").await;
    let mut child = agent(&s, &edge1_file);
    for _ in 0..300 {
        if node(&s, "edge-1").await["live"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = node(&s, "edge-1").await;
    assert_eq!(
        (
            n["live"].clone(),
            n["state"].clone(),
            n["schedulable"].clone()
        ),
        (json!(true), json!("ready"), json!(false)),
        "{n}"
    );
    // It proved its mount; the operator looks at what it reports and lets
    // placement use it.
    let r = s
        .a(Method::POST, "/admin/v1/nodes/edge-1/schedule", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["node"]["schedulable"], true, "{}", r.text);

    // With edge-1's agent stopped (its node still live for a while), an
    // instance placed there waits: only that agent runs it.
    sigterm(&mut child).await;

    // Placed on edge-1, started by its agent, with its seed.
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/instances"),
            &a,
            Some(
                json!({"name": "vm1", "image": "guest", "vcpus": 1, "memory": "256M",
                        "ssh_keys": [SSH_KEY]}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(node(&s, "edge-1").await["used_memory_mib"], 256);
    assert_eq!(node(&s, "host-a").await["used_memory_mib"], 0);
    let inst = format!("{BASE}/instances/vm1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = s.t(Method::GET, &inst, &a, None).await;
    assert_eq!(r.body["state"], "creating", "{}", r.text);
    let mut child = agent(&s, &edge1_file);
    wait_for(&s, &a, &inst, 90, |b| b["state"] == "running").await;
    let run_dir = s.data_dir.join("compute/vm").join(&id);
    let pid: i32 = std::fs::read_to_string(run_dir.join("qemu.pid"))
        .expect("edge-1 runs the VM")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid));
    let out = console_until(&s, &a, "vm1", 120, "nuage-guest: ready").await;
    assert!(
        out.contains(&format!("nuage-guest: instance-id={id}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("nuage-guest: ssh-key={SSH_FP}")),
        "{out}"
    );

    // The keys went to edge-1 alone, and the audit log says so.
    let r = s
        .a(
            Method::GET,
            "/admin/v1/audit/entries?action=compute.node_keys",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["items"].as_array().cloned().unwrap_or_default();
    assert!(!entries.is_empty(), "key releases not audited: {}", r.text);
    assert!(
        entries
            .iter()
            .all(|e| e.to_string().contains("node:edge-1")),
        "{}",
        r.text
    );
    // The tenant's own log says which node received its keys.
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?action=compute.node_keys",
            &a,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["items"].as_array().cloned().unwrap_or_default();
    assert!(
        !entries.is_empty()
            && entries
                .iter()
                .all(|e| e["record"]["details"]["node"] == "edge-1"),
        "{}",
        r.text
    );
    let agent_url = |p: &str| format!("{}{p}", s.admin);
    let r = s
        .req(
            Method::POST,
            &agent_url(&format!("/agent/v1/instances/{id}/keys")),
            Some(&edge2),
            Some(json!({"volumes": [], "seed": true})),
        )
        .await;
    assert_eq!(r.status, 404, "another node got the keys: {}", r.text);
    let r = s
        .req(
            Method::POST,
            &agent_url(&format!("/agent/v1/instances/{id}/report")),
            Some(&edge2),
            Some(json!({"kind": "state", "state": "failed", "message": "x"})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s
        .req(
            Method::GET,
            &agent_url("/agent/v1/work"),
            Some(&edge2),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["instances"], json!([]), "{}", r.text);
    let r = s.t(Method::GET, &inst, &a, None).await;
    assert_eq!(r.body["state"], "running", "{}", r.text);

    // A node with instances stays.
    let r = s.a(Method::DELETE, "/admin/v1/nodes/edge-1", None).await;
    assert_eq!((r.status, r.code()), (409, "node_in_use"), "{}", r.text);

    // A reset goes to edge-1's agent as a task: the guest boots again.
    let r = s.t(Method::POST, &format!("{inst}/reboot"), &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let path = format!("{BASE}/instances/vm1/console-log");
    wait_for(&s, &a, &path, 120, |b| {
        b["output"]
            .as_str()
            .is_some_and(|o| o.matches("nuage-guest: ready").count() >= 2)
    })
    .await;

    // The interactive console, relayed: edge-1's agent dials back and the
    // guest's shell runs the line; the opening is audited.
    let url = reqwest::Url::parse(&format!("{}{inst}/console", s.tenant)).expect("url");
    let mut ws = nuage_cli::open_websocket(url.clone(), Some(&a), None, "test")
        .await
        .expect("the relayed console opens");
    {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::Binary(b"\necho relay-$((40+2))\n".to_vec().into()))
            .await
            .expect("send");
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !seen.contains("relay-42") {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
                Ok(Some(Ok(_))) => {}
                other => panic!("the console ended before the answer: {other:?}; saw {seen:?}"),
            }
        }
        let _ = ws.close(None).await;
    }
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?action=compute.console",
            &a,
            None,
        )
        .await;
    assert!(r.text.contains("relayed_by"), "{}", r.text);
    // Another tenant's token does not open it.
    let b = s.org("globex").await;
    match nuage_cli::open_websocket(url, Some(&b), None, "test").await {
        Err(nuage_cli::WsError::Refused(404, _)) => {}
        other => panic!(
            "another tenant reached the console: {:?}",
            other.map(|_| ())
        ),
    }

    // A volume plugged while it runs, then unplugged, by edge-1's agent.
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/volumes"),
            &a,
            Some(json!({"name": "data", "size": "64M"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let vol_id = r.body["id"].as_str().expect("vol id").to_string();
    let serial = &vol_id[vol_id.len() - 20..];
    let r = s
        .t(
            Method::POST,
            &format!("{inst}/volumes"),
            &a,
            Some(json!({"volume": "data"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &format!("{BASE}/volumes/data"), 60, |b| {
        b["state"] == "attached"
    })
    .await;
    console_until(&s, &a, "vm1", 60, &format!("serial={serial} wrote-marker=")).await;

    // Grown and snapshotted while the VM runs there (tasks of its agent);
    // a copy of the snapshot, plugged in, holds the marker.
    let r = s
        .t(
            Method::PATCH,
            &format!("{BASE}/volumes/data"),
            &a,
            Some(json!({"size": "128M"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["size_bytes"], 128 << 20, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/snapshots"),
            &a,
            Some(json!({"name": "s1", "volume": "data"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(Method::DELETE, &format!("{inst}/volumes/data"), &a, None)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &format!("{BASE}/volumes/data"), 60, |b| {
        b["state"] == "available"
    })
    .await;
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/volumes"),
            &a,
            Some(json!({"name": "copy", "snapshot": "s1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let copy_id = r.body["id"].as_str().expect("copy id").to_string();
    let copy_serial = copy_id[copy_id.len() - 20..].to_string();
    let r = s
        .t(
            Method::POST,
            &format!("{inst}/volumes"),
            &a,
            Some(json!({"volume": "copy"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let out = console_until(&s, &a, "vm1", 60, &format!("serial={copy_serial} marker=")).await;
    assert!(
        out.contains(&format!("serial={copy_serial} marker={id} {serial}")),
        "the snapshot's copy holds the marker written on the original: {out}"
    );

    // The agent restarts; the VM does not.
    sigterm(&mut child).await;
    assert!(alive(pid), "stopping the agent killed the VM");
    let mut child = agent(&s, &edge1_file);

    // Stop (ACPI) → stopped; start → running again on edge-1.
    let r = s.t(Method::POST, &format!("{inst}/stop"), &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &inst, 90, |b| b["state"] == "stopped").await;
    assert!(!alive(pid), "the VM outlived its stop");
    let r = s.t(Method::POST, &format!("{inst}/start"), &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &inst, 90, |b| b["state"] == "running").await;
    let pid2: i32 = std::fs::read_to_string(run_dir.join("qemu.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid2));

    // Delete: the VM, its run directory and its boot volume go.
    let r = s.t(Method::DELETE, &inst, &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &inst, 60, |b| b["code"] == "not_found").await;
    assert!(!alive(pid2), "the VM outlived its instance");
    assert!(!run_dir.exists(), "run directory left behind");
    assert_eq!(node(&s, "edge-1").await["used_memory_mib"], 0);
    let vols: Vec<_> = std::fs::read_dir(s.data_dir.join("compute/volumes"))
        .expect("volumes dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        vols.iter()
            .all(|f| f.starts_with(&vol_id) || f.starts_with(&copy_id)),
        "only the detached volumes' files remain: {vols:?}"
    );

    // The volume moves to a VM on the other machine, with what the first
    // VM wrote on it.
    for (node, ratio) in [("edge-1", 0.001), ("host-a", 1.0)] {
        let r = s
            .a(
                Method::PATCH,
                &format!("/admin/v1/nodes/{node}"),
                Some(json!({"memory_overcommit": ratio})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = s
        .t(
            Method::POST,
            &format!("{BASE}/instances"),
            &a,
            Some(json!({"name": "vm2", "image": "guest", "vcpus": 1, "memory": "256M"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(node(&s, "host-a").await["used_memory_mib"], 256);
    let inst2 = format!("{BASE}/instances/vm2");
    wait_for(&s, &a, &inst2, 90, |b| b["state"] == "running").await;
    let r = s
        .t(
            Method::POST,
            &format!("{inst2}/volumes"),
            &a,
            Some(json!({"volume": "data"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let out = console_until(&s, &a, "vm2", 120, &format!("serial={serial} marker=")).await;
    assert!(
        out.contains(&format!("serial={serial} marker={id} {serial}")),
        "the moved volume holds what the VM on edge-1 wrote: {out}"
    );
    let r = s.t(Method::DELETE, &inst2, &a, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&s, &a, &inst2, 60, |b| b["code"] == "not_found").await;

    sigterm(&mut child).await;
    s.shutdown().await;
}
