//! `GET /openapi.json`: the OpenAPI 3.1 document of the API, generated from the handlers that
//! serve it (each carries its `#[utoipa::path]`, and `router()` registers them through
//! utoipa-axum's `routes!`), so the document and the routes cannot drift apart.
//!
//! This module holds what no single handler owns: the document's header, the security schemes,
//! the error responses built from [`ErrorCode`], and the webhook that reelay sends.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use reelay_core::FailureCode;
use reelay_webhooks::{EventError, EventStatus, GenerationEvent};
use utoipa::openapi::path::Paths;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Header, OpenApi, Ref, RefOr};
use utoipa::{Modify, OpenApi as _, ToSchema};

use crate::ErrorCode;
use crate::events::Snapshot;

/// The security scheme names the routes' `security(...)` refer to (as literals: the attribute
/// takes no constants).
const API_KEY: &str = "api_key";
const WORKER_TOKEN: &str = "worker_token";
const ADMIN_TOKEN: &str = "admin_token";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "reelay",
        description = "Asynchronous video generation behind a RunBlob-compatible API, with \
                       signed webhooks (Standard Webhooks) when a generation ends. Every error \
                       answers `{\"detail\": CODE, \"message\": ...}`; the codes are listed in \
                       docs/errors.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(crate::ApiError, crate::ErrorCode, GenerationEvent, EventStatus, EventError, Snapshot, FailureCode)),
    modifiers(&SecuritySchemes, &Webhook),
    tags(
        (name = "generations", description = "Create, read, follow and cancel generations"),
        (name = "webhooks", description = "Deliveries, redelivery and the signing secret"),
        (name = "account", description = "Balance and account"),
        (name = "workers", description = "The protocol external workers follow (worker token)"),
        (name = "videos", description = "Finished videos, at the `video_url` of a generation"),
        (name = "ops", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document's header and shared parts, before the routes add their paths.
pub fn base() -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |format: &str, description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            API_KEY,
            bearer(
                "rly_…",
                "An API key (`reelay keys create`), sent as `Authorization: Bearer <key>`.",
            ),
        );
        components.add_security_scheme(
            WORKER_TOKEN,
            bearer(
                "rlw_…",
                "A worker token (`reelay workers create`); never valid as an API key, and an \
                 API key never opens the worker routes.",
            ),
        );
        components.add_security_scheme(
            ADMIN_TOKEN,
            bearer(
                "REELAY_ADMIN_TOKEN",
                "The operator's token, `REELAY_ADMIN_TOKEN`. Without one configured the \
                 operator routes answer 403 (open on loopback under `reelay dev`).",
            ),
        );
    }
}

/// The webhook reelay POSTs to a generation's `callback_url` when it ends. Never called: the
/// attribute is what matters, and it is read by [`Webhook`].
#[utoipa::path(
    post,
    path = "generation.finished",
    summary = "A generation ended (completed or failed)",
    description = "POSTed to the generation's `callback_url` once, when it becomes `completed` \
                   or `failed` (including `TIMEOUT`, `UNSAFE_CONTENT`, `CANCELLED`). The body \
                   keeps this key order byte for byte. Signed per Standard Webhooks: verify \
                   `webhook-signature` over `{webhook-id}.{webhook-timestamp}.{body}` with the \
                   account's secret (`GET /v1/webhooks/secret`), and dedupe on `webhook-id`. \
                   Any 2xx within 30 s is a success; anything else is retried (5 attempts, \
                   waiting 30, 60, 90, 120 s by default).",
    params(
        ("webhook-id" = String, Header, example = "msg_ffd473d55bef4e14bf228d559be3c19f",
            description = "One per event: the same on every retry and redelivery."),
        ("webhook-timestamp" = i64, Header, example = 1765057446,
            description = "Unix seconds of this attempt; reject ones more than 5 minutes off."),
        ("webhook-signature" = String, Header,
            example = "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
            description = "`v1,<base64 HMAC-SHA256>`; two space-separated signatures while a \
                           rotated secret still signs."),
        ("user-agent" = String, Header, example = "reelay/0.1.0"),
    ),
    request_body(
        content = GenerationEvent,
        content_type = "application/json",
        examples(
            ("completed" = (value = json!({
                "generation_id": "ffd473d5-5bef-4e14-bf22-8d559be3c19f",
                "status": "completed",
                "prompt": "A cat playing with a ball in a sunny room",
                "video_url": "https://reelay.example.com/videos/ffd473d5-5bef-4e14-bf22-8d559be3c19f/3f1c2a9d8e7b6a5f4e3d2c1b0a998877.mp4",
                "created_at": "2025-12-06T21:43:03.374000",
                "completed_at": "2025-12-06T21:44:06.143000",
                "seed": 319790131,
                "error": null
            }))),
            ("failed" = (value = json!({
                "generation_id": "ffd473d5-5bef-4e14-bf22-8d559be3c19f",
                "status": "failed",
                "prompt": "A cat playing with a ball in a sunny room",
                "video_url": null,
                "created_at": "2025-12-06T21:43:03.374000",
                "completed_at": "2025-12-06T21:53:03.374000",
                "seed": 319790131,
                "error": {"message": "TIMEOUT", "details": {}}
            }))),
        ),
    ),
    responses(
        (status = "2XX", description = "Received; the delivery is done."),
        (status = "default", description = "Any other answer (or none within 30 s, or a \
                                             redirect) is a failed attempt, retried later."),
    ),
    tag = "webhooks",
)]
#[allow(dead_code)]
fn generation_finished() {}

