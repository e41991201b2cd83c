//! The store suite, run against every engine: embedded SQLite always, and
//! the PostgreSQL named by `NUAGE_TEST_DATABASE_URL` (the test command
//! starts one; with `NUAGE_TEST_REQUIRE_PG=1` a missing one is a failure,
//! not a skip).

use std::collections::{BTreeMap, HashSet};

use nuage_core::model::{Org, Principal, PrincipalKind, PrincipalRef, Project, RoleBinding};
use nuage_core::page::PageRequest;
use nuage_store::{
    AuditAppend, AuditFilter, BucketRow, DataKeyRow, KeyRow, KeyVersionRow, ObjectRow, Store,
    StoreError, StoreOptions, Versioning, WriteIf,
};
use sqlx::Connection;

struct Engine {
    name: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn fresh_pg_database() -> Option<String> {
    let base = match std::env::var("NUAGE_TEST_DATABASE_URL") {
        Ok(u) => u,
        Err(_) => {
            assert!(
                std::env::var("NUAGE_TEST_REQUIRE_PG").is_err(),
                "NUAGE_TEST_REQUIRE_PG is set but NUAGE_TEST_DATABASE_URL is not"
            );
            eprintln!("PostgreSQL not configured: only SQLite is tested (run scripts/test)");
            return None;
        }
    };
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid_like());
    let mut conn = sqlx::AnyConnection::connect(&base)
        .await
        .expect("connect to test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    Some(format!("{prefix}/{name}"))
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", n, std::process::id())
}

async fn engines() -> Vec<Engine> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut v = vec![Engine {
        name: "sqlite",
        url: format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
        _dir: Some(dir),
    }];
    if let Some(url) = fresh_pg_database().await {
        v.push(Engine {
            name: "postgres",
            url,
            _dir: None,
        });
    }
    v
}

fn org(name: &str) -> Org {
    Org {
        id: nuage_core::id::new_id(nuage_core::id::Kind::Org),
        name: name.to_string(),
        display_name: name.to_string(),
        mfa_required_roles: vec![],
        max_projects: 3,
        generation: 1,
        created_at: 1,
        updated_at: 1,
    }
}

fn user(org: &Org, name: &str) -> Principal {
    Principal {
        id: nuage_core::id::new_id(nuage_core::id::Kind::User),
        org_id: org.id.clone(),
        kind: PrincipalKind::User,
        name: name.to_string(),
        display_name: String::new(),
        email: String::new(),
        description: String::new(),
        mfa_enabled: false,
        has_password: false,
        locked_until: None,
        generation: 1,
        created_at: 1,
        updated_at: 1,
    }
}

fn owner_binding(org: &Org, p: &Principal) -> RoleBinding {
    RoleBinding {
        id: nuage_core::id::new_id(nuage_core::id::Kind::RoleBinding),
        org_id: org.id.clone(),
        project_id: None,
        subject: PrincipalRef {
            id: p.id.clone(),
            kind: "user".into(),
            name: p.name.clone(),
        },
        role: "owner".into(),
        created_at: 1,
    }
}

fn project(org: &Org, name: &str) -> Project {
    Project {
        id: nuage_core::id::new_id(nuage_core::id::Kind::Project),
        org_id: org.id.clone(),
        name: name.to_string(),
        description: String::new(),
        labels: BTreeMap::new(),
        generation: 1,
        created_at: 1,
        updated_at: 1,
    }
}

async fn seeded(url: &str) -> (Store, Org, Principal) {
    let store = Store::open(url, &StoreOptions::default())
        .await
        .expect("open store");
    let o = org("acme");
    let u = user(&o, "alice");
    store
        .org_create(&o, &u, None, &owner_binding(&o, &u), None)
        .await
        .expect("create org");
    (store, o, u)
}

#[tokio::test]
async fn names_are_unique_per_parent_and_conflicts_change_nothing() {
    for e in engines().await {
        let (store, o, u) = seeded(&e.url).await;
        store
            .project_create(&project(&o, "web"), 3)
            .await
            .expect("first");
        let err = store
            .project_create(&project(&o, "web"), 3)
            .await
            .unwrap_err();
        assert_eq!(err.code, "already_exists", "{}", e.name);
        let dup = store
            .org_create(
                &org("acme"),
                &user(&o, "bob"),
                None,
                &owner_binding(&o, &u),
                None,
            )
            .await;
        assert_eq!(dup.unwrap_err().code, "already_exists", "{}", e.name);
        // the failed org creation left no half-written user behind
        let users = store
            .principal_list(
                &o.id,
                PrincipalKind::User,
                &PageRequest {
                    limit: 10,
                    after: None,
                },
            )
            .await
            .expect("list");
        assert_eq!(users.items.len(), 1, "{}", e.name);
        // quota
        store
            .project_create(&project(&o, "api"), 3)
            .await
            .expect("2");
        store
            .project_create(&project(&o, "db"), 3)
            .await
            .expect("3");
        assert_eq!(
            store
                .project_create(&project(&o, "four"), 3)
                .await
                .unwrap_err()
                .code,
            "quota_exceeded",
            "{}",
            e.name
        );
        store.close().await;
    }
}

