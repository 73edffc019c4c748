//! The operator's view, behind the admin token (the one that guards `/metrics`): accounts and
//! balances, the queue, workers and the generations being worked on with who holds each
//! lease, and the webhook delivery success chart.
//!
//! Every table is one bounded store query (the oldest accounts, the leases soonest to lapse),
//! and the page says where it stopped.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use reelay_store::{Account, Stage};
use reelay_webhooks::timestamp;
use time::OffsetDateTime;

use super::form::Form;
use super::history::History;
use super::layout::{self, Nav, Section, page};
use super::session::{self, Operator};
use super::{forbidden, store_error};
use crate::{AdminAccess, AppState};

/// Accounts shown; the rest are counted.
const MAX_ACCOUNTS: u32 = 200;
/// Leases shown, soonest to lapse first.
const MAX_LEASES: u32 = 200;

fn sign_in_form(error: Option<&str>, closed: bool) -> Markup {
    html! {
        h1 { "Operator sign-in" }
        @if closed {
            p.error role="alert" { "The operator view is off: start the server with "
                code { "REELAY_ADMIN_TOKEN" } " set, then sign in here with that token." }
        } @else {
            p { "Sign in with the server's admin token (" code { "REELAY_ADMIN_TOKEN" } ", the one that guards "
                code { "/metrics" } ")." }
            @if let Some(error) = error {
                p.error role="alert" id="operator-error" { (error) }
            }
            form.card method="post" action="/dashboard/operator/sign-in" {
                label for="admin_token" { "Admin token" }
                input id="admin_token" name="admin_token" type="password" required
                    autocomplete="off" spellcheck="false" autofocus;
                button type="submit" { "Sign in" }
            }
        }
        p.muted { a href="/dashboard/sign-in" { "Sign in with an API key instead" } }
    }
}

