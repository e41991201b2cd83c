//! The S3 endpoint. `s3s` parses the wire format and verifies SigV4
//! (headers, presigned URLs, aws-chunked bodies); everything that decides —
//! who the caller is, whether it may act, what is recorded — is ours:
//!
//! - [`front`]: the listener's entry point (request id, sealed mode, the
//!   audit entry written before the response leaves);
//! - [`auth`]: access keys to principals, anonymous requests refused;
//! - [`freshness`]: how long a signature stays good (15 minutes of clock
//!   skew, presigned URLs 7 days at most);
//! - [`ops`]: the S3 operations, each authorized by the platform's
//!   authorizer against the bucket's project; [`tagging`], [`copy`] and
//!   [`bucket_settings`] hold more of them, [`conditions`] what requests say about bodies.

mod auth;
mod bucket_settings;
mod conditions;
mod copy;
mod freshness;
mod front;
mod ops;
mod tagging;

pub use front::{S3Config, S3Front};

#[cfg(test)]
mod tests {
    use s3s::service::S3ServiceBuilder;

    struct Nothing;
    impl s3s::S3 for Nothing {}

    /// s3s parses X-Amz-Date with unchecked arithmetic (see the workspace's
    /// `profile.dev.package.s3s`): a non-digit is a refusal, not a panic.
    #[tokio::test]
    async fn a_non_digit_in_x_amz_date_is_refused_not_a_panic() {
        let mut b = S3ServiceBuilder::new(Nothing);
        b.set_auth(s3s::auth::SimpleAuth::from_single("AK", "secret"));
        let service = b.build();
        let req = http::Request::builder()
            .uri("/bucket/key")
            .header("host", "localhost")
            .header("x-amz-date", "2026112/T000000Z")
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AK/20261125/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=00",
            )
            .body(s3s::Body::empty())
            .unwrap();
        let resp = service.call(req).await.unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
}
