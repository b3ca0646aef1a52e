//! `GET /`: the dashboard, one page with every asset built in (no CDN, nothing fetched from
//! outside: its Content-Security-Policy allows its own origin only). It signs in with the API
//! token (kept in the tab's `sessionStorage`; `#token=` in the URL signs in too), polls
//! `/api/v1/status` and `/api/v1/history`, reads `/metrics` for request rate, error rate and
//! p99 per track, and drives promote, abort and rollback through the API. A deployment picked
//! in the history is shown from `/api/v1/deployments/{id}` as sections: what failed at the
//! proxy per track (and before), its steps with their times, the hooks with their output,
//! and for a failure the judge's checks against their thresholds, each new replica's state,
//! exit code, OOM flag, last health response and log tail, and nginx's error lines. The page
//! builds its DOM from text nodes only (never markup from data). State-changing
//! requests carry the token in the `Authorization` header, which a cross-site form or image
//! cannot send, so they are safe from cross-site request forgery; the page may not be framed.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard/index.html");

/// Everything from this origin only; inline script and style are the page's own.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'none'; \
                   frame-ancestors 'none'; base-uri 'none'";

pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_no_other_origin() {
        // Every URL the page asks for is a path on its own origin.
        for needle in ["http://", "https://", "//cdn", "src=\"http", "@import"] {
            assert!(!PAGE.contains(needle), "the dashboard names {needle:?}");
        }
        assert!(PAGE.contains("fetch(\"/api/v1/\""), "it reads the API");
        assert!(PAGE.contains("fetch(\"/metrics\")"), "it reads the metrics");
    }

    #[test]
    fn the_page_never_parses_data_as_markup() {
        // Log tails and hook output are whatever a program printed: text nodes only.
        for needle in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE.contains(needle), "the dashboard uses {needle}");
        }
    }
}
