//! The OpenAPI document (`/openapi.json`) against the router that serves the API: the same
//! routes in both, each answered by its own handler over real HTTP, a document that validates
//! as OpenAPI 3.1, and every error code written up in docs/errors.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use reelay_api::{AdminAccess, AppState};
use reelay_core::capability::VideoKey;
use reelay_core::destination::DestinationPolicy;
use reelay_core::moderation::Moderator;
use reelay_core::retry::RetryPolicy;
use reelay_delivery::{Dispatcher, DispatcherConfig, Keyring, MasterKey, Sender, SenderConfig};
use reelay_engine::{Engine, EngineConfig, ExternalWorkers};
use reelay_store::{SqliteStore, Store};

/// A router over a throwaway SQLite store, as `reelay serve` builds it.
fn app(dir: &Path) -> axum::Router {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("reelay.db")).unwrap());
    let master = MasterKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let destinations = DestinationPolicy {
        allow_insecure: false,
    };
    let video_key = VideoKey::new(master.derive("video-url"));
    let sender = Sender::new(&SenderConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        policy: destinations,
        source_ips: Vec::new(),
    })
    .unwrap();
    let dispatcher = Dispatcher::new(
        store.clone(),
        sender,
        Arc::new(Keyring::new(store.clone(), master.clone())),
        DispatcherConfig {
            node_id: "openapi-test".into(),
            policy: RetryPolicy::default(),
            lease: Duration::from_secs(60),
            max_in_flight: 1,
            per_destination: 1,
            poll_interval: Duration::from_secs(1),
            batch: 1,
        },
    );
    let engine = Engine::new(
        store.clone(),
        Arc::new(ExternalWorkers),
        EngineConfig {
            node_id: "openapi-test".into(),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            public_url: "http://127.0.0.1".into(),
            video_key: video_key.clone(),
            moderator: Moderator::builtin(),
            prices: Default::default(),
            generation_timeout: Duration::from_secs(600),
            outbox: Arc::new(dispatcher.clone()),
            worker_lease: Duration::from_secs(60),
            max_worker_polls: 4,
            max_lost_leases: 3,
            inputs_dir: dir.join("inputs"),
        },
    );
    reelay_api::router(AppState {
        live_keys: Default::default(),
        store,
        engine,
        destinations,
        videos_dir: dir.join("videos"),
        dispatcher,
        egress_ips: Vec::new(),
        metrics: None,
        admin: AdminAccess::Closed,
        create_limiter: None,
        body_read_timeout: Duration::from_secs(5),
        video_key,
        worker_max_video_bytes: 1 << 20,
        large_bodies: Arc::new(tokio::sync::Semaphore::new(1)),
        dashboard_key: [7; 32],
    })
}

/// The dashboard's routes: HTML for people, not API, so left out of the document on purpose.
/// Named one by one, so that a new API route under another prefix cannot hide among them.
const NOT_API: &[&str] = &[
    "/dashboard",
    "/dashboard/",
    "/dashboard/sign-in",
    "/dashboard/sign-out",
    "/dashboard/fragments/generations",
    "/dashboard/generations/{id}",
    "/dashboard/generations/{id}/fragments/{part}",
    "/dashboard/generations/{id}/redeliver",
    "/dashboard/generations/{id}/cancel",
    "/dashboard/account",
    "/dashboard/account/secret",
    "/dashboard/account/secret/rotate",
    "/dashboard/operator",
    "/dashboard/operator/sign-in",
    "/dashboard/operator/sign-out",
    "/dashboard/assets/dashboard.css",
    "/dashboard/assets/dashboard.js",
    "/dashboard/{*rest}",
];

/// The methods axum's `MethodRouter` keeps, in the order its `Debug` prints them.
const METHODS: &[&str] = &[
    "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
];

type Routes = BTreeSet<(String, String)>;

