//! The account's generations: the live list, one generation's page (video, payload, webhook
//! attempts) and its redeliver and cancel buttons.
//!
//! Every figure comes from the API's own view of a generation (`GenerationView`, serialized as
//! the API answers it), so the dashboard shows exactly what the API says; every action calls
//! the same store, engine and dispatcher as the API's routes.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use reelay_core::GenerationStatus;
use reelay_store::{DueRef, Event, Finished, Generation, OutboxListener, Redelivery};
use reelay_webhooks::timestamp;
use serde_json::Value;

use super::form::Form;
use super::layout::{self, Nav, Section, page, status_badge};
use super::session::Session;
use super::{Notice, api_error, forbidden, store_error};
use crate::AppState;
use crate::auth::Caller;
use crate::generations::{GenerationView, owned};

/// Rows on one page of the list.
const PAGE: u32 = 25;
/// Characters of a prompt shown in the list.
const PROMPT_IN_LIST: usize = 120;

/// The list's filter and page, read leniently: a value that makes no sense is ignored.
struct ListQuery {
    status: Option<GenerationStatus>,
    offset: u64,
}

impl ListQuery {
    fn parse(query: &HashMap<String, String>) -> Self {
        Self {
            status: query.get("status").and_then(|s| s.parse().ok()),
            offset: query
                .get("offset")
                .and_then(|o| o.parse::<u64>().ok())
                .filter(|o| *o <= 1_000_000)
                .unwrap_or(0),
        }
    }

    fn to_query(&self, offset: u64) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = self.status {
            q.append_pair("status", s.as_str());
        }
        if offset > 0 {
            q.append_pair("offset", &offset.to_string());
        }
        q.finish()
    }
}

fn nav(csrf: &str) -> Nav<'_> {
    Nav {
        section: Section::Generations,
        csrf: Some(csrf),
        sign_out: "/dashboard/sign-out",
    }
}

