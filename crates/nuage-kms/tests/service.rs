//! The key service as other services use it, on a real SQLite store and
//! real external key managers (PyKMIP, OpenBao): owner binding, rotation
//! and rewrap, crypto-shredding proven by scanning every file, and keys
//! held outside nuage that stop working when their owner revokes them.
#![cfg(feature = "test-support")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nuage_core::model::kms::{Justification, KeyManagerKind, KmipEndpoint, TransitEndpoint};
use nuage_kms::root::SealConfig;
use nuage_kms::testing::{kmip_server::KmipServer, openbao_server::OpenBaoServer, org_and_project};
use nuage_kms::{stream, Kms, KmsConfig, Purpose};
use nuage_store::{Store, StoreOptions};

struct Env {
    dir: tempfile::TempDir,
    store: Store,
    org: String,
    project: String,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("data/nuage.db").display()
        );
        let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
        let (org, project) = org_and_project(&store, "acme").await.unwrap();
        Env {
            dir,
            store,
            org,
            project,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn kms(&self, ttl: Duration) -> Kms {
        Kms::load(
            self.store.clone(),
            SealConfig::KeyFile(self.dir.path().join("seal.key")),
            KmsConfig {
                cache_ttl: ttl,
                external_timeout: Duration::from_secs(2),
                ..KmsConfig::default()
            },
        )
        .await
        .unwrap()
    }
}

fn service() -> Purpose {
    Purpose {
        justification: Justification::ServiceForPrincipal,
        principal: Some("usr_test".into()),
        request_id: Some("req_test".into()),
    }
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

async fn read(
    kms: &Kms,
    project: &str,
    id: &str,
    object: &[u8],
) -> Result<Vec<u8>, nuage_core::ApiError> {
    let (k, _) = kms.unwrap(project, id, "obj-1", &service()).await?;
    stream::decrypt_all(&k, b"obj-1", object)
        .map_err(|e| nuage_core::ApiError::internal(e.to_string()))
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Fails if any file under `dir` holds any of `needles` (raw bytes).
fn assert_absent(dir: &Path, needles: &[(&str, Vec<u8>)]) {
    for (path, content) in files(dir) {
        for (what, n) in needles {
            assert!(!find(&content, n), "{what} found in {}", path.display());
        }
    }
}

#[tokio::test]
async fn data_keys_are_bound_to_their_owner_and_survive_rotation_and_rewrap() {
    let env = Env::new().await;
    let kms = env.kms(Duration::from_secs(30)).await;
    let k = kms
        .key_create(&env.org, &env.project, "objects", "", None, &None)
        .await
        .unwrap();
    let (dk, used) = kms
        .data_key(&env.project, "objects", "obj-1", &service())
        .await
        .unwrap();
    assert_eq!(
        (used.key_id.as_str(), used.key_version, used.operation),
        (k.id.as_str(), 1, "generate_data_key")
    );
    assert_eq!(used.on_behalf_of.as_deref(), Some("usr_test"));
    // another owner, another project: as if the data key did not exist
    let e = kms
        .unwrap(&env.project, &dk.id, "obj-2", &service())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, "not_found");
    let e = kms
        .unwrap("prj_other", &dk.id, "obj-1", &service())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, "not_found");
    // small secrets: sealed for one owner, unreadable for another
    let (sealed, _) = kms
        .seal(
            &env.project,
            "objects",
            "sa-key-1",
            b"s3 secret",
            &service(),
        )
        .await
        .unwrap();
    assert!(!find(&sealed, b"s3 secret"));
    let (opened, _) = kms
        .open(&env.project, "sa-key-1", &sealed, &service())
        .await
        .unwrap();
    assert_eq!(&opened[..], b"s3 secret");
    assert!(kms
        .open(&env.project, "sa-key-2", &sealed, &service())
        .await
        .is_err());

    // rotation: old data keys still unwrap (cold, from the store), new ones
    // use the new version; rewrap moves the old ones without changing them
    let k = kms.key_rotate(&k, None, None).await.unwrap();
    assert_eq!(k.primary_version, 2);
    let cold = env.kms(Duration::ZERO).await;
    let (again, used) = cold
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .unwrap();
    assert_eq!((again.expose(), used.key_version), (dk.key.expose(), 1));
    let (dk2, _) = kms
        .data_key(&env.project, "objects", "obj-2", &service())
        .await
        .unwrap();
    assert_eq!(dk2.key_version, 2);
    let (n, left, uses) = kms.rewrap(&k, 1000).await.unwrap();
    assert_eq!((n, left), (2, 0), "obj-1's key and the sealed secret's key");
    assert!(uses
        .iter()
        .all(|u| u.justification == Justification::Rewrap && u.key_version == 2));
    let (again, used) = cold
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .unwrap();
    assert_eq!((again.expose(), used.key_version), (dk.key.expose(), 2));
    let (opened, _) = cold
        .open(&env.project, "sa-key-1", &sealed, &service())
        .await
        .unwrap();
    assert_eq!(&opened[..], b"s3 secret");
    // a key that accepts only backups refuses a service acting for a user
    let k = kms
        .key_update(&k.id, None, |row| {
            row.justifications = Some("[\"backup\"]".into());
            Ok(())
        })
        .await
        .unwrap();
    let e = kms
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, "justification_denied");
    assert!(kms
        .unwrap(
            &env.project,
            &dk.id,
            "obj-1",
            &Purpose::new(Justification::Backup)
        )
        .await
        .is_ok());
    assert_eq!(k.generation, 3);
}

