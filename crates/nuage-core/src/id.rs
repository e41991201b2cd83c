//! Stable resource identifiers. Names can change hands (delete, re-create);
//! ids never do. An id carries its kind as a prefix so a log line or an audit
//! entry is readable without a lookup, and a UUIDv7 body so ids sort by
//! creation time.

use uuid::Uuid;

/// Kinds of resource that get an id, with their prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Org,
    Project,
    User,
    ServiceAccount,
    Operator,
    Group,
    Token,
    RoleBinding,
    Policy,
    Key,
    KeyManager,
    DataKey,
}

impl Kind {
    pub const fn prefix(self) -> &'static str {
        match self {
            Kind::Org => "org",
            Kind::Project => "prj",
            Kind::User => "usr",
            Kind::ServiceAccount => "sva",
            Kind::Operator => "opr",
            Kind::Group => "grp",
            Kind::Token => "tok",
            Kind::RoleBinding => "rb",
            Kind::Policy => "pol",
            Kind::Key => "key",
            Kind::KeyManager => "kmg",
            Kind::DataKey => "dek",
        }
    }
}

/// A fresh id such as `prj_0192f0c4a1b27c3d9e...`.
pub fn new_id(kind: Kind) -> String {
    format!("{}_{}", kind.prefix(), Uuid::now_v7().simple())
}

/// True when `s` looks like an id of `kind` (used to tell names from ids in
/// paths, which accept either).
pub fn is_id_of(kind: Kind, s: &str) -> bool {
    s.strip_prefix(kind.prefix())
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_kind_and_sort_by_time() {
        let a = new_id(Kind::Project);
        let b = new_id(Kind::Project);
        assert!(is_id_of(Kind::Project, &a));
        assert!(!is_id_of(Kind::Org, &a));
        assert!(a < b, "{a} should sort before {b}");
        assert!(!is_id_of(Kind::Project, "prj_web"));
    }
}
