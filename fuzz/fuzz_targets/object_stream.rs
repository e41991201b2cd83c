//! The encrypted stream format of object bodies (and backups, exports):
//! header parsing, range arithmetic and ranged decryption on arbitrary
//! headers, ciphertexts, lengths and offsets must return errors, never
//! panic or allocate from a length they were told rather than the bytes
//! they hold; on a real stream, ranged reads must return exactly the
//! plaintext bytes asked for, and any altered byte must fail.
#![no_main]

#[global_allocator]
static ALLOC: nuage_fuzz::Limited = nuage_fuzz::Limited;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use nuage_kms::aead::SecretKey;
use nuage_kms::stream::{self, Header, HEADER_LEN, MIN_CHUNK_SIZE};

const AAD: &[u8] = b"project/bucket/version";

fn key() -> SecretKey {
    SecretKey::from_slice(&[7u8; 32]).expect("32 bytes")
}

/// Everything from the fuzzer: no valid stream to start from.
fn hostile(u: &mut Unstructured) -> Result<()> {
    let plaintext_len: u64 = u.arbitrary()?;
    let chunk_size: usize = u.arbitrary()?;
    let offset: u64 = u.arbitrary()?;
    let len: u64 = u.arbitrary()?;
    let split: usize = u.arbitrary()?;
    let bytes = u.bytes(u.len())?;
    let (header, fetched) = bytes.split_at(split % (bytes.len() + 1));
    if let Ok(h) = Header::parse(header) {
        assert_eq!(Header::parse(&h.to_bytes()).expect("round trip"), h);
    }
    if let Ok(span) = stream::chunk_span(plaintext_len, chunk_size, offset, len) {
        assert!(span.ciphertext.start <= span.ciphertext.end);
        assert!(span.len == len && span.skip < chunk_size as u64 || len == 0);
    }
    let _ = stream::ciphertext_len(plaintext_len, chunk_size);
    let _ = stream::plaintext_len(plaintext_len, chunk_size);
    let k = key();
    if let Ok(out) = stream::decrypt_range(&k, AAD, header, plaintext_len, fetched, offset, len) {
        assert_eq!(out.len() as u64, len);
    }
    let _ = stream::decrypt_all(&k, AAD, bytes);
    let _ = stream::decrypt_stream(&k, AAD, bytes, std::io::sink());
    Ok(())
}

/// A real stream of fuzzer-chosen plaintext, read by fuzzer-chosen ranges,
/// then with one byte altered.
fn genuine(u: &mut Unstructured) -> Result<()> {
    let chunk_size = MIN_CHUNK_SIZE * (1 + usize::from(u.arbitrary::<u8>()? % 2));
    // Up to 8 copies of up to 2 KiB: streams of 1 to 5 chunks, quick to seal.
    let repeat = usize::from(u.arbitrary::<u8>()? % 8);
    let offset: u64 = u.arbitrary()?;
    let len: u64 = u.arbitrary()?;
    let flip: usize = u.arbitrary()?;
    let seed = u.bytes(u.len().min(2048))?;
    let plaintext: Vec<u8> = seed
        .iter()
        .cycle()
        .take(seed.len().max(1) * (repeat + 1))
        .copied()
        .collect();
    let plaintext = if seed.is_empty() {
        Vec::new()
    } else {
        plaintext
    };
    let k = key();
    let blob = stream::encrypt_all(&k, AAD, &plaintext, chunk_size).expect("encrypts");
    assert_eq!(
        stream::decrypt_all(&k, AAD, &blob).expect("decrypts"),
        plaintext
    );
    let total = plaintext.len() as u64;
    let offset = offset % (total + 1);
    let len = len % (total - offset + 1);
    let span = stream::chunk_span(total, chunk_size, offset, len).expect("range inside");
    let fetched = &blob[span.ciphertext.start as usize..span.ciphertext.end as usize];
    let header = &blob[..HEADER_LEN];
    let got = stream::decrypt_range(&k, AAD, header, total, fetched, offset, len)
        .expect("range decrypts");
    assert_eq!(got, plaintext[offset as usize..(offset + len) as usize]);

    let mut altered = blob.clone();
    let at = flip % altered.len();
    altered[at] ^= 1 << (flip / altered.len() % 8);
    assert!(
        stream::decrypt_all(&k, AAD, &altered).is_err(),
        "an altered stream decrypted"
    );
    assert!(
        stream::decrypt_all(&k, AAD, &blob[..blob.len() - 1]).is_err(),
        "a cut stream decrypted"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let _ = if mode & 1 == 0 {
        hostile(&mut u)
    } else {
        genuine(&mut u)
    };
});