struct Webhook;

impl Modify for Webhook {
    fn modify(&self, doc: &mut OpenApi) {
        use utoipa::Path;
        let webhooks = doc.webhooks.get_or_insert_with(Paths::new);
        webhooks.add_path_operation(
            __path_generation_finished::path(),
            __path_generation_finished::methods(),
            __path_generation_finished::operation(),
        );
    }
}

/// The document, built once: it does not change while the process runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    crate::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.",
            content_type = "application/json", body = Object),
        NoErrors,
    ),
)]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The codes every route may answer whatever it does: the server's own failures and the front
/// door's limit.
const ALWAYS: &[ErrorCode] = &[ErrorCode::InternalError, ErrorCode::Overloaded];

/// Declares the error responses of a route: a type for `responses(...)` in its
/// `#[utoipa::path]`, answering per status with the `detail` codes listed (as an enum on the
/// shared `Error` schema), plus the ones every route may answer ([`ALWAYS`]).
macro_rules! error_set {
    ($(#[$meta:meta])* $name:ident = [$($code:ident),* $(,)?]) => {
        $(#[$meta])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::openapi::responses(&[$($crate::ErrorCode::$code),*])
            }
        }
    };
}
pub(crate) use error_set;

error_set!(
    /// What a route that reads no body and checks no key can answer.
    NoErrors = []
);

pub fn responses(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for &code in codes.iter().chain(ALWAYS) {
        let listed = by_status.entry(code.status().as_u16()).or_default();
        if !listed.contains(&code) {
            listed.push(code);
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| (status.to_string(), error_response(&codes).into()))
        .collect()
}

fn error_response(codes: &[ErrorCode]) -> Response {
    let detail = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(codes.iter().map(|c| c.as_str())));
    let schema: Schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(crate::ApiError::name()))
        .item(
            ObjectBuilder::new()
                .property("detail", detail)
                .required("detail"),
        )
        .into();
    let description = codes
        .iter()
        .map(|c| format!("- `{}`: {}", c.as_str(), c.meaning()))
        .collect::<Vec<_>>()
        .join("\n");
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(schema))
            .example(Some(serde_json::json!({
                "detail": codes[0].as_str(),
                "message": codes[0].meaning(),
            })))
            .build(),
    );
    // Every code of one response shares its status (they were grouped by it).
    let status = codes[0].status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        response = response.header(
            "Retry-After",
            header_of(Type::Integer, "Seconds to wait before retrying."),
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        response = response.header("WWW-Authenticate", header_of(Type::String, "`Bearer`"));
    }
    response.build()
}

fn header_of(kind: Type, description: &str) -> Header {
    let mut header = Header::new(ObjectBuilder::new().schema_type(kind));
    header.description = Some(description.to_owned());
    header
}
