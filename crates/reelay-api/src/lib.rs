//! reelay's HTTP surface. Handlers are thin: they parse, authorize, call the engine or the
//! store, and serialize. One module per resource.

mod account;
mod auth;
mod body;
mod dashboard;
mod error;
mod events;
mod generations;
mod openapi;
mod ops;
mod rate_limit;
mod upload;
mod videos;
mod webhooks;
mod worker_auth;
mod workers;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use reelay_core::capability::VideoKey;
use reelay_core::destination::DestinationPolicy;
use reelay_delivery::Dispatcher;
use reelay_engine::Engine;
use reelay_store::Store;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{KEY_FRESHNESS, LiveKeys};
pub use error::{ApiError, ErrorCode};
pub use ops::AdminAccess;
pub use rate_limit::CreateLimiter;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// API keys found live a moment ago.
    pub live_keys: Arc<LiveKeys>,
    pub engine: Engine,
    pub destinations: DestinationPolicy,
    pub videos_dir: PathBuf,
    pub dispatcher: Dispatcher,
    /// The addresses webhooks leave from, published for receivers' allowlists.
    pub egress_ips: Vec<IpAddr>,
    /// Renders the Prometheus exposition; `None` when metrics are off.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Who may read `/metrics`.
    pub admin: AdminAccess,
    /// Limits creates per account; `None` when off.
    pub create_limiter: Option<Arc<CreateLimiter>>,
    /// The longest a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// Checks the capability in video URLs.
    pub video_key: VideoKey,
    /// The largest video a worker may upload.
    pub worker_max_video_bytes: u64,
    /// One permit per create body over the small-body limit being handled (images).
    pub large_bodies: Arc<tokio::sync::Semaphore>,
    /// Signs the dashboard's session cookies and CSRF tokens; derived from the master key, so
    /// every node that shares the master key accepts the same sessions.
    pub dashboard_key: [u8; 32],
}

/// The whole HTTP surface: the API (documented) and the dashboard (HTML, not API).
pub fn router(state: AppState) -> Router {
    let (api, _) = api().split_for_parts();
    api.merge(dashboard::router(&state))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Every API route, each registered with the `#[utoipa::path]` of its handler, so that a route
/// cannot be served without being documented (or the reverse).
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(generations::create))
        .routes(routes!(generations::list))
        .routes(routes!(generations::get))
        .routes(routes!(generations::cancel))
        .routes(routes!(events::events))
        .routes(routes!(generations::deliveries))
        .routes(routes!(generations::redeliver))
        .routes(routes!(webhooks::secret))
        .routes(routes!(webhooks::rotate))
        .routes(routes!(webhooks::ip_ranges))
        .routes(routes!(webhooks::redeliver_failed))
        .routes(routes!(account::balance))
        .routes(routes!(account::account))
        .routes(routes!(workers::claim))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(workers::upload_video))
        .routes(routes!(workers::complete))
        .routes(routes!(workers::fail))
        .routes(routes!(workers::input))
        .routes(routes!(videos::serve))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi::document))
}
