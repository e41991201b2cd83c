//! Object storage: buckets in projects, objects encrypted under the
//! project's key, served over the S3 protocol through the platform's own
//! authentication, authorization and audit (no bypass: see ARCHITECTURE.md).
//!
//! - [`names`]: S3 bucket name rules.
//! - [`buckets`]: bucket lifecycle shared by the REST API and S3.
//! - [`engine`]: bodies in files (temp, fsync, rename, then the metadata
//!   commit), encrypted with the key service's stream format.
//! - [`checksum`]: S3's additional checksums, checked before a commit.
//! - [`sse_c`]: client-held keys layered over the platform's encryption.
//! - [`settings`]: bucket settings S3 clients manage (tags, CORS, public read).
//! - [`lifecycle`]: bucket lifecycle rules and the pass that applies them.
//! - [`s3`]: the S3 endpoint (wire format and SigV4 by the `s3s` crate).

pub mod buckets;
pub mod checksum;
pub mod engine;
pub mod lifecycle;
pub mod names;
pub mod s3;
pub mod settings;
pub mod sse_c;

use nuage_iam::{ActionDef, Level};

pub use buckets::Bucket;
pub use engine::Engine;
pub use s3::{S3Config, S3Front};

const fn act(name: &'static str, level: Level, also: &'static [&'static str]) -> ActionDef {
    ActionDef { name, level, also }
}

const READERS: &[&str] = &["object-reader", "object-writer", "bucket-admin"];
const WRITERS: &[&str] = &["object-writer", "bucket-admin"];
const ADMINS: &[&str] = &["bucket-admin"];

/// Object storage actions (registered by the server at start).
pub const ACTIONS: &[ActionDef] = &[
    act("s3.list_buckets", Level::Read, READERS),
    act("s3.get_bucket", Level::Read, READERS),
    act("s3.create_bucket", Level::Write, ADMINS),
    act("s3.delete_bucket", Level::Write, ADMINS),
    act("s3.put_bucket_settings", Level::Write, ADMINS),
    act("s3.list_bucket", Level::Read, READERS),
    act("s3.get_object", Level::Read, READERS),
    act("s3.put_object", Level::Write, WRITERS),
    act("s3.delete_object", Level::Write, WRITERS),
    // Versioning and lifecycle: configuration is the bucket admin's; so is
    // removing a version for good, which versioning exists to prevent.
    act("s3.get_bucket_versioning", Level::Read, READERS),
    act("s3.put_bucket_versioning", Level::Write, ADMINS),
    act("s3.get_lifecycle", Level::Read, READERS),
    act("s3.put_lifecycle", Level::Write, ADMINS),
    act("s3.list_bucket_versions", Level::Read, READERS),
    act("s3.get_object_version", Level::Read, READERS),
    act("s3.delete_object_version", Level::Write, ADMINS),
];
