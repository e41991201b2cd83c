//! The text tenants send about authorization: custom Cedar policies and the
//! policy-test request.
//!
//! Cedar's parser, its conversion to an AST, the AST's drop and the
//! evaluator all recurse once per level of nesting, and a few hundred bytes
//! of `((((…` were enough to overflow a request thread's stack and abort the
//! whole server. So a policy text is bounded before Cedar sees it (size,
//! bracket depth, `if` count), parsed on a thread of its own with a large
//! stack, and refused when its expressions nest deeper than
//! [`MAX_EXPR_DEPTH`]: what is accepted evaluates on any request thread.
//! Kept apart from `nuage-iam` so the fuzz targets can build it without the
//! store.

use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet};
use nuage_core::{ApiError, ApiResult};

/// Largest custom policy text.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Deepest nesting of `(`, `[` and `{` in a policy text.
pub const MAX_BRACKET_DEPTH: usize = 32;
/// Most `if` expressions in one policy text (each may nest in the last).
pub const MAX_IFS: usize = 64;
/// Deepest expression tree of an accepted policy (`a && b && c` is 3 deep).
pub const MAX_EXPR_DEPTH: usize = 64;
/// The stack of the thread that parses: room for anything the lexical
/// bounds let through, many times over.
const PARSE_STACK_BYTES: usize = 256 << 20;

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_policy", detail)
}

/// Parses a custom policy text; the error names the problem so the author
/// can fix it. Returns the policies with their final ids (`policy:<name>`,
/// or `policy:<name>#<n>` when the text holds several).
pub fn parse_custom(name: &str, body: &str) -> ApiResult<Vec<Policy>> {
    check_lexical(body)?;
    let (name, body) = (name.to_string(), body.to_string());
    let worker = std::thread::Builder::new()
        .name("policy-parse".into())
        .stack_size(PARSE_STACK_BYTES)
        .spawn(move || parse_bounded(&name, &body))
        .map_err(|e| ApiError::internal(format!("cannot start the policy parser: {e}")))?;
    worker
        .join()
        .map_err(|_| ApiError::internal("the policy parser failed"))?
}