/// The API's view of a generation, as JSON.
fn view(g: &Generation, queue_position: u64, event: Option<&Event>) -> Value {
    serde_json::to_value(GenerationView::new(g, queue_position, event)).unwrap_or(Value::Null)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The list's table, and a key that changes only when a row's news does (not its age), so
/// the page's script replaces the table (and loses the focus in it) only then.
async fn list_rows(
    state: &AppState,
    session: &Session,
    query: &ListQuery,
) -> Result<(Markup, String), Response> {
    let page = state
        .store
        .list_generations(session.account, query.status, PAGE, query.offset)
        .await
        .map_err(store_error)?;
    let now = state.store.now();
    let mut rows = Vec::with_capacity(page.items.len());
    for g in &page.items {
        let event = match g.stage.status().is_terminal() {
            true => state.store.event_for(g.id).await.map_err(store_error)?,
            false => None,
        };
        rows.push((g, view(g, 0, event.as_ref())));
    }
    let shown_to = query.offset + page.items.len() as u64;
    let mut news = format!("{}/{}", query.offset, page.total);
    for (g, v) in &rows {
        news.push_str(&format!(
            "|{}:{}:{}:{}:{}",
            g.id, v["status"], v["progress_pct"], v["webhook"]["state"], v["webhook"]["attempts"]
        ));
    }
    let key = layout::key_of(&news);
    let markup = html! {
        @if rows.is_empty() {
            p.empty { "No generations" @if let Some(s) = query.status { " with status " (s.as_str()) } " yet. "
                "Create one with " code { "POST /v1/veo/generate" } " or " code { "reelay generate" } "." }
        } @else {
            table.generations {
                caption { "Generations " (query.offset + 1) "–" (shown_to) " of " (page.total) ", newest first" }
                thead { tr {
                    th scope="col" { "Status" }
                    th scope="col" { "Prompt" }
                    th scope="col" { "Age" }
                    th scope="col" { "Webhook" }
                } }
                tbody {
                    @for (g, v) in &rows {
                        @let status = text(v, "status").unwrap_or("");
                        @let webhook = &v["webhook"];
                        tr data-generation-id=(g.id.to_string()) data-status=(status) {
                            td data-label="Status" {
                                (status_badge(status))
                                @if status == "processing" {
                                    " " span.muted { (v["progress_pct"].as_u64().unwrap_or(0)) "%" }
                                }
                            }
                            td data-label="Prompt" {
                                a id=(format!("g-{}", g.id)) href=(format!("/dashboard/generations/{}", g.id)) {
                                    (layout::shorten(&g.spec.prompt, PROMPT_IN_LIST))
                                }
                            }
                            td data-label="Age" { (layout::age(g.created_at, now)) }
                            td data-label="Webhook" data-webhook-state=(text(webhook, "state").unwrap_or("")) {
                                (status_badge(text(webhook, "state").unwrap_or("")))
                                @let attempts = webhook["attempts"].as_u64().unwrap_or(0);
                                @if attempts > 0 {
                                    " " span.muted { (attempts) (if attempts == 1 { " attempt" } else { " attempts" }) }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if query.offset > 0 {
                a href=(format!("/dashboard?{}", query.to_query(query.offset.saturating_sub(PAGE as u64)))) { "← Newer" }
            }
            @if shown_to < page.total {
                a href=(format!("/dashboard?{}", query.to_query(shown_to))) { "Older →" }
            }
        }
    };
    Ok((markup, key))
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(raw): Query<HashMap<String, String>>,
) -> Response {
    let query = ListQuery::parse(&raw);
    let (rows, key) = match list_rows(&state, &session, &query).await {
        Ok(rows) => rows,
        Err(response) => return response,
    };
    let balance = match state.store.account(session.account).await {
        Ok(a) => a.map(|a| a.balance.to_string()),
        Err(e) => return store_error(e),
    };
    let csrf = session.csrf();
    let fragment = format!(
        "/dashboard/fragments/generations?{}",
        query.to_query(query.offset)
    );
    let body = html! {
        div.heading {
            h1 { "Generations" }
            @if let Some(balance) = balance {
                p.balance { "Balance: " a href="/dashboard/account" { strong { (balance) } " credits" } }
            }
        }
        form.filter method="get" action="/dashboard" {
            label for="status" { "Status" }
            select id="status" name="status" {
                option value="" selected[query.status.is_none()] { "All" }
                @for s in ["pending", "processing", "completed", "failed"] {
                    option value=(s) selected[query.status.map(|q| q.as_str()) == Some(s)] { (s) }
                }
            }
            button type="submit" { "Filter" }
        }
        (layout::live("generations", "Generations", &fragment, false, rows, Some(key)))
    };
    Html(page("Generations", Some(nav(&csrf)), body).into_string()).into_response()
}

/// The list's table alone, for the page's script to refresh it.
pub async fn list_fragment(
    State(state): State<AppState>,
    session: Session,
    Query(raw): Query<HashMap<String, String>>,
) -> Response {
    match list_rows(&state, &session, &ListQuery::parse(&raw)).await {
        Ok((rows, key)) => layout::fragment(rows, Some(key)),
        Err(response) => response,
    }
}

/// Loads a generation of the session's account; another account's is a 404 like an unknown
/// one (the API's own rule).
async fn load(state: &AppState, session: &Session, id: &str) -> Result<Generation, Response> {
    owned(state, Caller(session.account), id)
        .await
        .map_err(api_error)
}

/// What the page shows of a generation, read once.
struct Loaded {
    generation: Generation,
    view: Value,
    attempts: Vec<reelay_store::Attempt>,
    event: Option<Event>,
}

async fn read(state: &AppState, session: &Session, id: &str) -> Result<Loaded, Response> {
    let g = load(state, session, id).await?;
    let position = state.store.queue_position(&g).await.map_err(store_error)?;
    let event = state.store.event_for(g.id).await.map_err(store_error)?;
    let attempts = match &event {
        Some(e) => state.store.attempts(&e.id).await.map_err(store_error)?,
        None => Vec::new(),
    };
    Ok(Loaded {
        view: view(&g, position, event.as_ref()),
        generation: g,
        attempts,
        event,
    })
}

/// Status, the video once there is one, and the buttons: what changes only with the status.
fn summary(l: &Loaded, csrf: &str) -> Markup {
    let v = &l.view;
    let status = text(v, "status").unwrap_or("");
    let id = l.generation.id;
    let finished = l.generation.stage.status().is_terminal();
    html! {
        dl.facts {
            dt { "Status" } dd data-status=(status) { (status_badge(status)) }
            @if !finished {
                dt { "Progress" } dd { (v["progress_pct"].as_u64().unwrap_or(0)) "%" }
                @if let Some(p) = v["queue_position"].as_u64() {
                    dt { "Queue position" } dd { (p) }
                }
            }
            @if let Some(code) = v["error"]["message"].as_str() {
                dt { "Error" } dd { code { (code) } }
            }
            dt { "Created" } dd { (layout::when(text(v, "created_at"))) }
            dt { "Finished" } dd { (layout::when(text(v, "completed_at"))) }
            dt { "Model" } dd { (text(v, "model").unwrap_or("")) }
            dt { "Aspect ratio" } dd { (text(v, "aspect_ratio").unwrap_or("")) }
            dt { "Seed" } dd { (v["seed"].as_u64().unwrap_or(0)) }
            dt { "Price" } dd { (text(v, "price").unwrap_or("")) " credits" }
            dt { "Callback URL" } dd { code.wrap { (text(v, "callback_url").unwrap_or("none")) } }
        }
        @if let Some(url) = text(v, "video_url") {
            figure.video {
                video controls preload="metadata" src=(url) aria-label="The generated video" {
                    a href=(url) { "Download the video" }
                }
                figcaption { a href=(url) { "Open the video file" } }
            }
        }
        div.actions {
            @if finished {
                form method="post" action=(format!("/dashboard/generations/{id}/redeliver")) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="redeliver" { "Redeliver webhook" }
                }
            } @else {
                form method="post" action=(format!("/dashboard/generations/{id}/cancel")) {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" id="cancel" data-confirm="Cancel this generation? Its price is refunded." { "Cancel generation" }
                }
            }
        }
    }
}

fn outcome_class(outcome: &str) -> &'static str {
    if outcome == "delivered" {
        "badge ok"
    } else {
        "badge bad"
    }
}

/// The webhook's state, every attempt, and the payloads: what changes as deliveries go on.
fn deliveries(l: &Loaded) -> Markup {
    let webhook = &l.view["webhook"];
    let state = text(webhook, "state").unwrap_or("");
    let payload = serde_json::to_string_pretty(&l.view).unwrap_or_default();
    let sent = l.event.as_ref().map(|e| pretty(&e.payload));
    html! {
        section aria-labelledby="webhook-h" {
            h2 id="webhook-h" { "Webhook" }
            dl.facts {
                dt { "State" } dd data-webhook-state=(state) { (status_badge(state)) }
                dt { "Attempts" } dd id="attempt-count" { (webhook["attempts"].as_u64().unwrap_or(0)) }
                @if let Some(id) = text(webhook, "webhook_id") {
                    dt { code { "webhook-id" } } dd { code.wrap { (id) } }
                }
                dt { "Next attempt" } dd { (layout::when(text(webhook, "next_attempt_at"))) }
                @if let Some(reason) = text(webhook, "failure_reason") {
                    dt { "Gave up because" } dd { (reason) }
                }
            }
            @if l.attempts.is_empty() {
                p.empty { @if state == "none" { "No callback_url: nothing is sent." }
                          @else { "No attempt yet." } }
            } @else {
                div.scroll {
                    table.attempts {
                        caption { "Attempts, oldest first" }
                        thead { tr {
                            th scope="col" { "#" }
                            th scope="col" { "When" }
                            th scope="col" { "Took" }
                            th scope="col" { "Outcome" }
                            th scope="col" { "Status code" }
                            th scope="col" { "Response" }
                        } }
                        tbody {
                            @for a in &l.attempts {
                                tr.attempt data-number=(a.number) {
                                    td data-label="#" { (a.number) }
                                    td data-label="When" { (layout::when(Some(&timestamp::format(a.started_at)))) }
                                    td data-label="Took" { (a.duration_ms) " ms" }
                                    td data-label="Outcome" { span class=(outcome_class(a.outcome.as_str())) { (a.outcome.as_str()) } }
                                    td data-label="Status code" { (a.status_code.map(|c| c.to_string()).unwrap_or_else(|| "—".into())) }
                                    td data-label="Response" {
                                        @if let Some(e) = &a.error { p.error-text { (e) } }
                                        @match a.response_body.as_deref() {
                                            Some(body) if !body.is_empty() => pre.body { (body) },
                                            _ => span.muted { "(empty)" },
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="payload-h" {
            h2 id="payload-h" { "Payload" }
            details open {
                summary { "As the API returns it (" code { "GET /v1/veo/generations/" (l.generation.id) } ")" }
                pre.json { code { (payload) } }
            }
            @if let Some(sent) = sent {
                details {
                    summary { "As the webhook sends it" }
                    pre.json { code { (sent) } }
                }
            }
        }
    }
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}

/// The origin of a video URL, so the page's policy lets the `<video>` load it when it is not
/// this server's own (an external worker's https URL, another public URL).
fn media_origin(url: Option<&str>) -> Option<String> {
    let url = url?;
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    let safe = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
    (matches!(scheme, "http" | "https") && !host.is_empty() && host.chars().all(safe))
        .then(|| format!("{scheme}://{host}"))
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    notice: Notice,
) -> Response {
    let l = match read(&state, &session, &id).await {
        Ok(l) => l,
        Err(response) => return response,
    };
    let csrf = session.csrf();
    let gid = l.generation.id;
    let body = html! {
        p.crumbs { a href="/dashboard" { "← Generations" } }
        h1 { "Generation " code.wrap { (gid) } }
        (layout::notice(notice.text()))
        p.prompt { (l.generation.spec.prompt) }
        (layout::live(
            "summary",
            "Status and video",
            &format!("/dashboard/generations/{gid}/fragments/summary"),
            false,
            summary(&l, &csrf),
            None,
        ))
        (layout::live(
            "deliveries",
            "Webhook deliveries",
            &format!("/dashboard/generations/{gid}/fragments/deliveries"),
            true,
            deliveries(&l),
            None,
        ))
    };
    let mut response =
        Html(page("Generation", Some(nav(&csrf)), body).into_string()).into_response();
    if let Some(origin) = media_origin(text(&l.view, "video_url"))
        && let Ok(csp) = HeaderValue::from_str(&super::csp(&origin))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// One refreshable part of a generation's page.
pub async fn fragment(
    State(state): State<AppState>,
    session: Session,
    Path((id, part)): Path<(String, String)>,
) -> Response {
    let l = match read(&state, &session, &id).await {
        Ok(l) => l,
        Err(response) => return response,
    };
    let markup = match part.as_str() {
        "summary" => summary(&l, &session.csrf()),
        "deliveries" => deliveries(&l),
        _ => return layout::error_page(StatusCode::NOT_FOUND, "No such part of the page."),
    };
    layout::fragment(markup, None)
}

fn back(id: impl std::fmt::Display, notice: &str) -> Response {
    Redirect::to(&format!("/dashboard/generations/{id}?notice={notice}")).into_response()
}

/// A new round of attempts for the same event, as `POST …/webhook/redeliver` does.
pub async fn redeliver(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    form: Form,
) -> Response {
    if !session.csrf_ok(form.get("csrf")) {
        return forbidden();
    }
    let g = match load(&state, &session, &id).await {
        Ok(g) => g,
        Err(response) => return response,
    };
    match state.store.redeliver(g.id, state.store.now()).await {
        Ok(Redelivery::Started { .. }) => {
            state.dispatcher.due(DueRef::of(&g).into_iter().collect());
            back(g.id, "redelivered")
        }
        Ok(Redelivery::AlreadyPending) => back(g.id, "redeliver-pending"),
        Ok(Redelivery::NoCallback) => back(g.id, "redeliver-no-callback"),
        Ok(Redelivery::NotFinished) => back(g.id, "redeliver-unfinished"),
        Err(e) => store_error(e),
    }
}

/// Cancels a pending or processing generation, as `POST …/cancel` does.
pub async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    form: Form,
) -> Response {
    if !session.csrf_ok(form.get("csrf")) {
        return forbidden();
    }
    let g = match load(&state, &session, &id).await {
        Ok(g) => g,
        Err(response) => return response,
    };
    match state.engine.cancel(g.id).await {
        Ok(Finished::Applied(_)) => back(g.id, "cancelled"),
        Ok(Finished::Refused(_)) => back(g.id, "cancel-finished"),
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_origins_are_plain() {
        assert_eq!(
            media_origin(Some("http://127.0.0.1:8080/videos/x/y.mp4")).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            media_origin(Some("https://cdn.example/v.mp4?sig=1")).as_deref(),
            Some("https://cdn.example")
        );
        assert_eq!(media_origin(Some("https://a.example; script-src *")), None);
        assert_eq!(media_origin(Some("javascript:alert(1)")), None);
        assert_eq!(media_origin(None), None);
    }
}
