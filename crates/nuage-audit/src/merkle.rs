//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and
//! proof verification.
//!
//! The audit log is an append-only Merkle tree so that any later edit,
//! deletion or insertion of an entry is detectable from a signed root alone.
//! Storage is left to the caller: the tree is described by *perfect aligned
//! subtrees* addressed as `(level, index)`, covering leaves
//! `[index << level, (index + 1) << level)`. A [`CompactRange`] tracks the
//! right edge of the tree while appending and reports every node it completes,
//! so the caller can persist those nodes and later serve proofs by looking
//! them up through a `node(level, index)` callback.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Errors from generating or verifying Merkle proofs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The leaf index does not exist in a tree of the given size.
    #[error("leaf index {index} is out of range for a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// A consistency proof was requested or checked with the sizes reversed.
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    OldSizeLarger { old_size: u64, new_size: u64 },
    /// The proof does not have the number of hashes this tree shape requires.
    #[error("proof has {actual} hashes but a proof for this tree shape needs exactly {expected}")]
    WrongProofLength { expected: usize, actual: usize },
    /// The root recomputed from an inclusion proof differs from the expected root.
    #[error("inclusion proof leads to root {computed} but the expected root is {expected}")]
    InclusionRootMismatch { computed: String, expected: String },
    /// The old root recomputed from a consistency proof differs from the given old root.
    #[error("consistency proof leads to old root {computed} but the given old root is {expected}")]
    OldRootMismatch { computed: String, expected: String },
    /// The new root recomputed from a consistency proof differs from the given new root.
    #[error("consistency proof leads to new root {computed} but the given new root is {expected}")]
    NewRootMismatch { computed: String, expected: String },
    /// Two trees of the same size have different roots.
    #[error("trees of equal size {size} have different roots {old_root} and {new_root}")]
    EqualSizeRootMismatch {
        size: u64,
        old_root: String,
        new_root: String,
    },
    /// An empty tree was given a root other than the hash of the empty string.
    #[error("an empty tree must have root {expected} but {actual} was given")]
    EmptyTreeRoot { expected: String, actual: String },
}

/// `SHA-256(0x00 || data)`: the RFC 9162 hash of a leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the RFC 9162 hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (requires `n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The right edge of a Merkle tree: the roots of the perfect subtrees in the
/// binary decomposition of `size`, largest (leftmost) first.
///
/// This is all that is needed to append leaves and compute the current root,
/// so it fits in a single database column (serialised with hex hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    /// Number of leaves in the tree.
    pub size: u64,
    /// One hash per set bit of `size`, from the most significant bit down.
    pub hashes: Vec<Hash>,
}

impl CompactRange {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash and returns every node of level >= 1 completed by
    /// this append as `(level, index, hash)`, lowest level first.
    ///
    /// The leaf itself is node `(0, old_size)`; it is not included.
    pub fn append(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let mut created = Vec::new();
        let mut hash = leaf;
        let mut level = 0u32;
        // Each trailing one bit of the old size is a perfect subtree of the
        // same height as the one being carried, so the two merge.
        while (self.size >> level) & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                // Unreachable for a consistent range; stop merging rather
                // than panic on corrupted input.
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            created.push((level, self.size >> level, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        created
    }

    /// The RFC 9162 Merkle tree hash of the whole tree.
    pub fn root(&self) -> Hash {
        let mut iter = self.hashes.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Whether the number of hashes matches the decomposition of `size`.
    pub fn is_well_formed(&self) -> bool {
        self.hashes.len() == self.size.count_ones() as usize
    }
}

#[derive(Serialize, Deserialize)]
struct CompactRangeRepr {
    size: u64,
    hashes: Vec<String>,
}

impl Serialize for CompactRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CompactRangeRepr {
            size: self.size,
            hashes: self.hashes.iter().map(hex::encode).collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CompactRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = CompactRangeRepr::deserialize(deserializer)?;
        let hashes = repr
            .hashes
            .iter()
            .map(|s| parse_hex_hash(s).map_err(D::Error::custom))
            .collect::<Result<Vec<_>, _>>()?;
        let range = CompactRange {
            size: repr.size,
            hashes,
        };
        if !range.is_well_formed() {
            return Err(D::Error::custom(format!(
                "compact range of size {} needs {} hashes, found {}",
                range.size,
                range.size.count_ones(),
                range.hashes.len()
            )));
        }
        Ok(range)
    }
}

/// Error returned by [`parse_hex_hash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a 64-digit hex SHA-256 hash")]
pub struct BadHexHash(pub String);

/// Parses a 64-digit hex string into a [`Hash`].
pub fn parse_hex_hash(s: &str) -> Result<Hash, BadHexHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| BadHexHash(s.to_owned()))?;
    Ok(out)
}