#[tokio::test]
async fn updates_use_optimistic_concurrency() {
    for e in engines().await {
        let (store, o, _) = seeded(&e.url).await;
        let p = project(&o, "web");
        store.project_create(&p, 3).await.expect("create");
        let cached = store.project_get(&o.id, "web").await.expect("get");
        assert_eq!(cached.map(|c| c.generation), Some(1), "{}", e.name);
        let p2 = store
            .project_update(&o.id, &p.id, Some(1), |p| {
                p.description = "one".into();
                Ok(())
            })
            .await
            .expect("update at generation 1");
        assert_eq!(p2.generation, 2);
        let stale = store
            .project_update(&o.id, &p.id, Some(1), |p| {
                p.description = "two".into();
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(stale.code, "precondition_failed", "{}", e.name);
        let now = store
            .project_get(&o.id, "web")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            now.description, "one",
            "{}: a refused update changed nothing",
            e.name
        );
        assert_eq!(
            now.generation, 2,
            "{}: the read after the update is fresh",
            e.name
        );
        store
            .project_delete(&o.id, &p.id, None)
            .await
            .expect("delete");
        assert!(
            store
                .project_get(&o.id, &p.id)
                .await
                .expect("get")
                .is_none(),
            "{}: a deleted project is not served from the cache",
            e.name
        );
        store.close().await;
    }
}

#[tokio::test]
async fn pagination_is_stable_and_complete() {
    for e in engines().await {
        let (store, mut o, _) = seeded(&e.url).await;
        o.max_projects = 1000;
        let mut want = Vec::new();
        for i in 0..57 {
            let name = format!("p{i:03}");
            store
                .project_create(&project(&o, &name), 1000)
                .await
                .expect("create");
            want.push(name);
        }
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .project_list(
                    &o.id,
                    &PageRequest {
                        limit: 10,
                        after: after.clone(),
                    },
                )
                .await
                .expect("page");
            got.extend(page.items.iter().map(|p| p.name.clone()));
            match page.next_page_token {
                Some(t) => after = Some(nuage_core::page::decode_token(&t).expect("token")),
                None => break,
            }
        }
        assert_eq!(got, want, "{}", e.name);
        store.close().await;
    }
}

#[tokio::test]
async fn audit_appends_are_gap_free_under_concurrency() {
    for e in engines().await {
        let (store, o, _) = seeded(&e.url).await;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            let log = o.id.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..10 {
                    let entries: Vec<AuditAppend> = (0..3)
                        .map(|k| AuditAppend {
                            log_id: log.clone(),
                            leaf_hash: format!("{t:02}{i:02}{k:02}"),
                            body: "{}".into(),
                            time: 1,
                            principal: "p".into(),
                            action: "a".into(),
                            decision: "allow".into(),
                        })
                        .collect();
                    let mut advance = |_: &str, size: i64, _: &str, leaves: &[&str]| {
                        let node = (1, size as u64, format!("n{size}"));
                        Ok((format!("{}", size + leaves.len() as i64), vec![node]))
                    };
                    got.extend(
                        store
                            .audit_append(&entries, "0", &mut advance)
                            .await
                            .expect("append"),
                    );
                }
                got
            }));
        }
        let mut all = HashSet::new();
        for t in tasks {
            for idx in t.await.expect("task") {
                assert!(all.insert(idx), "{}: index {idx} given twice", e.name);
            }
        }
        assert_eq!(all.len(), 240);
        assert_eq!(
            all.iter().max(),
            Some(&239),
            "{}: indices are not contiguous",
            e.name
        );
        let (size, frontier) = store
            .audit_head(&o.id)
            .await
            .expect("head")
            .expect("exists");
        assert_eq!((size, frontier.as_str()), (240, "240"), "{}", e.name);
        let nodes = store
            .audit_nodes(&o.id, &[(1, 0), (1, 3), (1, 237)])
            .await
            .expect("nodes");
        assert_eq!(nodes.len(), 3, "{}: every batch's nodes are stored", e.name);
        assert_eq!(nodes.get(&(1, 237)).map(String::as_str), Some("n237"));

        // A second process appending to the same database: the first one's
        // idea of the head is stale, and its next append must still land
        // right after the second's entries.
        let other = Store::open(&e.url, &StoreOptions::default())
            .await
            .expect("second store");
        let one = |t: &str| AuditAppend {
            log_id: o.id.clone(),
            leaf_hash: t.into(),
            body: "{}".into(),
            time: 1,
            principal: "p".into(),
            action: "a".into(),
            decision: "allow".into(),
        };
        let mut advance = |_: &str, size: i64, _: &str, leaves: &[&str]| {
            Ok((format!("{}", size + leaves.len() as i64), Vec::new()))
        };
        let theirs = other
            .audit_append(&[one("x1"), one("x2")], "0", &mut advance)
            .await
            .expect("append through the other store");
        assert_eq!(theirs, vec![240, 241], "{}", e.name);
        let ours = store
            .audit_append(&[one("y1")], "0", &mut advance)
            .await
            .expect("append after another writer");
        assert_eq!(ours, vec![242], "{}", e.name);
        let head = store.audit_head(&o.id).await.expect("head");
        assert_eq!(head, Some((243, "243".to_string())), "{}", e.name);
        other.close().await;
        store.close().await;
    }
}

