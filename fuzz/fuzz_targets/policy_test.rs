//! The body of `POST /v1/orgs/{org}/policy-test`: decoded as the API
//! decodes it, its resource parsed, and a policy text it might carry
//! checked the way the policy routes check one. Refuse, never panic.
#![no_main]

#[global_allocator]
static ALLOC: nuage_fuzz::Limited = nuage_fuzz::Limited;

use libfuzzer_sys::fuzz_target;
use nuage_core::model::PolicyTest;
use nuage_policy::TestResource;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = serde_json::from_slice::<PolicyTest>(data) else {
        return;
    };
    if let Ok(r) = t.resource.parse::<TestResource>() {
        let name = match &r {
            TestResource::Org => None,
            TestResource::Project(n)
            | TestResource::User(n)
            | TestResource::ServiceAccount(n)
            | TestResource::Group(n) => Some(n),
        };
        assert!(name.is_none_or(|n| !n.is_empty() && t.resource.ends_with(n.as_str())));
    }
    if let Some(ip) = &t.source_ip {
        let _ = ip.parse::<std::net::IpAddr>();
    }
    let _ = nuage_policy::check_lexical(&t.principal);
});
