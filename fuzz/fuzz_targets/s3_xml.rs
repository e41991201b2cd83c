//! The XML request bodies of the S3 endpoint, through the deserializers
//! `s3s` runs on them (the same three steps as its private
//! `deserialize_xml`). The first line names the body type, the rest is the
//! document; a bad document must be an error, never a panic or a runaway.
#![no_main]

#[global_allocator]
static ALLOC: nuage_fuzz::Limited = nuage_fuzz::Limited;

use libfuzzer_sys::fuzz_target;
use s3s::dto::{
    AccessControlPolicy, BucketLifecycleConfiguration, CORSConfiguration, CompletedMultipartUpload,
    CreateBucketConfiguration, Delete, ObjectLockConfiguration, RestoreRequest,
    ServerSideEncryptionConfiguration, Tagging, VersioningConfiguration,
};
use s3s::xml::{DeResult, Deserialize, Deserializer};

fn parse<T: for<'xml> Deserialize<'xml>>(xml: &[u8]) -> DeResult<T> {
    let mut d = Deserializer::new(xml);
    let v = T::deserialize(&mut d)?;
    d.expect_eof()?;
    Ok(v)
}

fuzz_target!(|data: &[u8]| {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let (name, xml) = (&data[..nl], &data[nl + 1..]);
    let _ = match name {
        b"CompleteMultipartUpload" => parse::<CompletedMultipartUpload>(xml).map(drop),
        b"Delete" => parse::<Delete>(xml).map(drop),
        b"CreateBucketConfiguration" => parse::<CreateBucketConfiguration>(xml).map(drop),
        b"Tagging" => parse::<Tagging>(xml).map(drop),
        b"CORSConfiguration" => parse::<CORSConfiguration>(xml).map(drop),
        b"LifecycleConfiguration" => parse::<BucketLifecycleConfiguration>(xml).map(drop),
        b"VersioningConfiguration" => parse::<VersioningConfiguration>(xml).map(drop),
        b"AccessControlPolicy" => parse::<AccessControlPolicy>(xml).map(drop),
        b"ObjectLockConfiguration" => parse::<ObjectLockConfiguration>(xml).map(drop),
        b"ServerSideEncryptionConfiguration" => {
            parse::<ServerSideEncryptionConfiguration>(xml).map(drop)
        }
        b"RestoreRequest" => parse::<RestoreRequest>(xml).map(drop),
        _ => Ok(()),
    };
});
