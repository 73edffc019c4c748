//! The frame every dashboard page shares (head, navigation, sign-out) and the small pieces of
//! markup several pages use. Templates are maud's: every interpolated string is escaped, so a
//! prompt or a webhook response body can never become markup.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use time::OffsetDateTime;

/// Which part of the dashboard a page belongs to, for the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Generations,
    Account,
    Operator,
}

/// The navigation of a signed-in page: where it is, and the sign-out form's CSRF token.
pub struct Nav<'a> {
    pub section: Section,
    pub csrf: Option<&'a str>,
    /// Where the sign-out form posts (the account's or the operator's).
    pub sign_out: &'static str,
}

/// A whole page.
pub fn page(title: &str, nav: Option<Nav<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · reelay" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                script src="/dashboard/assets/dashboard.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/dashboard" { "reelay" }
                    @if let Some(nav) = &nav {
                        nav aria-label="Dashboard" {
                            ul {
                                @match nav.section {
                                    Section::Operator => {
                                        li { a href="/dashboard/operator" aria-current="page" { "Operator" } }
                                    }
                                    _ => {
                                        li { (link("/dashboard", "Generations", nav.section == Section::Generations)) }
                                        li { (link("/dashboard/account", "Balance & webhooks", nav.section == Section::Account)) }
                                    }
                                }
                            }
                        }
                        @if let Some(csrf) = nav.csrf {
                            form.sign-out method="post" action=(nav.sign_out) {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

fn link(href: &str, text: &str, current: bool) -> Markup {
    html! {
        @if current { a href=(href) aria-current="page" { (text) } }
        @else { a href=(href) { (text) } }
    }
}

/// A short fingerprint of a rendered part of a page, so the page's script can tell whether a
/// refreshed part changed (and leave a playing video alone when it did not).
pub fn key_of(html: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    html.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A part of a page for the script to put in place, with its fingerprint: `key` when the
/// part has text that changes without news (ages), else the fingerprint of its HTML.
pub fn fragment(markup: Markup, key: Option<String>) -> Response {
    let html = markup.into_string();
    let key = key.unwrap_or_else(|| key_of(&html));
    ([("x-fragment-key", key)], Html(html)).into_response()
}

/// A refreshable part of a page, rendered with its fingerprint (as in [`fragment`]) and where
/// to refresh it from.
pub fn live(
    id: &str,
    label: &str,
    url: &str,
    polite: bool,
    markup: Markup,
    key: Option<String>,
) -> Markup {
    let html = markup.into_string();
    let key = key.unwrap_or_else(|| key_of(&html));
    html! {
        @if polite {
            section id=(id) aria-label=(label) data-refresh=(url) data-key=(key) aria-live="polite" { (PreEscaped(html)) }
        } @else {
            section id=(id) aria-label=(label) data-refresh=(url) data-key=(key) { (PreEscaped(html)) }
        }
    }
}

/// A page for a request that cannot be served, with its status code.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        p { (message) }
        p { a href="/dashboard" { "Back to the dashboard" } }
    };
    (status, Html(page(title, None, body).into_string())).into_response()
}

/// A status shown as a word with a colour class; the word carries the meaning, the colour
/// only helps.
pub fn status_badge(status: &str) -> Markup {
    let class = match status {
        "completed" | "delivered" => "badge ok",
        "failed" => "badge bad",
        "processing" | "pending" => "badge busy",
        _ => "badge",
    };
    html! { span class=(class) { (status) } }
}

/// "12 s ago", "3 min ago", … in a `<time>` whose `datetime` is exact. (The page's script
/// writes the same words; keep the two alike.)
pub fn age(at: OffsetDateTime, now: OffsetDateTime) -> Markup {
    let secs = (now - at).whole_seconds().max(0);
    let text = match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    };
    // The page's script keeps the text current from `datetime` between refreshes.
    html! { time datetime=(rfc3339(at)) title=(rfc3339(at)) data-age { (text) } }
}

/// A timestamp as the API writes it, inside a `<time>`.
pub fn when(at: Option<&str>) -> Markup {
    match at {
        Some(t) => html! { time datetime=(format!("{t}Z")) { (t) " UTC" } },
        None => html! { "—" },
    }
}

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Cuts text to `max` characters for a listing, marking the cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A short message at the top of a page after a form did something.
pub fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            p.notice role="status" { (text) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_escaped() {
        let hostile = "<script>alert(1)</script>\"'&";
        let out = page(hostile, None, html! { p { (hostile) } }).into_string();
        assert!(!out.contains("<script>alert"), "{out}");
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{out}"
        );
    }

    #[test]
    fn shortening_counts_characters() {
        assert_eq!(shorten("héllo", 10), "héllo");
        assert_eq!(shorten("héllo wörld", 5), "héllo…");
    }
}