/// Size, bracket depth and `if` count, read without parsing: strings and
/// comments are skipped so their contents never count.
pub fn check_lexical(body: &str) -> ApiResult<()> {
    if body.len() > MAX_POLICY_BYTES {
        return Err(invalid(format!(
            "policy text over {MAX_POLICY_BYTES} bytes"
        )));
    }
    let bytes = body.as_bytes();
    let (mut depth, mut ifs, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_BRACKET_DEPTH {
                    return Err(invalid(format!(
                        "brackets nest deeper than {MAX_BRACKET_DEPTH} levels"
                    )));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if &bytes[start..i] == b"if" {
                    ifs += 1;
                    if ifs > MAX_IFS {
                        return Err(invalid(format!("more than {MAX_IFS} if expressions")));
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn parse_bounded(name: &str, body: &str) -> ApiResult<Vec<Policy>> {
    let set =
        PolicySet::from_str(body).map_err(|e| invalid(format!("policy does not parse: {e}")))?;
    if set.templates().next().is_some() {
        return Err(invalid(
            "policy templates (with ?principal or ?resource) are not supported",
        ));
    }
    let policies: Vec<&Policy> = set.policies().collect();
    if policies.is_empty() {
        return Err(invalid("the policy text holds no policy"));
    }
    for p in &policies {
        let depth = p
            .to_json()
            .map(|json| expr_depth(&json))
            .map_err(|e| invalid(format!("policy cannot be represented: {e}")))?;
        if depth > MAX_EXPR_DEPTH {
            return Err(invalid(format!(
                "expressions nest {depth} levels deep; at most {MAX_EXPR_DEPTH}"
            )));
        }
    }
    let single = policies.len() == 1;
    Ok(policies
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let id = if single {
                format!("policy:{name}")
            } else {
                format!("policy:{name}#{}", i + 1)
            };
            p.new_id(PolicyId::new(id))
        })
        .collect())
}

/// Depth of the expression tree of a policy's JSON form: every JSON object
/// holding an operator is one level; read without recursion.
fn expr_depth(json: &serde_json::Value) -> usize {
    // JSON nesting per expression level: the operator's object and its
    // argument (an object, or an array of them).
    const JSON_PER_LEVEL: usize = 2;
    let mut deepest = 0;
    let mut todo = vec![(json, 0usize)];
    while let Some((v, d)) = todo.pop() {
        deepest = deepest.max(d);
        match v {
            serde_json::Value::Object(m) => todo.extend(m.values().map(|c| (c, d + 1))),
            serde_json::Value::Array(a) => todo.extend(a.iter().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    deepest / JSON_PER_LEVEL
}

/// The resource a policy test names: `org`, `project:<name>`,
/// `user:<name>`, `service-account:<name>` or `group:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestResource {
    Org,
    Project(String),
    User(String),
    ServiceAccount(String),
    Group(String),
}

impl FromStr for TestResource {
    type Err = ApiError;

    fn from_str(s: &str) -> ApiResult<Self> {
        let named = |n: &str| -> ApiResult<String> {
            if n.is_empty() {
                Err(ApiError::bad_request(
                    "invalid_resource",
                    "the resource names nothing after ':'",
                ))
            } else {
                Ok(n.to_string())
            }
        };
        match s.split_once(':') {
            None if s == "org" => Ok(TestResource::Org),
            Some(("project", n)) => Ok(TestResource::Project(named(n)?)),
            Some(("user", n)) => Ok(TestResource::User(named(n)?)),
            Some(("service-account", n)) => Ok(TestResource::ServiceAccount(named(n)?)),
            Some(("group", n)) => Ok(TestResource::Group(named(n)?)),
            _ => Err(ApiError::bad_request(
                "invalid_resource",
                "resource must be org, project:<name>, user:<name>, service-account:<name> or group:<name>",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request};

    fn nested(open: &str, close: &str, depth: usize) -> String {
        format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            open.repeat(depth),
            close.repeat(depth)
        )
    }

    #[test]
    fn deep_brackets_are_refused_before_cedar_sees_them() {
        for (open, close) in [("(", ")"), ("[", "]"), ("{", "}")] {
            for depth in [128, 10_000, 60_000] {
                let e = parse_custom(
                    "deep",
                    &nested(open, close, depth)
                        .chars()
                        .take(MAX_POLICY_BYTES)
                        .collect::<String>(),
                )
                .expect_err("refused");
                assert_eq!(e.code, "invalid_policy", "{open} × {depth}: {}", e.detail);
            }
        }
        let e = parse_custom("deep", &nested("(", ")", 128)).expect_err("refused");
        assert!(e.detail.contains("nest deeper than 32"), "{}", e.detail);
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let text = format!(
            "// {}\npermit(principal, action, resource) when {{ context.note == \"{}\\\"\" }};",
            "(".repeat(200),
            "[".repeat(200)
        );
        assert_eq!(parse_custom("s", &text).expect("parses").len(), 1);
    }

    #[test]
    fn long_operator_chains_and_nested_ifs_are_refused_not_a_crash() {
        let chain = format!(
            "permit(principal, action, resource) when {{ {}true }};",
            "true && ".repeat(5_000)
        );
        let e = parse_custom("chain", &chain).expect_err("refused");
        assert!(e.detail.contains("levels deep"), "{}", e.detail);

        let ifs = format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            "if true then ".repeat(65),
            " else false".repeat(65)
        );
        let e = parse_custom("ifs", &ifs).expect_err("refused");
        assert!(e.detail.contains("if expressions"), "{}", e.detail);

        let members = format!(
            "permit(principal, action, resource) when {{ context{} == 1 }};",
            ".a".repeat(8_000)
        );
        assert!(parse_custom("members", &members).is_err());
    }

    /// The deepest policies accepted evaluate on a thread with the stack
    /// of a tokio worker (2 MiB), in the build the tests run (unoptimised).
    #[test]
    fn the_deepest_accepted_policies_evaluate_on_a_request_threads_stack() {
        let chain = format!(
            "permit(principal, action, resource) when {{ {}true }};",
            "true && ".repeat(MAX_EXPR_DEPTH - 2)
        );
        let brackets = nested("(", ")", MAX_BRACKET_DEPTH - 1);
        let ifs = format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            "if true then ".repeat(MAX_EXPR_DEPTH / 2 - 2),
            " else false".repeat(MAX_EXPR_DEPTH / 2 - 2)
        );
        for text in [chain, brackets, ifs] {
            let policies = parse_custom("deep", &text).expect("accepted");
            let handle = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let set = PolicySet::from_policies(policies).expect("set");
                    let uid =
                        |t: &str| EntityUid::from_str(&format!("Nuage::{t}::\"x\"")).expect("uid");
                    let req = Request::new(
                        uid("User"),
                        uid("Action"),
                        uid("Org"),
                        Context::empty(),
                        None,
                    )
                    .expect("request");
                    Authorizer::new()
                        .is_authorized(&req, &set, &Entities::empty())
                        .decision()
                })
                .expect("thread");
            assert_eq!(handle.join().expect("no overflow"), Decision::Allow);
        }
    }

    #[test]
    fn a_plain_policy_and_a_set_get_their_ids() {
        let one = parse_custom("p", "forbid(principal, action, resource);").expect("one");
        assert_eq!(one[0].id().to_string(), "policy:p");
        let two = parse_custom(
            "p",
            "permit(principal, action, resource); forbid(principal, action, resource);",
        )
        .expect("two");
        assert_eq!(two[1].id().to_string(), "policy:p#2");
        assert!(parse_custom("p", "// nothing").is_err());
        assert!(parse_custom("p", "permit(?principal, action, resource);").is_err());
    }

    #[test]
    fn test_resources_parse_or_say_what_is_expected() {
        assert_eq!("org".parse::<TestResource>().ok(), Some(TestResource::Org));
        assert_eq!(
            "project:web".parse::<TestResource>().ok(),
            Some(TestResource::Project("web".into()))
        );
        assert_eq!(
            "group:ops".parse::<TestResource>().ok(),
            Some(TestResource::Group("ops".into()))
        );
        for bad in ["", "project:", "bucket:x", "org:x"] {
            let e = bad.parse::<TestResource>().expect_err(bad);
            assert_eq!(e.code, "invalid_resource");
        }
    }
}
