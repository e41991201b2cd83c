//! The KMIP client against a real PyKMIP server (an independent
//! implementation of the protocol). Each test skips when PyKMIP is not
//! installed, unless `NUAGE_TEST_REQUIRE_KMIP` is set.
#![cfg(feature = "test-support")]

use std::time::{Duration, Instant};

use nuage_kms::external::kmip::{KmipClient, KmipConfig, RevocationReason};
use nuage_kms::external::ExternalError;
use nuage_kms::testing::kmip_server::{throwaway_pki, KmipServer, ThrowawayPki};

fn server(test: &str) -> Option<KmipServer> {
    let server = KmipServer::start();
    if server.is_none() {
        eprintln!("{test}: skipped, pykmip-server not available");
    }
    server
}

fn client(cfg: KmipConfig) -> KmipClient {
    KmipClient::new(cfg).expect("client config")
}

async fn active_key(c: &KmipClient, name: &str) -> String {
    let uid = c.create_aes256_key(Some(name)).await.expect("create");
    c.activate(&uid).await.expect("activate");
    uid
}

fn assert_unusable<T: std::fmt::Debug>(r: Result<T, ExternalError>, what: &str) -> String {
    match r {
        Err(ExternalError::KeyUnusable(m)) => m,
        other => panic!("{what}: expected KeyUnusable, got {other:?}"),
    }
}