#[tokio::test]
async fn nothing_is_stored_in_clear_and_a_destroyed_key_leaves_no_way_back() {
    let env = Env::new().await;
    let kms = env.kms(Duration::from_secs(30)).await;
    let k = kms
        .key_create(&env.org, &env.project, "vault", "", None, &None)
        .await
        .unwrap();
    let canary = b"CANARY-7f3a9c1e-the-tenant-secret-".repeat(64);
    // a service stores a large object (chunked format) and a small secret
    let (dk, _) = kms
        .data_key(&env.project, "vault", "obj-1", &service())
        .await
        .unwrap();
    let object =
        stream::encrypt_all(&dk.key, b"obj-1", &canary, stream::DEFAULT_CHUNK_SIZE).unwrap();
    std::fs::create_dir_all(env.data().join("objects")).unwrap();
    std::fs::write(env.data().join("objects/obj-1"), &object).unwrap();
    let (sealed, _) = kms
        .seal(
            &env.project,
            "vault",
            "secret-1",
            &canary[..200],
            &service(),
        )
        .await
        .unwrap();
    std::fs::write(env.data().join("objects/secret-1"), &sealed).unwrap();
    // rotate once so two versions of material exist
    let k = kms.key_rotate(&k, None, None).await.unwrap();
    let (dk2, _) = kms
        .data_key(&env.project, "vault", "obj-2", &service())
        .await
        .unwrap();

    // ordinary writes: no canary, no data key, in any form, anywhere
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("the canary", canary[..64].to_vec()),
        ("a data key", dk.key.expose().to_vec()),
        (
            "a data key (base64)",
            B64.encode(dk.key.expose()).into_bytes(),
        ),
        (
            "a data key (hex)",
            hex::encode(dk.key.expose()).into_bytes(),
        ),
        ("a data key", dk2.key.expose().to_vec()),
    ];
    assert_absent(&env.data(), &secrets);
    // the key file that unseals the root sits outside the data directory
    assert!(!env.data().join("seal.key").exists());

    // what would let anyone with the root key get the data back
    let mut wrapped: Vec<(String, Vec<u8>)> = Vec::new();
    for v in env.store.kms_key_versions(&k.id).await.unwrap() {
        let m = v.material.unwrap();
        wrapped.push((
            format!("material of version {}", v.version),
            m.clone().into_bytes(),
        ));
        wrapped.push((
            format!("raw material of version {}", v.version),
            B64.decode(&m).unwrap(),
        ));
    }
    for id in [&dk.id, &dk2.id] {
        let d = env.store.kms_data_key_get(id).await.unwrap().unwrap();
        wrapped.push((format!("wrapped {id}"), d.wrapped.clone().into_bytes()));
        wrapped.push((format!("raw wrapped {id}"), B64.decode(&d.wrapped).unwrap()));
    }
    let before = files(&env.data())
        .iter()
        .any(|(_, c)| find(c, &wrapped[0].1));
    assert!(
        before,
        "the scan finds wrapped material while the key lives"
    );

    kms.key_destroy(&k.id).await.unwrap();
    for (what, n) in &wrapped {
        secrets.push((what.as_str(), n.clone()));
    }
    assert_absent(&env.data(), &secrets);
    // and nothing can open what the key protected, even with the root key
    let fresh = env.kms(Duration::ZERO).await;
    let e = fresh
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .err()
        .unwrap();
    assert!(e.code == "not_found" || e.code == "key_destroyed", "{e:?}");
    assert!(fresh
        .open(&env.project, "secret-1", &sealed, &service())
        .await
        .is_err());
    // the cache of the process that destroyed it is emptied too
    assert!(kms
        .unwrap(&env.project, &dk2.id, "obj-2", &service())
        .await
        .is_err());
}

