//! Compute nodes and instance types over the REST API: the server
//! registers its own host at start, operators tune overcommit and the
//! instance type catalogue, tenants read it; bad values are refused and
//! change nothing.

use http::Method;
use serde_json::json;

use crate::common::{Resp, Srv};
use crate::compute::{qemu_present, raw_disk};

#[tokio::test]
async fn the_server_registers_its_host_and_operators_tune_it() {
    let s = Srv::start_with(|c| c.node_name = "host-a".into()).await;
    let r = s.a(Method::GET, "/admin/v1/nodes", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", r.text);
    let n = &items[0];
    let probe = nuage_compute::nodes::local_accel().await;
    assert_eq!(n["name"], "host-a");
    assert_eq!(n["accel"], probe.accel.as_str(), "{}", r.text);
    assert_eq!(n["accel_reason"], probe.reason.as_str());
    assert!(!probe.reason.is_empty());
    assert!(n["vcpus"].as_i64().unwrap() >= 1, "{}", r.text);
    assert!(n["memory_mib"].as_i64().unwrap() > 0, "{}", r.text);
    assert!(n["disk_bytes"].as_i64().unwrap() > 0, "{}", r.text);
    assert_eq!(
        (n["used_vcpus"].as_i64(), n["used_memory_mib"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(n["state"], "ready");
    assert_eq!(n["live"], true);
    assert!(n["heartbeat_age_secs"].as_i64().unwrap() < 60);
    assert_eq!(n["cpu_overcommit"], 4.0);
    assert_eq!(n["memory_overcommit"], 1.0);

    // Out-of-bounds ratios are refused and change nothing.
    for bad in [
        json!({"cpu_overcommit": 0}),
        json!({"cpu_overcommit": -2}),
        json!({"cpu_overcommit": 16.5}),
        json!({"memory_overcommit": 4.5}),
        json!({"cpu_overcommit": 8, "memory_overcommit": 0}),
        json!({}),
    ] {
        let r = s
            .a(Method::PATCH, "/admin/v1/nodes/host-a", Some(bad.clone()))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_overcommit"),
            "{bad}: {}",
            r.text
        );
    }
    let r = s
        .a(
            Method::PATCH,
            "/admin/v1/nodes/host-a",
            Some(json!({"cpu_ratio": 2})),
        )
        .await;
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.text);
    let r = s.a(Method::GET, "/admin/v1/nodes", None).await;
    assert_eq!(r.body["items"][0]["cpu_overcommit"], 4.0);
    assert_eq!(r.body["items"][0]["memory_overcommit"], 1.0);

    let r = s
        .a(
            Method::PATCH,
            "/admin/v1/nodes/host-a",
            Some(json!({"cpu_overcommit": 16, "memory_overcommit": 1.5})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cpu_overcommit"], 16.0);
    assert_eq!(r.body["memory_overcommit"], 1.5);
    // by id too, one ratio at a time
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = s
        .a(
            Method::PATCH,
            &format!("/admin/v1/nodes/{id}"),
            Some(json!({"memory_overcommit": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.body["cpu_overcommit"].as_f64(),
            r.body["memory_overcommit"].as_f64()
        ),
        (Some(16.0), Some(2.0))
    );
    let r = s
        .a(
            Method::PATCH,
            "/admin/v1/nodes/nope",
            Some(json!({"cpu_overcommit": 2})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // The change is in the platform's audit log.
    let r = s
        .a(
            Method::GET,
            "/admin/v1/audit/entries?action=compute.update_node",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["items"].as_array().expect("items");
    assert!(
        entries
            .iter()
            .any(|e| e["record"]["status"] == 200
                && e["record"]["details"]["cpu_overcommit"] == "16"),
        "{}",
        r.text
    );
    s.shutdown().await;
}

#[tokio::test]
async fn instance_types_are_seeded_replaced_deleted_and_read_by_tenants() {
    let s = Srv::start().await;
    let names = |r: &crate::common::Resp| -> Vec<(String, i64, i64)> {
        r.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["vcpus"].as_i64().unwrap(),
                    t["memory_mib"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let r = s.a(Method::GET, "/admin/v1/instance-types", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        names(&r),
        [
            ("large".to_string(), 4, 8192),
            ("medium".to_string(), 2, 2048),
            ("small".to_string(), 1, 512)
        ]
    );

    // Replace one, create one.
    let r = s
        .a(
            Method::PUT,
            "/admin/v1/instance-types/small",
            Some(json!({"vcpus": 1, "memory_mib": 1024, "description": "bigger small"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["description"], "bigger small");
    let r = s
        .a(
            Method::PUT,
            "/admin/v1/instance-types/xlarge",
            Some(json!({"vcpus": 8, "memory_mib": 16384})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Impossible sizes and bad names: 400, nothing changed.
    for (name, body, code) in [
        (
            "small",
            json!({"vcpus": 0, "memory_mib": 512}),
            "invalid_instance_size",
        ),
        (
            "small",
            json!({"vcpus": 65, "memory_mib": 512}),
            "invalid_instance_size",
        ),
        (
            "small",
            json!({"vcpus": 1, "memory_mib": 63}),
            "invalid_instance_size",
        ),
        (
            "small",
            json!({"vcpus": 1, "memory_mib": 262145}),
            "invalid_instance_size",
        ),
        (
            "huge",
            json!({"vcpus": 128, "memory_mib": 512}),
            "invalid_instance_size",
        ),
        (
            "Bad_Name",
            json!({"vcpus": 1, "memory_mib": 512}),
            "invalid_name",
        ),
        (
            "small",
            json!({"vcpus": 1, "memory_mib": 1.5}),
            "invalid_body",
        ),
        ("small", json!({"vcpus": 1}), "invalid_body"),
    ] {
        let r = s
            .a(
                Method::PUT,
                &format!("/admin/v1/instance-types/{name}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, code),
            "{name} {body}: {}",
            r.text
        );
    }
    let r = s.a(Method::GET, "/admin/v1/instance-types", None).await;
    assert_eq!(
        names(&r),
        [
            ("large".to_string(), 4, 8192),
            ("medium".to_string(), 2, 2048),
            ("small".to_string(), 1, 1024),
            ("xlarge".to_string(), 8, 16384)
        ]
    );

    let r = s
        .a(Method::DELETE, "/admin/v1/instance-types/medium", None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s
        .a(Method::DELETE, "/admin/v1/instance-types/medium", None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Tenants read the same catalogue (paged), audited in their own log.
    let a = s.org("acme").await;
    let r = s
        .t(Method::GET, "/v1/instance-types?limit=2", &a, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        names(&r),
        [
            ("large".to_string(), 4, 8192),
            ("small".to_string(), 1, 1024)
        ]
    );
    let token = r.body["next_page_token"]
        .as_str()
        .expect("more")
        .to_string();
    let r = s
        .t(
            Method::GET,
            &format!("/v1/instance-types?page_token={token}"),
            &a,
            None,
        )
        .await;
    assert_eq!(names(&r), [("xlarge".to_string(), 8, 16384)]);
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?action=compute.list_instance_types",
            &a,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["items"].as_array().expect("items");
    assert!(
        entries.len() >= 2 && entries.iter().all(|e| e["record"]["decision"] == "allow"),
        "{}",
        r.text
    );
    // Not without a token, and not on the tenant listener for changes.
    let r = s
        .req(
            Method::GET,
            &format!("{}/v1/instance-types", s.tenant),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = s
        .t(
            Method::PUT,
            "/admin/v1/instance-types/small",
            &a,
            Some(json!({"vcpus": 1, "memory_mib": 512})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    s.shutdown().await;
}

/// A host enrolled by an operator runs `nuage agent` (a real process):
/// it reports the host's accelerator and capacity with its heartbeats and
/// the node turns live and ready; its credential works only on the agent
/// route and an operator token does not work there; the reports are in the
/// platform's audit log; an unknown credential stops the agent with a
/// clear reason, and SIGTERM stops it cleanly.
#[tokio::test]
async fn an_enrolled_host_reports_through_nuage_agent() {
    let s = Srv::start_with(|c| c.node_name = "host-a".into()).await;
    let r = s
        .a(
            Method::POST,
            "/admin/v1/nodes",
            Some(json!({"name": "edge-1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("nuage_") && token.len() > 40, "{token}");
    assert_eq!(r.body["node"]["state"], "enrolled");
    assert_eq!(r.body["node"]["live"], false);

    // Names are unique among nodes, the server's own included; bad ones are
    // refused; nothing is added either way.
    for (body, status) in [
        (json!({"name": "edge-1"}), 409),
        (json!({"name": "host-a"}), 409),
        (json!({"name": ""}), 400),
        (json!({"name": "x", "role": "compute"}), 400),
    ] {
        let r = s
            .a(Method::POST, "/admin/v1/nodes", Some(body.clone()))
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
    }
    let r = s.a(Method::GET, "/admin/v1/nodes", None).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.text
    );

    // One credential per route family.
    let compute_id = std::fs::read_to_string(s.data_dir.join("compute/compute-id"))
        .expect("the compute directory has its id")
        .trim()
        .to_string();
    let report = json!({"accel": "tcg", "accel_reason": "test", "vcpus": 2,
        "memory_mib": 1024, "disk_bytes": 1});
    let url = format!("{}/agent/v1/node", s.admin);
    let r = s
        .req(Method::PUT, &url, Some(&s.bootstrap), Some(report.clone()))
        .await;
    assert_eq!(
        r.status, 401,
        "an operator token on the agent route: {}",
        r.text
    );
    let r = s
        .req(
            Method::GET,
            &format!("{}/admin/v1/nodes", s.admin),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        r.status, 401,
        "a node credential on an operator route: {}",
        r.text
    );
    let mut bad = report.clone();
    bad["accel"] = json!("xen");
    let r = s.req(Method::PUT, &url, Some(&token), Some(bad)).await;
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_node_report"),
        "{}",
        r.text
    );
    // A node that has not proven it mounts the control plane's compute
    // directory would not find its disks (or its caller holds a credential
    // and nothing else): refused, nothing recorded, nothing revealed.
    let mut naming = report.clone();
    naming["compute_id"] = json!("cmp_somewhere_else");
    let r = s.req(Method::PUT, &url, Some(&token), Some(naming)).await;
    assert_eq!(r.status, 400, "an id proves nothing: {}", r.text);
    assert!(!r.text.contains(&compute_id), "{}", r.text);
    for answer in [None, Some("nuage_guessed")] {
        let mut unproven = report.clone();
        if let Some(a) = answer {
            unproven["challenge"] = json!(a);
        }
        let r = s.req(Method::PUT, &url, Some(&token), Some(unproven)).await;
        assert_eq!(
            (r.status, r.code()),
            (409, "compute_dir_not_shared"),
            "{}",
            r.text
        );
        assert!(
            !r.text.contains(&compute_id),
            "the refusal reveals the compute id: {}",
            r.text
        );
    }
    let r = s.a(Method::GET, "/admin/v1/nodes", None).await;
    let edge = |r: &crate::common::Resp| {
        r.body["items"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == "edge-1").cloned())
            .expect("edge-1 listed")
    };
    assert_eq!(
        edge(&r)["state"],
        "enrolled",
        "a refused report changed the node"
    );

    // The real agent.
    let token_file = s.dir.path().join("edge-1.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let compute_dir = s.data_dir.join("compute");
    let agent_in = |token_file: &std::path::Path, compute_dir: &std::path::Path| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nuage"))
            .args([
                "agent",
                "--control-plane",
                &s.admin,
                "--heartbeat-seconds",
                "1",
            ])
            .arg("--token-file")
            .arg(token_file)
            .arg("--compute-dir")
            .arg(compute_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nuage agent starts")
    };
    let agent = |token_file: &std::path::Path| agent_in(token_file, &compute_dir);

    // On a directory that is not the control plane's: it says so and stops.
    let lonely = s.dir.path().join("edge-1-compute");
    std::fs::create_dir_all(&lonely).unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        agent_in(&token_file, &lonely).wait_with_output(),
    )
    .await
    .expect("the agent gives up on a directory that is not shared")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shared storage"), "{err}");

    let mut child = agent(&token_file);
    let probe = nuage_compute::nodes::local_accel().await;
    let mut n = serde_json::Value::Null;
    for _ in 0..600 {
        let r = s.a(Method::GET, "/admin/v1/nodes", None).await;
        n = edge(&r);
        if n["live"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(n["live"], true, "the agent never reported: {n}");
    assert_eq!(n["state"], "ready", "{n}");
    assert_eq!(n["accel"], probe.accel.as_str(), "{n}");
    assert!(n["vcpus"].as_i64().unwrap_or(0) >= 1, "{n}");
    assert!(n["memory_mib"].as_i64().unwrap_or(0) >= 64, "{n}");
    assert!(n["disk_bytes"].as_i64().unwrap_or(0) > 0, "{n}");

    let r = s
        .a(
            Method::GET,
            "/admin/v1/audit/entries?action=compute.report_node",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("node:edge-1"),
        "reports not audited: {}",
        r.text
    );
    assert!(
        !r.text.contains(&token),
        "the credential leaked into the audit log"
    );

    // SIGTERM: a clean stop.
    let pid = child.id().expect("agent pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("the agent stops on SIGTERM")
        .unwrap();
    assert!(out.success(), "{out:?}");

    // An unknown credential: the agent stops at once and says why.
    let wrong = s.dir.path().join("wrong.token");
    std::fs::write(&wrong, "nuage_not-a-node-credential\n").unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        agent(&wrong).wait_with_output(),
    )
    .await
    .expect("the agent gives up on a refused credential")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused this node"), "{err}");

    // A new credential replaces the old one at once.
    let r = s
        .a(Method::POST, "/admin/v1/nodes/edge-1/credential", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rotated = r.body["token"].as_str().expect("token").to_string();
    assert_ne!(rotated, token);
    let r = s
        .req(Method::PUT, &url, Some(&token), Some(report.clone()))
        .await;
    assert_eq!(r.status, 401, "the old credential still works: {}", r.text);
    // The new credential's agent proves the mount again before its node
    // counts.
    let r = s
        .req(Method::PUT, &url, Some(&rotated), Some(report.clone()))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "compute_dir_not_shared"),
        "{}",
        r.text
    );
    assert_eq!(
        edge(&s.a(Method::GET, "/admin/v1/nodes", None).await)["state"],
        "enrolled"
    );
    let r = prove(&s, &rotated, &report).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "ready", "{}", r.text);
    let r = s
        .req(Method::PUT, &url, Some(&rotated), Some(report.clone()))
        .await;
    assert_eq!(r.status, 200, "a heartbeat of a proven node: {}", r.text);
    let r = s
        .a(Method::POST, "/admin/v1/nodes/host-a/credential", None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "node_not_enrolled"),
        "{}",
        r.text
    );

    // Removing: not the embedded node of a running server; an enrolled
    // node goes with its credential.
    let r = s.a(Method::DELETE, "/admin/v1/nodes/host-a", None).await;
    assert_eq!((r.status, r.code()), (409, "node_live"), "{}", r.text);
    let r = s.a(Method::DELETE, "/admin/v1/nodes/edge-1", None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s
        .req(Method::PUT, &url, Some(&rotated), Some(report.clone()))
        .await;
    assert_eq!(
        r.status, 401,
        "a removed node's credential still works: {}",
        r.text
    );
    let r = s.a(Method::DELETE, "/admin/v1/nodes/edge-1", None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s.a(Method::GET, "/admin/v1/nodes", None).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );
    s.shutdown().await;
}

/// What `nuage agent` does at start, by hand: asks for a challenge, reads
/// its nonce in the control plane's compute directory (this test shares
/// the machine, as a mount would) and reports with it.
async fn prove(s: &Srv, token: &str, report: &serde_json::Value) -> Resp {
    let r = s
        .req(
            Method::POST,
            &format!("{}/agent/v1/node/challenge", s.admin),
            Some(token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let file = s
        .data_dir
        .join("compute")
        .join(r.body["file"].as_str().expect("file"));
    let nonce = std::fs::read_to_string(&file).expect("the challenge is in the compute directory");
    assert!(
        !r.text.contains(nonce.trim()),
        "the challenge's answer gives its nonce away: {}",
        r.text
    );
    let mut body = report.clone();
    body["challenge"] = json!(nonce.trim());
    s.req(
        Method::PUT,
        &format!("{}/agent/v1/node", s.admin),
        Some(token),
        Some(body),
    )
    .await
}

/// Project `web` of `acme` with image `disk` uploaded (a raw disk): where
/// the placement tests put their instances. Returns the project's path.
async fn web_project_with_disk(s: &Srv, owner: &str) -> &'static str {
    let base = "/v1/orgs/acme/projects/web";
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
            &format!("{base}/images"),
            owner,
            Some(json!({"name": "disk"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .http
        .put(format!("{}{base}/images/disk/file", s.tenant))
        .bearer_auth(owner)
        .header("content-type", "application/octet-stream")
        .body(raw_disk(b"x"))
        .send()
        .await
        .expect("upload");
    assert_eq!(crate::common::into_resp(r).await.status, 200);
    base
}

/// The attack of issue 21, item 2, with an operator token only: enroll a
/// node and claim a huge capacity. Its credential makes no node: no
/// refusal reveals the compute directory's id, a node that never answered
/// the challenge written in the compute directory is never placed on, an
/// unscheduled node never receives a tenant instance, and once an operator
/// schedules it placement counts no more than the capacity approved. Each
/// key release to it is in the tenant's own audit log, naming the node.
#[tokio::test]
async fn an_operator_token_alone_makes_no_node_that_gets_tenant_keys() {
    if !qemu_present() {
        return;
    }
    let s = Srv::start_with(|c| c.node_name = "host-a".into()).await;
    let a = s.org("acme").await;
    let base = web_project_with_disk(&s, &a).await;
    // The server's own node stays schedulable, but takes nothing more.
    let r = s
        .a(
            Method::PATCH,
            "/admin/v1/nodes/host-a",
            Some(json!({"memory_overcommit": 0.001})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["schedulable"], true, "{}", r.text);
    let instances = format!("{base}/instances");
    let create = |name: &str, memory: &str| {
        s.t(
            Method::POST,
            &instances,
            &a,
            Some(json!({"name": name, "image": "disk", "vcpus": 1, "memory": memory})),
        )
    };
    let edge = |r: &Resp| {
        r.body["items"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == "edge-1").cloned())
            .expect("edge-1 listed")
    };

    let r = s
        .a(
            Method::POST,
            "/admin/v1/nodes",
            Some(json!({"name": "edge-1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["node"]["schedulable"], false, "{}", r.text);
    let token = r.body["token"].as_str().expect("token").to_string();
    let compute_id = std::fs::read_to_string(s.data_dir.join("compute/compute-id"))
        .expect("compute id")
        .trim()
        .to_string();
    let url = format!("{}/agent/v1/node", s.admin);
    let huge = json!({"accel": "kvm", "accel_reason": "claimed", "vcpus": 4096,
        "memory_mib": 1u64 << 32, "disk_bytes": 1u64 << 50});

    // Naming the compute directory, or guessing, proves nothing and the
    // refusals reveal nothing.
    let mut named = huge.clone();
    named["compute_id"] = json!("cmp_wrong");
    let r = s.req(Method::PUT, &url, Some(&token), Some(named)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(!r.text.contains(&compute_id), "{}", r.text);
    let r = s
        .req(
            Method::POST,
            &format!("{url}/challenge"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.text.contains(&compute_id), "{}", r.text);
    for guess in [None, Some(compute_id.clone()), Some("nuage_x".to_string())] {
        let mut body = huge.clone();
        if let Some(g) = guess {
            body["challenge"] = json!(g);
        }
        let r = s.req(Method::PUT, &url, Some(&token), Some(body)).await;
        assert_eq!(
            (r.status, r.code()),
            (409, "compute_dir_not_shared"),
            "{}",
            r.text
        );
        assert!(!r.text.contains(&compute_id), "{}", r.text);
    }
    let n = edge(&s.a(Method::GET, "/admin/v1/nodes", None).await);
    assert_eq!(
        (n["state"].clone(), n["vcpus"].clone()),
        (json!("enrolled"), json!(0)),
        "{n}"
    );
    // Not schedulable before it proved its mount; nothing placed on it.
    let r = s
        .a(Method::POST, "/admin/v1/nodes/edge-1/schedule", None)
        .await;
    assert_eq!((r.status, r.code()), (409, "node_not_proven"), "{}", r.text);
    let r = create("vm0", "256M").await;
    assert_eq!(
        (r.status, r.code()),
        (409, "insufficient_capacity"),
        "{}",
        r.text
    );

    // The agent proves its mount: ready, live, but not schedulable.
    let r = prove(&s, &token, &huge).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.body["state"].clone(), r.body["schedulable"].clone()),
        (json!("ready"), json!(false)),
        "{}",
        r.text
    );
    let r = create("vm0", "256M").await;
    assert_eq!(
        (r.status, r.code()),
        (409, "insufficient_capacity"),
        "an unscheduled node took a tenant instance: {}",
        r.text
    );
    assert_eq!(
        edge(&s.a(Method::GET, "/admin/v1/nodes", None).await)["used_memory_mib"],
        0
    );

    // An operator schedules it, approving less than it claims: placement
    // counts no more.
    let r = s
        .a(
            Method::POST,
            "/admin/v1/nodes/edge-1/schedule",
            Some(json!({"max_vcpus": 2, "max_memory_mib": 1024})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["done"], true, "{}", r.text);
    assert_eq!(r.body["node"]["schedulable"], true, "{}", r.text);
    assert_eq!(r.body["node"]["max_memory_mib"], 1024, "{}", r.text);
    let r = create("vm1", "256M").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(
        edge(&s.a(Method::GET, "/admin/v1/nodes", None).await)["used_memory_mib"],
        256
    );
    let r = create("vm2", "2G").await;
    assert_eq!(
        (r.status, r.code()),
        (409, "insufficient_capacity"),
        "the node's own claim counted beyond what was approved: {}",
        r.text
    );

    // Its keys go to edge-1, and the tenant sees that in its own log.
    let r = s
        .req(
            Method::GET,
            &format!("{}/agent/v1/work", s.admin),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let boot = r.body["instances"][0]["boot_volume_id"]
        .as_str()
        .expect("boot volume")
        .to_string();
    let r = s
        .req(
            Method::POST,
            &format!("{}/agent/v1/instances/{id}/keys", s.admin),
            Some(&token),
            Some(json!({"volumes": [boot], "seed": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
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
    assert_eq!(entries.len(), 1, "{}", r.text);
    let rec = &entries[0]["record"];
    assert_eq!(rec["principal_name"], "node:edge-1", "{rec}");
    assert_eq!(rec["details"]["node"], "edge-1", "{rec}");
    assert_eq!(rec["details"]["instance"], id.as_str(), "{rec}");
    assert_eq!(rec["resource"], "instance:vm1", "{rec}");
    assert!(rec["time"].is_string(), "{rec}");
    assert!(
        rec["details"]["data_keys"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{rec}"
    );

    // Cordoned: nothing more goes there; both decisions are audited.
    let r = s
        .a(Method::POST, "/admin/v1/nodes/edge-1/unschedule", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["schedulable"], false, "{}", r.text);
    let r = create("vm3", "256M").await;
    assert_eq!(
        (r.status, r.code()),
        (409, "insufficient_capacity"),
        "{}",
        r.text
    );
    for action in ["compute.schedule_node", "compute.unschedule_node"] {
        let r = s
            .a(
                Method::GET,
                &format!("/admin/v1/audit/entries?action={action}"),
                None,
            )
            .await;
        assert!(
            r.body["items"].as_array().is_some_and(|e| e
                .iter()
                .any(|e| e["record"]["status"] == 200 && e["record"]["resource"] == "node:edge-1")),
            "{action} not audited: {}",
            r.text
        );
    }
    s.shutdown().await;
}

/// An organization can require that its workloads run only on nodes
/// carrying a label it accepts: an administrator of the organization says
/// which, an operator labels nodes, and placement honours both.
#[tokio::test]
async fn an_organization_requires_node_labels_it_accepts() {
    if !qemu_present() {
        return;
    }
    let s = Srv::start_with(|c| c.node_name = "host-a".into()).await;
    let a = s.org("acme").await;
    let path = "/v1/orgs/acme/node-labels";
    let r = s.t(Method::GET, path, &a, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], json!([]), "{}", r.text);
    for bad in [json!({"accepted": ["Not Valid"]}), json!({"labels": []})] {
        let r = s.t(Method::PUT, path, &a, Some(bad.clone())).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    let viewer = s.user("acme", &a, "vic", Some("viewer")).await;
    let r = s
        .t(
            Method::PUT,
            path,
            &viewer,
            Some(json!({"accepted": ["anything"]})),
        )
        .await;
    assert_eq!(r.status, 403, "a viewer moved the workloads: {}", r.text);
    let r = s
        .t(
            Method::PUT,
            path,
            &a,
            Some(json!({"accepted": ["sovereign-fr", "cert/secnumcloud"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["accepted"],
        json!(["cert/secnumcloud", "sovereign-fr"]),
        "{}",
        r.text
    );

    let base = web_project_with_disk(&s, &a).await;
    let instances = format!("{base}/instances");
    let create = |name: &str| {
        s.t(
            Method::POST,
            &instances,
            &a,
            Some(json!({"name": name, "image": "disk", "vcpus": 1, "memory": "64M"})),
        )
    };
    let r = create("vm1").await;
    assert_eq!(
        (r.status, r.code()),
        (409, "insufficient_capacity"),
        "placed on a node without an accepted label: {}",
        r.text
    );
    assert!(r.text.contains("sovereign-fr"), "{}", r.text);
    let r = s
        .a(
            Method::PUT,
            "/admin/v1/nodes/host-a/labels",
            Some(json!({"labels": ["sovereign-fr"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["labels"], json!(["sovereign-fr"]), "{}", r.text);
    let r = create("vm1").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?action=compute.set_node_labels",
            &a,
            None,
        )
        .await;
    assert!(
        r.body["items"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["record"]["decision"] == "deny")
                && e.iter().any(|e| e["record"]["status"] == 200)),
        "{}",
        r.text
    );
    s.shutdown().await;
}

/// A second operator, logged in with a password and a second factor.
async fn second_operator(s: &Srv, name: &str) -> String {
    let r = s
        .a(
            Method::POST,
            "/admin/v1/operators",
            Some(json!({"name": name, "password": crate::common::PW})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let enrolling = r.body["enrollment_token"]["secret"]
        .as_str()
        .expect("enrollment token")
        .to_string();
    let me = |p: &str| format!("{}/admin/v1/me/mfa{p}", s.admin);
    let r = s.req(Method::POST, &me(""), Some(&enrolling), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let code = nuage_iam::totp::current(&secret, now()).expect("code");
    let r = s
        .req(
            Method::POST,
            &me("/confirm"),
            Some(&enrolling),
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let code = nuage_iam::totp::current(&secret, now()).expect("code");
    let r = s
        .req(
            Method::POST,
            &format!("{}/admin/v1/login", s.admin),
            None,
            Some(json!({"name": name, "password": crate::common::PW, "totp": code})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["token"]["secret"]
        .as_str()
        .expect("session")
        .to_string()
}

/// With the two-person rule on (`--two-person-node-schedule`), one
/// operator's schedule request leaves the node unschedulable until a
/// different operator confirms it; both steps are audited.
#[tokio::test]
async fn the_two_person_rule_needs_a_second_operator_to_schedule_a_node() {
    let s = Srv::start_with(|c| {
        c.node_name = "host-a".into();
        c.two_person_node_schedule = true;
    })
    .await;
    let r = s
        .a(
            Method::POST,
            "/admin/v1/nodes",
            Some(json!({"name": "edge-1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().expect("token").to_string();
    let report = json!({"accel": "tcg", "accel_reason": "test", "vcpus": 2,
        "memory_mib": 1024, "disk_bytes": 1});
    let r = prove(&s, &token, &report).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let path = "/admin/v1/nodes/edge-1/schedule";
    let r = s.a(Method::POST, path, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        (
            r.body["done"].clone(),
            r.body["node"]["schedulable"].clone()
        ),
        (json!(false), json!(false)),
        "{}",
        r.text
    );
    let first = r.body["node"]["schedule_requested_by"]
        .as_str()
        .expect("requested by")
        .to_string();
    let r = s.a(Method::POST, path, None).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "second_operator_required"),
        "{}",
        r.text
    );
    let other = second_operator(&s, "ops-2").await;
    let r = s
        .req(
            Method::POST,
            &format!("{}{path}", s.admin),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["done"], true, "{}", r.text);
    assert_eq!(r.body["node"]["schedulable"], true, "{}", r.text);
    assert!(r.body["node"].get("schedule_requested_by").is_none());
    let r = s
        .a(
            Method::GET,
            "/admin/v1/audit/entries?action=compute.schedule_node",
            None,
        )
        .await;
    let steps: Vec<(String, String)> = r.body["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["record"]["status"] != 409)
                .map(|e| {
                    (
                        e["record"]["principal"].as_str().unwrap_or("").to_string(),
                        e["record"]["details"]["two_person"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(steps.len(), 2, "{}", r.text);
    assert!(
        steps.contains(&(first.clone(), "requested".into()))
            && steps
                .iter()
                .any(|(who, step)| who != &first && step == "confirmed"),
        "{steps:?}"
    );
    s.shutdown().await;
}

/// The real `nuage` binary with its own config directory: (exit code,
/// stdout, stderr).
async fn cli(config: &std::path::Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args(args)
        .env("NUAGE_CONFIG_DIR", config)
        .env_remove("NUAGE_URL")
        .env_remove("NUAGE_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nuage runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("nuage ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nuage admin node schedule | unschedule | label` and `nuage org
/// node-labels`, as an operator and a tenant run them.
#[tokio::test]
async fn scheduling_and_node_labels_from_the_cli() {
    let s = Srv::start_with(|c| c.node_name = "cli-host".into()).await;
    s.org("acme").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ops, tenant) = (dir.path().join("ops"), dir.path().join("tenant"));
    let o = cli(
        &ops,
        &[
            "login",
            "--admin",
            "--url",
            &s.admin,
            "--token",
            &s.bootstrap,
        ],
        "",
    )
    .await;
    assert_eq!(o.0, 0, "{}", o.2);
    let r = s
        .a(
            Method::POST,
            "/admin/v1/nodes",
            Some(json!({"name": "edge-cli"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().expect("token").to_string();
    let o = cli(&ops, &["admin", "node", "schedule", "edge-cli"], "").await;
    assert_ne!(o.0, 0, "an unproven node was scheduled: {}", o.1);
    assert!(o.2.contains("not reported"), "{}", o.2);
    let report = json!({"accel": "tcg", "accel_reason": "test", "vcpus": 8,
        "memory_mib": 16384, "disk_bytes": 1});
    assert_eq!(prove(&s, &token, &report).await.status, 200);
    let o = cli(
        &ops,
        &[
            "admin",
            "node",
            "schedule",
            "edge-cli",
            "--max-vcpus",
            "2",
            "--max-memory",
            "4G",
            "--json",
        ],
        "",
    )
    .await;
    assert_eq!(o.0, 0, "{}", o.2);
    let v: serde_json::Value = serde_json::from_str(&o.1).expect("json");
    assert_eq!(
        (
            v["done"].clone(),
            v["node"]["schedulable"].clone(),
            v["node"]["max_vcpus"].clone(),
            v["node"]["max_memory_mib"].clone()
        ),
        (json!(true), json!(true), json!(2), json!(4096)),
        "{v}"
    );
    let o = cli(
        &ops,
        &[
            "admin",
            "node",
            "label",
            "edge-cli",
            "sovereign-fr",
            "zone=1",
        ],
        "",
    )
    .await;
    assert_eq!(o.0, 0, "{}", o.2);
    assert!(o.1.contains("sovereign-fr"), "{}", o.1);
    let o = cli(&ops, &["admin", "node", "unschedule", "edge-cli"], "").await;
    assert_eq!(o.0, 0, "{}", o.2);
    let o = cli(&ops, &["admin", "node", "list", "--json"], "").await;
    let l: serde_json::Value = serde_json::from_str(&o.1).expect("json");
    let edge = l["items"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "edge-cli").cloned())
        .expect("listed");
    assert_eq!(
        (edge["schedulable"].clone(), edge["labels"].clone()),
        (json!(false), json!(["sovereign-fr", "zone=1"])),
        "{edge}"
    );

    let o = cli(
        &tenant,
        &[
            "login",
            "--url",
            &s.tenant,
            "--org",
            "acme",
            "--user",
            "owner",
            "--password-stdin",
        ],
        &format!("{}\n", crate::common::PW),
    )
    .await;
    assert_eq!(o.0, 0, "{}", o.2);
    let o = cli(
        &tenant,
        &["org", "node-labels", "--accept", "sovereign-fr", "--json"],
        "",
    )
    .await;
    assert_eq!(o.0, 0, "{}", o.2);
    let v: serde_json::Value = serde_json::from_str(&o.1).expect("json");
    assert_eq!(v["accepted"], json!(["sovereign-fr"]), "{v}");
    let o = cli(&tenant, &["org", "node-labels"], "").await;
    assert_eq!(o.0, 0, "{}", o.2);
    assert!(o.1.contains("sovereign-fr"), "{}", o.1);
    s.shutdown().await;
}
