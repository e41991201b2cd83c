//! Authorization: one Cedar evaluation per request, deny by default, an
//! explicit `forbid` always wins.
//!
//! The policy set of an organization is the generated role policies (one per
//! built-in role: "permit these actions when the principal holds this role
//! here") plus the self-service policy plus the organization's custom Cedar
//! policies. Which roles the principal holds *here* is computed from role
//! bindings before evaluation and passed in `context.roles`, so custom
//! policies can use it too. Roles an organization marks as requiring MFA are
//! left out of `context.roles` for sessions without a second factor.
//!
//! Entity types: `Nuage::User`, `Nuage::ServiceAccount`, `Nuage::Group`,
//! `Nuage::Org`, `Nuage::Project` and one type per resource kind; resources
//! have an attribute `name` and their project and organization as parents.
//! Context: `roles` (set of strings), `mfa` (bool), `source_ip` (ip),
//! `now` (Unix seconds), `hour` (0–23 UTC), and for the built-in policies
//! `granted_by` (the roles whose actions include this one, from the
//! registry) and `self_service` (an action anyone may take on itself).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression,
};
use nuage_core::model::PrincipalKind;
use nuage_core::{ApiError, ApiResult};
use nuage_store::Store;

use crate::actions::{Registry, ROLES, SELF_ACTIONS};
use crate::authn::{Cache, Subject};

/// What is being acted on.
#[derive(Debug, Clone)]
pub struct Target {
    /// Cedar entity type without namespace: `Org`, `Project`, `User` …
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: Option<String>,
}

impl Target {
    pub fn org(org_id: &str, name: &str) -> Self {
        Target {
            kind: "Org",
            id: org_id.to_string(),
            name: name.to_string(),
            org_id: org_id.to_string(),
            project_id: None,
        }
    }

    pub fn project(org_id: &str, project_id: &str, name: &str) -> Self {
        Target {
            kind: "Project",
            id: project_id.to_string(),
            name: name.to_string(),
            org_id: org_id.to_string(),
            project_id: Some(project_id.to_string()),
        }
    }

    pub fn in_org(kind: &'static str, org_id: &str, id: &str, name: &str) -> Self {
        Target {
            kind,
            id: id.to_string(),
            name: name.to_string(),
            org_id: org_id.to_string(),
            project_id: None,
        }
    }

    /// A principal as the target (tokens, passwords, MFA of that principal).
    pub fn principal(org_id: &str, kind: PrincipalKind, id: &str, name: &str) -> Self {
        Self::in_org(principal_type(kind), org_id, id, name)
    }

    /// `kind:name` for the audit log.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind.to_lowercase(), self.name)
    }
}

/// Request facts the policies may look at.
#[derive(Debug, Clone)]
pub struct Env {
    pub source_ip: String,
    pub now_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that decided (`role:editor`, `self`,
    /// `policy:<name>`); empty when nothing permitted.
    pub policies: Vec<String>,
    pub roles: Vec<String>,
}

fn principal_type(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::User => "User",
        PrincipalKind::ServiceAccount => "ServiceAccount",
        PrincipalKind::Operator => "Operator",
    }
}

/// Everything a Cedar decision depends on: with the same key, evaluation
/// gives the same answer, so a decision is computed once per key. The
/// policy set enters through its organization and generation (a change of
/// policies moves the generation), the roles after the bindings and the MFA
/// rule, the environment to the second (`now`, and `hour` from it).
#[derive(Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    org_id: String,
    policy_generation: i64,
    principal_kind: &'static str,
    principal_id: String,
    principal_name: String,
    group_ids: Vec<String>,
    mfa: bool,
    roles: Vec<String>,
    action: String,
    target_kind: &'static str,
    target_id: String,
    target_name: String,
    target_project: Option<String>,
    source_ip: String,
    now_secs: i64,
}

/// Decisions kept; the map is emptied when full (entries are only reused
/// within the same second anyway).
const DECISIONS_MAX: usize = 4096;
/// Parsed `ip(...)` expressions kept, by source address.
const IPS_MAX: usize = 4096;

