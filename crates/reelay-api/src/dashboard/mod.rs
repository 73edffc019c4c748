//! `/dashboard`: a web UI for the people behind an account (their generations, videos,
//! webhook attempts, balance and signing secret) and for the operator (accounts, queue,
//! workers, delivery success), embedded in the binary.
//!
//! Pages are rendered on the server from the same store, engine and dispatcher calls the API
//! makes; one small script (no build step) refreshes the live parts. Sign-in trades an API key
//! (or the admin token) for a signed session cookie (`session`), every POST carries the
//! session's CSRF token and is refused from another site (`form`), and every page is sent
//! with a Content-Security-Policy that allows no inline script or style.

mod account;
mod form;
mod generations;
mod history;
mod layout;
mod operator;
mod session;

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use reelay_store::StoreError;

use crate::{ApiError, AppState};

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// The dashboard's routes, to merge into the API's router.
pub fn router(state: &AppState) -> Router<AppState> {
    let history = history::History::start(state.metrics.clone());
    Router::new()
        .route("/dashboard", get(generations::list))
        .route("/dashboard/", get(|| async { Redirect::to("/dashboard") }))
        .route(
            "/dashboard/sign-in",
            get(account::sign_in_page).post(account::sign_in),
        )
        .route("/dashboard/sign-out", post(account::sign_out))
        .route(
            "/dashboard/fragments/generations",
            get(generations::list_fragment),
        )
        .route("/dashboard/generations/{id}", get(generations::show))
        .route(
            "/dashboard/generations/{id}/fragments/{part}",
            get(generations::fragment),
        )
        .route(
            "/dashboard/generations/{id}/redeliver",
            post(generations::redeliver),
        )
        .route(
            "/dashboard/generations/{id}/cancel",
            post(generations::cancel),
        )
        .route("/dashboard/account", get(account::account))
        .route("/dashboard/account/secret", post(account::reveal_secret))
        .route(
            "/dashboard/account/secret/rotate",
            post(account::rotate_secret),
        )
        .route("/dashboard/operator", get(operator::view))
        .route(
            "/dashboard/operator/sign-in",
            get(operator::sign_in_page).post(operator::sign_in),
        )
        .route("/dashboard/operator/sign-out", post(operator::sign_out))
        .route("/dashboard/assets/dashboard.css", get(css))
        .route("/dashboard/assets/dashboard.js", get(js))
        .route("/dashboard/{*rest}", get(not_found).post(not_found))
        .layer(Extension(history))
        .layer(axum::middleware::map_response(security_headers))
}

/// The policy of every dashboard page: scripts, styles and media from this server only
/// (`media` adds the origin of a video served elsewhere), no framing, forms back to here.
fn csp(media: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         media-src 'self' {media}; connect-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY)
        && let Ok(policy) = HeaderValue::from_str(&csp(""))
    {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    // Pages hold an account's data: not for shared caches, nor for the Back button after
    // signing out. The two assets say otherwise themselves.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

async fn not_found() -> Response {
    layout::error_page(StatusCode::NOT_FOUND, "There is no such dashboard page.")
}

/// A form without this session's CSRF token.
fn forbidden() -> Response {
    layout::error_page(
        StatusCode::FORBIDDEN,
        "This form is out of date or did not come from this dashboard (its CSRF token is \
         missing or wrong). Go back, reload the page and try again.",
    )
}

/// A storage failure, as a page; the cause is for the log, not the browser.
fn store_error(e: StoreError) -> Response {
    api_error(e.into())
}

/// An API error shown as a page with the same status code.
fn api_error(e: ApiError) -> Response {
    let (status, message) = match e.detail() {
        "TASK_NOT_FOUND" | "INVALID_TASK_ID" => (
            StatusCode::NOT_FOUND,
            "No generation with this id exists for your account.",
        ),
        "MAINTENANCE" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The database cannot be reached for a moment; reload shortly.",
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server failed to handle this page; it was logged. Try again.",
        ),
    };
    layout::error_page(status, message)
}

/// The message a form's redirect asks the next page to show. Only these fixed texts can be
/// shown: the query names one, it never carries text.
pub struct Notice(Option<&'static str>);

impl Notice {
    fn text(&self) -> Option<&'static str> {
        self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Notice {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let query = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| q)
            .unwrap_or_default();
        let text = match query.get("notice").map(String::as_str) {
            Some("redelivered") => {
                "A new round of webhook attempts started; it appears below as it goes."
            }
            Some("redeliver-pending") => {
                "A delivery round is already under way; redeliver once it has ended."
            }
            Some("redeliver-no-callback") => {
                "This generation has no callback_url, so there is nothing to deliver."
            }
            Some("redeliver-unfinished") => {
                "This generation has not finished; its webhook is sent when it does."
            }
            Some("cancelled") => "The generation was cancelled and its price refunded.",
            Some("cancel-finished") => "The generation had already finished; nothing changed.",
            _ => return Ok(Self(None)),
        };
        Ok(Self(Some(text)))
    }
}
