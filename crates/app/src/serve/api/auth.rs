//! Who may use `/api/v1`: [`Token`], the bearer token read from `[serve] token_file` when
//! serve starts, [`authorize`] (the check of one request's `Authorization` header) and
//! [`same_bytes`], a comparison whose time does not depend on where the bytes differ.

use std::path::Path;

use axum::http::HeaderValue;

use crate::AppError;

/// The API token. Never printed: its `Debug` says only that it is there.
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads `file` (its mode checked again: it may have changed since the config was
    /// loaded); surrounding whitespace, such as the final newline, is not part of the token.
    pub fn read(file: &Path) -> Result<Token, AppError> {
        let refuse =
            |why: &str| AppError::input(format!("serve.token_file: {}: {why}", file.display()));
        if let Some(why) = crate::settings::token_file_problem(file) {
            return Err(refuse(&why));
        }
        let bytes = std::fs::read(file).map_err(|e| {
            AppError::environment(format!("reading serve.token_file {}: {e}", file.display()))
        })?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(refuse("is empty"));
        }
        Ok(Token(token.to_vec()))
    }

    #[cfg(test)]
    pub fn new(token: &str) -> Token {
        Token(token.as_bytes().to_vec())
    }
}

/// Why a request was refused (each answers 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// serve has no `[serve] token_file`: the API is closed.
    NoToken,
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A bearer token that is not ours.
    Wrong,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Denied::NoToken => {
                "the API is closed: set [serve] token_file (a 0600 file holding the token) and restart serve"
            }
            Denied::Missing => "missing `Authorization: Bearer <token>`",
            Denied::Wrong => "wrong token",
        }
    }
}

/// Checks one request's `Authorization` header against `token`.
pub fn authorize(token: Option<&Token>, header: Option<&HeaderValue>) -> Result<(), Denied> {
    let token = token.ok_or(Denied::NoToken)?;
    let presented = header
        .and_then(|h| strip_bearer(h.as_bytes()))
        .ok_or(Denied::Missing)?;
    if same_bytes(presented, &token.0) {
        Ok(())
    } else {
        Err(Denied::Wrong)
    }
}

/// The credentials of `Bearer <credentials>` (the scheme is case-insensitive).
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Whether `presented` equals `expected`, in time that depends only on their lengths:
/// every byte of `expected` is compared, whatever differs first.
pub fn same_bytes(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!*e);
        diff |= std::hint::black_box(p ^ e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_equality() {
        assert!(same_bytes(b"s3cret-token", b"s3cret-token"));
        assert!(same_bytes(b"", b""));
        assert!(!same_bytes(b"s3cret-tokeN", b"s3cret-token"));
        assert!(!same_bytes(b"x3cret-token", b"s3cret-token"));
        assert!(!same_bytes(b"s3cret", b"s3cret-token"), "a prefix");
        assert!(
            !same_bytes(b"s3cret-token-and-more", b"s3cret-token"),
            "longer"
        );
        assert!(!same_bytes(b"", b"s3cret-token"));
        // A presented byte equal to the inverted expected one must not pass as padding.
        assert!(!same_bytes(&[!b'a'], b"ab"));
    }

    #[test]
    fn only_the_bearer_token_passes() {
        let token = Token::new("s3cret");
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        let check = |v: Option<&str>| authorize(Some(&token), v.map(header).as_ref());
        assert_eq!(check(Some("Bearer s3cret")), Ok(()));
        assert_eq!(check(Some("bearer s3cret")), Ok(()));
        assert_eq!(check(Some("Bearer s3cret\t")), Ok(()));
        assert_eq!(check(Some("Bearer s3cre")), Err(Denied::Wrong));
        assert_eq!(check(Some("Bearer S3CRET")), Err(Denied::Wrong));
        assert_eq!(check(Some("Bearer ")), Err(Denied::Wrong));
        assert_eq!(check(Some("Basic czNjcmV0")), Err(Denied::Missing));
        assert_eq!(check(Some("s3cret")), Err(Denied::Missing));
        assert_eq!(check(None), Err(Denied::Missing));
        let no_token = authorize(None, Some(&header("Bearer s3cret")));
        assert_eq!(no_token, Err(Denied::NoToken));
        assert!(Denied::NoToken.message().contains("[serve] token_file"));
    }

    #[test]
    fn a_token_is_never_printed() {
        assert_eq!(format!("{:?}", Token::new("s3cret")), "Token(<redacted>)");
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused_and_the_newline_is_not_the_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.token");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Token::read(&file).unwrap_err();
        assert_eq!(err.code, 2, "{err}");
        assert!(err.message.contains("api.token"), "{err}");
        assert!(err.message.contains("mode 644"), "{err}");
        assert!(!err.message.contains("s3cret"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = Token::read(&file).unwrap();
        let header = HeaderValue::from_static("Bearer s3cret");
        assert_eq!(authorize(Some(&token), Some(&header)), Ok(()));
    }
}