/// Batches larger than a statement's rows, spread over several logs, one of
/// them new: every entry lands in its own log at the index returned, with
/// its columns intact, and the nodes and heads follow.
#[tokio::test]
async fn a_batch_over_several_logs_keeps_every_entry_in_its_own_log() {
    for e in engines().await {
        let (store, o, _) = seeded(&e.url).await;
        let entry = |log: &str, n: usize| AuditAppend {
            log_id: log.to_string(),
            leaf_hash: format!("{log}-{n}"),
            body: format!("{{\"n\": {n}, \"s\": \"quote \\\" é\"}}"),
            time: n as i64,
            principal: format!("p{n}"),
            action: "a".into(),
            decision: if n.is_multiple_of(2) { "allow" } else { "deny" }.into(),
        };
        let mut advance = |log: &str, size: i64, _: &str, leaves: &[&str]| {
            let end = size + leaves.len() as i64;
            let nodes = (size..end)
                .map(|i| (4, i as u64, format!("{log}:{i}")))
                .collect();
            Ok((format!("{end}"), nodes))
        };
        let logs = [o.id.as_str(), "log_b", "log_c"];
        store
            .audit_append(&[entry(logs[0], 0), entry(logs[1], 0)], "0", &mut advance)
            .await
            .expect("first append");
        // Both heads known (SQLite's bound-parameter path, three padded
        // statements), then a batch that also opens a new log.
        let first: Vec<AuditAppend> = (1..=40).map(|n| entry(logs[n % 2], n)).collect();
        let second: Vec<AuditAppend> = (41..=60).map(|n| entry(logs[n % 3], n)).collect();
        let mut indices = store
            .audit_append(&first, "0", &mut advance)
            .await
            .expect("first batch");
        indices.extend(
            store
                .audit_append(&second, "0", &mut advance)
                .await
                .expect("second batch"),
        );
        let batch: Vec<AuditAppend> = first.into_iter().chain(second).collect();
        for (n, log) in logs.iter().enumerate() {
            let rows = store
                .audit_list(log, &AuditFilter::default(), None, 100)
                .await
                .expect("list");
            let expected: Vec<&AuditAppend> = batch.iter().filter(|a| a.log_id == *log).collect();
            let offset = if n < 2 { 1 } else { 0 };
            assert_eq!(rows.len(), expected.len() + offset, "{}: {log}", e.name);
            for (row, want) in rows[offset..].iter().zip(&expected) {
                assert_eq!(row.leaf_hash, want.leaf_hash, "{}", e.name);
                assert_eq!(row.body.as_deref(), Some(want.body.as_str()), "{}", e.name);
                let at = batch.iter().position(|a| a.leaf_hash == want.leaf_hash);
                assert_eq!(at.map(|i| indices[i]), Some(row.index), "{}", e.name);
            }
            let denied = store
                .audit_list(
                    log,
                    &AuditFilter {
                        decision: Some("deny".into()),
                        since: Some(10),
                        ..AuditFilter::default()
                    },
                    None,
                    100,
                )
                .await
                .expect("filtered list");
            let want = expected
                .iter()
                .filter(|a| a.decision == "deny" && a.time >= 10)
                .count();
            assert_eq!(denied.len(), want, "{}: {log}", e.name);
            let size = (expected.len() + offset) as i64;
            assert_eq!(
                store.audit_head(log).await.expect("head"),
                Some((size, size.to_string())),
                "{}",
                e.name
            );
            let last = (4, size as u64 - 1);
            let nodes = store.audit_nodes(log, &[last]).await.expect("nodes");
            assert_eq!(
                nodes.get(&last),
                Some(&format!("{log}:{}", size - 1)),
                "{}",
                e.name
            );
        }
        store.close().await;
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_message() {
    for e in engines().await {
        let store = Store::open(&e.url, &StoreOptions::default())
            .await
            .expect("open");
        store.close().await;
        // Simulate a database migrated by a newer nuage.
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&e.url).await.expect("connect");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
             VALUES (99990101000000, 'from the future', CURRENT_TIMESTAMP, TRUE, 'x', 0)",
        )
        .execute(&mut conn)
        .await
        .expect("insert future migration");
        drop(conn);
        // Reopening twice also proves migrations are idempotent up to that point.
        match Store::open(&e.url, &StoreOptions::default()).await {
            Err(StoreError::SchemaTooNew { found, known }) => {
                assert_eq!(found, 99990101000000, "{}", e.name);
                assert!(known < found);
                let msg = StoreError::SchemaTooNew { found, known }.to_string();
                assert!(msg.contains("newer than this nuage binary"), "{msg}");
            }
            Err(other) => panic!("{}: wrong error {other}", e.name),
            Ok(_) => panic!("{}: a newer schema was accepted", e.name),
        }
    }
}

