//! Identity and access: who is calling (tokens, passwords, TOTP, lockout)
//! and whether they may do what they ask (role bindings and Cedar policies).
//! Every service asks this crate; none decides access on its own.

pub mod actions;
pub mod authn;
pub mod authz;
pub mod oidc;
pub mod password;
pub mod secret;
pub mod totp;

pub use actions::{ActionDef, Level, Registry, ROLES};
pub use authn::{Authenticator, LoginPolicy, Realm, Subject};
pub use authz::{Authorizer, Decision, Env, Target};
pub use nuage_policy::TestResource;
