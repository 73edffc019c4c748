//! Signing in and out with an API key, and the account's own page: its balance and its webhook
//! signing secret, revealed or rotated only on a CSRF-checked POST (never in a page by
//! default, never cached).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use reelay_core::apikey::KeyHash;
use reelay_delivery::{AccountSecrets, RotateError};
use reelay_webhooks::timestamp;

use super::form::Form;
use super::layout::{self, Nav, Section, page};
use super::session::{self, Session};
use super::{Notice, forbidden, store_error};
use crate::AppState;

fn sign_in_form(error: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        p { "Sign in with one of your API keys. The key is checked once and never kept in the page; "
            "a session cookie remembers you for 12 hours, or until the key is revoked." }
        @if let Some(error) = error {
            p.error role="alert" id="sign-in-error" { (error) }
        }
        form.card method="post" action="/dashboard/sign-in" {
            label for="api_key" { "API key" }
            @if error.is_some() {
                input id="api_key" name="api_key" type="password" required autocomplete="off"
                    spellcheck="false" placeholder="rly_…" aria-invalid="true"
                    aria-describedby="sign-in-error" autofocus;
            } @else {
                input id="api_key" name="api_key" type="password" required autocomplete="off"
                    spellcheck="false" placeholder="rly_…" autofocus;
            }
            button type="submit" { "Sign in" }
        }
        p.muted { "Operating this server? " a href="/dashboard/operator/sign-in" { "Sign in as an operator" } "." }
    }
}

pub async fn sign_in_page() -> Html<String> {
    Html(page("Sign in", None, sign_in_form(None)).into_string())
}

fn refused(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(page("Sign in", None, sign_in_form(Some(message))).into_string()),
    )
        .into_response()
}

/// Checks the key and opens a session bound to its id, so that revoking the key ends it.
pub async fn sign_in(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let key = form.get("api_key").unwrap_or_default().trim();
    if key.is_empty() || key.len() > 512 {
        return refused(StatusCode::UNAUTHORIZED, "Enter an API key.");
    }
    let found = match state.store.authenticate(KeyHash::of(key)).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return refused(
                StatusCode::UNAUTHORIZED,
                "This API key is not valid: it is unknown or was revoked.",
            );
        }
        Err(e) => return store_error(e),
    };
    let cookie = session::open_account(&state, &headers, found.account_id, found.id);
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// Ends the session in this browser. Only a form of this session may do it (CSRF).
pub async fn sign_out(session: Session, headers: HeaderMap, form: Form) -> Response {
    if !session.csrf_ok(form.get("csrf")) {
        return forbidden();
    }
    signed_out(&headers, "/dashboard/sign-in")
}

pub fn signed_out(headers: &HeaderMap, to: &str) -> Response {
    let mut response = Redirect::to(to).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear(headers));
    response
}

/// The account page; `secret` is shown only as the answer to a reveal or rotate POST.
async fn account_page(
    state: &AppState,
    session: &Session,
    secret: Option<&AccountSecrets>,
    notice: Option<&str>,
) -> Response {
    let account = match state.store.account(session.account).await {
        Ok(Some(account)) => account,
        Ok(None) => return layout::error_page(StatusCode::NOT_FOUND, "This account is gone."),
        Err(e) => return store_error(e),
    };
    let csrf = session.csrf();
    let body = html! {
        h1 { "Balance & webhooks" }
        (layout::notice(notice))
        section aria-labelledby="balance-h" {
            h2 id="balance-h" { "Balance" }
            p.big { span id="balance" { (account.balance.to_string()) } " credits" }
            dl.facts {
                dt { "Account" } dd { (account.name) }
                dt { "Account id" } dd { code { (account.id.to_string()) } }
            }
        }
        section aria-labelledby="secret-h" {
            h2 id="secret-h" { "Webhook signing secret" }
            p { "Webhooks are signed with this secret (Standard Webhooks). After a rotation the "
                "old secret keeps signing beside the new one for 24 hours." }
            @if let Some(s) = secret {
                dl.facts id="secret" {
                    dt { "Secret" } dd { code.secret { (s.current.to_string()) } }
                    dt { "Since" } dd { (layout::when(Some(&timestamp::format(s.current_since)))) }
                    @if let Some(until) = s.previous_expires_at {
                        dt { "Previous secret signs until" }
                        dd { (layout::when(Some(&timestamp::format(until)))) }
                    }
                }
            }
            div.actions {
                form method="post" action="/dashboard/account/secret" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Reveal signing secret" }
                }
                form method="post" action="/dashboard/account/secret/rotate" {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" data-confirm="Rotate the signing secret? The old one keeps signing for 24 hours." { "Rotate signing secret" }
                }
            }
        }
    };
    let nav = Nav {
        section: Section::Account,
        csrf: Some(&csrf),
        sign_out: "/dashboard/sign-out",
    };
    let mut response =
        Html(page("Balance & webhooks", Some(nav), body).into_string()).into_response();
    if secret.is_some() {
        // A revealed secret must not stay in a cache or come back with the Back button.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

pub async fn account(State(state): State<AppState>, session: Session, notice: Notice) -> Response {
    account_page(&state, &session, None, notice.text()).await
}

pub async fn reveal_secret(
    State(state): State<AppState>,
    session: Session,
    form: Form,
) -> Response {
    if !session.csrf_ok(form.get("csrf")) {
        return forbidden();
    }
    match state.dispatcher.keyring().show(session.account).await {
        Ok(secrets) => account_page(&state, &session, Some(&secrets), None).await,
        Err(e) => store_error(e),
    }
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    session: Session,
    form: Form,
) -> Response {
    if !session.csrf_ok(form.get("csrf")) {
        return forbidden();
    }
    match state.dispatcher.keyring().rotate(session.account).await {
        Ok(secrets) => account_page(
            &state,
            &session,
            Some(&secrets),
            Some("The signing secret was rotated. The previous one signs beside it for 24 hours."),
        )
        .await,
        Err(e @ RotateError::TooSoon { .. }) => {
            let message = format!("Not rotated: {e}.");
            let mut response = account_page(&state, &session, None, Some(&message)).await;
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
        }
        Err(RotateError::Store(e)) => store_error(e),
    }
}
