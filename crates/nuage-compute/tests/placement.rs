//! Node rows, instance types and placement against a real store: embedded
//! SQLite always, and the PostgreSQL named by `NUAGE_TEST_DATABASE_URL`
//! too (with `NUAGE_TEST_REQUIRE_PG=1` a missing one is a failure).
//! Instances are inserted with plain SQL on the columns of migration 0011,
//! so placement is tested against what the instance service will write.

use std::collections::BTreeMap;

use nuage_compute::nodes::{self, UpdateNode};
use nuage_compute::placement;
use nuage_core::model::{Org, Principal, PrincipalKind, PrincipalRef, Project, RoleBinding};
use nuage_core::time::now_ms;
use nuage_store::{NodeRow, Store, StoreOptions};
use sqlx::Connection;

struct Engine {
    name: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

fn unique() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{n:x}{:x}", std::process::id())
}

async fn engines() -> Vec<Engine> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut v = vec![Engine {
        name: "sqlite",
        url: format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
        _dir: Some(dir),
    }];
    match std::env::var("NUAGE_TEST_DATABASE_URL") {
        Ok(base) => {
            sqlx::any::install_default_drivers();
            let name = format!("t_{}", unique());
            let mut conn = sqlx::AnyConnection::connect(&base)
                .await
                .expect("connect to test PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
            v.push(Engine {
                name: "postgres",
                url: format!("{prefix}/{name}"),
                _dir: None,
            });
        }
        Err(_) => assert!(
            std::env::var("NUAGE_TEST_REQUIRE_PG").is_err(),
            "NUAGE_TEST_REQUIRE_PG is set but NUAGE_TEST_DATABASE_URL is not"
        ),
    }
    v
}

/// A store with one organization and project `web` (instances need one).
async fn seeded(url: &str) -> (Store, Project) {
    let store = Store::open(url, &StoreOptions::default())
        .await
        .expect("open store");
    let org = Org {
        id: nuage_core::id::new_id(nuage_core::id::Kind::Org),
        name: "acme".into(),
        display_name: "acme".into(),
        mfa_required_roles: vec![],
        max_projects: 3,
        generation: 1,
        created_at: 1,
        updated_at: 1,
    };
    let owner = Principal {
        id: nuage_core::id::new_id(nuage_core::id::Kind::User),
        org_id: org.id.clone(),
        kind: PrincipalKind::User,
        name: "alice".into(),
        display_name: String::new(),
        email: String::new(),
        description: String::new(),
        mfa_enabled: false,
        has_password: false,
        locked_until: None,
        generation: 1,
        created_at: 1,
        updated_at: 1,
    };
    let binding = RoleBinding {
        id: nuage_core::id::new_id(nuage_core::id::Kind::RoleBinding),
        org_id: org.id.clone(),
        project_id: None,
        subject: PrincipalRef {
            id: owner.id.clone(),
            kind: "user".into(),
            name: owner.name.clone(),
        },
        role: "owner".into(),
        created_at: 1,
    };
    store
        .org_create(&org, &owner, None, &binding, None)
        .await
        .expect("create org");
    let project = Project {
        id: nuage_core::id::new_id(nuage_core::id::Kind::Project),
        org_id: org.id.clone(),
        name: "web".into(),
        description: String::new(),
        labels: BTreeMap::new(),
        generation: 1,
        created_at: 1,
        updated_at: 1,
    };
    store.project_create(&project, 3).await.expect("project");
    (store, project)
}

fn node(name: &str, vcpus: i64, memory_mib: i64, state: &str, heartbeat_at: i64) -> NodeRow {
    NodeRow {
        id: format!("node_{name}"),
        name: name.into(),
        accel: "tcg".into(),
        accel_reason: "test".into(),
        vcpus,
        memory_mib,
        disk_bytes: 1 << 40,
        cpu_overcommit: nodes::DEFAULT_CPU_OVERCOMMIT,
        memory_overcommit: nodes::DEFAULT_MEMORY_OVERCOMMIT,
        state: state.into(),
        heartbeat_at,
        created_at: 1,
        schedulable: true,
        schedule_requested_by: String::new(),
        max_vcpus: 0,
        max_memory_mib: 0,
        labels: Vec::new(),
    }
}

