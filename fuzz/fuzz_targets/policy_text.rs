//! What an organization owner sends as a custom Cedar policy. Any text
//! must give a policy or a clear error: never a crash, never a stack
//! overflow (a deep text once aborted the server), and what is accepted
//! must evaluate on a request thread's stack.
#![no_main]

#[global_allocator]
static ALLOC: nuage_fuzz::Limited = nuage_fuzz::Limited;

use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policies) = nuage_policy::parse_custom("fuzz", text) else {
        return;
    };
    let run = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let Ok(set) = PolicySet::from_policies(policies) else {
                return;
            };
            let uid = |t: &str| EntityUid::from_str(&format!("Nuage::{t}::\"x\"")).expect("uid");
            let Ok(req) = Request::new(uid("User"), uid("Action"), uid("Org"), Context::empty(), None)
            else {
                return;
            };
            let _ = Authorizer::new().is_authorized(&req, &set, &Entities::empty());
        })
        .expect("thread");
    run.join().expect("evaluation ends");
});