/// A project with a key and a bucket whose quota allows `quota_objects`.
async fn bucket_with_key(store: &Store, o: &Org, u: &Principal, quota_objects: i64) -> BucketRow {
    let p = project(o, "objects");
    store.project_create(&p, 100).await.expect("project");
    let key = KeyRow {
        id: "key_groupcommit".into(),
        org_id: o.id.clone(),
        project_id: p.id.clone(),
        name: "default".into(),
        description: String::new(),
        manager_id: None,
        state: "enabled".into(),
        primary_version: 1,
        justifications: None,
        destroy_at: None,
        generation: 1,
        created_at: 1,
        updated_at: 1,
    };
    let version = KeyVersionRow {
        key_id: key.id.clone(),
        version: 1,
        state: "enabled".into(),
        material: Some("not used by this test".into()),
        external_ref: None,
        created_at: 1,
        destroyed_at: None,
    };
    store.kms_key_create(&key, &version).await.expect("key");
    let b = BucketRow {
        id: "bkt_groupcommit".into(),
        org_id: o.id.clone(),
        project_id: p.id.clone(),
        name: "group-commit".into(),
        key_id: key.id.clone(),
        key_name: key.name.clone(),
        created_by: u.id.clone(),
        generation: 1,
        created_at: 1,
        updated_at: 1,
        settings: String::new(),
        used_bytes: 0,
        used_objects: 0,
        quota_bytes: 0,
        quota_objects: 0,
    };
    store.bucket_create(&b).await.expect("bucket");
    store
        .bucket_set_quota(&b.id, 0, quota_objects)
        .await
        .expect("quota");
    b
}

fn version(b: &BucketRow, key: &str, n: usize) -> (DataKeyRow, ObjectRow) {
    let dek = DataKeyRow {
        id: format!("dek_{key}_{n}"),
        key_id: b.key_id.clone(),
        key_version: 1,
        owner: format!("obv_{key}_{n}"),
        wrapped: "sealed".into(),
        created_at: 1,
    };
    let row = ObjectRow {
        version_id: format!("obv_{key}_{n}"),
        bucket_id: b.id.clone(),
        key: key.to_string(),
        size: 10,
        etag: format!("etag-{n}"),
        data_key_id: dek.id.clone(),
        sealed_meta: String::new(),
        created_at: 1,
        part_count: 0,
        inline_body: None,
    };
    (dek, row)
}

