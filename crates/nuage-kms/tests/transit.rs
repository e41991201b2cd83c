#![cfg(feature = "test-support")]
//! The Transit client against a real OpenBao dev server over TLS.

use std::time::{Duration, Instant};

use nuage_kms::external::transit::{TransitClient, TransitConfig};
use nuage_kms::external::ExternalError;
use nuage_kms::testing::openbao_server::OpenBaoServer;

fn server() -> Option<OpenBaoServer> {
    let s = OpenBaoServer::start();
    if s.is_none() {
        eprintln!("skipping: OpenBao not available (set NUAGE_TEST_REQUIRE_BAO to fail instead)");
    }
    s
}

fn client(cfg: TransitConfig) -> TransitClient {
    match TransitClient::new(cfg) {
        Ok(c) => c,
        Err(e) => panic!("client: {e}"),
    }
}

fn version_of(ct: &[u8]) -> u32 {
    let s = std::str::from_utf8(ct).unwrap();
    let v = s
        .strip_prefix("vault:v")
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    v.parse().unwrap()
}

#[tokio::test]
async fn round_trip_rotate_and_rewrap() {
    let Some(bao) = server() else { return };
    let c = client(bao.config());
    c.create_key("tenant-a").await.unwrap();
    c.create_key("tenant-a").await.unwrap();

    let dek = [7u8; 32];
    let v1 = c.encrypt("tenant-a", &dek).await.unwrap();
    assert!(v1.starts_with(b"vault:v1:"));
    assert_eq!(&c.decrypt("tenant-a", &v1).await.unwrap()[..], &dek);
    assert_eq!(
        &c.decrypt("tenant-a", &c.encrypt("tenant-a", b"").await.unwrap())
            .await
            .unwrap()[..],
        b""
    );

    c.rotate_key("tenant-a").await.unwrap();
    assert_eq!(&c.decrypt("tenant-a", &v1).await.unwrap()[..], &dek);
    let v2 = c.encrypt("tenant-a", &dek).await.unwrap();
    assert_eq!(version_of(&v2), 2);

    c.rotate_key("tenant-a").await.unwrap();
    let rewrapped = c.rewrap("tenant-a", &v1).await.unwrap();
    assert_eq!(version_of(&rewrapped), 3);
    assert_ne!(rewrapped, v1);
    assert_eq!(&c.decrypt("tenant-a", &rewrapped).await.unwrap()[..], &dek);

    // A clone shares the connection pool and works concurrently.
    let c2 = c.clone();
    let (a, b) = tokio::join!(c.decrypt("tenant-a", &v2), c2.decrypt("tenant-a", &v1));
    assert_eq!(&a.unwrap()[..], &dek);
    assert_eq!(&b.unwrap()[..], &dek);
}

#[tokio::test]
async fn tampered_ciphertext_fails_cleanly() {
    let Some(bao) = server() else { return };
    let c = client(bao.config());
    c.create_key("k").await.unwrap();
    let ct = c
        .encrypt("k", b"a data key of 32 bytes, really!!")
        .await
        .unwrap();

    let mut tampered = ct.clone();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let err = c.decrypt("k", &tampered).await.unwrap_err();
    assert!(matches!(err, ExternalError::Protocol(_)), "{err:?}");
    assert!(err.to_string().contains("authentication failed"), "{err}");

    let mut future = ct.clone();
    future[7] = b'9';
    let err = c.decrypt("k", &future).await.unwrap_err();
    assert!(matches!(err, ExternalError::Protocol(_)), "{err:?}");

    for junk in [
        &b"not a ciphertext"[..],
        b"vault:v1:",
        b"\xff\xfe",
        b"vault:v1:abc\",\"x\":\"",
    ] {
        let err = c.decrypt("k", junk).await.unwrap_err();
        assert!(matches!(err, ExternalError::Protocol(_)), "{err:?}");
        assert!(c.rewrap("k", junk).await.is_err());
    }

    // A ciphertext of another key does not decrypt under this one.
    c.create_key("other").await.unwrap();
    let other = c.encrypt("other", b"x").await.unwrap();
    assert!(c.decrypt("k", &other).await.is_err());
}

#[tokio::test]
async fn unknown_and_deleted_keys_are_unusable() {
    let Some(bao) = server() else { return };
    let c = client(bao.config());

    let err = c.encrypt("never-created", b"x").await.unwrap_err();
    assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");
    assert!(
        err.to_string().contains("encryption key not found"),
        "{err}"
    );
    let err = c.rotate_key("never-created").await.unwrap_err();
    assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");

    c.create_key("doomed").await.unwrap();
    let ct = c.encrypt("doomed", b"secret").await.unwrap();
    let err = c.decrypt("never-created", &ct).await.unwrap_err();
    assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");

    c.delete_key("doomed").await.unwrap();
    for err in [
        c.decrypt("doomed", &ct).await.unwrap_err(),
        c.rewrap("doomed", &ct).await.unwrap_err(),
        c.encrypt("doomed", b"again").await.unwrap_err(),
    ] {
        assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");
    }
    c.delete_key("doomed").await.unwrap();
    c.delete_key("never-created").await.unwrap();

    // A key of another type under the name is refused, not used.
    bao.api(
        "POST",
        "transit/keys/signing",
        Some(serde_json::json!({"type": "ed25519"})),
    )
    .unwrap();
    let err = c.create_key("signing").await.unwrap_err();
    assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");
    let err = c.encrypt("signing", b"x").await.unwrap_err();
    assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");

    // A mount that does not exist.
    let mut cfg = bao.config();
    cfg.mount = "no-such-mount".into();
    let err = client(cfg).encrypt("doomed", b"x").await.unwrap_err();
    assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");
}