/// Inserts an instance row directly (only the columns of 0011).
async fn instance(
    db: &mut sqlx::AnyConnection,
    project: &Project,
    name: &str,
    node: &str,
    state: &str,
    vcpus: i64,
    memory_mib: i64,
) {
    sqlx::query(
        "INSERT INTO instances (id, org_id, project_id, name, instance_type, vcpus, memory_mib, \
         image_id, boot_volume_id, ssh_keys, key_id, data_key_id, sealed_user_data, desired, \
         node_id, state, status_message, created_by, generation, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, '', $5, $6, 'img_x', 'vol_x', '[]', 'key_x', 'dek_x', '', \
         'running', $7, $8, '', 'usr_x', 1, 1, 1)",
    )
    .bind(format!("ins_{name}"))
    .bind(&project.org_id)
    .bind(&project.id)
    .bind(name)
    .bind(vcpus)
    .bind(memory_mib)
    .bind(format!("node_{node}"))
    .bind(state)
    .execute(db)
    .await
    .expect("insert instance");
}

async fn placed(store: &Store, vcpus: i64, memory_mib: i64) -> String {
    placement::place(store, vcpus, memory_mib)
        .await
        .unwrap_or_else(|e| panic!("{vcpus} vCPUs, {memory_mib} MiB: {}", e.detail))
        .name
}

#[tokio::test]
async fn placement_picks_the_roomiest_live_node_within_overcommit() {
    for e in engines().await {
        let (store, project) = seeded(&e.url).await;
        let mut db = sqlx::AnyConnection::connect(&e.url).await.expect("connect");
        let now = now_ms();
        for n in [
            node("a", 4, 8192, "ready", now),
            node("b", 4, 4096, "ready", now),
            // huge, but silent for two minutes, or not taking instances
            node("stale", 64, 262_144, "ready", now - 120_000),
            node("draining", 64, 262_144, "draining", now),
        ] {
            store.node_upsert(&n).await.expect("node");
        }
        instance(&mut db, &project, "i1", "a", "running", 2, 3000).await;
        // deleted instances hold nothing
        instance(&mut db, &project, "gone", "b", "deleted", 16, 4096).await;

        // a: 5192 MiB free, b: 4096
        assert_eq!(placed(&store, 1, 512).await, "a", "{}", e.name);
        instance(&mut db, &project, "i2", "a", "stopped", 1, 2048).await;
        // a: 3144 MiB free now (a stopped instance keeps its place)
        assert_eq!(placed(&store, 1, 512).await, "b", "{}", e.name);
        assert_eq!(placed(&store, 1, 3500).await, "b", "{}", e.name);

        // a uses 3 vCPUs of 4 × 4 (13 free), b none of its 16
        assert_eq!(placed(&store, 16, 512).await, "b", "{}", e.name);
        nodes::set_overcommit(
            &store,
            "b",
            &UpdateNode {
                cpu_overcommit: Some(2.0),
                memory_overcommit: None,
            },
        )
        .await
        .expect("overcommit");
        // b allows 8 vCPUs now
        assert_eq!(placed(&store, 9, 512).await, "a", "{}", e.name);
        let err = placement::place(&store, 14, 512)
            .await
            .expect_err("a has 13 vCPUs free, b 8");
        assert_eq!(err.code, "insufficient_capacity", "{}", e.name);
        assert_eq!(err.status.as_u16(), 409);
        assert!(
            err.detail
                .contains("largest request that fits now is 8 vCPUs and 4096 MiB")
                && err.detail.contains("at most 13 vCPUs on any node")
                && err.detail.contains(
                    "largest node has 4 vCPUs and 8192 MiB (16 vCPUs and 8192 MiB with overcommit)"
                ),
            "{}: {}",
            e.name,
            err.detail
        );

        // memory overcommit: 6000 MiB fits nowhere until b may give 2×
        let err = placement::place(&store, 1, 6000).await.expect_err("full");
        assert_eq!(err.code, "insufficient_capacity");
        nodes::set_overcommit(
            &store,
            "b",
            &UpdateNode {
                cpu_overcommit: None,
                memory_overcommit: Some(2.0),
            },
        )
        .await
        .expect("overcommit");
        assert_eq!(placed(&store, 1, 6000).await, "b", "{}", e.name);
        // the other ratio stayed
        let b = store.node_get("b").await.expect("get").expect("b");
        assert_eq!((b.cpu_overcommit, b.memory_overcommit), (2.0, 2.0));

        // more vCPUs than any live node has: the stale and the draining
        // 64-vCPU nodes do not count
        let err = placement::place(&store, 40, 512).await.expect_err("big");
        assert!(
            err.detail.contains("at most 13 vCPUs on any node")
                && err.detail.contains("largest node has 4 vCPUs"),
            "{}: {}",
            e.name,
            err.detail
        );
        // impossible sizes are refused before looking at nodes
        let err = placement::place(&store, 65, 512).await.expect_err("65");
        assert_eq!(
            (err.status.as_u16(), err.code),
            (400, "invalid_instance_size")
        );
        store.close().await;
    }
}