pub async fn sign_in_page(State(state): State<AppState>) -> Response {
    if matches!(state.admin, AdminAccess::Open) {
        return Redirect::to("/dashboard/operator").into_response();
    }
    let closed = matches!(state.admin, AdminAccess::Closed);
    let status = if closed {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    (
        status,
        Html(page("Operator sign-in", None, sign_in_form(None, closed)).into_string()),
    )
        .into_response()
}

pub async fn sign_in(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let token = form.get("admin_token").unwrap_or_default();
    let cookie = (!token.is_empty() && session::admin_token_ok(&state.admin, token))
        .then(|| session::open_operator(&state, &headers))
        .flatten();
    match cookie {
        Some(cookie) => {
            let mut response = Redirect::to("/dashboard/operator").into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        None => {
            let closed = matches!(state.admin, AdminAccess::Closed);
            (
                StatusCode::UNAUTHORIZED,
                Html(
                    page(
                        "Operator sign-in",
                        None,
                        sign_in_form(Some("That is not the admin token."), closed),
                    )
                    .into_string(),
                ),
            )
                .into_response()
        }
    }
}

pub async fn sign_out(operator: Operator, headers: HeaderMap, form: Form) -> Response {
    if !operator.csrf_ok(form.get("csrf")) {
        return forbidden();
    }
    let mut response = Redirect::to("/dashboard/operator/sign-in").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_operator(&headers));
    response
}

/// The oldest accounts, with how many live keys each has, and how many there are in all.
async fn accounts(state: &AppState) -> Result<(Vec<(Account, usize)>, usize), Response> {
    let page = state
        .store
        .list_accounts(MAX_ACCOUNTS)
        .await
        .map_err(store_error)?;
    let shown = page
        .items
        .into_iter()
        .map(|o| {
            (
                o.account,
                usize::try_from(o.live_keys).unwrap_or(usize::MAX),
            )
        })
        .collect();
    Ok((shown, usize::try_from(page.total).unwrap_or(usize::MAX)))
}

/// A processing generation and who holds its lease.
struct Held {
    account: String,
    id: String,
    started_at: OffsetDateTime,
    progress_pct: u8,
    claims: u32,
    holder: String,
    until: OffsetDateTime,
}

/// The leases soonest to lapse, each with its account's name when that account is listed.
async fn leases(state: &AppState, accounts: &[(Account, usize)]) -> Result<Vec<Held>, Response> {
    let names: HashMap<_, _> = accounts
        .iter()
        .map(|(a, _)| (a.id, a.name.as_str()))
        .collect();
    let leases = state.store.leases(MAX_LEASES).await.map_err(store_error)?;
    Ok(leases
        .into_iter()
        .filter_map(|lease| {
            let g = lease.generation;
            let Stage::Processing {
                started_at,
                progress_pct,
                claims,
            } = g.stage
            else {
                return None;
            };
            Some(Held {
                account: names
                    .get(&g.account_id)
                    .map_or_else(|| g.account_id.to_string(), |n| (*n).to_owned()),
                id: g.id.to_string(),
                started_at,
                progress_pct,
                claims,
                holder: lease.owner,
                until: lease.until,
            })
        })
        .collect())
}

pub async fn view(
    State(state): State<AppState>,
    Extension(history): Extension<History>,
    operator: Operator,
) -> Response {
    let now = state.store.now();
    let (accounts, total_accounts) = match accounts(&state).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    let far = now + time::Duration::days(365 * 100);
    let pending = match state.store.pending_before(far).await {
        Ok(n) => n,
        Err(e) => return store_error(e),
    };
    let deliveries = match state.store.delivery_counts(now).await {
        Ok(c) => c,
        Err(e) => return store_error(e),
    };
    let workers = match state.store.list_workers().await {
        Ok(w) => w,
        Err(e) => return store_error(e),
    };
    let held = match leases(&state, &accounts).await {
        Ok(h) => h,
        Err(response) => return response,
    };
    let pending_text = if pending >= reelay_store::QUEUE_POSITION_CAP {
        format!("{pending} or more")
    } else {
        pending.to_string()
    };
    let csrf = operator.csrf();
    let body = html! {
        h1 { "Operator" }
        section aria-labelledby="queue-h" {
            h2 id="queue-h" { "Queue" }
            dl.tiles {
                div { dt { "Pending generations" } dd id="queue-pending" { (pending_text) } }
                div { dt { "Processing (listed below)" } dd { (held.len()) } }
                div { dt { "Webhooks due now" } dd { (deliveries.due) } }
                div { dt { "Webhooks waiting to retry" } dd { (deliveries.scheduled) } }
                div { dt { "Webhooks failed" } dd { (deliveries.failed) } }
            }
        }
        section aria-labelledby="chart-h" {
            h2 id="chart-h" { "Webhook delivery success" }
            (history.chart())
        }
        section aria-labelledby="leases-h" {
            h2 id="leases-h" { "Work in progress and its leases" }
            @if held.is_empty() {
                p.empty { "Nothing is being generated right now." }
            } @else {
                div.scroll { table {
                    thead { tr {
                        th scope="col" { "Account" } th scope="col" { "Generation" }
                        th scope="col" { "Started" } th scope="col" { "Progress" }
                        th scope="col" { "Claims" } th scope="col" { "Lease holder" }
                        th scope="col" { "Lease until" }
                    } }
                    tbody { @for h in &held { tr {
                        td data-label="Account" { (h.account) }
                        td data-label="Generation" { code.wrap { (h.id) } }
                        td data-label="Started" { (layout::age(h.started_at, now)) }
                        td data-label="Progress" { (h.progress_pct) "%" }
                        td data-label="Claims" { (h.claims) }
                        td data-label="Lease holder" { code.wrap { (h.holder) } }
                        td data-label="Lease until" { (layout::when(Some(&timestamp::format(h.until)))) }
                    } } }
                } }
            }
            @if held.len() >= MAX_LEASES as usize {
                p.muted { "The " (MAX_LEASES) " leases soonest to lapse are shown." }
            }
        }
        section aria-labelledby="workers-h" {
            h2 id="workers-h" { "Workers" }
            @if workers.is_empty() {
                p.empty { "No worker tokens. Make one with " code { "reelay workers create" } "." }
            } @else {
                div.scroll { table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Token" } th scope="col" { "Models" }
                        th scope="col" { "Created" } th scope="col" { "State" }
                    } }
                    tbody { @for w in &workers { tr {
                        td data-label="Name" { (w.name) }
                        td data-label="Token" { code { (w.shown_prefix) "…" } }
                        td data-label="Models" {
                            @if w.models.is_empty() { "all" }
                            @else { (w.models.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")) }
                        }
                        td data-label="Created" { (layout::when(Some(&timestamp::format(w.created_at)))) }
                        td data-label="State" {
                            @if w.revoked_at.is_some() { span.badge.bad { "revoked" } }
                            @else { span.badge.ok { "active" } }
                        }
                    } } }
                } }
            }
        }
        section aria-labelledby="accounts-h" {
            h2 id="accounts-h" { "Accounts" }
            div.scroll { table id="accounts" {
                caption { (total_accounts) " accounts"
                    @if total_accounts > accounts.len() { ", the first " (accounts.len()) " shown" } }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Account id" }
                    th scope="col" { "Balance" } th scope="col" { "Live keys" } th scope="col" { "Created" }
                } }
                tbody { @for (a, keys) in &accounts { tr {
                    td data-label="Name" { (a.name) }
                    td data-label="Account id" { code.wrap { (a.id.to_string()) } }
                    td data-label="Balance" { (a.balance.to_string()) }
                    td data-label="Live keys" { (keys) }
                    td data-label="Created" { (layout::age(a.created_at, now)) }
                } } }
            } }
        }
    };
    let nav = Nav {
        section: Section::Operator,
        csrf: csrf.as_deref(),
        sign_out: "/dashboard/operator/sign-out",
    };
    Html(page("Operator", Some(nav), body).into_string()).into_response()
}
