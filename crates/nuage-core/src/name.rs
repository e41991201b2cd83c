//! Resource names follow DNS label rules so that they can appear in host
//! names (buckets, instances) and URLs without escaping.

use crate::ApiError;

pub const MAX_LEN: usize = 63;

/// Checks `name` against DNS label rules: 1–63 characters, lowercase ASCII
/// letters, digits and `-`, starting with a letter, not ending with `-`.
pub fn validate(kind: &str, name: &str) -> Result<(), ApiError> {
    let reason = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > MAX_LEN {
        Some(format!("must be at most {MAX_LEN} characters"))
    } else if !name.as_bytes()[0].is_ascii_lowercase() {
        Some("must start with a lowercase letter".to_string())
    } else if name.ends_with('-') {
        Some("must not end with '-'".to_string())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            .map(|c| format!("may hold only lowercase letters, digits and '-', found {c:?}"))
    };
    match reason {
        None => Ok(()),
        Some(r) => Err(ApiError::invalid_name(format!(
            "invalid {kind} name {name:?}: {r}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web", "web-1", "a1-b2-c3", &"a".repeat(63)] {
            assert!(validate("project", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        for bad in [
            "",
            "1web",
            "-web",
            "web-",
            "Web",
            "we_b",
            "wé",
            &"a".repeat(64),
        ] {
            let err = validate("project", bad).unwrap_err();
            assert_eq!(err.code, "invalid_name");
            assert!(err.detail.contains("project name"), "{}", err.detail);
        }
    }
}
