//! Bearer-token authentication of receiver clients, as the collector's `bearertokenauth`
//! extension: a request must carry `Authorization: <scheme> <token>` with a configured token;
//! others get 401 (HTTP) or UNAUTHENTICATED (gRPC).

use crate::config::BearerTokenAuth;

/// The scheme when the configuration names none.
pub const DEFAULT_SCHEME: &str = "Bearer";

/// Why the authenticator could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read.
    #[error("extensions.bearertokenauth.filename: reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No token (an empty token or token file).
    #[error("extensions.bearertokenauth: the token is empty")]
    Empty,
}

/// Checks `Authorization` header values against the accepted tokens.
#[derive(Clone)]
pub struct BearerAuth {
    /// Every accepted header value, `<scheme> <token>`.
    accepted: Vec<Vec<u8>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens.
        write!(f, "BearerAuth({} tokens)", self.accepted.len())
    }
}

impl BearerAuth {
    /// The authenticator for the configured extension (reads `filename` now).
    pub fn from_config(cfg: &BearerTokenAuth) -> Result<Self, AuthError> {
        let mut tokens: Vec<String> = cfg.tokens.clone();
        if let Some(t) = &cfg.token {
            tokens.push(t.clone());
        }
        if let Some(path) = &cfg.filename {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: path.display().to_string(),
                source,
            })?;
            tokens.push(text.trim().to_string());
        }
        if tokens.is_empty() || tokens.iter().any(String::is_empty) {
            return Err(AuthError::Empty);
        }
        let scheme = cfg.scheme.as_deref().unwrap_or(DEFAULT_SCHEME);
        Ok(BearerAuth {
            accepted: tokens
                .iter()
                .map(|t| format!("{scheme} {t}").into_bytes())
                .collect(),
        })
    }

    /// True when `header` (the `Authorization` value, if any) carries an accepted token.
    pub fn check(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else {
            return false;
        };
        // Compare with every token, each in time independent of where they differ.
        self.accepted
            .iter()
            .fold(false, |ok, want| ok | constant_time_eq(header, want))
    }
}

/// Equality whose time depends on the lengths only, not on the position of the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(token: &str) -> BearerTokenAuth {
        BearerTokenAuth {
            token: Some(token.into()),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_only_the_token_with_its_scheme() {
        let auth = BearerAuth::from_config(&cfg("s3cret")).unwrap();
        assert!(auth.check(Some(b"Bearer s3cret")));
        assert!(!auth.check(Some(b"Bearer s3cre")));
        assert!(!auth.check(Some(b"Bearer s3cret ")));
        assert!(!auth.check(Some(b"Basic s3cret")));
        assert!(!auth.check(Some(b"s3cret")));
        assert!(!auth.check(None));
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn several_tokens_a_scheme_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let auth = BearerAuth::from_config(&BearerTokenAuth {
            filename: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert!(auth.check(Some(b"Bearer from-file")));
        let auth = BearerAuth::from_config(&BearerTokenAuth {
            scheme: Some("Token".into()),
            tokens: vec!["a".into(), "b".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(auth.check(Some(b"Token a")) && auth.check(Some(b"Token b")));
        assert!(!auth.check(Some(b"Bearer a")));
        assert!(matches!(
            BearerAuth::from_config(&cfg("")),
            Err(AuthError::Empty)
        ));
    }
}
