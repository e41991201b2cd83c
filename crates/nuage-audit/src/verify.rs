//! Offline verification of audit exports.
//!
//! An export is JSON Lines: a header carrying a signed checkpoint, then one
//! line per entry with its inclusion proof in that checkpoint's tree. Anyone
//! holding the log's verifier key can therefore check, without trusting the
//! server or the file's custodian, that every exported entry is exactly what
//! was logged, and locate any edit, deletion, reordering or insertion.
//!
//! Canonical entry bytes: an entry's leaf hash is `leaf_hash` of
//! [`canonical_entry_bytes`]: compact JSON with object keys sorted at every
//! level, so a parsed entry re-serialises to the bytes the writer hashed
//! whatever the key order or whitespace in the file, and whatever serde_json
//! features the build enables. Entries should avoid non-integer numbers,
//! which serde_json does not guarantee to round-trip exactly.

use std::collections::BTreeSet;
use std::fmt;
use std::io::BufRead;

use serde_json::{json, Map, Value};

use crate::merkle::{self, leaf_hash, parse_hex_hash, Hash, MerkleError};
use crate::note::{Checkpoint, NoteError, NoteVerifier};

/// Fatal problems that stop verification before entries can be judged.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The export could not be read.
    #[error("could not read the export: {0}")]
    Io(#[from] std::io::Error),
    /// The export has no header line.
    #[error("the export is empty: its first line must be a header")]
    Empty,
    /// The first line is not a header with a checkpoint.
    #[error("line 1 is not a usable export header: {0}")]
    Header(String),
    /// The header's checkpoint is not validly signed or not a checkpoint.
    #[error("the export's checkpoint is not trustworthy: {0}")]
    Checkpoint(NoteError),
    /// The older checkpoint of a consistency check failed verification.
    #[error("the old checkpoint is not trustworthy: {0}")]
    OldCheckpoint(NoteError),
    /// The newer checkpoint of a consistency check failed verification.
    #[error("the new checkpoint is not trustworthy: {0}")]
    NewCheckpoint(NoteError),
    /// The two checkpoints belong to different logs.
    #[error("the checkpoints are for different logs: {old:?} and {new:?}")]
    OriginMismatch { old: String, new: String },
    /// The newer checkpoint does not extend the older one.
    #[error("the log at the new checkpoint does not extend the log at the old checkpoint: {0}")]
    Inconsistent(MerkleError),
}

/// A located problem in an export. Line numbers are 1-based and count the
/// header as line 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The entry's content was changed: its hash no longer matches the leaf
    /// hash its proof authenticates.
    Edited { index: u64, line: u64 },
    /// Entries `from_index..=to_index` are absent (only reported for
    /// exports whose header says `"complete": true`).
    Missing { from_index: u64, to_index: u64 },
    /// An authentic entry appears after an entry with a higher index.
    OutOfOrder { line: u64, index: u64 },
    /// The line is not part of the signed log: its index is duplicated or
    /// beyond the checkpoint size, or its claimed leaf hash and proof do not
    /// prove it.
    Inserted { line: u64 },
    /// The line is not a well-formed export entry.
    Malformed { line: u64, reason: String },
    /// The header is usable but inconsistent or incomplete.
    BadHeader(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Edited { index, line } => write!(
                f,
                "line {line}: entry {index} was altered after it was logged (its content no longer matches its inclusion proof)"
            ),
            Problem::Missing {
                from_index,
                to_index,
            } if from_index == to_index => {
                write!(f, "entry {from_index} is missing from the export")
            }
            Problem::Missing {
                from_index,
                to_index,
            } => write!(
                f,
                "entries {from_index} to {to_index} ({} entries) are missing from the export",
                to_index.saturating_sub(*from_index).saturating_add(1)
            ),
            Problem::OutOfOrder { line, index } => write!(
                f,
                "line {line}: entry {index} is out of order (it comes after an entry with a higher index)"
            ),
            Problem::Inserted { line } => write!(
                f,
                "line {line}: this entry is not part of the signed log (it is forged, duplicated or beyond the checkpoint)"
            ),
            Problem::Malformed { line, reason } => {
                write!(f, "line {line}: not a valid export entry: {reason}")
            }
            Problem::BadHeader(reason) => write!(f, "export header: {reason}"),
        }
    }
}

