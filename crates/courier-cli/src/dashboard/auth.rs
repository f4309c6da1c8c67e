//! Who may change rows: the admin token, sent as `Authorization: Bearer <token>`. A header
//! rather than a cookie, so a page of another site cannot make the browser send it (no cross-site
//! request forgery), and reading needs no token at all.

use axum::http::StatusCode;

use crate::secret::Secret;

/// The configured admin token and the name actions are logged under.
#[derive(Clone, Debug)]
pub struct AdminToken {
    pub name: String,
    pub secret: Secret,
}

/// Why a change was refused: the status and the message the client gets.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
}

/// The name of the token that `authorization` (the request's header, if any) carries, or why
/// the request may not change rows: 401 without a bearer token, 403 with a wrong one or when no
/// token is configured (the dashboard is then read-only).
pub fn authorize<'t>(token: Option<&'t AdminToken>, authorization: Option<&str>) -> Result<&'t str, Refusal> {
    let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "this action needs the admin token as `Authorization: Bearer <token>`",
        });
    };
    match token {
        Some(token) if constant_time_eq(given.as_bytes(), token.secret.expose().as_bytes()) => {
            Ok(&token.name)
        }
        Some(_) => Err(Refusal { status: StatusCode::FORBIDDEN, message: "the admin token is wrong" }),
        None => Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: "read-only: no admin token is configured (http.admin_token or http.admin_token_file)",
        }),
    }
}

/// Compares without stopping at the first difference, so the time taken does not reveal how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> AdminToken {
        AdminToken { name: "ops".into(), secret: Secret::from("s3cret".to_owned()) }
    }

    #[test]
    fn the_right_bearer_token_names_its_owner() {
        assert_eq!(authorize(Some(&token()), Some("Bearer s3cret")), Ok("ops"));
    }

    #[test]
    fn no_bearer_token_is_401_and_a_wrong_one_403() {
        let status = |header| authorize(Some(&token()), header).unwrap_err().status;
        assert_eq!(status(None), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Basic b3BzOnMzY3JldA==")), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Bearer s3cre")), StatusCode::FORBIDDEN);
        assert_eq!(status(Some("Bearer s3cret2")), StatusCode::FORBIDDEN);
        assert_eq!(status(Some("Bearer ")), StatusCode::FORBIDDEN);
    }

    #[test]
    fn without_a_configured_token_every_change_is_refused() {
        let refusal = authorize(None, Some("Bearer anything")).unwrap_err();
        assert_eq!(refusal.status, StatusCode::FORBIDDEN);
        assert!(refusal.message.contains("http.admin_token"), "{}", refusal.message);
    }
}