pub struct Authorizer {
    store: Store,
    /// Entity type names, parsed once (`Nuage::Org` …).
    types: RwLock<HashMap<&'static str, EntityTypeName>>,
    /// `ip("…")` expressions by source address: building one parses the
    /// extension's name each time.
    ips: Mutex<HashMap<String, RestrictedExpression>>,
    decisions: Mutex<HashMap<DecisionKey, Decision>>,
    registry: Arc<Registry>,
    builtin: Vec<Policy>,
    granted_by: HashMap<&'static str, Vec<&'static str>>,
    cedar: CedarAuthorizer,
    cache: RwLock<HashMap<String, (i64, Arc<PolicySet>)>>,
    /// Roles by (principal, organization, project), before the MFA rule.
    roles: Cache<(String, String, String), Vec<String>>,
}

impl Authorizer {
    pub fn new(store: Store, registry: Arc<Registry>) -> ApiResult<Self> {
        // Which roles grant which action comes from the registry and reaches
        // the policies as `context.granted_by`, so an evaluation does not
        // rebuild a set of every action of every role: that cost grows with
        // each service's actions and was the largest part of a request.
        let mut granted_by: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
        for (role, _) in ROLES {
            for action in registry.role_actions(role) {
                granted_by.entry(action).or_default().push(role);
            }
        }
        let mut builtin = Vec::new();
        for (role, _) in ROLES {
            let actions = registry.role_actions(role);
            if actions.is_empty() {
                continue;
            }
            let text = format!(
                "permit(principal, action, resource) when {{ context.roles.contains(\"{role}\") && context.granted_by.contains(\"{role}\") }};"
            );
            builtin.push(
                Policy::parse(Some(PolicyId::new(format!("role:{role}"))), text)
                    .map_err(|e| ApiError::internal(format!("built-in policy: {e}")))?,
            );
        }
        let own = "permit(principal, action, resource) when { context.self_service && resource == principal };";
        builtin.push(
            Policy::parse(Some(PolicyId::new("self")), own)
                .map_err(|e| ApiError::internal(format!("built-in policy: {e}")))?,
        );
        Ok(Authorizer {
            store,
            types: RwLock::new(HashMap::new()),
            ips: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            registry,
            builtin,
            granted_by,
            cedar: CedarAuthorizer::new(),
            cache: RwLock::new(HashMap::new()),
            roles: Cache::new(),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Parses a custom policy text (see [`nuage_policy::parse_custom`]):
    /// bounded before Cedar sees it, parsed where depth cannot crash.
    pub fn parse_custom(name: &str, body: &str) -> ApiResult<Vec<Policy>> {
        nuage_policy::parse_custom(name, body)
    }

    fn uid(&self, kind: &'static str, id: &str) -> ApiResult<EntityUid> {
        let cached = self.types.read().ok().and_then(|t| t.get(kind).cloned());
        let t = match cached {
            Some(t) => t,
            None => {
                let t = EntityTypeName::from_str(&format!("Nuage::{kind}"))
                    .map_err(|_| ApiError::internal(format!("bad entity type {kind}")))?;
                if let Ok(mut types) = self.types.write() {
                    types.insert(kind, t.clone());
                }
                t
            }
        };
        Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
    }

    fn ip_expr(&self, ip: &str) -> RestrictedExpression {
        if let Some(e) = self.ips.lock().ok().and_then(|m| m.get(ip).cloned()) {
            return e;
        }
        let e = RestrictedExpression::new_ip(ip);
        if let Ok(mut m) = self.ips.lock() {
            if m.len() >= IPS_MAX {
                m.clear();
            }
            m.insert(ip.to_string(), e.clone());
        }
        e
    }

    /// The organization's policy set and the generation it was read at.
    async fn policy_set(&self, org_id: &str, generation: i64) -> ApiResult<(i64, Arc<PolicySet>)> {
        if let Ok(cache) = self.cache.read() {
            if let Some((g, set)) = cache.get(org_id) {
                if *g == generation {
                    return Ok((*g, set.clone()));
                }
            }
        }
        let (generation, policies) = self.store.policy_all(org_id).await?;
        let mut set = PolicySet::new();
        for p in &self.builtin {
            set.add(p.clone())
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        for p in policies {
            // A stored policy was valid when written; skip rather than lock
            // the organization out if a Cedar upgrade changed the grammar.
            match Self::parse_custom(&p.name, &p.body) {
                Ok(list) => {
                    for cp in list {
                        if let Err(e) = set.add(cp) {
                            tracing::warn!(policy = %p.name, error = %e, "custom policy skipped");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(policy = %p.name, error = %e.detail, "custom policy skipped")
                }
            }
        }
        let set = Arc::new(set);
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(org_id.to_string(), (generation, set.clone()));
        }
        Ok((generation, set))
    }

    /// Roles `subject` holds on `target`, after the MFA rule.
    pub async fn roles(&self, subject: &Subject, target: &Target) -> ApiResult<Vec<String>> {
        let key = (
            subject.principal.id.clone(),
            target.org_id.clone(),
            target.project_id.clone().unwrap_or_default(),
        );
        let epoch = self.store.epoch();
        let held = match self.roles.get(&key, epoch) {
            Some(r) => r,
            None => {
                let mut ids = Vec::with_capacity(1 + subject.group_ids.len());
                ids.push(subject.principal.id.clone());
                ids.extend(subject.group_ids.iter().cloned());
                let bindings = self
                    .store
                    .role_binding_effective(&target.org_id, target.project_id.as_deref(), &ids)
                    .await?;
                let set: BTreeSet<String> = bindings.into_iter().map(|b| b.role).collect();
                let held: Vec<String> = set.into_iter().collect();
                self.roles.put(key, epoch, held.clone());
                held
            }
        };
        Ok(held
            .into_iter()
            .filter(|r| subject.mfa || !subject.org_mfa_roles.contains(r))
            .collect())
    }

    /// Decides whether `subject` may take `action` on `target`.
    pub async fn decide(
        &self,
        subject: &Subject,
        action: &str,
        target: &Target,
        env: &Env,
    ) -> ApiResult<Decision> {
        if !self.registry.contains(action) {
            return Err(ApiError::internal(format!("unregistered action {action}")));
        }
        if subject.principal.org_id != target.org_id
            || subject.principal.kind == PrincipalKind::Operator
        {
            return Ok(Decision {
                allowed: false,
                policies: Vec::new(),
                roles: Vec::new(),
            });
        }
        let roles = self.roles(subject, target).await?;
        let (generation, set) = self
            .policy_set(&target.org_id, subject.org_policy_generation)
            .await?;
        let source_ip = if env.source_ip.parse::<std::net::IpAddr>().is_ok() {
            env.source_ip.clone()
        } else {
            "0.0.0.0".to_string()
        };
        let key = DecisionKey {
            org_id: target.org_id.clone(),
            policy_generation: generation,
            principal_kind: principal_type(subject.principal.kind),
            principal_id: subject.principal.id.clone(),
            principal_name: subject.principal.name.clone(),
            group_ids: subject.group_ids.clone(),
            mfa: subject.mfa,
            roles,
            action: action.to_string(),
            target_kind: target.kind,
            target_id: target.id.clone(),
            target_name: target.name.clone(),
            target_project: target.project_id.clone(),
            source_ip,
            now_secs: env.now_secs,
        };
        if let Some(d) = self
            .decisions
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(d);
        }
        let decision = self.evaluate(subject, action, target, &key, &set)?;
        if let Ok(mut m) = self.decisions.lock() {
            if m.len() >= DECISIONS_MAX {
                m.clear();
            }
            m.insert(key, decision.clone());
        }
        Ok(decision)
    }

    /// The principal, the resource and the entities of one request. The
    /// same entity can be reached several ways (a group the principal is in
    /// is also the resource, a principal acts on itself, an organization or
    /// a project is the resource), so they are merged by uid: Cedar rejects
    /// a set holding one uid twice, which answered members of a group 500.
    fn entities(
        &self,
        subject: &Subject,
        target: &Target,
    ) -> ApiResult<(EntityUid, EntityUid, Entities)> {
        let mut set = EntitySet::default();
        let org = self.uid("Org", &target.org_id)?;
        set.add(org.clone(), None, []);
        let mut groups = vec![org.clone()];
        for g in &subject.group_ids {
            let g = self.uid("Group", g)?;
            set.add(g.clone(), None, [org.clone()]);
            groups.push(g);
        }
        let principal = self.uid(
            principal_type(subject.principal.kind),
            &subject.principal.id,
        )?;
        set.add(principal.clone(), Some(&subject.principal.name), groups);
        let resource = self.uid(target.kind, &target.id)?;
        let mut parents = vec![org];
        if let Some(p) = &target.project_id {
            let p = self.uid("Project", p)?;
            set.add(p.clone(), None, parents.clone());
            parents.push(p);
        }
        set.add(resource.clone(), Some(&target.name), parents);
        Ok((principal, resource, set.build()?))
    }

    fn evaluate(
        &self,
        subject: &Subject,
        action: &str,
        target: &Target,
        key: &DecisionKey,
        set: &PolicySet,
    ) -> ApiResult<Decision> {
        let roles = &key.roles;
        let (principal, resource, entities) = self.entities(subject, target)?;
        let context = Context::from_pairs([
            (
                "roles".to_string(),
                RestrictedExpression::new_set(
                    roles.iter().cloned().map(RestrictedExpression::new_string),
                ),
            ),
            (
                "mfa".to_string(),
                RestrictedExpression::new_bool(subject.mfa),
            ),
            ("source_ip".to_string(), self.ip_expr(&key.source_ip)),
            (
                "granted_by".to_string(),
                RestrictedExpression::new_set(
                    self.granted_by
                        .get(action)
                        .into_iter()
                        .flatten()
                        .map(|r| RestrictedExpression::new_string(r.to_string())),
                ),
            ),
            (
                "self_service".to_string(),
                RestrictedExpression::new_bool(SELF_ACTIONS.contains(&action)),
            ),
            (
                "now".to_string(),
                RestrictedExpression::new_long(key.now_secs),
            ),
            (
                "hour".to_string(),
                RestrictedExpression::new_long((key.now_secs / 3600) % 24),
            ),
        ])
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let request = Request::new(
            principal,
            self.uid("Action", action)?,
            resource,
            context,
            None,
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let response = self.cedar.is_authorized(&request, set, &entities);
        for e in response.diagnostics().errors() {
            tracing::warn!(error = %e, "policy evaluation error (the policy is skipped)");
        }
        let policies = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies,
            roles: roles.clone(),
        })
    }
}

/// Entities by uid, each added as often as it is reached: attributes keep
/// the first value given, parents are the union (never the entity itself).
#[derive(Default)]
struct EntitySet {
    entities: HashMap<EntityUid, (Option<String>, HashSet<EntityUid>)>,
}

impl EntitySet {
    fn add(
        &mut self,
        uid: EntityUid,
        name: Option<&str>,
        parents: impl IntoIterator<Item = EntityUid>,
    ) {
        let (n, p) = self.entities.entry(uid.clone()).or_default();
        if n.is_none() {
            *n = name.map(str::to_string);
        }
        p.extend(parents.into_iter().filter(|parent| *parent != uid));
    }

    fn build(self) -> ApiResult<Entities> {
        let mut list = Vec::with_capacity(self.entities.len());
        for (uid, (name, parents)) in self.entities {
            let attrs: HashMap<String, RestrictedExpression> = name
                .map(|n| ("name".to_string(), RestrictedExpression::new_string(n)))
                .into_iter()
                .collect();
            list.push(
                Entity::new(uid, attrs, parents).map_err(|e| ApiError::internal(e.to_string()))?,
            );
        }
        Entities::from_entities(list, None).map_err(|e| ApiError::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nuage_core::model::{Org, Principal, PrincipalRef, RoleBinding};
    use nuage_store::StoreOptions;

    /// Removes the test's database directory when dropped.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn authorizer(tag: &str) -> (Dir, Authorizer) {
        let dir = std::env::temp_dir().join(format!(
            "nuage-iam-authz-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("tempdir");
        let dir = Dir(dir);
        let url = format!("sqlite://{}?mode=rwc", dir.0.join("a.db").display());
        let store = Store::open(&url, &StoreOptions::default())
            .await
            .expect("store");
        // Organization `o1`, owned by `u0`; the subject `u1` holds no role.
        let org = Org {
            id: "o1".into(),
            name: "acme".into(),
            display_name: String::new(),
            mfa_required_roles: Vec::new(),
            max_projects: 10,
            generation: 1,
            created_at: 0,
            updated_at: 0,
        };
        let owner = principal("u0", "owner");
        let binding = RoleBinding {
            id: "rb0".into(),
            org_id: "o1".into(),
            project_id: None,
            subject: PrincipalRef {
                id: "u0".into(),
                kind: "user".into(),
                name: "owner".into(),
            },
            role: "owner".into(),
            created_at: 0,
        };
        store
            .org_create(&org, &owner, None, &binding, None)
            .await
            .expect("org");
        let authz = Authorizer::new(store, Arc::new(Registry::core())).expect("authorizer");
        (dir, authz)
    }

    fn principal(id: &str, name: &str) -> Principal {
        Principal {
            id: id.into(),
            org_id: "o1".into(),
            kind: PrincipalKind::User,
            name: name.into(),
            display_name: String::new(),
            email: String::new(),
            description: String::new(),
            mfa_enabled: false,
            has_password: true,
            locked_until: None,
            generation: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn subject(groups: &[&str]) -> Subject {
        Subject {
            principal: principal("u1", "alice"),
            group_ids: groups.iter().map(|g| g.to_string()).collect(),
            token_id: "t1".into(),
            mfa: false,
            org_policy_generation: 0,
            org_mfa_roles: Vec::new(),
            org: None,
        }
    }

    /// Every way the principal, its groups, the organization, a project
    /// and the resource can coincide gives a decision, not an error: a
    /// member of a group acting on that group was answered 500
    /// `duplicate entity entry`.
    #[tokio::test]
    async fn no_target_makes_a_duplicate_entity() {
        let (_dir, authz) = authorizer("dup").await;
        let env = Env {
            source_ip: "127.0.0.1".into(),
            now_secs: 1_700_000_000,
        };
        let targets = [
            Target::in_org("Group", "o1", "g1", "ops"),
            Target::in_org("Group", "o1", "g2", "other"),
            Target::principal("o1", PrincipalKind::User, "u1", "alice"),
            Target::org("o1", "acme"),
            Target::project("o1", "p1", "web"),
            Target {
                kind: "Bucket",
                id: "b1".into(),
                name: "logs".into(),
                org_id: "o1".into(),
                project_id: Some("p1".into()),
            },
        ];
        for groups in [&[][..], &["g1"], &["g1", "g2"], &["g1", "g1"]] {
            let s = subject(groups);
            for t in &targets {
                for action in ["group.get", "user.get", "project.get"] {
                    let d = authz.decide(&s, action, t, &env).await;
                    assert!(
                        d.is_ok(),
                        "{groups:?} {action} on {}: {:?}",
                        t.label(),
                        d.err().map(|e| e.detail)
                    );
                }
            }
        }
        // Acting on itself still goes through the self-service policy.
        let me = Target::principal("o1", PrincipalKind::User, "u1", "alice");
        let d = authz
            .decide(&subject(&["g1"]), "user.get", &me, &env)
            .await
            .expect("decision");
        assert!(d.allowed && d.policies == ["self"], "{d:?}");
    }

    /// The merged group is both the principal's parent and the named
    /// resource, so a custom policy can say "members may act on their
    /// group".
    #[tokio::test]
    async fn a_group_resource_is_the_members_parent_and_has_its_name() {
        let (_dir, authz) = authorizer("group").await;
        let set = PolicySet::from_str(
            r#"permit(principal, action, resource) when { principal in resource && resource.name == "ops" };"#,
        )
        .expect("policy");
        for (groups, allowed) in [(&["g1"][..], true), (&[][..], false)] {
            let target = Target::in_org("Group", "o1", "g1", "ops");
            let (principal, resource, entities) =
                authz.entities(&subject(groups), &target).expect("entities");
            let request = Request::new(
                principal,
                authz.uid("Action", "group.get").expect("action"),
                resource,
                Context::empty(),
                None,
            )
            .expect("request");
            let response = authz.cedar.is_authorized(&request, &set, &entities);
            assert_eq!(
                response.decision() == CedarDecision::Allow,
                allowed,
                "{groups:?}: {:?}",
                response.diagnostics().errors().collect::<Vec<_>>()
            );
        }
    }
}
