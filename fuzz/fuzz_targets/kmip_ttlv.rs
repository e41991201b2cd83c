//! KMIP TTLV decoding of whatever an external key manager sends back: the
//! decoder must return errors, never panic, and what it accepts must encode
//! and decode to the same tree (the padding it ignores aside).
#![no_main]

#[global_allocator]
static ALLOC: nuage_fuzz::Limited = nuage_fuzz::Limited;

use libfuzzer_sys::fuzz_target;
use nuage_kms::external::kmip::ttlv;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = ttlv::decode(data) {
        let wire = ttlv::encode(&item).expect("a decoded message encodes");
        assert_eq!(wire.len(), data.len(), "re-encoding changed the length");
        assert_eq!(ttlv::decode(&wire).expect("re-decodes"), item);
    }
});
