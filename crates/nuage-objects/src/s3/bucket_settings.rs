//! Bucket ACLs (canned `private` and `public-read` only: anonymous reads of
//! objects, nothing else, ever) and CORS rules. Both are bucket-admin
//! settings (`s3.put_bucket_settings`), read with `s3.get_bucket`.

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::ops::{s3_err, Call, Objects};
use crate::settings::{BucketSettings, CorsRule};

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "HEAD"];
const MAX_CORS_RULES: usize = 100;

impl Objects {
    pub(super) async fn put_bucket_acl_inner(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self
            .bucket(&call, "s3.put_bucket_settings", &input.bucket)
            .await?;
        if input.access_control_policy.is_some()
            || input.grant_full_control.is_some()
            || input.grant_read.is_some()
            || input.grant_read_acp.is_some()
            || input.grant_write.is_some()
            || input.grant_write_acp.is_some()
        {
            return Err(s3_error!(
                NotImplemented,
                "only the canned ACLs private and public-read are supported (x-amz-acl); \
                 access is granted with IAM role bindings"
            ));
        }
        let public = match input.acl.as_ref().map(|a| a.as_str()) {
            Some(BucketCannedACL::PRIVATE) => false,
            Some(BucketCannedACL::PUBLIC_READ) => true,
            Some(other) => {
                return Err(s3_error!(
                    NotImplemented,
                    "the canned ACL {other} is not supported (private or public-read)"
                ))
            }
            None => return Err(s3_error!(MissingSecurityHeader, "x-amz-acl is required")),
        };
        call.detail("public_read", if public { "true" } else { "false" });
        self.update_settings(&b, |s, _| {
            s.public_read = public;
            Ok(())
        })
        .await?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    pub(super) async fn get_bucket_acl_inner(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.get_bucket", &req.input.bucket)
            .await?;
        let public = BucketSettings::of(&b).map_err(s3_err)?.public_read;
        let owner = Owner {
            id: Some(b.org_id.clone()),
            display_name: call.who()?.org.as_ref().map(|o| o.name.clone()),
        };
        let mut grants = vec![Grant {
            grantee: Some(Grantee {
                id: owner.id.clone(),
                display_name: owner.display_name.clone(),
                type_: Type::from_static(Type::CANONICAL_USER),
                email_address: None,
                uri: None,
            }),
            permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
        }];
        if public {
            grants.push(Grant {
                grantee: Some(Grantee {
                    type_: Type::from_static(Type::GROUP),
                    uri: Some(ALL_USERS.into()),
                    id: None,
                    display_name: None,
                    email_address: None,
                }),
                permission: Some(Permission::from_static(Permission::READ)),
            });
        }
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(grants),
            owner: Some(owner),
        }))
    }

    pub(super) async fn put_bucket_cors_inner(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self
            .bucket(&call, "s3.put_bucket_settings", &input.bucket)
            .await?;
        let rules = input.cors_configuration.cors_rules;
        if rules.is_empty() || rules.len() > MAX_CORS_RULES {
            return Err(s3_error!(
                MalformedXML,
                "a CORS configuration has 1 to {MAX_CORS_RULES} rules"
            ));
        }
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            if let Some(m) = r
                .allowed_methods
                .iter()
                .find(|m| !METHODS.contains(&m.as_str()))
            {
                return Err(s3_error!(
                    InvalidRequest,
                    "Found unsupported HTTP method in CORS config. Unsupported method is {m}"
                ));
            }
            let wild = |v: &[String]| v.iter().any(|o| o.matches('*').count() > 1);
            let headers = r.allowed_headers.unwrap_or_default();
            if wild(&r.allowed_origins) || wild(&headers) {
                return Err(s3_error!(
                    InvalidRequest,
                    "an AllowedOrigin or AllowedHeader may contain at most one wildcard"
                ));
            }
            if r.allowed_origins.is_empty() || r.allowed_methods.is_empty() {
                return Err(s3_error!(
                    MalformedXML,
                    "a CORS rule needs AllowedOrigin and AllowedMethod"
                ));
            }
            out.push(CorsRule {
                id: r.id,
                allowed_origins: r.allowed_origins,
                allowed_methods: r.allowed_methods,
                allowed_headers: headers,
                expose_headers: r.expose_headers.unwrap_or_default(),
                max_age_seconds: r.max_age_seconds,
            });
        }
        self.update_settings(&b, |s, _| {
            s.cors = out.clone();
            Ok(())
        })
        .await?;
        Ok(S3Response::new(PutBucketCorsOutput::default()))
    }

    pub(super) async fn get_bucket_cors_inner(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.get_bucket", &req.input.bucket)
            .await?;
        let cors = BucketSettings::of(&b).map_err(s3_err)?.cors;
        if cors.is_empty() {
            return Err(s3_error!(
                NoSuchCORSConfiguration,
                "The CORS configuration does not exist"
            ));
        }
        Ok(S3Response::new(GetBucketCorsOutput {
            cors_rules: Some(
                cors.into_iter()
                    .map(|r| CORSRule {
                        id: r.id,
                        allowed_origins: r.allowed_origins,
                        allowed_methods: r.allowed_methods,
                        allowed_headers: (!r.allowed_headers.is_empty())
                            .then_some(r.allowed_headers),
                        expose_headers: (!r.expose_headers.is_empty()).then_some(r.expose_headers),
                        max_age_seconds: r.max_age_seconds,
                    })
                    .collect(),
            ),
        }))
    }

    pub(super) async fn delete_bucket_cors_inner(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.put_bucket_settings", &req.input.bucket)
            .await?;
        self.update_settings(&b, |s, _| {
            s.cors.clear();
            Ok(())
        })
        .await?;
        Ok(S3Response::new(DeleteBucketCorsOutput::default()))
    }
}