/// In a versioned bucket, concurrent PUTs of one key committed in groups
/// each become a version of their own, the last committed the latest; a
/// small body kept in its row comes back whole from a read of the row and
/// only as a marker from a listing.
#[tokio::test(flavor = "current_thread")]
async fn grouped_puts_in_a_versioned_bucket_keep_every_version_and_inline_bodies() {
    for e in engines().await {
        let (store, o, u) = seeded(&e.url).await;
        let b = bucket_with_key(&store, &o, &u, 0).await;
        store
            .bucket_versioning_set(&b.id, Versioning::Enabled)
            .await
            .expect("versioning on");
        let before = store.object_commit_stats();
        let jobs: Vec<_> = (1..=24)
            .map(|n| {
                let (dek, mut row) = version(&b, "same", n);
                row.inline_body = Some(format!("c2VhbGVk{n:02}"));
                (dek, row)
            })
            .collect();
        let results = futures::future::join_all(
            jobs.iter()
                .map(|(dek, row)| store.object_put(Some(dek), row, &WriteIf::Always)),
        );
        // Refused in the same group (no quota: no savepoint) and leaving
        // nothing behind: a condition that does not hold.
        let (refused_dek, refused) = version(&b, "same", 99);
        let (results, refusal) = futures::future::join(
            results,
            store.object_put(
                Some(&refused_dek),
                &refused,
                &WriteIf::ETag("not-this".into()),
            ),
        )
        .await;
        let err = refusal.expect_err("a failed condition is refused");
        assert_eq!(err.status.as_u16(), 412, "{}: {err:?}", e.name);
        assert!(
            store
                .kms_data_key_get(&refused_dek.id)
                .await
                .expect("dek get")
                .is_none(),
            "{}: the refused put kept its key",
            e.name
        );
        let after = store.object_commit_stats();
        assert!(
            after.transactions - before.transactions < 25,
            "{}: no group formed",
            e.name
        );
        for ((_, row), r) in jobs.iter().zip(&results) {
            let placed = r.as_ref().expect("put");
            assert_eq!(placed.version_id.as_deref(), Some(row.version_id.as_str()));
            assert!(
                placed.replaced.is_none(),
                "{}: a version was replaced",
                e.name
            );
        }
        let listed = store
            .version_list(&b.id, "", "", None, 100)
            .await
            .expect("list versions");
        assert_eq!(listed.len(), 24, "{}", e.name);
        assert_eq!(listed.iter().filter(|v| v.latest).count(), 1, "{}", e.name);
        assert!(
            listed
                .iter()
                .all(|v| v.row.inline_body.as_deref() == Some("")),
            "{}: listings carry bodies",
            e.name
        );
        let latest = store
            .object_get(&b.id, "same")
            .await
            .expect("get")
            .expect("a current version");
        let (_, want) = jobs
            .iter()
            .find(|(_, r)| r.version_id == latest.version_id)
            .expect("the latest is one of the puts");
        assert_eq!(latest.inline_body, want.inline_body, "{}", e.name);
        // On SQLite the latest version is read on the caller's thread; it
        // must be the very row the pool reads by id.
        let served = store.point_reads_served();
        let via_latest = store
            .version_latest(&b.id, "same")
            .await
            .expect("latest")
            .expect("a latest version");
        let via_id = store
            .version_get(&b.id, "same", &latest.version_id)
            .await
            .expect("by id")
            .expect("the version");
        assert_eq!(via_latest, via_id, "{}", e.name);
        assert!(via_latest.latest && !via_latest.marker, "{}", e.name);
        assert_eq!(
            store
                .version_latest(&b.id, "absent")
                .await
                .expect("latest of a missing key"),
            None,
            "{}",
            e.name
        );
        let point_reads = store.point_reads_served() - served;
        assert_eq!(
            point_reads,
            if e.name == "sqlite" { 2 } else { 0 },
            "{}: reads on the caller's thread",
            e.name
        );
    }
}

/// Concurrent PUTs share one transaction, yet each is judged alone: a
/// refused condition or an exceeded quota rolls back that PUT and its data
/// key, and its neighbours in the group commit.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_object_puts_commit_in_groups_and_fail_alone() {
    for e in engines().await {
        let (store, o, u) = seeded(&e.url).await;
        // "taken" plus 30 new keys fit; the 31st new key is over quota.
        let b = bucket_with_key(&store, &o, &u, 31).await;
        let (dek, row) = version(&b, "taken", 0);
        store
            .object_put(Some(&dek), &row, &WriteIf::Always)
            .await
            .expect("first put");
        let before = store.object_commit_stats();

        let mut jobs = Vec::new();
        for n in 1..=48 {
            // Every fourth asks for a condition on "taken" that fails.
            let (key, cond) = match n % 8 {
                0 => ("taken".to_string(), WriteIf::Absent),
                4 => ("taken".to_string(), WriteIf::ETag("other".into())),
                _ => (format!("k{n:02}"), WriteIf::Always),
            };
            let (dek, row) = version(&b, &key, n);
            jobs.push((dek, row, cond));
        }
        let results = futures::future::join_all(
            jobs.iter()
                .map(|(dek, row, cond)| store.object_put(Some(dek), row, cond)),
        )
        .await;

        let after = store.object_commit_stats();
        assert_eq!(after.puts - before.puts, 48, "{}", e.name);
        assert!(
            after.transactions - before.transactions < 4,
            "{}: 48 concurrent puts took {} transactions",
            e.name,
            after.transactions - before.transactions
        );
        let mut new_keys = 0;
        for ((dek, row, cond), r) in jobs.iter().zip(&results) {
            let stored_dek = store.kms_data_key_get(&dek.id).await.expect("dek get");
            if *cond != WriteIf::Always {
                let err = r.as_ref().expect_err("a failed condition is refused");
                assert_eq!(err.status.as_u16(), 412, "{}: {err:?}", e.name);
                assert!(stored_dek.is_none(), "{}: refused put kept its key", e.name);
                continue;
            }
            new_keys += 1;
            let current = store.object_get(&b.id, &row.key).await.expect("get");
            if new_keys <= 30 {
                assert!(r.is_ok(), "{}: put {} failed: {r:?}", e.name, row.key);
                assert_eq!(current.map(|c| c.version_id), Some(row.version_id.clone()));
                assert!(
                    stored_dek.is_some(),
                    "{}: committed put lost its key",
                    e.name
                );
            } else {
                let err = r.as_ref().expect_err("over quota");
                assert_eq!(err.code, "quota_exceeded", "{}: {err:?}", e.name);
                assert!(
                    current.is_none(),
                    "{}: {} stored over quota",
                    e.name,
                    row.key
                );
                assert!(
                    stored_dek.is_none(),
                    "{}: over-quota put kept its key",
                    e.name
                );
            }
        }
        assert_eq!(new_keys, 36, "{}", e.name);
        let taken = store.object_get(&b.id, "taken").await.expect("get taken");
        assert_eq!(taken.map(|t| t.version_id), Some("obv_taken_0".into()));
    }
}