fn assert_unreachable<T: std::fmt::Debug>(r: Result<T, ExternalError>, port: u16) {
    match r {
        Err(ExternalError::Unreachable(m)) => {
            assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn key_lifecycle_against_pykmip() {
    let Some(srv) = server("key_lifecycle_against_pykmip") else {
        return;
    };
    let c = client(srv.config());
    let uid = active_key(&c, "tenant-kek").await;

    let plaintext: Vec<u8> = (0..64u8).collect();
    let blob = c.encrypt(&uid, &plaintext).await.expect("encrypt");
    assert_eq!(blob.len(), 16 + 80, "iv ‖ 64 bytes padded to 80");
    assert_eq!(
        &c.decrypt(&uid, &blob).await.expect("decrypt")[..],
        &plaintext[..]
    );
    let again = c.encrypt(&uid, &plaintext).await.expect("encrypt");
    assert_ne!(blob, again, "a fresh IV each time");
    assert_eq!(
        &c.decrypt(&uid, &again).await.expect("decrypt")[..],
        &plaintext[..]
    );
    let empty = c.encrypt(&uid, b"").await.expect("encrypt nothing");
    assert!(c.decrypt(&uid, &empty).await.expect("decrypt").is_empty());

    // CBC is not authenticated: a flipped bit gives a padding error or other
    // bytes, never the original and never a panic.
    for i in [0, 20, blob.len() - 1] {
        let mut tampered = blob.clone();
        tampered[i] ^= 0x01;
        let r = c.decrypt(&uid, &tampered).await;
        assert!(
            !matches!(&r, Ok(p) if p[..] == plaintext[..]),
            "tampered byte {i} gave the plaintext"
        );
        assert!(!matches!(r, Err(ExternalError::Unreachable(_))), "{r:?}");
    }
    assert!(matches!(
        c.decrypt(&uid, &blob[..blob.len() - 1]).await,
        Err(ExternalError::Protocol(_))
    ));

    let m = assert_unusable(c.encrypt("no-such-key", b"x").await, "unknown uid");
    assert!(m.contains("no-such-key"), "{m}");
    assert_unusable(c.decrypt("999999", &blob).await, "unknown uid");

    // Keys are private to the identity that created them.
    let other = client(srv.config_for("someone-else"));
    assert_unusable(other.decrypt(&uid, &blob).await, "other identity");

    // A pre-active key cannot be used yet.
    let fresh = c.create_aes256_key(None).await.expect("create");
    assert_unusable(c.encrypt(&fresh, b"x").await, "pre-active key");

    // An active key cannot be destroyed.
    assert_unusable(c.destroy(&uid).await, "destroy active key");

    c.revoke(&uid).await.expect("revoke");
    let m = assert_unusable(c.decrypt(&uid, &blob).await, "revoked key");
    assert!(
        m.contains("Permission Denied") || m.contains("Wrong Key Lifecycle State"),
        "{m}"
    );
    assert_unusable(c.encrypt(&uid, b"x").await, "revoked key");
    assert_unusable(c.revoke(&uid).await, "revoke twice");

    c.destroy(&uid).await.expect("destroy");
    assert_unusable(c.decrypt(&uid, &blob).await, "destroyed key");
    assert_unusable(c.destroy(&uid).await, "destroy twice");

    c.revoke_with(&fresh, RevocationReason::KeyCompromise)
        .await
        .expect("compromise a pre-active key");
    c.destroy(&fresh).await.expect("destroy compromised key");
}

#[tokio::test]
async fn concurrent_calls_share_one_client() {
    let Some(srv) = server("concurrent_calls_share_one_client") else {
        return;
    };
    let c = client(srv.config());
    let uid = active_key(&c, "shared").await;
    let tasks: Vec<_> = (0..12u8)
        .map(|i| {
            let (c, uid) = (c.clone(), uid.clone());
            tokio::spawn(async move {
                let data = vec![i; 32 + usize::from(i)];
                let blob = c.encrypt(&uid, &data).await.expect("encrypt");
                assert_eq!(
                    &c.decrypt(&uid, &blob).await.expect("decrypt")[..],
                    &data[..]
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test]
async fn outage_is_unreachable_and_service_resumes() {
    let Some(mut srv) = server("outage_is_unreachable_and_service_resumes") else {
        return;
    };
    let c = client(KmipConfig {
        timeout: Duration::from_secs(5),
        ..srv.config()
    });
    let uid = active_key(&c, "survivor").await;
    let blob = c.encrypt(&uid, b"data key").await.expect("encrypt");

    srv.stop();
    let started = Instant::now();
    // The first call finds the kept connection dead, then cannot reconnect.
    assert_unreachable(c.decrypt(&uid, &blob).await, srv.port());
    assert_unreachable(c.encrypt(&uid, b"x").await, srv.port());
    assert_unreachable(c.create_aes256_key(None).await, srv.port());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    srv.restart();
    assert_eq!(
        &c.decrypt(&uid, &blob).await.expect("decrypt after restart")[..],
        b"data key"
    );

    // A restart while connections are kept is also transparent.
    srv.restart();
    assert_eq!(
        &c.decrypt(&uid, &blob).await.expect("decrypt after restart")[..],
        b"data key"
    );
}

#[tokio::test]
async fn client_from_foreign_ca_is_refused() {
    let Some(srv) = server("client_from_foreign_ca_is_refused") else {
        return;
    };
    let c = client(srv.config_from_foreign_ca());
    match c.create_aes256_key(None).await {
        Err(ExternalError::Unreachable(m)) | Err(ExternalError::Protocol(m)) => {
            assert!(m.contains(&format!("127.0.0.1:{}", srv.port())), "{m}")
        }
        other => panic!("foreign client accepted: {other:?}"),
    }
    // The server itself is fine.
    client(srv.config())
        .create_aes256_key(None)
        .await
        .expect("create");
}

#[tokio::test]
async fn server_with_unknown_ca_is_refused() {
    let Some(srv) = server("server_with_unknown_ca_is_refused") else {
        return;
    };
    let mut cfg = srv.config();
    cfg.ca_pem = throwaway_pki(srv.port()).expect("openssl").client.ca_pem;
    assert_unreachable(client(cfg).create_aes256_key(None).await, srv.port());

    let wrong_name = KmipConfig {
        server_name: Some("kms.example.com".into()),
        ..srv.config()
    };
    assert_unreachable(client(wrong_name).create_aes256_key(None).await, srv.port());
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        // Accept and say nothing until the client gives up.
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(2));
        drop(conn);
    });
    let Some(ThrowawayPki { client: cfg, .. }) = throwaway_pki(port) else {
        return eprintln!("silent_server_times_out: skipped, no openssl");
    };
    let c = client(KmipConfig {
        timeout: Duration::from_millis(500),
        ..cfg
    });
    let started = Instant::now();
    let r = c.encrypt("1", b"x").await;
    let took = started.elapsed();
    assert_unreachable(r, port);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );
    holder.join().unwrap();
}

#[tokio::test]
async fn refused_connection_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let Some(ThrowawayPki { client: cfg, .. }) = throwaway_pki(port) else {
        return eprintln!("refused_connection_is_unreachable: skipped, no openssl");
    };
    let c = client(cfg);
    let started = Instant::now();
    assert_unreachable(c.activate("1").await, port);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// A TLS server that answers every request with `answer`.
async fn fake_server(answer: Vec<u8>) -> Option<(KmipClient, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let pki = throwaway_pki(port)?;
    let certs = rustls_pemfile::certs(&mut pki.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut pki.server_key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut request = [0u8; 8];
            if tls.read_exact(&mut request).await.is_ok() {
                let _ = tls.write_all(&answer).await;
                let _ = tls.shutdown().await;
            }
        }
    });
    Some((client(pki.client), task))
}

#[tokio::test]
async fn malformed_answers_are_protocol_errors() {
    let mut too_long = hex::decode("42007B0100000010").unwrap();
    too_long.extend_from_slice(&[0; 8]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP", b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
        ("huge length", hex::decode("42007B0100F00000").unwrap()),
        ("unaligned length", hex::decode("42007B0100000005").unwrap()),
        (
            "bad body",
            hex::decode("42007B010000001042000F07000000100000000000000000").unwrap(),
        ),
        ("empty message", hex::decode("42007B0100000000").unwrap()),
    ];
    for (what, answer) in cases {
        let Some((c, task)) = fake_server(answer).await else {
            return eprintln!("malformed_answers_are_protocol_errors: skipped, no openssl");
        };
        match c.create_aes256_key(None).await {
            Err(ExternalError::Protocol(m)) => eprintln!("{what}: {m}"),
            other => panic!("{what}: expected Protocol, got {other:?}"),
        }
        task.abort();
    }
    // A response cut short is a broken connection, not a bad message.
    let Some((c, task)) = fake_server(too_long).await else {
        return;
    };
    assert!(matches!(
        c.create_aes256_key(None).await,
        Err(ExternalError::Unreachable(_))
    ));
    task.abort();
}