/// Outcome of verifying an export whose checkpoint signature is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The verified checkpoint the entries were checked against.
    pub checkpoint: Checkpoint,
    /// Whether the header claims the export holds every entry.
    pub complete: bool,
    /// Number of entry lines examined (every non-blank line after the header).
    pub entries_checked: u64,
    /// Problems found, in line order, followed by any missing ranges.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The canonical bytes of an entry: compact JSON with every object's keys
/// sorted, whatever order they came in. Sorting is done here rather than
/// left to serde_json, whose `preserve_order` feature (switched on by other
/// crates of the workspace) keeps keys in input order.
pub fn canonical_entry_bytes(entry: &Value) -> Vec<u8> {
    sorted(entry).to_string().into_bytes()
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The Merkle leaf hash of an entry: `leaf_hash(canonical_entry_bytes(entry))`.
pub fn entry_leaf_hash(entry: &Value) -> Hash {
    leaf_hash(&canonical_entry_bytes(entry))
}

/// The export header line (without trailing newline). `complete` claims
/// that the export holds every entry of the checkpoint's tree.
pub fn export_header(origin: &str, checkpoint_note: &str, complete: bool) -> String {
    json!({
        "type": "header",
        "origin": origin,
        "checkpoint": checkpoint_note,
        "complete": complete,
    })
    .to_string()
}

/// One export entry line (without trailing newline). `proof` is the
/// inclusion proof of `index` in the header checkpoint's tree.
pub fn export_line(index: u64, entry: &Value, proof: &[Hash]) -> String {
    export_line_with_leaf(index, entry, &entry_leaf_hash(entry), proof)
}

/// Same as [`export_line`] with the leaf hash the log holds, which differs
/// from the entry's own hash if the stored entry was altered: the verifier
/// then reports the entry as edited rather than inserted.
pub fn export_line_with_leaf(index: u64, entry: &Value, leaf: &Hash, proof: &[Hash]) -> String {
    json!({
        "type": "entry",
        "index": index,
        "entry": entry,
        "leaf_hash": hex::encode(leaf),
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Reads one line into `buf` without its line ending; false at end of input.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    if reader.read_until(b'\n', buf)? == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(true)
}

struct EntryLine {
    index: u64,
    entry: Value,
    leaf_hash: Hash,
    proof: Vec<Hash>,
}

fn parse_entry_line(bytes: &[u8]) -> Result<EntryLine, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON ({e})"))?;
    let Value::Object(mut obj) = value else {
        return Err("not a JSON object".into());
    };
    match obj.get("type") {
        Some(Value::String(t)) if t == "entry" => {}
        _ => return Err(r#"its "type" is not "entry""#.into()),
    }
    let index = obj
        .get("index")
        .and_then(Value::as_u64)
        .ok_or(r#""index" is missing or not a non-negative integer"#)?;
    let entry = obj.remove("entry").ok_or(r#""entry" is missing"#)?;
    let leaf_hash = obj
        .get("leaf_hash")
        .and_then(Value::as_str)
        .ok_or(r#""leaf_hash" is missing or not a string"#)
        .and_then(|s| parse_hex_hash(s).map_err(|_| r#""leaf_hash" is not a hex SHA-256 hash"#))?;
    let proof = obj
        .get("proof")
        .and_then(Value::as_array)
        .ok_or(r#""proof" is missing or not an array"#)?
        .iter()
        .map(|p| p.as_str().and_then(|s| parse_hex_hash(s).ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or(r#""proof" contains something other than hex SHA-256 hashes"#)?;
    Ok(EntryLine {
        index,
        entry,
        leaf_hash,
        proof,
    })
}

/// Parses and checks the header; returns the checkpoint, the `complete`
/// flag and any non-fatal header problems.
fn check_header(
    bytes: &[u8],
    verifier: &NoteVerifier,
) -> Result<(Checkpoint, bool, Vec<Problem>), VerifyError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| VerifyError::Header(format!("invalid JSON ({e})")))?;
    let Value::Object(obj) = value else {
        return Err(VerifyError::Header("not a JSON object".into()));
    };
    let note = obj
        .get("checkpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::Header(r#""checkpoint" is missing or not a string"#.into()))?;
    let checkpoint = verifier
        .verify_checkpoint(note)
        .map_err(VerifyError::Checkpoint)?;
    let mut problems = Vec::new();
    header_fields(&obj, &checkpoint, &mut problems);
    let complete = match obj.get("complete") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(Problem::BadHeader(
                r#""complete" is not true or false; treating the export as partial"#.into(),
            ));
            false
        }
    };
    Ok((checkpoint, complete, problems))
}

fn header_fields(obj: &Map<String, Value>, checkpoint: &Checkpoint, problems: &mut Vec<Problem>) {
    match obj.get("type") {
        Some(Value::String(t)) if t == "header" => {}
        _ => problems.push(Problem::BadHeader(r#""type" is not "header""#.into())),
    }
    match obj.get("origin").and_then(Value::as_str) {
        None => problems.push(Problem::BadHeader(
            r#""origin" is missing or not a string"#.into(),
        )),
        Some(origin) if origin != checkpoint.origin => problems.push(Problem::BadHeader(format!(
            "header origin {origin:?} differs from the signed checkpoint origin {:?}",
            checkpoint.origin
        ))),
        Some(_) => {}
    }
}

/// Verifies an export: first the checkpoint signature (a bad one is a fatal
/// error), then every entry line against the checkpoint's root.
///
/// Each entry's claimed leaf hash and proof must prove its index; if they
/// do but the content hashes differently, the entry was [`Problem::Edited`];
/// if they do not, the line is [`Problem::Inserted`]. The `leaf_hash` field
/// is otherwise advisory: content that proves itself is accepted. Gaps are
/// reported only when the header says `"complete": true`, since partial
/// (e.g. time-filtered) exports legitimately skip indices.
pub fn verify_export(
    mut reader: impl BufRead,
    verifier: &NoteVerifier,
) -> Result<VerifyReport, VerifyError> {
    let mut buf = Vec::new();
    let mut line_no: u64 = 0;
    let header = loop {
        if !read_line(&mut reader, &mut buf)? {
            return Err(VerifyError::Empty);
        }
        line_no += 1;
        if !buf.trim_ascii().is_empty() {
            break buf.clone();
        }
    };
    let (checkpoint, complete, mut problems) = check_header(&header, verifier)?;

    let mut seen = BTreeSet::new();
    let mut highest: Option<u64> = None;
    let mut entries_checked = 0u64;
    while read_line(&mut reader, &mut buf)? {
        line_no += 1;
        if buf.trim_ascii().is_empty() {
            continue;
        }
        entries_checked += 1;
        let line = line_no;
        let e = match parse_entry_line(&buf) {
            Ok(e) => e,
            Err(reason) => {
                problems.push(Problem::Malformed { line, reason });
                continue;
            }
        };
        if e.index >= checkpoint.size || seen.contains(&e.index) {
            problems.push(Problem::Inserted { line });
            continue;
        }
        let proves = |leaf: &Hash| {
            merkle::verify_inclusion(leaf, e.index, checkpoint.size, &e.proof, &checkpoint.root)
                .is_ok()
        };
        let actual = entry_leaf_hash(&e.entry);
        if !proves(&actual) {
            if e.leaf_hash != actual && proves(&e.leaf_hash) {
                problems.push(Problem::Edited {
                    index: e.index,
                    line,
                });
            } else {
                problems.push(Problem::Inserted { line });
                continue;
            }
        }
        if highest.is_some_and(|h| e.index < h) {
            problems.push(Problem::OutOfOrder {
                line,
                index: e.index,
            });
        }
        highest = Some(highest.map_or(e.index, |h| h.max(e.index)));
        seen.insert(e.index);
    }

    if complete {
        let mut next = 0u64;
        for &index in seen.iter().chain(std::iter::once(&checkpoint.size)) {
            if index > next {
                problems.push(Problem::Missing {
                    from_index: next,
                    to_index: index - 1,
                });
            }
            next = index.saturating_add(1);
        }
    }

    Ok(VerifyReport {
        checkpoint,
        complete,
        entries_checked,
        problems,
    })
}

/// Checks that the log at the checkpoint in `new_note` extends the log at
/// the checkpoint in `old_note`: both signed by `verifier`, same origin, and
/// `proof` is a valid RFC 9162 consistency proof between them. Returns the
/// old and new checkpoints.
pub fn verify_consistency_between(
    old_note: &str,
    new_note: &str,
    proof: &[Hash],
    verifier: &NoteVerifier,
) -> Result<(Checkpoint, Checkpoint), VerifyError> {
    let old = verifier
        .verify_checkpoint(old_note)
        .map_err(VerifyError::OldCheckpoint)?;
    let new = verifier
        .verify_checkpoint(new_note)
        .map_err(VerifyError::NewCheckpoint)?;
    if old.origin != new.origin {
        return Err(VerifyError::OriginMismatch {
            old: old.origin,
            new: new.origin,
        });
    }
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, proof)
        .map_err(VerifyError::Inconsistent)?;
    Ok((old, new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{consistency_proof, inclusion_proof, CompactRange};
    use crate::note::NoteSigner;
    use std::collections::HashMap;

    const ORIGIN: &str = "nuage.local/audit/org_0192test";

    struct TestLog {
        entries: Vec<Value>,
        nodes: HashMap<(u32, u64), Hash>,
        range: CompactRange,
        signer: NoteSigner,
    }

    impl TestLog {
        fn new(n: u64) -> Self {
            let mut log = TestLog {
                entries: Vec::new(),
                nodes: HashMap::new(),
                range: CompactRange::new(),
                signer: NoteSigner::generate("nuage.local/audit").unwrap(),
            };
            for i in 0..n {
                log.append(json!({
                    "seq": i,
                    "actor": format!("user_{}", i % 3),
                    "action": if i % 2 == 0 { "vm.create" } else { "vm.delete" },
                    "detail": {"zone": "eu-west", "ok": true},
                }));
            }
            log
        }

        fn append(&mut self, entry: Value) {
            let leaf = entry_leaf_hash(&entry);
            self.nodes.insert((0, self.range.size), leaf);
            for (level, index, hash) in self.range.append(leaf) {
                self.nodes.insert((level, index), hash);
            }
            self.entries.push(entry);
        }

        fn checkpoint_note(&self) -> String {
            Checkpoint {
                origin: ORIGIN.into(),
                size: self.range.size,
                root: self.range.root(),
            }
            .sign(&self.signer)
            .unwrap()
        }

        fn node(&self) -> impl FnMut(u32, u64) -> Hash + '_ {
            |level, index| self.nodes[&(level, index)]
        }

        /// Export lines (header first), without newlines.
        fn export(&self, complete: bool) -> Vec<String> {
            let size = self.range.size;
            let mut lines = vec![export_header(ORIGIN, &self.checkpoint_note(), complete)];
            let mut node = self.node();
            for (i, entry) in self.entries.iter().enumerate() {
                let proof = inclusion_proof(i as u64, size, &mut node).unwrap();
                lines.push(export_line(i as u64, entry, &proof));
            }
            lines
        }
    }

    fn run(lines: &[String], verifier: &NoteVerifier) -> VerifyReport {
        let text = lines.join("\n") + "\n";
        verify_export(text.as_bytes(), verifier).unwrap()
    }

    /// Line number of entry `index` in an unmodified export.
    fn line_of(index: u64) -> u64 {
        index + 2
    }

    #[test]
    fn canonical_bytes_are_sorted_whatever_the_input_order() {
        let v: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"d": [1, 2], "c": null} }"#).unwrap();
        let w: Value = serde_json::from_str(r#"{"a": {"c": null, "d": [1, 2]}, "b": 1}"#).unwrap();
        assert_eq!(canonical_entry_bytes(&v), canonical_entry_bytes(&w));
        assert_eq!(
            canonical_entry_bytes(&v),
            br#"{"a":{"c":null,"d":[1,2]},"b":1}"#.to_vec()
        );
    }

    #[test]
    fn clean_export_verifies() {
        let log = TestLog::new(30);
        let verifier = log.signer.verifier();
        let report = run(&log.export(true), &verifier);
        assert_eq!(report.problems, vec![]);
        assert!(report.is_clean());
        assert!(report.complete);
        assert_eq!(report.entries_checked, 30);
        assert_eq!(report.checkpoint.size, 30);
        assert_eq!(report.checkpoint.origin, ORIGIN);
        assert_eq!(report.checkpoint.root, log.range.root());
    }

    #[test]
    fn reordered_keys_and_whitespace_still_verify() {
        let log = TestLog::new(5);
        let mut lines = log.export(true);
        let mut node = log.node();
        let proof = inclusion_proof(2, 5, &mut node).unwrap();
        let proof: Vec<String> = proof.iter().map(hex::encode).collect();
        lines[line_of(2) as usize - 1] = format!(
            r#"{{ "proof": {}, "entry": {{ "detail": {{"ok": true, "zone": "eu-west"}}, "seq": 2, "action": "vm.create", "actor": "user_2" }}, "leaf_hash": "{}", "index": 2, "type": "entry" }}"#,
            serde_json::to_string(&proof).unwrap(),
            hex::encode(entry_leaf_hash(&log.entries[2]))
        );
        assert_eq!(run(&lines, &log.signer.verifier()).problems, vec![]);
    }

    #[test]
    fn edited_entry_is_located() {
        let log = TestLog::new(30);
        let mut lines = log.export(true);
        let at = line_of(7) as usize - 1;
        lines[at] = lines[at].replace("vm.delete", "vm.reboot");
        assert!(lines[at].contains("vm.reboot"));
        let report = run(&lines, &log.signer.verifier());
        assert_eq!(
            report.problems,
            vec![Problem::Edited {
                index: 7,
                line: line_of(7)
            }]
        );
        assert!(report.problems[0].to_string().contains("entry 7"));
    }

    #[test]
    fn deleted_line_is_missing() {
        let log = TestLog::new(30);
        let mut lines = log.export(true);
        lines.remove(line_of(12) as usize - 1);
        let verifier = log.signer.verifier();
        assert_eq!(
            run(&lines, &verifier).problems,
            vec![Problem::Missing {
                from_index: 12,
                to_index: 12
            }]
        );

        // Several consecutive deletions and a truncated tail.
        let mut lines = log.export(true);
        lines.truncate(line_of(27) as usize - 1);
        lines.drain(line_of(3) as usize - 1..line_of(6) as usize - 1);
        let problems = run(&lines, &verifier).problems;
        assert_eq!(
            problems,
            vec![
                Problem::Missing {
                    from_index: 3,
                    to_index: 5
                },
                Problem::Missing {
                    from_index: 27,
                    to_index: 29
                }
            ]
        );
        assert_eq!(
            problems[0].to_string(),
            "entries 3 to 5 (3 entries) are missing from the export"
        );
    }

    #[test]
    fn partial_export_does_not_report_gaps() {
        let log = TestLog::new(30);
        let mut lines = log.export(false);
        lines.drain(line_of(0) as usize - 1..line_of(10) as usize - 1);
        lines.truncate(line_of(20) as usize - 1 - 10);
        let report = run(&lines, &log.signer.verifier());
        assert!(!report.complete);
        assert_eq!(report.problems, vec![]);
        assert_eq!(report.entries_checked, 10);

        // A header without the flag defaults to partial.
        let mut header: Value = serde_json::from_str(&lines[0]).unwrap();
        header.as_object_mut().unwrap().remove("complete");
        lines[0] = header.to_string();
        let report = run(&lines, &log.signer.verifier());
        assert!(!report.complete);
        assert_eq!(report.problems, vec![]);
    }

    #[test]
    fn swapped_lines_are_out_of_order() {
        let log = TestLog::new(30);
        let mut lines = log.export(true);
        lines.swap(line_of(3) as usize - 1, line_of(4) as usize - 1);
        let report = run(&lines, &log.signer.verifier());
        assert_eq!(
            report.problems,
            vec![Problem::OutOfOrder {
                line: line_of(4),
                index: 3
            }]
        );
    }

    #[test]
    fn forged_lines_are_inserted() {
        let log = TestLog::new(30);
        let verifier = log.signer.verifier();
        let forged_entry = json!({"seq": 99, "actor": "mallory", "action": "vm.create"});
        let fabricated = [
            [0x42u8; 32],
            [0x17u8; 32],
            [0x99u8; 32],
            [1u8; 32],
            [2u8; 32],
        ];

        // A fabricated entry with its own leaf hash, claiming an unused index
        // beyond the checkpoint, an index that exists, or a plausible proof.
        for (claimed_index, position) in [(30u64, 11usize), (15, 11), (10, 12), (0, 1)] {
            let mut lines = log.export(true);
            let forged = export_line(claimed_index, &forged_entry, &fabricated);
            lines.insert(position, forged);
            let report = run(&lines, &verifier);
            assert_eq!(
                report.problems,
                vec![Problem::Inserted {
                    line: position as u64 + 1
                }],
                "forged index {claimed_index} at line {}",
                position + 1
            );
            assert_eq!(report.entries_checked, 31);
        }

        // An edited entry whose leaf hash was recomputed does not prove itself.
        let mut lines = log.export(true);
        let at = line_of(5) as usize - 1;
        let mut obj: Value = serde_json::from_str(&lines[at]).unwrap();
        obj["entry"]["actor"] = json!("mallory");
        obj["leaf_hash"] = json!(hex::encode(entry_leaf_hash(&obj["entry"])));
        lines[at] = obj.to_string();
        let report = run(&lines, &verifier);
        assert_eq!(
            report.problems,
            vec![
                Problem::Inserted { line: line_of(5) },
                Problem::Missing {
                    from_index: 5,
                    to_index: 5
                }
            ]
        );

        // A genuine line repeated is a duplicate.
        let mut lines = log.export(true);
        let dup = lines[line_of(8) as usize - 1].clone();
        lines.insert(line_of(20) as usize - 1, dup);
        assert_eq!(
            run(&lines, &verifier).problems,
            vec![Problem::Inserted { line: line_of(20) }]
        );
    }

    #[test]
    fn malformed_lines_and_header_problems() {
        let log = TestLog::new(4);
        let verifier = log.signer.verifier();
        let mut lines = log.export(true);
        lines.push("not json".into());
        lines.push(r#"{"type":"entry","index":1}"#.into());
        let mut header: Value = serde_json::from_str(&lines[0]).unwrap();
        header["origin"] = json!("someone.else/log");
        lines[0] = header.to_string();
        let problems = run(&lines, &verifier).problems;
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(matches!(problems[0], Problem::BadHeader(_)));
        assert!(matches!(problems[1], Problem::Malformed { line: 6, .. }));
        assert!(matches!(problems[2], Problem::Malformed { line: 7, .. }));
    }

    #[test]
    fn bad_checkpoint_is_fatal() {
        let log = TestLog::new(10);
        let lines = log.export(true);
        let other = NoteSigner::generate("nuage.local/audit").unwrap();
        let text = lines.join("\n");
        assert!(matches!(
            verify_export(text.as_bytes(), &other.verifier()),
            Err(VerifyError::Checkpoint(_))
        ));

        // A re-signed checkpoint with a different root under a different key.
        let mut header: Value = serde_json::from_str(&lines[0]).unwrap();
        let tampered = header["checkpoint"]
            .as_str()
            .unwrap()
            .replacen("\n10\n", "\n11\n", 1);
        header["checkpoint"] = json!(tampered);
        let mut lines2 = lines.clone();
        lines2[0] = header.to_string();
        assert!(matches!(
            verify_export(lines2.join("\n").as_bytes(), &log.signer.verifier()),
            Err(VerifyError::Checkpoint(_))
        ));

        assert!(matches!(
            verify_export(&b""[..], &log.signer.verifier()),
            Err(VerifyError::Empty)
        ));
        assert!(matches!(
            verify_export(&b"{\"type\":\"header\"}\n"[..], &log.signer.verifier()),
            Err(VerifyError::Header(_))
        ));
    }

    #[test]
    fn consistency_between_checkpoints() {
        let mut log = TestLog::new(13);
        let old_note = log.checkpoint_note();
        let old_size = log.range.size;
        for i in 0..20 {
            log.append(json!({"later": i}));
        }
        let new_note = log.checkpoint_note();
        let verifier = log.signer.verifier();
        let mut node = log.node();
        let proof = consistency_proof(old_size, log.range.size, &mut node).unwrap();
        let (old, new) =
            verify_consistency_between(&old_note, &new_note, &proof, &verifier).unwrap();
        assert_eq!((old.size, new.size), (13, 33));

        let mut bad = proof.clone();
        bad[0][0] ^= 1;
        assert!(matches!(
            verify_consistency_between(&old_note, &new_note, &bad, &verifier),
            Err(VerifyError::Inconsistent(_))
        ));
        // Reversed order is not an extension.
        assert!(matches!(
            verify_consistency_between(&new_note, &old_note, &proof, &verifier),
            Err(VerifyError::Inconsistent(_))
        ));
        // A forked log with the same size at the old checkpoint is rejected.
        let fork = TestLog {
            signer: log.signer.clone(),
            ..TestLog::new(0)
        };
        let mut fork = fork;
        for i in 0..13 {
            fork.append(json!({"fork": i}));
        }
        let fork_note = fork.checkpoint_note();
        assert!(verify_consistency_between(&fork_note, &new_note, &proof, &verifier).is_err());
        let stranger = NoteSigner::generate("nuage.local/audit").unwrap();
        assert!(matches!(
            verify_consistency_between(&old_note, &new_note, &proof, &stranger.verifier()),
            Err(VerifyError::OldCheckpoint(_))
        ));
    }
}