#[tokio::test]
async fn bad_key_names_never_reach_the_server() {
    let Some(bao) = server() else { return };
    let c = client(bao.config());
    for name in [
        "",
        "../sys/seal",
        "a/b",
        "..",
        "a..b",
        "k?x=1",
        "k#",
        "k%2f",
        " k",
    ] {
        let err = c.encrypt(name, b"x").await.unwrap_err();
        assert!(
            matches!(err, ExternalError::Protocol(_)),
            "{name:?}: {err:?}"
        );
        assert!(c.delete_key(name).await.is_err());
    }
    let health = bao.api("GET", "sys/health", None).unwrap();
    assert_eq!(health["sealed"], false);
}

#[tokio::test]
async fn token_without_rights_is_refused() {
    let Some(bao) = server() else { return };
    let root = client(bao.config());
    root.create_key("guarded").await.unwrap();
    let ct = root.encrypt("guarded", b"dek").await.unwrap();

    let denied = bao.create_token(r#"path "transit/*" { capabilities = ["deny"] }"#);
    let bogus = "s.not-a-real-token".to_string();
    for token in [denied, bogus] {
        let mut cfg = bao.config();
        cfg.token = token.clone();
        let c = client(cfg);
        for err in [
            c.encrypt("guarded", b"dek").await.unwrap_err(),
            c.decrypt("guarded", &ct).await.unwrap_err(),
            c.rotate_key("guarded").await.unwrap_err(),
        ] {
            assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");
            assert!(err.to_string().contains("permission denied"), "{err}");
            assert!(!err.to_string().contains(&token));
        }
    }

    // Encrypt/decrypt rights only: usable, but may not create a key by
    // encrypting under a new name.
    let limited = bao.create_token(
        r#"path "transit/encrypt/guarded" { capabilities = ["update"] }
           path "transit/decrypt/guarded" { capabilities = ["update"] }"#,
    );
    let mut cfg = bao.config();
    cfg.token = limited;
    let c = client(cfg);
    let again = c.encrypt("guarded", b"dek").await.unwrap();
    assert_eq!(&c.decrypt("guarded", &again).await.unwrap()[..], b"dek");
    let err = c.encrypt("unguarded", b"dek").await.unwrap_err();
    assert!(matches!(err, ExternalError::KeyUnusable(_)), "{err:?}");
}

#[tokio::test]
async fn stopped_server_is_unreachable_quickly() {
    let Some(mut bao) = server() else { return };
    let cfg = bao.config();
    let timeout = cfg.timeout;
    let c = client(cfg);
    c.create_key("k").await.unwrap();
    let ct = c.encrypt("k", b"dek").await.unwrap();

    bao.stop();
    assert!(!bao.is_running());
    for _ in 0..2 {
        let t0 = Instant::now();
        let err = c.decrypt("k", &ct).await.unwrap_err();
        assert!(t0.elapsed() < timeout, "took {:?}", t0.elapsed());
        match &err {
            ExternalError::Unreachable(m) => assert!(m.contains(&bao.address()), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!err.to_string().contains(bao.root_token()));
    }
}

#[tokio::test]
async fn sealed_server_is_unreachable_then_recovers() {
    let Some(bao) = server() else { return };
    let c = client(bao.config());
    c.create_key("k").await.unwrap();
    let ct = c.encrypt("k", b"dek").await.unwrap();

    bao.seal();
    let err = c.decrypt("k", &ct).await.unwrap_err();
    assert!(matches!(err, ExternalError::Unreachable(_)), "{err:?}");
    assert!(err.to_string().contains("sealed"), "{err}");

    bao.unseal();
    assert_eq!(&c.decrypt("k", &ct).await.unwrap()[..], b"dek");
}

#[tokio::test]
async fn untrusted_certificate_is_unreachable() {
    let Some(bao) = server() else { return };
    let mut cfg = bao.config();
    cfg.ca_pem = None;
    let err = client(cfg).create_key("k").await.unwrap_err();
    assert!(matches!(err, ExternalError::Unreachable(_)), "{err:?}");

    // Plain HTTP to a TLS listener fails too, without hanging.
    let mut cfg = bao.config();
    cfg.address = cfg.address.replace("https://", "http://");
    let err = client(cfg).create_key("k").await.unwrap_err();
    assert!(matches!(err, ExternalError::Protocol(_)), "{err:?}");
}

/// A listener that accepts and never answers: the client gives up after its
/// timeout. Needs no OpenBao.
#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            conns.push(s);
        }
    });
    let mut cfg = TransitConfig::new(format!("https://{addr}"), "t");
    cfg.timeout = Duration::from_millis(500);
    let c = client(cfg);
    let t0 = Instant::now();
    let err = c.encrypt("k", b"x").await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, ExternalError::Unreachable(_)), "{err:?}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    hold.abort();
}