/// In a bucket without versioning or quotas a group is written with a few
/// multi-row statements: new keys, overwrites (the replaced row comes back
/// for its body and key to go), conditions judged against the rows as they
/// were, the bucket's usage kept exact — and a group that repeats a key is
/// applied in order, the last PUT winning.
#[tokio::test(flavor = "current_thread")]
async fn grouped_puts_to_distinct_keys_replace_and_account_exactly() {
    for e in engines().await {
        let (store, o, u) = seeded(&e.url).await;
        let b = bucket_with_key(&store, &o, &u, 0).await;
        for key in ["old-a", "old-b", "old-c"] {
            let (dek, row) = version(&b, key, 0);
            store
                .object_put(Some(&dek), &row, &WriteIf::Always)
                .await
                .expect("seed put");
        }
        let before = store.object_commit_stats();
        let mut jobs = Vec::new();
        for n in 1..=40 {
            let (dek, mut row) = version(&b, &format!("new-{n:02}"), n);
            row.size = n as i64;
            jobs.push((dek, row, WriteIf::Always));
        }
        let (dek, row) = version(&b, "old-a", 41);
        jobs.push((dek, row, WriteIf::Always));
        let (dek, row) = version(&b, "old-b", 42);
        jobs.push((dek, row, WriteIf::ETag("etag-0".into())));
        let (dek, row) = version(&b, "old-c", 43);
        jobs.push((dek, row, WriteIf::Absent));
        let (dek, row) = version(&b, "missing", 44);
        jobs.push((dek, row, WriteIf::ETag("etag-0".into())));
        let results = futures::future::join_all(
            jobs.iter()
                .map(|(dek, row, cond)| store.object_put(Some(dek), row, cond)),
        )
        .await;
        let after = store.object_commit_stats();
        assert!(
            after.transactions - before.transactions < 4,
            "{}: 44 concurrent puts took {} transactions",
            e.name,
            after.transactions - before.transactions
        );
        for ((dek, row, _), r) in jobs.iter().zip(&results) {
            let stored_dek = store.kms_data_key_get(&dek.id).await.expect("dek get");
            let current = store.object_get(&b.id, &row.key).await.expect("get");
            match row.key.as_str() {
                "old-c" | "missing" => {
                    let err = r.as_ref().expect_err("a failed condition is refused");
                    let want = if row.key == "old-c" { 412 } else { 404 };
                    assert_eq!(err.status.as_u16(), want, "{}: {err:?}", e.name);
                    assert!(stored_dek.is_none(), "{}: refused put kept its key", e.name);
                    assert_ne!(
                        current.map(|c| c.version_id),
                        Some(row.version_id.clone()),
                        "{}",
                        e.name
                    );
                }
                key => {
                    let placed = r.as_ref().expect("put");
                    assert_eq!(placed.version_id, None, "{}: unversioned", e.name);
                    assert_eq!(current.as_ref(), Some(row), "{}: {key}", e.name);
                    assert!(stored_dek.is_some(), "{}: {key} lost its key", e.name);
                    let replaced = placed.replaced.as_ref().map(|r| r.row.version_id.as_str());
                    if key.starts_with("old-") {
                        assert_eq!(
                            replaced,
                            Some(format!("obv_{key}_0").as_str()),
                            "{}",
                            e.name
                        );
                    } else {
                        assert_eq!(replaced, None, "{}: {key}", e.name);
                    }
                }
            }
        }
        let usage = |b: Option<BucketRow>| b.map(|b| (b.used_bytes, b.used_objects));
        // 40 new keys of 1..=40 bytes, and the three seeded keys of 10.
        assert_eq!(
            usage(store.bucket_get(&b.name).await.expect("bucket")),
            Some(((1..=40).sum::<i64>() + 30, 43)),
            "{}: usage",
            e.name
        );

        // A repeated key in one group: both PUTs succeed, in order.
        let (d1, r1) = version(&b, "twice", 1);
        let (d2, r2) = version(&b, "twice", 2);
        let (a, z) = futures::future::join(
            store.object_put(Some(&d1), &r1, &WriteIf::Always),
            store.object_put(Some(&d2), &r2, &WriteIf::Always),
        )
        .await;
        assert!(a.expect("first").replaced.is_none(), "{}", e.name);
        assert_eq!(
            z.expect("second").replaced.map(|r| r.row.version_id),
            Some(r1.version_id.clone()),
            "{}",
            e.name
        );
        let current = store.object_get(&b.id, "twice").await.expect("get");
        assert_eq!(
            current.map(|c| c.version_id),
            Some(r2.version_id),
            "{}",
            e.name
        );
        assert_eq!(
            usage(store.bucket_get(&b.name).await.expect("bucket")),
            Some(((1..=40).sum::<i64>() + 40, 44)),
            "{}: usage after the repeat",
            e.name
        );
    }
}