#[tokio::test]
async fn keys_scheduled_for_destruction_are_destroyed_when_due() {
    let env = Env::new().await;
    let kms = env.kms(Duration::from_secs(30)).await;
    let k = kms
        .key_create(&env.org, &env.project, "old", "", None, &None)
        .await
        .unwrap();
    let due = nuage_core::time::now_ms() + 7 * 86_400_000;
    kms.key_update(&k.id, None, |row| {
        row.state = "destroy_scheduled".into();
        row.destroy_at = Some(due);
        Ok(())
    })
    .await
    .unwrap();
    assert!(kms.destroy_due(due - 1).await.unwrap().is_empty());
    let done = kms.destroy_due(due).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].state, "destroyed");
    assert!(env.store.kms_key_versions(&k.id).await.unwrap()[0]
        .material
        .is_none());
}

/// Holds a key on PyKMIP, and proves revocation there makes the data
/// unreadable from nuage within the cache TTL, with an error naming it.
#[tokio::test]
async fn a_key_held_on_a_kmip_server_stops_working_when_revoked_there() {
    let Some(mut hsm) = KmipServer::start() else {
        eprintln!("PyKMIP not installed; skipped (scripts/test installs it)");
        return;
    };
    let env = Env::new().await;
    let ttl = Duration::from_millis(1500);
    let kms = env.kms(ttl).await;
    let cfg = hsm.config();
    let client = nuage_kms::external::kmip::KmipClient::new(cfg.clone()).unwrap();
    let uid = client.create_aes256_key(Some("tenant-kek")).await.unwrap();
    client.activate(&uid).await.unwrap();
    let endpoint = KmipEndpoint {
        host: cfg.host.clone(),
        port: cfg.port,
        server_name: cfg.server_name.clone(),
        ca_pem: cfg.ca_pem.clone(),
        client_cert_pem: cfg.client_cert_pem.clone(),
    };
    let m = kms
        .manager_create(
            &env.org,
            "hsm",
            KeyManagerKind::Kmip,
            serde_json::to_string(&endpoint).unwrap(),
            &cfg.client_key_pem,
        )
        .await
        .unwrap();
    // the credential is sealed in the store
    let row = env.store.kms_manager_by_id(&m.id).await.unwrap().unwrap();
    assert!(!row.sealed_secret.contains("PRIVATE KEY"));
    let e = kms
        .key_create(
            &env.org,
            &env.project,
            "byok",
            "",
            Some((&m, "no-such-uid")),
            &None,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, "external_key_unusable", "{e:?}");
    kms.key_create(&env.org, &env.project, "byok", "", Some((&m, &uid)), &None)
        .await
        .unwrap();
    let (dk, _) = kms
        .data_key(&env.project, "byok", "obj-1", &service())
        .await
        .unwrap();
    let object = stream::encrypt_all(&dk.key, b"obj-1", b"held outside nuage", 4096).unwrap();
    let cold = env.kms(Duration::ZERO).await;
    assert_eq!(
        read(&cold, &env.project, &dk.id, &object).await.unwrap(),
        b"held outside nuage"
    );

    // an outage: the cache keeps warm reads going, cold ones fail with a
    // clear 503 naming the key manager, and service resumes on its own
    assert!(read(&kms, &env.project, &dk.id, &object).await.is_ok());
    hsm.stop();
    assert!(
        read(&kms, &env.project, &dk.id, &object).await.is_ok(),
        "served from the cache"
    );
    let e = read(&cold, &env.project, &dk.id, &object)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (e.status.as_u16(), e.code),
        (503, "key_manager_unavailable")
    );
    assert!(e.detail.contains("\"hsm\""), "{}", e.detail);
    hsm.restart();
    assert!(read(&cold, &env.project, &dk.id, &object).await.is_ok());

    // the tenant revokes its key: unreadable within the TTL, error names it
    client.revoke(&uid).await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    for k in [&kms, &cold] {
        let e = read(k, &env.project, &dk.id, &object).await.err().unwrap();
        assert_eq!(e.code, "external_key_unusable", "{e:?}");
        assert!(e.detail.contains(&uid), "{}", e.detail);
    }
}