fn hx(h: &Hash) -> String {
    hex::encode(h)
}

/// The RFC 9162 Merkle tree hash of leaves `[start, end)`, built from perfect
/// subtree nodes fetched through `node(level, index)`.
///
/// Aligned power-of-two ranges are fetched as one node; anything else is split
/// at the largest power of two smaller than its length, as in RFC 9162 §2.1.1.
/// The empty range hashes to [`empty_root`].
pub fn range_hash(start: u64, end: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Hash {
    if end <= start {
        return empty_root();
    }
    let n = end - start;
    if n.is_power_of_two() && start & (n - 1) == 0 {
        let level = n.trailing_zeros();
        return node(level, start >> level);
    }
    let k = split_point(n);
    let left = range_hash(start, start + k, node);
    let right = range_hash(start + k, end, node);
    node_hash(&left, &right)
}

/// RFC 9162 §2.1.3.1 PATH(m, D[start:end]), with `m` relative to `start`.
fn path(m: u64, start: u64, end: u64, node: &mut dyn FnMut(u32, u64) -> Hash, out: &mut Vec<Hash>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if m < k {
        path(m, start, start + k, node, out);
        out.push(range_hash(start + k, end, node));
    } else {
        path(m - k, start + k, end, node, out);
        out.push(range_hash(start, start + k, node));
    }
}

/// RFC 9162 §2.1.4.1 SUBPROOF(m, D[start:end], b), with `m` relative to `start`.
fn subproof(
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    node: &mut dyn FnMut(u32, u64) -> Hash,
    out: &mut Vec<Hash>,
) {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(range_hash(start, end, node));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        subproof(m, start, start + k, complete, node, out);
        out.push(range_hash(start + k, end, node));
    } else {
        subproof(m - k, start + k, end, false, node, out);
        out.push(range_hash(start, start + k, node));
    }
}

/// The RFC 9162 inclusion proof (audit path) of leaf `index` in a tree of
/// `size` leaves, ordered from the leaf's sibling up to the root's child.
pub fn inclusion_proof(
    index: u64,
    size: u64,
    node: &mut dyn FnMut(u32, u64) -> Hash,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index, 0, size, node, &mut out);
    Ok(out)
}

/// The RFC 9162 consistency proof that the tree of `old_size` leaves is a
/// prefix of the tree of `new_size` leaves. Empty when `old_size` is 0 or
/// equal to `new_size`.
pub fn consistency_proof(
    old_size: u64,
    new_size: u64,
    node: &mut dyn FnMut(u32, u64) -> Hash,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeLarger { old_size, new_size });
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < new_size {
        subproof(old_size, 0, new_size, true, node, &mut out);
    }
    Ok(out)
}

/// Runs `generate` with a recording node source and returns the requested
/// nodes, sorted and deduplicated.
fn record_nodes(generate: impl FnOnce(&mut dyn FnMut(u32, u64) -> Hash)) -> Vec<(u32, u64)> {
    let mut asked = Vec::new();
    let mut recorder = |level: u32, index: u64| {
        asked.push((level, index));
        [0u8; 32]
    };
    generate(&mut recorder);
    asked.sort_unstable();
    asked.dedup();
    asked
}

/// The `(level, index)` nodes that [`inclusion_proof`] will ask for, so the
/// caller can fetch them in one query before generating the proof. Empty if
/// `index >= size`.
pub fn nodes_needed_for_inclusion(index: u64, size: u64) -> Vec<(u32, u64)> {
    record_nodes(|node| {
        let _ = inclusion_proof(index, size, node);
    })
}

/// The `(level, index)` nodes that [`consistency_proof`] will ask for. Empty
/// if `old > new`.
pub fn nodes_needed_for_consistency(old: u64, new: u64) -> Vec<(u32, u64)> {
    record_nodes(|node| {
        let _ = consistency_proof(old, new, node);
    })
}

/// Number of hashes in an inclusion proof for `index` in a tree of `size`
/// (requires `index < size`).
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let (mut m, mut n, mut len) = (index, size, 0usize);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            n = k;
        } else {
            m -= k;
            n -= k;
        }
        len += 1;
    }
    len
}

/// Number of hashes in a consistency proof (requires `0 < old < new`).
fn consistency_proof_len(old: u64, new: u64) -> usize {
    let (mut m, mut n, mut complete, mut len) = (old, new, true, 0usize);
    while m != n {
        let k = split_point(n);
        if m <= k {
            n = k;
        } else {
            m -= k;
            n -= k;
            complete = false;
        }
        len += 1;
    }
    if !complete {
        len += 1;
    }
    len
}