#[tokio::test]
async fn no_live_node_is_insufficient_capacity() {
    for e in engines().await {
        let (store, _) = seeded(&e.url).await;
        let err = placement::place(&store, 1, 512).await.expect_err("empty");
        assert_eq!(err.code, "insufficient_capacity", "{}", e.name);
        store
            .node_upsert(&node("old", 8, 8192, "ready", now_ms() - 61_000))
            .await
            .expect("node");
        let err = placement::place(&store, 1, 512).await.expect_err("stale");
        assert!(err.detail.contains("none is ready"), "{}", err.detail);
        // a heartbeat brings it back
        nodes::heartbeat(&store, "node_old").await.expect("beat");
        assert_eq!(placed(&store, 1, 512).await, "old", "{}", e.name);
        store.close().await;
    }
}

#[tokio::test]
async fn re_registering_keeps_the_operators_ratios() {
    for e in engines().await {
        let (store, _) = seeded(&e.url).await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::env::set_var(nuage_qemu::accel::ENV, "tcg");
        let first = nodes::register_local(&store, "host1", dir.path())
            .await
            .expect("register");
        assert_eq!(
            (first.accel.as_str(), first.state.as_str()),
            ("tcg", "ready")
        );
        assert!(first.vcpus >= 1 && first.memory_mib > 0 && first.disk_bytes > 0);
        assert_eq!(
            (first.cpu_overcommit, first.memory_overcommit),
            (4.0, 1.0),
            "{}",
            e.name
        );
        let changed = nodes::set_overcommit(
            &store,
            "host1",
            &UpdateNode {
                cpu_overcommit: Some(8.0),
                memory_overcommit: Some(1.5),
            },
        )
        .await
        .expect("set");
        assert_eq!(
            (changed.cpu_overcommit, changed.memory_overcommit),
            (8.0, 1.5)
        );
        let refused = nodes::set_overcommit(
            &store,
            "host1",
            &UpdateNode {
                cpu_overcommit: Some(17.0),
                memory_overcommit: Some(1.0),
            },
        )
        .await
        .expect_err("too much");
        assert_eq!(refused.code, "invalid_overcommit");
        let again = nodes::register_local(&store, "host1", dir.path())
            .await
            .expect("re-register");
        assert_eq!(again.id, first.id, "{}", e.name);
        assert_eq!(
            (again.cpu_overcommit, again.memory_overcommit),
            (8.0, 1.5),
            "{}",
            e.name
        );
        assert_eq!(store.node_list().await.expect("list").len(), 1);
        store.close().await;
    }
}

#[tokio::test]
async fn instance_types_are_seeded_once_and_replaced_in_place() {
    for e in engines().await {
        let (store, _) = seeded(&e.url).await;
        nodes::seed_types(&store).await.expect("seed");
        let names: Vec<String> = store
            .instance_type_list("", 10)
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["large", "medium", "small"], "{}", e.name);
        let body = nodes::PutInstanceType {
            vcpus: 2,
            memory_mib: 1024,
            description: "two small".into(),
        };
        let (t, created) = nodes::put_type(&store, "small", &body).await.expect("put");
        assert!(!created);
        assert_eq!((t.vcpus, t.memory_mib), (2, 1024));
        let bad = nodes::PutInstanceType {
            vcpus: 0,
            ..body.clone()
        };
        let err = nodes::put_type(&store, "tiny", &bad).await.expect_err("0");
        assert_eq!(err.code, "invalid_instance_size");
        assert!(store
            .instance_type_get("tiny")
            .await
            .expect("get")
            .is_none());
        for name in ["small", "medium", "large"] {
            assert!(store.instance_type_delete(name).await.expect("delete"));
        }
        assert!(!store.instance_type_delete("small").await.expect("again"));
        let (_, created) = nodes::put_type(&store, "custom", &body).await.expect("put");
        assert!(created);
        // an operator's catalogue is never overwritten by the defaults
        nodes::seed_types(&store).await.expect("seed");
        let all = store.instance_type_list("", 10).await.expect("list");
        assert_eq!(all.len(), 1, "{}", e.name);
        store.close().await;
    }
}

