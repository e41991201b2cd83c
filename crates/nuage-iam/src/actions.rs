//! The actions every service registers, and the built-in roles they roll up
//! into. A role is a set of actions; a binding grants a role at organization
//! or project scope. Services add their actions (and narrow roles such as
//! `key-admin`) to the [`Registry`] at start-up; the Cedar policies for the
//! roles are generated from it, so the registry is the single source of truth
//! for "who may do what by default".

use std::collections::BTreeMap;

/// How much an action can change, which decides the broad roles that get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Reads: viewer and up.
    Read,
    /// Creates, updates, deletes of resources: editor and up.
    Write,
    /// Identity and access management: admin and up.
    Admin,
    /// Irreversible organization-wide changes: owner only.
    Owner,
    /// Held only by the narrow roles named in `also`, never by the broad
    /// ones: separation of duties (who manages keys does not decrypt).
    Narrow,
}

#[derive(Debug, Clone)]
pub struct ActionDef {
    pub name: &'static str,
    pub level: Level,
    /// Narrow roles that also hold this action.
    pub also: &'static [&'static str],
}

/// Built-in roles with their descriptions.
pub const ROLES: &[(&str, &str)] = &[
    (
        "owner",
        "Everything in the organization, including its deletion and owners",
    ),
    ("admin", "Manage identities, access and every resource"),
    (
        "editor",
        "Create, change and delete resources; read everything",
    ),
    ("viewer", "Read every resource"),
    ("audit-reader", "Read the audit log and its proofs"),
    (
        "key-admin",
        "Manage keys and key managers; cannot use keys to encrypt or decrypt",
    ),
    (
        "crypto-user",
        "Use keys to encrypt and decrypt; cannot manage them",
    ),
    ("object-reader", "List buckets and read objects"),
    ("object-writer", "Read, write and delete objects"),
    (
        "bucket-admin",
        "Create and delete buckets; read, write and delete objects",
    ),
];

const fn a(name: &'static str, level: Level) -> ActionDef {
    ActionDef {
        name,
        level,
        also: &[],
    }
}

/// Actions of the control plane core.
pub const CORE_ACTIONS: &[ActionDef] = &[
    a("org.get", Level::Read),
    a("org.update", Level::Admin),
    a("project.list", Level::Read),
    a("project.get", Level::Read),
    a("project.create", Level::Write),
    a("project.update", Level::Write),
    a("project.delete", Level::Write),
    a("user.list", Level::Read),
    a("user.get", Level::Read),
    a("user.create", Level::Admin),
    a("user.update", Level::Admin),
    a("user.delete", Level::Admin),
    a("user.set_password", Level::Admin),
    a("user.reset_mfa", Level::Admin),
    a("service_account.list", Level::Read),
    a("service_account.get", Level::Read),
    a("service_account.create", Level::Admin),
    a("service_account.update", Level::Admin),
    a("service_account.delete", Level::Admin),
    a("group.list", Level::Read),
    a("group.get", Level::Read),
    a("group.create", Level::Admin),
    a("group.update", Level::Admin),
    a("group.delete", Level::Admin),
    a("group.add_member", Level::Admin),
    a("group.remove_member", Level::Admin),
    a("token.list", Level::Admin),
    a("token.get", Level::Admin),
    a("token.create", Level::Admin),
    a("token.revoke", Level::Admin),
    a("access_key.list", Level::Admin),
    a("access_key.get", Level::Admin),
    a("access_key.create", Level::Admin),
    a("access_key.revoke", Level::Admin),
    a("role.list", Level::Read),
    a("role_binding.list", Level::Read),
    a("role_binding.get", Level::Read),
    a("role_binding.create", Level::Admin),
    a("role_binding.delete", Level::Admin),
    a("role_binding.grant_owner", Level::Owner),
    a("policy.list", Level::Read),
    a("policy.get", Level::Read),
    a("policy.create", Level::Admin),
    a("policy.update", Level::Admin),
    a("policy.delete", Level::Admin),
    a("policy.test", Level::Admin),
    a("oidc.get", Level::Admin),
    a("oidc.configure", Level::Admin),
    ActionDef {
        name: "audit.read",
        level: Level::Admin,
        also: &["audit-reader"],
    },
    ActionDef {
        name: "audit.checkpoint",
        level: Level::Admin,
        also: &["audit-reader"],
    },
];

/// Actions every principal may take on itself (its own tokens, password and
/// second factor), whatever its roles.
pub const SELF_ACTIONS: &[&str] = &[
    "user.get",
    "service_account.get",
    "token.list",
    "token.get",
    "token.create",
    "token.revoke",
    "access_key.list",
    "access_key.get",
    "access_key.create",
    "access_key.revoke",
    "user.set_password",
    "user.enroll_mfa",
];

#[derive(Debug, Clone, Default)]
pub struct Registry {
    actions: BTreeMap<&'static str, ActionDef>,
}

impl Registry {
    pub fn core() -> Self {
        let mut r = Registry::default();
        r.register(CORE_ACTIONS);
        r.register(&[a("user.enroll_mfa", Level::Owner)]);
        r
    }

    pub fn register(&mut self, defs: &[ActionDef]) {
        for d in defs {
            self.actions.insert(d.name, d.clone());
        }
    }

    pub fn contains(&self, action: &str) -> bool {
        self.actions.contains_key(action)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.actions.keys().copied()
    }

    /// Actions a role holds, sorted.
    pub fn role_actions(&self, role: &str) -> Vec<&'static str> {
        let max = match role {
            "owner" => Some(Level::Owner),
            "admin" => Some(Level::Admin),
            "editor" => Some(Level::Write),
            "viewer" => Some(Level::Read),
            _ => None,
        };
        self.actions
            .values()
            .filter(|d| max.is_some_and(|m| d.level <= m) || d.also.contains(&role))
            .map(|d| d.name)
            .collect()
    }

    /// The built-in roles that hold `action`, in [`ROLES`] order: what a
    /// denial names as the way to be allowed.
    pub fn roles_granting(&self, action: &str) -> Vec<&'static str> {
        ROLES
            .iter()
            .map(|(r, _)| *r)
            .filter(|r| self.role_actions(r).contains(&action))
            .collect()
    }

    pub fn is_role(&self, role: &str) -> bool {
        ROLES.iter().any(|(r, _)| *r == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_narrow_roles_stay_narrow() {
        let r = Registry::core();
        let viewer = r.role_actions("viewer");
        let editor = r.role_actions("editor");
        let admin = r.role_actions("admin");
        let owner = r.role_actions("owner");
        assert!(viewer.iter().all(|a| editor.contains(a)));
        assert!(editor.iter().all(|a| admin.contains(a)));
        assert!(admin.iter().all(|a| owner.contains(a)));
        assert!(viewer.contains(&"project.get") && !viewer.contains(&"project.create"));
        assert!(editor.contains(&"project.create") && !editor.contains(&"user.create"));
        assert!(r.roles_granting("audit.read").contains(&"audit-reader"));
        assert!(r.roles_granting("no.such").is_empty());
        assert_eq!(
            r.roles_granting("project.create"),
            vec!["owner", "admin", "editor"]
        );
        assert!(!admin.contains(&"role_binding.grant_owner"));
        assert_eq!(
            r.role_actions("audit-reader"),
            vec!["audit.checkpoint", "audit.read"]
        );
        assert!(r.role_actions("nobody").is_empty());
    }
}