/// Every (path, method) the router serves, read from its `Debug` output: axum has no other way
/// to list routes. Each route id's endpoint is printed as `RouteId(n): MethodRouter(MethodRouter
/// { get: Route, head: None, ..., fallback: ...` and its path as `RouteId(n): "/path"`. HEAD,
/// which axum answers for every GET, is left out.
fn served(router: &axum::Router) -> Routes {
    let debug = format!("{router:?}");
    // Only the main path router: the fallback router holds axum's own catch-all routes.
    let main = &debug[..debug
        .find("fallback_router")
        .expect("axum's Router debug format")];
    let mut methods = std::collections::HashMap::new();
    let mut paths = std::collections::HashMap::new();
    for chunk in main.split("RouteId(").skip(1) {
        let (id, rest) = chunk.split_once("): ").expect("`RouteId(n): ...`");
        if let Some(fields) = rest.strip_prefix("MethodRouter(MethodRouter { ") {
            let end = fields.find(", fallback").expect("a method router's fields");
            methods.insert(id, &fields[..end]);
        } else if let Some(path) = rest.strip_prefix('"') {
            paths.insert(id, &path[..path.find('"').expect("a quoted path")]);
        } else {
            panic!("route {id} is not a method router (a nested service?): {rest:.80}");
        }
    }
    let mut routes = Routes::new();
    for (id, fields) in methods {
        let path = paths[id];
        for field in fields.split(", ") {
            let (method, endpoint) = field.split_once(": ").expect("`method: endpoint`");
            assert!(
                METHODS.contains(&method),
                "unexpected field {field:?} in {fields}"
            );
            if endpoint != "None" && method != "head" {
                routes.insert((path.to_owned(), method.to_owned()));
            }
        }
    }
    assert!(
        routes.len() > 20,
        "read only {} routes from the router's Debug output; has axum's format changed?\n{debug}",
        routes.len()
    );
    routes
}

/// Every (path, method) the document describes.
fn documented(doc: &Value) -> Routes {
    let mut routes = Routes::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.as_str()) {
                routes.insert((path.clone(), method.clone()));
            }
        }
    }
    routes
}

fn document() -> Value {
    serde_json::to_value(reelay_api::openapi()).unwrap()
}

#[test]
fn the_router_serves_exactly_the_documented_routes_and_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let served = served(&app(dir.path()));
    let served_paths: BTreeSet<&str> = served.iter().map(|(p, _)| p.as_str()).collect();
    for path in NOT_API {
        assert!(
            served_paths.contains(path),
            "{path} is listed as a dashboard route but the router does not serve it: update NOT_API"
        );
    }
    let api: Routes = served
        .iter()
        .filter(|(path, _)| !NOT_API.contains(&path.as_str()))
        .cloned()
        .collect();
    let doc = documented(&document());
    let undocumented: Vec<_> = api.difference(&doc).collect();
    let unserved: Vec<_> = doc.difference(&api).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in /openapi.json: {undocumented:?}\nin /openapi.json but not served: {unserved:?}"
    );
    for (path, _) in &doc {
        assert!(
            !NOT_API.contains(&path.as_str()),
            "{path} is documented but listed as not API"
        );
    }
}

/// A real HTTP/1.1 exchange; the body is read to the end of the connection.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A concrete path for a documented template: any value reaches the handler, which then
/// answers for itself (401 without a key, 404 for an unknown id, ...).
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "ffd473d5-5bef-4e14-bf22-8d559be3c19f")
        .replace("{lease_id}", "not-a-lease")
        .replace("{file}", "nothing.mp4")
        .replace("{name}", "bytes_image")
}

/// What the router's own fallbacks answer: no handler took the request.
fn from_fallback(status: u16, body: &str) -> bool {
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    status == 405
        || (status == 404 && body["message"] == "no such route; see /openapi.json for the API")
}

#[tokio::test]
async fn every_documented_route_is_answered_by_a_handler_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve(app(dir.path())).await;
    let (status, body) = http(addr, "GET", "/no/such/route").await;
    assert!(
        from_fallback(status, &body),
        "the fallback changed: {status} {body}"
    );

    let doc = documented(&document());
    for (path, method) in &doc {
        let (status, body) = http(addr, &method.to_uppercase(), &concrete(path)).await;
        assert!(
            !from_fallback(status, &body),
            "{} {path} is documented but answered {status} from the router's fallback: {body}",
            method.to_uppercase()
        );
        // A method the document does not list for this path is refused by the router.
        for other in ["get", "post", "put", "delete", "patch"] {
            if !doc.contains(&(path.clone(), other.to_owned())) {
                let (status, body) = http(addr, &other.to_uppercase(), &concrete(path)).await;
                assert_eq!(status, 405, "{other} {path}: {body}");
            }
        }
    }
}