/// Every S3 request reads its bucket through the store's cache: a change
/// made through the store is seen by the next read, a deletion at once.
#[tokio::test]
async fn bucket_reads_see_every_change_at_once() {
    for e in engines().await {
        let (store, o, u) = seeded(&e.url).await;
        let b = bucket_with_key(&store, &o, &u, 0).await;
        let read = |store: Store, name: String| async move {
            store
                .bucket_get_with_project(&name)
                .await
                .expect("read")
                .map(|(b, project)| (b.settings, b.quota_objects, project))
        };
        let first = read(store.clone(), b.name.clone()).await;
        assert_eq!(
            first,
            Some((String::new(), 0, Some("objects".to_string()))),
            "{}",
            e.name
        );
        assert!(store
            .bucket_set_settings(&b.id, "", "{\"public_read\":true}")
            .await
            .expect("settings"));
        store.bucket_set_quota(&b.id, 0, 7).await.expect("quota");
        let now = read(store.clone(), b.name.clone()).await;
        assert_eq!(
            now,
            Some((
                "{\"public_read\":true}".to_string(),
                7,
                Some("objects".to_string())
            )),
            "{}: a cached bucket hid a change",
            e.name
        );
        store.bucket_delete(&b.id).await.expect("delete");
        assert_eq!(
            read(store.clone(), b.name.clone()).await,
            None,
            "{}: a deleted bucket is still served",
            e.name
        );
        store.close().await;
    }
}

/// A node task is claimed once, finished once, and cancelled only while
/// nobody claimed it: an agent and a request that gave up never both win.
#[tokio::test]
async fn node_tasks_move_one_step_at_a_time() {
    for e in engines().await {
        let (store, _, _) = seeded(&e.url).await;
        let task = |id: &str| nuage_store::NodeTaskRow {
            id: id.into(),
            node_id: "node_a".into(),
            instance_id: "ins_1".into(),
            task: r#"{"kind":"reboot"}"#.into(),
            state: "pending".into(),
            message: String::new(),
            created_at: 1,
            updated_at: 1,
        };
        store.node_task_create(&task("t1")).await.unwrap();
        store.node_task_create(&task("t2")).await.unwrap();
        assert!(store.node_task_create(&task("t1")).await.is_err());
        let pending = store.node_tasks_pending("node_a").await.unwrap();
        assert_eq!(pending.len(), 2, "{}", e.name);
        assert!(store.node_tasks_pending("node_b").await.unwrap().is_empty());

        // Another node cannot claim it; its own node can, once.
        assert!(!store
            .node_task_step("t1", "node_b", "pending", "running", "")
            .await
            .unwrap());
        assert!(store
            .node_task_step("t1", "node_a", "pending", "running", "")
            .await
            .unwrap());
        assert!(!store
            .node_task_step("t1", "node_a", "pending", "running", "")
            .await
            .unwrap());
        // Claimed: the request can no longer cancel it.
        assert!(!store
            .node_task_step("t1", "node_a", "pending", "cancelled", "")
            .await
            .unwrap());
        assert!(store
            .node_task_step("t1", "node_a", "running", "failed", "no VM")
            .await
            .unwrap());
        assert!(!store
            .node_task_step("t1", "node_a", "running", "done", "")
            .await
            .unwrap());
        let t1 = store.node_task_get("t1").await.unwrap().unwrap();
        assert_eq!(
            (t1.state.as_str(), t1.message.as_str()),
            ("failed", "no VM")
        );

        // Cancelled while pending: the agent cannot claim it any more.
        assert!(store
            .node_task_step("t2", "node_a", "pending", "cancelled", "")
            .await
            .unwrap());
        assert!(!store
            .node_task_step("t2", "node_a", "pending", "running", "")
            .await
            .unwrap());
        assert!(store.node_tasks_pending("node_a").await.unwrap().is_empty());
        store.node_task_delete("t2").await.unwrap();
        assert!(store.node_task_get("t2").await.unwrap().is_none());

        // Old tasks go; recent ones stay.
        let mut fresh = task("t3");
        fresh.updated_at = i64::MAX / 2;
        store.node_task_create(&fresh).await.unwrap();
        let an_hour_on = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            + 3_600_000;
        assert_eq!(
            store.node_tasks_sweep(1_000).await.unwrap(),
            0,
            "{}",
            e.name
        );
        assert_eq!(
            store.node_tasks_sweep(an_hour_on).await.unwrap(),
            1,
            "{}",
            e.name
        );
        assert!(store.node_task_get("t1").await.unwrap().is_none());
        assert!(store.node_task_get("t3").await.unwrap().is_some());
    }
}

