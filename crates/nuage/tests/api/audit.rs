//! The audit log: every decision recorded before the answer, signed
//! checkpoints, inclusion and consistency proofs, offline verification that
//! finds edits, removals, reorderings and insertions.

use std::io::Cursor;

use http::Method;
use nuage_audit::merkle::{
    parse_hex_hash, verify_consistency, verify_inclusion, CompactRange, Hash,
};
use nuage_audit::note::NoteVerifier;
use nuage_audit::verify::{verify_consistency_between, verify_export, Problem};
use serde_json::{json, Value};

use crate::common::Srv;

async fn entries(s: &Srv, org: &str, tok: &str) -> Vec<Value> {
    let r = s
        .t(
            Method::GET,
            &format!("/v1/orgs/{org}/audit/entries?limit=1000"),
            tok,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_decision_is_recorded_before_the_answer() {
    let s = Srv::start().await;
    let a = s.org("alpha").await;
    let viewer = s.user("alpha", &a, "vera", Some("viewer")).await;
    let b = s.org("bravo").await;
    let r = s
        .t(Method::GET, "/v1/orgs/alpha/projects", &viewer, None)
        .await;
    let allowed_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/alpha/projects",
            &viewer,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, 403);
    let denied_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let r = s.t(Method::GET, "/v1/orgs/alpha/projects", &b, None).await;
    assert_eq!(r.status, 404);
    let probe_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let r = s
        .t(Method::GET, "/v1/orgs/alpha/projects", "nuage_bogus", None)
        .await;
    assert_eq!(r.status, 401);
    let anon_id = r.body["request_id"].as_str().unwrap().to_string();

    let log = entries(&s, "alpha", &a).await;
    let find = |log: &[Value], id: &str| {
        log.iter()
            .find(|e| e["record"]["request_id"] == id)
            .cloned()
    };
    let e = find(&log, &allowed_id).expect("allowed read recorded");
    assert_eq!(e["record"]["decision"], "allow");
    assert_eq!(e["record"]["action"], "project.list");
    assert_eq!(e["record"]["policies"], json!(["role:viewer"]));
    assert_eq!(e["record"]["source"], "127.0.0.1");
    let e = find(&log, &denied_id).expect("denied write recorded");
    assert_eq!(e["record"]["decision"], "deny");
    assert_eq!(e["record"]["status"], 403);
    assert_eq!(e["record"]["principal_name"], "vera");
    assert!(
        find(&log, &probe_id).is_none(),
        "B's probe is not in A's log"
    );
    let blog = entries(&s, "bravo", &b).await;
    let e = find(&blog, &probe_id).expect("B's probe is in B's log");
    assert_eq!(
        (
            e["record"]["decision"].as_str(),
            e["record"]["status"].as_u64()
        ),
        (Some("deny"), Some(404))
    );
    let r = s
        .a(Method::GET, "/admin/v1/audit/entries?limit=1000", None)
        .await;
    let plog = r.body["items"].as_array().unwrap().clone();
    let e = find(&plog, &anon_id).expect("unauthenticated request in the platform log");
    assert_eq!(e["record"]["principal"], "anonymous");
    assert_eq!(e["record"]["status"], 401);
    // filters
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/alpha/audit/entries?decision=deny&action=project.create",
            &a,
            None,
        )
        .await;
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", r.text);
    s.shutdown().await;
}

