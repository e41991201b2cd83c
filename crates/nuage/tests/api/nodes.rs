//! Compute nodes and instance types over the REST API: the server
//! registers its own host at start, operators tune overcommit and the
//! instance type catalogue, tenants read it; bad values are refused and
//! change nothing.

use http::Method;
use serde_json::json;

use crate::common::Srv;

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
        "memory_mib": 1024, "disk_bytes": 1, "compute_id": compute_id});
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
    // A node whose compute directory is not the control plane's would not
    // find its disks: refused, and nothing recorded.
    let mut elsewhere = report.clone();
    elsewhere["compute_id"] = json!("cmp_somewhere_else");
    let r = s
        .req(Method::PUT, &url, Some(&token), Some(elsewhere))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "compute_dir_not_shared"),
        "{}",
        r.text
    );
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
    let r = s
        .req(Method::PUT, &url, Some(&rotated), Some(report.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
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