/// Shifts both values right until the lowest bit of `a` is set or `a` is 0.
fn shift_while_even(a: &mut u64, b: &mut u64) {
    while *a & 1 == 0 && *a != 0 {
        *a >>= 1;
        *b >>= 1;
    }
}

/// Verifies an inclusion proof following RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    let mut f = index;
    let mut s = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            // Unreachable after the length check; fail closed regardless.
            return Err(MerkleError::WrongProofLength {
                expected,
                actual: proof.len(),
            });
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            shift_while_even(&mut f, &mut s);
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(MerkleError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    if r != *root {
        return Err(MerkleError::InclusionRootMismatch {
            computed: hx(&r),
            expected: hx(root),
        });
    }
    Ok(())
}

/// Verifies a consistency proof following RFC 9162 §2.1.4.2.
///
/// Edge cases: equal sizes need an empty proof and equal roots; an old size of
/// 0 needs an empty proof and the empty-tree root, and is consistent with any
/// new tree.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeLarger { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        if old_size == 0 {
            let empty = empty_root();
            if *old_root != empty {
                return Err(MerkleError::EmptyTreeRoot {
                    expected: hx(&empty),
                    actual: hx(old_root),
                });
            }
        } else if old_root != new_root {
            return Err(MerkleError::EqualSizeRootMismatch {
                size: old_size,
                old_root: hx(old_root),
                new_root: hx(new_root),
            });
        }
        return Ok(());
    }

    let expected = consistency_proof_len(old_size, new_size);
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    let length_error = || MerkleError::WrongProofLength {
        expected,
        actual: proof.len(),
    };

    // When the old tree is a perfect subtree, its root is the implicit first
    // element of the path.
    let (first, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (*first, rest),
            None => return Err(length_error()),
        }
    };

    let mut f = old_size - 1;
    let mut s = new_size - 1;
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut fr = first;
    let mut sr = first;
    for c in rest {
        if s == 0 {
            return Err(length_error());
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            shift_while_even(&mut f, &mut s);
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(length_error());
    }
    if fr != *old_root {
        return Err(MerkleError::OldRootMismatch {
            computed: hx(&fr),
            expected: hx(old_root),
        });
    }
    if sr != *new_root {
        return Err(MerkleError::NewRootMismatch {
            computed: hx(&sr),
            expected: hx(new_root),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeSet, HashMap};

    /// Naive RFC 9162 §2.1.1 MTH straight from the definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn random_leaves(n: usize, seed: u64) -> Vec<Hash> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut data = vec![0u8; rng.gen_range(0..40)];
                rng.fill(&mut data[..]);
                leaf_hash(&data)
            })
            .collect()
    }

    /// Builds a tree with CompactRange, storing every node it reports.
    fn build(leaves: &[Hash]) -> (CompactRange, HashMap<(u32, u64), Hash>) {
        let mut cr = CompactRange::new();
        let mut store = HashMap::new();
        for (i, leaf) in leaves.iter().enumerate() {
            store.insert((0, i as u64), *leaf);
            for (level, index, hash) in cr.append(*leaf) {
                assert!(level >= 1);
                assert!(
                    store.insert((level, index), hash).is_none(),
                    "node reported twice"
                );
            }
        }
        (cr, store)
    }

    fn source(store: &HashMap<(u32, u64), Hash>) -> impl FnMut(u32, u64) -> Hash + '_ {
        move |level, index| *store.get(&(level, index)).expect("node not stored")
    }

    #[test]
    fn hashes_match_rfc_definitions() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // SHA-256 of the single byte 0x00.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn known_answer_roots() {
        // The classic 8-leaf Certificate Transparency reference tree.
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut cr = CompactRange::new();
        for (input, root) in inputs.iter().zip(expected) {
            cr.append(leaf_hash(input));
            assert_eq!(hex::encode(cr.root()), root, "size {}", cr.size);
        }
    }

    #[test]
    fn compact_range_and_range_hash_match_naive_mth() {
        for n in 0..=70usize {
            let leaves = random_leaves(n, n as u64);
            let (cr, store) = build(&leaves);
            assert_eq!(cr.size, n as u64);
            assert!(cr.is_well_formed());
            assert_eq!(cr.root(), mth(&leaves), "root of size {n}");
            let mut node = source(&store);
            assert_eq!(range_hash(0, n as u64, &mut node), mth(&leaves));
            // Every stored node is the MTH of the leaves it covers.
            for (&(level, index), hash) in &store {
                let a = (index << level) as usize;
                let b = ((index + 1) << level) as usize;
                assert_eq!(*hash, mth(&leaves[a..b]));
            }
            // Arbitrary sub-ranges (the MTH of the sub-list) also agree.
            for a in 0..=n {
                for b in a..=n {
                    assert_eq!(
                        range_hash(a as u64, b as u64, &mut node),
                        mth(&leaves[a..b])
                    );
                }
            }
        }
    }

    #[test]
    fn compact_range_serde_round_trip() {
        let (cr, _) = build(&random_leaves(13, 1));
        let json = serde_json::to_string(&cr).unwrap();
        assert!(json.contains(&hex::encode(cr.hashes[0])));
        let back: CompactRange = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cr);
        // Inconsistent number of hashes is rejected.
        let bad = format!(r#"{{"size":12,"hashes":["{}"]}}"#, hex::encode([1u8; 32]));
        assert!(serde_json::from_str::<CompactRange>(&bad).is_err());
        let bad = r#"{"size":1,"hashes":["zz"]}"#;
        assert!(serde_json::from_str::<CompactRange>(bad).is_err());
    }

    #[test]
    fn all_inclusion_proofs_verify_and_tampering_fails() {
        for n in 1..=40u64 {
            let extended = random_leaves(2 * n as usize, 100 + n);
            let leaves = &extended[..n as usize];
            let (cr, store) = build(leaves);
            let root = cr.root();
            let mut node = source(&store);
            for i in 0..n {
                let proof = inclusion_proof(i, n, &mut node).unwrap();
                let leaf = leaves[i as usize];
                verify_inclusion(&leaf, i, n, &proof, &root).unwrap();

                for j in 0..proof.len() {
                    for byte in [0usize, 31] {
                        let mut bad = proof.clone();
                        bad[j][byte] ^= 0x01;
                        assert!(verify_inclusion(&leaf, i, n, &bad, &root).is_err());
                    }
                }
                let mut bad_leaf = leaf;
                bad_leaf[5] ^= 0x80;
                assert!(verify_inclusion(&bad_leaf, i, n, &proof, &root).is_err());
                let mut bad_root = root;
                bad_root[0] ^= 1;
                assert!(verify_inclusion(&leaf, i, n, &proof, &bad_root).is_err());
                for wrong in 0..n {
                    if wrong != i {
                        assert!(verify_inclusion(&leaf, wrong, n, &proof, &root).is_err());
                    }
                }
                // Claiming another tree size (with that tree's real root) fails.
                for wrong_size in [n - 1, n + 1, 2 * n] {
                    if wrong_size > i && wrong_size != n {
                        let wrong_root = mth(&extended[..wrong_size as usize]);
                        assert!(
                            verify_inclusion(&leaf, i, wrong_size, &proof, &wrong_root).is_err()
                        );
                    }
                }
                let mut longer = proof.clone();
                longer.push([0u8; 32]);
                assert!(verify_inclusion(&leaf, i, n, &longer, &root).is_err());
                if !proof.is_empty() {
                    assert!(verify_inclusion(&leaf, i, n, &proof[1..], &root).is_err());
                }
            }
            assert_eq!(
                inclusion_proof(n, n, &mut node),
                Err(MerkleError::IndexOutOfRange { index: n, size: n })
            );
            assert!(matches!(
                verify_inclusion(&leaves[0], n, n, &[], &root),
                Err(MerkleError::IndexOutOfRange { .. })
            ));
        }
    }

    #[test]
    fn all_consistency_proofs_verify_and_tampering_fails() {
        let leaves = random_leaves(40, 7);
        let (_, store) = build(&leaves);
        let roots: Vec<Hash> = (0..=40).map(|n| mth(&leaves[..n])).collect();
        let mut node = source(&store);
        for new in 0..=40u64 {
            for old in 0..=new {
                let proof = consistency_proof(old, new, &mut node).unwrap();
                let (or, nr) = (roots[old as usize], roots[new as usize]);
                verify_consistency(old, new, &or, &nr, &proof)
                    .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
                if old == 0 || old == new {
                    assert!(proof.is_empty());
                }
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][17] ^= 0x04;
                    assert!(verify_consistency(old, new, &or, &nr, &bad).is_err());
                }
                let mut bad_old = or;
                bad_old[3] ^= 1;
                assert!(verify_consistency(old, new, &bad_old, &nr, &proof).is_err());
                if old > 0 {
                    // (The empty tree is consistent with every new root.)
                    let mut bad_new = nr;
                    bad_new[3] ^= 1;
                    assert!(verify_consistency(old, new, &or, &bad_new, &proof).is_err());
                }
                if old > 0 && old < new {
                    // Wrong sizes with the same proof must not verify.
                    for (o, n) in [(old - 1, new), (old, new + 1), (old + 1, new)] {
                        if o > 0 && o < n && n <= 40 {
                            let r = verify_consistency(
                                o,
                                n,
                                &roots[o as usize],
                                &roots[n as usize],
                                &proof,
                            );
                            assert!(r.is_err(), "{old}->{new} proof accepted for {o}->{n}");
                        }
                    }
                    let mut longer = proof.clone();
                    longer.push([9u8; 32]);
                    assert!(verify_consistency(old, new, &or, &nr, &longer).is_err());
                    assert!(verify_consistency(old, new, &or, &nr, &proof[1..]).is_err());
                }
                // A different old tree of the same size is not consistent.
                if old > 0 && old < new {
                    let other = random_leaves(old as usize, 999 + old);
                    let r = verify_consistency(old, new, &mth(&other), &nr, &proof);
                    assert!(r.is_err());
                }
            }
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        assert!(verify_consistency(0, 5, &empty_root(), &a, &[]).is_ok());
        assert!(verify_consistency(0, 0, &empty_root(), &empty_root(), &[]).is_ok());
        assert!(matches!(
            verify_consistency(0, 5, &a, &b, &[]),
            Err(MerkleError::EmptyTreeRoot { .. })
        ));
        assert!(matches!(
            verify_consistency(0, 5, &empty_root(), &a, &[a]),
            Err(MerkleError::WrongProofLength { .. })
        ));
        assert!(verify_consistency(3, 3, &a, &a, &[]).is_ok());
        assert!(matches!(
            verify_consistency(3, 3, &a, &b, &[]),
            Err(MerkleError::EqualSizeRootMismatch { .. })
        ));
        assert!(matches!(
            verify_consistency(3, 3, &a, &a, &[b]),
            Err(MerkleError::WrongProofLength { .. })
        ));
        assert_eq!(
            verify_consistency(4, 3, &a, &a, &[]),
            Err(MerkleError::OldSizeLarger {
                old_size: 4,
                new_size: 3
            })
        );
        let mut node = |_: u32, _: u64| a;
        assert!(consistency_proof(4, 3, &mut node).is_err());
    }

    #[test]
    fn nodes_needed_are_exactly_the_nodes_used() {
        for n in 0..=40u64 {
            let leaves = random_leaves(n as usize, 300 + n);
            let (_, store) = build(&leaves);
            for i in 0..n {
                let needed = nodes_needed_for_inclusion(i, n);
                let mut used = BTreeSet::new();
                let mut node = |level: u32, index: u64| {
                    used.insert((level, index));
                    store[&(level, index)]
                };
                inclusion_proof(i, n, &mut node).unwrap();
                assert_eq!(needed, used.into_iter().collect::<Vec<_>>());
                // At least one node per proof element.
                assert!(needed.len() >= inclusion_proof_len(i, n));
            }
            for old in 0..=n {
                let needed = nodes_needed_for_consistency(old, n);
                let mut used = BTreeSet::new();
                let mut node = |level: u32, index: u64| {
                    used.insert((level, index));
                    store[&(level, index)]
                };
                consistency_proof(old, n, &mut node).unwrap();
                assert_eq!(needed, used.into_iter().collect::<Vec<_>>());
                // Every requested node must exist in a tree of size n.
                for (level, index) in &needed {
                    assert!((index + 1) << level <= n);
                }
            }
        }
        assert!(nodes_needed_for_inclusion(5, 5).is_empty());
        assert!(nodes_needed_for_consistency(6, 5).is_empty());
        assert_eq!(nodes_needed_for_consistency(0, 5), Vec::<(u32, u64)>::new());
    }

    #[test]
    fn append_reports_completed_nodes() {
        let mut cr = CompactRange::new();
        let l: Vec<Hash> = (0..8u8).map(|i| leaf_hash(&[i])).collect();
        assert!(cr.append(l[0]).is_empty());
        let created = cr.append(l[1]);
        assert_eq!(created, vec![(1, 0, node_hash(&l[0], &l[1]))]);
        assert!(cr.append(l[2]).is_empty());
        let created = cr.append(l[3]);
        let n23 = node_hash(&l[2], &l[3]);
        let n01 = node_hash(&l[0], &l[1]);
        assert_eq!(created, vec![(1, 1, n23), (2, 0, node_hash(&n01, &n23))]);
        assert_eq!(cr.hashes.len(), 1);
    }
}