#[tokio::test]
async fn only_schedulable_nodes_with_an_accepted_label_take_instances() {
    for e in engines().await {
        let (store, project) = seeded(&e.url).await;
        let now = now_ms();
        for n in [
            node("a", 4, 8192, "ready", now),
            node("b", 4, 4096, "ready", now),
        ] {
            store.node_upsert(&n).await.expect("node");
        }
        assert_eq!(placed(&store, 1, 512).await, "a", "{}", e.name);
        // Cordoned: never placed on, however roomy.
        let a = nodes::unschedule(&store, "a").await.expect("unschedule");
        assert!(!a.schedulable);
        assert_eq!(placed(&store, 1, 512).await, "b", "{}", e.name);
        let err = placement::place(&store, 1, 6000)
            .await
            .expect_err("a cordoned");
        assert_eq!(err.code, "insufficient_capacity", "{}", e.name);

        // Two-person rule: the first operator's request waits, the same
        // operator cannot confirm it, a second one does.
        let body = nodes::ScheduleNode::default();
        let first = nodes::schedule(&store, "a", "op_1", true, &body)
            .await
            .expect("request");
        assert!(!first.done && !first.node.schedulable, "{}", e.name);
        assert_eq!(first.node.schedule_requested_by, "op_1");
        assert_eq!(placed(&store, 1, 512).await, "b", "{}", e.name);
        let again = nodes::schedule(&store, "a", "op_1", true, &body)
            .await
            .expect_err("same operator");
        assert_eq!(again.code, "second_operator_required", "{}", e.name);
        let bounded = nodes::ScheduleNode {
            max_vcpus: Some(1),
            max_memory_mib: None,
        };
        let other = nodes::schedule(&store, "a", "op_2", true, &bounded)
            .await
            .expect_err("other bounds than requested");
        assert_eq!(other.code, "schedule_mismatch", "{}", e.name);
        let done = nodes::schedule(&store, "a", "op_2", true, &body)
            .await
            .expect("confirmed");
        assert!(done.done && done.node.schedulable, "{}", e.name);
        assert_eq!(
            (done.node.max_vcpus, done.node.max_memory_mib),
            (4, 8192),
            "what a reported when asked"
        );
        assert_eq!(placed(&store, 1, 512).await, "a", "{}", e.name);

        // Approved capacity bounds a node's own claim.
        let one = nodes::ScheduleNode {
            max_vcpus: Some(1),
            max_memory_mib: Some(1024),
        };
        nodes::schedule(&store, "a", "op_1", false, &one)
            .await
            .expect("re-approve");
        assert_eq!(placed(&store, 1, 2048).await, "b", "{}", e.name);

        // An organization requiring an accepted label: only nodes carrying
        // one.
        let org = project.org_id.clone();
        let here = |v: i64, m: i64| {
            let store = store.clone();
            let org = org.clone();
            async move {
                placement::place_for(&store, &org, v, m)
                    .await
                    .map(|n| n.name)
            }
        };
        assert_eq!(here(1, 512).await.expect("any").as_str(), "b");
        store
            .org_node_labels_set(&org, Some(&["sovereign-fr".to_string()]), now)
            .await
            .expect("labels");
        let err = here(1, 512).await.expect_err("no labelled node");
        assert!(
            err.detail.contains("sovereign-fr"),
            "{}: {}",
            e.name,
            err.detail
        );
        nodes::set_labels(&store, "a", &["sovereign-fr".into(), "zone=1".into()])
            .await
            .expect("label");
        assert_eq!(here(1, 512).await.expect("a").as_str(), "a", "{}", e.name);
        let bad = nodes::set_labels(&store, "a", &["Bad Label".into()])
            .await
            .expect_err("bad label");
        assert_eq!(bad.code, "invalid_label");
        // Other organizations are not bound by it.
        assert_eq!(placed(&store, 1, 512).await, "b", "{}", e.name);
        store
            .org_node_labels_set(&org, None, now)
            .await
            .expect("lift");
        assert_eq!(here(1, 512).await.expect("b").as_str(), "b", "{}", e.name);
        store.close().await;
    }
}
