//! Strictly validated names: everything that can reach an nginx file or a container label.
//!
//! [`Name`] (service names), [`Version`] and [`Header`] are the only ways user text enters
//! templates; each is checked against a small charset when the config is loaded, so a
//! template never sees raw input.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A service name: lowercase letters, digits and `-`, 1–48 chars, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// A version label: letters, digits, `.`, `_`, `-`, 1–64 chars, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

impl Name {
    pub fn parse(s: &str) -> Result<Name, String> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let starts_ok = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if (1..=48).contains(&s.len()) && ok_chars && starts_ok && !s.ends_with('-') {
            Ok(Name(s.to_owned()))
        } else {
            Err(format!(
                "invalid name {s:?}: use 1-48 lowercase letters, digits and '-', starting with a letter"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let starts_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if (1..=64).contains(&s.len()) && ok_chars && starts_ok {
            Ok(Version(s.to_owned()))
        } else {
            Err(format!(
                "invalid version {s:?}: use 1-64 letters, digits, '.', '_' and '-', starting with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $t::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_impls!(Name);
string_newtype_impls!(Version);

/// A request attribute that selects a side of a split: a header or a cookie, by name.
/// Header names use letters, digits and `-`; cookie names letters, digits and `_` (nginx
/// exposes cookies as `$cookie_<name>`, which cannot hold `-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKey {
    Header(String),
    Cookie(String),
}

impl RequestKey {
    pub fn header(name: &str) -> Result<RequestKey, String> {
        let ok = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(RequestKey::Header(name.to_ascii_lowercase()))
        } else {
            Err(format!(
                "invalid header name {name:?}: use 1-64 letters, digits and '-'"
            ))
        }
    }

    pub fn cookie(name: &str) -> Result<RequestKey, String> {
        let ok = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(RequestKey::Cookie(name.to_owned()))
        } else {
            Err(format!(
                "invalid cookie name {name:?}: use 1-64 letters, digits and '_'"
            ))
        }
    }
}

/// Requests whose key equals `value` are routed to the canary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteMatch {
    pub key: RequestKey,
    pub value: String,
}

impl RouteMatch {
    pub fn new(key: RequestKey, value: &str) -> Result<RouteMatch, String> {
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        // Words nginx's `map` reads as parameters, not values.
        if ["default", "hostnames", "include", "volatile"].contains(&value) {
            return Err(format!(
                "{value:?} is a keyword of nginx's map: choose another match value"
            ));
        }
        if ok {
            Ok(RouteMatch {
                key,
                value: value.to_owned(),
            })
        } else {
            Err(format!(
                "invalid match value {value:?}: use 1-64 letters, digits, '.', '_' and '-'"
            ))
        }
    }
}

/// Checks an image reference after `{version}` substitution: registry/name:tag@digest charset.
pub fn check_image_ref(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("invalid image reference {s:?}"))
    }
}

/// Checks an HTTP path used for health checks: `/` followed by unreserved URL characters.
pub fn check_http_path(s: &str) -> Result<(), String> {
    let ok = s.starts_with('/')
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid path {s:?}: must start with '/' and use letters, digits, '/', '.', '_', '-', '~'"
        ))
    }
}

/// Checks an environment variable name passed to a container or process.
pub fn check_env_key(s: &str) -> Result<(), String> {
    let ok = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid environment variable name {s:?}: use A-Z, 0-9 and '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_anything_that_could_escape_an_nginx_file() {
        for bad in [
            "", "Web", "web;", "we b", "web}", "-web", "web-", "1web", "web\n", "a/b",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["web", "api-2", "a"] {
            assert!(Name::parse(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn versions_allow_semver_and_reject_injection() {
        for good in ["v2", "1.2.3", "2026-11-24_rc1"] {
            assert!(Version::parse(good).is_ok(), "{good:?} rejected");
        }
        for bad in [
            "",
            "v2;",
            "v 2",
            "$x",
            "../v1",
            ".v1",
            "v2\"",
            &"x".repeat(65),
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn request_keys_and_match_values_cannot_escape_an_nginx_file() {
        assert_eq!(
            RequestKey::header("X-Canary"),
            Ok(RequestKey::Header("x-canary".into()))
        );
        assert!(RequestKey::header("x canary").is_err());
        assert!(RequestKey::header("x\"y").is_err());
        assert!(RequestKey::cookie("user_id").is_ok());
        assert!(
            RequestKey::cookie("user-id").is_err(),
            "nginx has no $cookie_ variable with '-'"
        );
        let key = RequestKey::header("x-canary").unwrap();
        assert!(RouteMatch::new(key.clone(), "always").is_ok());
        for bad in ["", "a b", "a\"", "a;b", "a}b"] {
            assert!(RouteMatch::new(key.clone(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_paths_and_env_keys_are_checked() {
        assert!(check_image_ref("demo-app:v2").is_ok());
        assert!(check_image_ref("demo app:v2").is_err());
        assert!(check_http_path("/health").is_ok());
        assert!(check_http_path("health").is_err());
        assert!(check_http_path("/h?x=1").is_err());
        assert!(check_env_key("LATENCY_MS").is_ok());
        assert!(check_env_key("latency").is_err());
    }
}