#[tokio::test]
async fn checkpoints_are_signed_and_proofs_verify() {
    let s = Srv::start().await;
    let a = s.org("alpha").await;
    for n in ["a", "b", "c"] {
        s.t(
            Method::POST,
            "/v1/orgs/alpha/projects",
            &a,
            Some(json!({"name": n})),
        )
        .await;
    }
    let key = s
        .t(Method::GET, "/v1/orgs/alpha/audit/public-key", &a, None)
        .await;
    let verifier: NoteVerifier = key.body["verifier_key"].as_str().unwrap().parse().unwrap();
    let r = s
        .t(Method::POST, "/v1/orgs/alpha/audit/checkpoint", &a, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let old_note = r.body["note"].as_str().unwrap().to_string();
    let old = verifier
        .verify_checkpoint(&old_note)
        .expect("signature verifies");
    assert!(
        old.origin.starts_with("nuage.local/audit/org_"),
        "{}",
        old.origin
    );
    assert!(old.size >= 4);
    let log = entries(&s, "alpha", &a).await;
    for e in log.iter().take(old.size as usize) {
        let index = e["index"].as_u64().unwrap();
        let r = s
            .t(
                Method::GET,
                &format!(
                    "/v1/orgs/alpha/audit/proofs/inclusion?index={index}&size={}",
                    old.size
                ),
                &a,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let proof: Vec<_> = r.body["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| parse_hex_hash(h.as_str().unwrap()).unwrap())
            .collect();
        let leaf = parse_hex_hash(e["leaf_hash"].as_str().unwrap()).unwrap();
        verify_inclusion(&leaf, index, old.size, &proof, &old.root).expect("inclusion verifies");
        let leaf_from_body = nuage_audit::verify::entry_leaf_hash(&e["record"]);
        assert_eq!(leaf_from_body, leaf, "leaf hash is the hash of the record");
    }
    for n in ["d", "e"] {
        s.t(
            Method::POST,
            "/v1/orgs/alpha/projects",
            &a,
            Some(json!({"name": n})),
        )
        .await;
    }
    let r = s
        .t(Method::POST, "/v1/orgs/alpha/audit/checkpoint", &a, None)
        .await;
    let new_note = r.body["note"].as_str().unwrap().to_string();
    let new = verifier.verify_checkpoint(&new_note).unwrap();
    assert!(new.size > old.size);
    let r = s
        .t(
            Method::GET,
            &format!(
                "/v1/orgs/alpha/audit/proofs/consistency?from={}&to={}",
                old.size, new.size
            ),
            &a,
            None,
        )
        .await;
    let proof: Vec<_> = r.body["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| parse_hex_hash(h.as_str().unwrap()).unwrap())
        .collect();
    verify_consistency_between(&old_note, &new_note, &proof, &verifier)
        .expect("the new log extends the old one");
    let mut bad = proof.clone();
    bad[0][0] ^= 1;
    assert!(verify_consistency_between(&old_note, &new_note, &bad, &verifier).is_err());
    let r = s
        .t(
            Method::GET,
            &format!(
                "/v1/orgs/alpha/audit/proofs/inclusion?index={}&size={}",
                new.size, new.size
            ),
            &a,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_proof_request"));
    s.shutdown().await;
}

fn hashes(body: &Value) -> Vec<Hash> {
    body["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| parse_hex_hash(h.as_str().unwrap()).unwrap())
        .collect()
}

/// A log of more than 64 entries: proofs mix stored interior nodes (level 4
/// and up) with the lower ones rebuilt from leaves, and all verify.
#[tokio::test]
async fn proofs_verify_in_a_log_deeper_than_the_unstored_levels() {
    let s = Srv::start().await;
    let a = s.org("alpha").await;
    for i in 0..70 {
        let r = s
            .t(
                Method::POST,
                "/v1/orgs/alpha/projects",
                &a,
                Some(json!({"name": format!("p{i}")})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let log = entries(&s, "alpha", &a).await;
    let size = log.len() as u64;
    assert!(size >= 70, "{size}");
    let leaves: Vec<Hash> = log
        .iter()
        .map(|e| parse_hex_hash(e["leaf_hash"].as_str().unwrap()).unwrap())
        .collect();
    let mut roots = vec![CompactRange::new().root()];
    let mut range = CompactRange::new();
    for leaf in &leaves {
        range.append(*leaf);
        roots.push(range.root());
    }
    for (index, leaf) in leaves.iter().enumerate() {
        let r = s
            .t(
                Method::GET,
                &format!("/v1/orgs/alpha/audit/proofs/inclusion?index={index}&size={size}"),
                &a,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        verify_inclusion(
            leaf,
            index as u64,
            size,
            &hashes(&r.body),
            &roots[size as usize],
        )
        .unwrap_or_else(|e| panic!("inclusion of {index}: {e}"));
    }
    for old in [1, 2, 3, 5, 8, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65] {
        let r = s
            .t(
                Method::GET,
                &format!("/v1/orgs/alpha/audit/proofs/consistency?from={old}&to={size}"),
                &a,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let proof = hashes(&r.body);
        verify_consistency(
            old,
            size,
            &roots[old as usize],
            &roots[size as usize],
            &proof,
        )
        .unwrap_or_else(|e| panic!("consistency {old} -> {size}: {e}"));
        let mut bad = proof.clone();
        bad[0][0] ^= 1;
        assert!(
            verify_consistency(old, size, &roots[old as usize], &roots[size as usize], &bad)
                .is_err()
        );
    }
}

#[tokio::test]
async fn exports_verify_offline_and_tampering_is_located() {
    let s = Srv::start().await;
    let a = s.org("alpha").await;
    for n in ["a", "b", "c", "d"] {
        s.t(
            Method::POST,
            "/v1/orgs/alpha/projects",
            &a,
            Some(json!({"name": n})),
        )
        .await;
    }
    let key = s
        .t(Method::GET, "/v1/orgs/alpha/audit/public-key", &a, None)
        .await;
    let verifier: NoteVerifier = key.body["verifier_key"].as_str().unwrap().parse().unwrap();
    let r = s
        .t(Method::GET, "/v1/orgs/alpha/audit/export", &a, None)
        .await;
    assert_eq!(r.status, 200);
    let export = r.text.clone();
    let report = verify_export(Cursor::new(export.as_bytes()), &verifier).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.complete);
    assert!(report.entries_checked >= 5);

    let lines: Vec<&str> = export.lines().collect();
    let check = |text: String| {
        verify_export(Cursor::new(text.into_bytes()), &verifier)
            .unwrap()
            .problems
    };
    // an edited entry
    let mut edited = lines.clone();
    let changed = edited[3].replace("\"status\":201", "\"status\":200");
    assert_ne!(changed, edited[3]);
    edited[3] = &changed;
    let p = check(edited.join("\n"));
    assert!(
        p.iter()
            .any(|p| matches!(p, Problem::Edited { index: 2, .. })),
        "{p:?}"
    );
    // a removed entry
    let mut removed = lines.clone();
    removed.remove(2);
    let p = check(removed.join("\n"));
    assert!(
        p.iter().any(|p| matches!(
            p,
            Problem::Missing {
                from_index: 1,
                to_index: 1
            }
        )),
        "{p:?}"
    );
    // reordered entries
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let p = check(swapped.join("\n"));
    assert!(
        p.iter().any(|p| matches!(p, Problem::OutOfOrder { .. })),
        "{p:?}"
    );
    // an inserted entry
    let mut inserted = lines.clone();
    let forged = nuage_audit::verify::export_line(3, &json!({"action": "project.delete"}), &[]);
    inserted.insert(4, &forged);
    let p = check(inserted.join("\n"));
    assert!(
        p.iter().any(|p| matches!(p, Problem::Inserted { line: 5 })),
        "{p:?}"
    );
    // a checkpoint whose root was changed no longer carries a valid signature
    let mut header: Value = serde_json::from_str(lines[0]).unwrap();
    let note = header["checkpoint"].as_str().unwrap().to_string();
    let mut note_lines: Vec<String> = note.split('\n').map(String::from).collect();
    note_lines[2] = "A".repeat(43) + "=";
    header["checkpoint"] = json!(note_lines.join("\n"));
    let mut forged = lines.clone();
    let forged_header = header.to_string();
    forged[0] = &forged_header;
    assert!(verify_export(Cursor::new(forged.join("\n").into_bytes()), &verifier).is_err());

    // an entry edited in the database behind nuage's back
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", s.data_dir.join("nuage.db").display());
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE audit_entries SET body = REPLACE(body, '\"decision\":\"allow\"', '\"decision\":\"deny\"') WHERE idx = 2")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let r = s
        .t(Method::GET, "/v1/orgs/alpha/audit/export", &a, None)
        .await;
    let report = verify_export(Cursor::new(r.text.into_bytes()), &verifier).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Edited { index: 2, .. })),
        "{:?}",
        report.problems
    );
    s.shutdown().await;
}