/// The same promise with OpenBao's Transit engine.
#[tokio::test]
async fn a_key_held_in_openbao_transit_stops_working_when_deleted_there() {
    let Some(bao) = OpenBaoServer::start() else {
        eprintln!("OpenBao not installed; skipped (scripts/test installs it)");
        return;
    };
    let env = Env::new().await;
    let ttl = Duration::from_millis(1500);
    let kms = env.kms(ttl).await;
    let cfg = bao.config();
    let client = nuage_kms::external::transit::TransitClient::new(cfg.clone()).unwrap();
    client.create_key("tenant-kek").await.unwrap();
    let m = kms
        .manager_create(
            &env.org,
            "bao",
            KeyManagerKind::Transit,
            serde_json::to_string(&TransitEndpoint {
                address: cfg.address.clone(),
                mount: cfg.mount.clone(),
                ca_pem: cfg.ca_pem.clone(),
            })
            .unwrap(),
            &cfg.token,
        )
        .await
        .unwrap();
    kms.key_create(
        &env.org,
        &env.project,
        "byok",
        "",
        Some((&m, "tenant-kek")),
        &None,
    )
    .await
    .unwrap();
    let (dk, _) = kms
        .data_key(&env.project, "byok", "obj-1", &service())
        .await
        .unwrap();
    let cold = env.kms(Duration::ZERO).await;
    let (k, _) = cold
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .unwrap();
    assert_eq!(k.expose(), dk.key.expose());
    bao.seal();
    let e = cold
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .err()
        .unwrap();
    assert_eq!(
        (e.status.as_u16(), e.code),
        (503, "key_manager_unavailable"),
        "{e:?}"
    );
    assert!(kms
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .is_ok());
    bao.unseal();
    assert!(cold
        .unwrap(&env.project, &dk.id, "obj-1", &service())
        .await
        .is_ok());
    client.delete_key("tenant-kek").await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    for k in [kms, cold] {
        let e = k
            .unwrap(&env.project, &dk.id, "obj-1", &service())
            .await
            .err()
            .unwrap();
        assert_eq!(e.code, "external_key_unusable", "{e:?}");
        assert!(e.detail.contains("tenant-kek"), "{}", e.detail);
    }
}