/// Closing a SQLite store closes every connection, the WAL checkpointer's
/// included: the last one to close checkpoints the log and removes it, so
/// a WAL file left behind means a connection (or the checkpointer task)
/// outlived `close`.
#[tokio::test]
async fn closing_a_sqlite_store_stops_the_checkpointer_and_leaves_no_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let (store, _o, _u) = seeded(&url).await;
    let wal = dir.path().join("t.db-wal");
    assert!(wal.exists(), "a write goes through the WAL first");
    tokio::time::timeout(std::time::Duration::from_secs(10), store.close())
        .await
        .expect("close returns: the checkpointer stopped");
    assert!(!wal.exists(), "a connection was still open after close");
    // The data survived the close and the store opens again.
    let again = Store::open(&url, &StoreOptions::default())
        .await
        .expect("reopen");
    assert!(again.org_get("acme").await.expect("read").is_some());
    again.close().await;
}

/// The operator's storage quota is kept by project name: set before the
/// project exists it applies at creation, set later it changes the
/// project's row, `0` removes it, and the organization's deletion takes
/// the recorded quotas with it.
#[tokio::test]
async fn a_storage_quota_is_kept_by_project_name() {
    for e in engines().await {
        let (store, o, _) = seeded(&e.url).await;
        store
            .project_set_storage_quota(&o.id, "web", 1000, 7)
            .await
            .expect("quota before the project");
        let web = project(&o, "web");
        store.project_create(&web, 10).await.expect("create web");
        let (_, _, bytes, objects) = store.project_storage(&web.id).await.expect("storage");
        assert_eq!(
            (bytes, objects),
            (1000, 7),
            "{}: applied at creation",
            e.name
        );
        store
            .project_set_storage_quota(&o.id, "web", 2000, 0)
            .await
            .expect("quota on the project");
        let (_, _, bytes, objects) = store.project_storage(&web.id).await.expect("storage");
        assert_eq!((bytes, objects), (2000, 0), "{}: changed", e.name);
        store
            .project_set_storage_quota(&o.id, "web", 0, 0)
            .await
            .expect("quota removed");
        let (_, _, bytes, objects) = store.project_storage(&web.id).await.expect("storage");
        assert_eq!((bytes, objects), (0, 0), "{}: removed", e.name);
        let other = project(&o, "other");
        store
            .project_create(&other, 10)
            .await
            .expect("create other");
        let (_, _, bytes, _) = store.project_storage(&other.id).await.expect("storage");
        assert_eq!(bytes, 0, "{}: another name has none", e.name);
        assert!(
            store
                .project_set_storage_quota("org_missing", "web", 1, 1)
                .await
                .is_err(),
            "{}: a missing organization",
            e.name
        );
        store
            .project_set_storage_quota(&o.id, "ghost", 5, 5)
            .await
            .expect("quota for a name no project holds");
        for p in [&web, &other] {
            store
                .project_delete(&o.id, &p.id, None)
                .await
                .expect("delete project");
        }
        store
            .org_delete(&o.id)
            .await
            .unwrap_or_else(|err| panic!("{}: org delete: {}", e.name, err.detail));
        store.close().await;
    }
}