#[tokio::test]
async fn openapi_json_is_served_where_the_404_message_points() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve(app(dir.path())).await;
    let (status, body) = http(addr, "GET", "/openapi.json").await;
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(served, document());
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_document_validates_as_openapi_3_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, reelay_api::openapi().to_pretty_json().unwrap()).unwrap();
    // The script installs the validator on first use (a few seconds from PyPI), so this test
    // never skips for want of it.
    let out = Command::new(repo_root().join("scripts/openapi-validator.sh"))
        .arg(&file)
        .output()
        .expect("run scripts/openapi-validator.sh");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_document_describes_errors_security_and_the_webhook() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let codes: Vec<&str> = reelay_api::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(schemas["ErrorCode"]["enum"], serde_json::json!(codes));
    for scheme in ["api_key", "worker_token", "admin_token"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"],
            "bearer"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/worker/claim"]["post"]["security"][0]["worker_token"],
        serde_json::json!([])
    );
    assert_eq!(
        doc["paths"]["/metrics"]["get"]["security"][0]["admin_token"],
        serde_json::json!([])
    );
    let events = &doc["paths"]["/v1/veo/generations/{id}/events"]["get"]["responses"]["200"];
    assert!(
        events["content"]["text/event-stream"].is_object(),
        "{events}"
    );
    let video = &doc["paths"]["/videos/{id}/{file}"]["get"]["responses"];
    assert!(video["206"]["content"]["video/mp4"].is_object(), "{video}");
    // Each error response lists the codes it may carry, each with the status it travels with.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let Some(all_of) =
                    response["content"]["application/json"]["schema"]["allOf"].as_array()
                else {
                    continue;
                };
                for code in all_of[1]["properties"]["detail"]["enum"]
                    .as_array()
                    .unwrap()
                {
                    let code = reelay_api::ErrorCode::ALL
                        .iter()
                        .find(|c| c.as_str() == code)
                        .unwrap_or_else(|| panic!("{method} {path}: unknown code {code}"));
                    assert_eq!(code.status().as_str(), status, "{method} {path}: {code:?}");
                }
            }
        }
    }
    let webhook = &doc["webhooks"]["generation.finished"]["post"];
    let headers: Vec<&str> = webhook["parameters"]
        .as_array()
        .expect("webhook parameters")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for header in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(headers.contains(&header), "{headers:?}");
    }
    assert_eq!(
        webhook["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/GenerationEvent"
    );
    // Read from the typed document: a `Value` would sort the keys.
    let components = reelay_api::openapi().components.expect("components");
    let event = serde_json::to_string(&components.schemas["GenerationEvent"]).unwrap();
    let seed_order = [
        "generation_id",
        "status",
        "prompt",
        "video_url",
        "created_at",
        "completed_at",
        "seed",
        "error",
    ];
    let positions: Vec<usize> = seed_order
        .iter()
        .map(|key| event.find(&format!("\"{key}\":")).expect(key))
        .collect();
    assert!(
        positions.is_sorted(),
        "the payload's keys are not in the seed's order: {event}"
    );
}

#[test]
fn docs_errors_md_lists_every_code() {
    let text = std::fs::read_to_string(repo_root().join("docs/errors.md")).unwrap();
    for code in reelay_api::ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code.status().as_u16(), code.as_str());
        assert!(text.contains(&row), "docs/errors.md has no row `{row}`");
    }
    for code in reelay_core::FailureCode::ALL {
        let refunded = if code.refunded() { "yes" } else { "no" };
        let row = format!("| `{}` | {refunded} |", code.as_str());
        assert!(text.contains(&row), "docs/errors.md has no row `{row}`");
    }
}
