//! SPEC §1: status codes and body shapes of the public API, through real HTTP.
//!
//! Rendering is not the point here, so the servers run `REELAY_GENERATOR=instant`.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const INSTANT: &[(&str, &str)] = &[("REELAY_GENERATOR", "instant")];

fn with_prompt(extra: Value) -> Value {
    let mut body = json!({ "prompt": PROMPT });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// The key with its last character changed.
fn tweak(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

#[tokio::test]
async fn missing_or_malformed_bearer_is_401_on_every_v1_route() {
    let s = TestServer::start(INSTANT).await;
    let acct = s.create_account("auth", "10").await;
    assert!(
        acct.api_key.starts_with("rly_"),
        "api keys start with rly_: {}",
        acct.created
    );
    let id = s.create_generation(&acct.api_key, PROMPT).await;

    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/veo/generate".into(),
            Some(json!({ "prompt": PROMPT })),
        ),
        (Method::GET, format!("/v1/veo/generations/{id}"), None),
        (Method::GET, "/v1/veo/generations".into(), None),
        (
            Method::POST,
            format!("/v1/veo/generations/{id}/cancel"),
            None,
        ),
        (Method::GET, "/v1/data/balance".into(), None),
        (Method::GET, "/v1/account".into(), None),
    ];
    let bad_headers: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("empty Bearer", Some("Bearer ".into())),
        (
            "Bearer without space",
            Some(format!("Bearer{}", acct.api_key)),
        ),
        ("key without scheme", Some(acct.api_key.clone())),
        ("Basic scheme", Some(format!("Basic {}", acct.api_key))),
        (
            "unknown key",
            Some("Bearer rly_thisisnotarealkey0000000000".into()),
        ),
        (
            "key with one char changed",
            Some(format!("Bearer {}", tweak(&acct.api_key))),
        ),
        ("garbage", Some("Bearer %%%%".into())),
    ];
    for (method, path, body) in &routes {
        for (what, header) in &bad_headers {
            let mut rb = s.req(method.clone(), path, None);
            if let Some(h) = header {
                rb = rb.header("Authorization", h);
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let r = send(rb).await;
            assert_error(
                &r,
                401,
                "UNAUTHORIZED",
                &format!("{method} {path} with {what}"),
            );
        }
    }
    // Nothing was created or charged by the refused requests.
    assert_eq!(s.balance(&acct.api_key).await, "9.7500");
    assert_eq!(s.list(&acct.api_key, "").await["total"], 1);
}

#[tokio::test]
async fn create_returns_201_with_runblob_shape() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("create", "10").await;

    let b = s
        .generate_ok(&a.api_key, &json!({ "prompt": PROMPT }))
        .await;
    let id = assert_created_shape(&b, "0.2500", "minimal create");
    assert!(
        s.generate(&a.api_key, &json!({ "prompt": PROMPT }))
            .await
            .body["generation_id"]
            != id,
        "two creates without Idempotency-Key are two generations"
    );

    // All optional fields at once.
    let full = json!({
        "prompt": PROMPT,
        "model": "veo-3-quality",
        "aspect_ratio": "9:16",
        "seed": 319790131u32,
        "watermark_text": "reelay",
        "callback_url": "https://hooks.example.invalid/webhook",
    });
    let b = s.generate_ok(&a.api_key, &full).await;
    let id = assert_created_shape(&b, "1.0000", "full create");
    assert_eq!(b["seed"], 319790131u32, "given seed is echoed: {b}");
    let g = s.generation(&a.api_key, &id).await;
    assert_generation_shape(&g, "full create GET");
    assert_eq!(g["generation_id"], id);
    assert_eq!(g["prompt"], PROMPT);
    assert_eq!(g["model"], "veo-3-quality");
    assert_eq!(g["aspect_ratio"], "9:16");
    assert_eq!(g["seed"], 319790131u32);
    assert_eq!(g["price"], "1.0000");
    assert_eq!(g["callback_url"], "https://hooks.example.invalid/webhook");
    assert_ne!(
        g["webhook"]["state"], "none",
        "a generation with a callback_url has a webhook: {g}"
    );

    // Defaults.
    let b = s
        .generate_ok(&a.api_key, &json!({ "prompt": PROMPT }))
        .await;
    let id = assert_created_shape(&b, "0.2500", "defaults");
    let g = s.generation(&a.api_key, &id).await;
    assert_generation_shape(&g, "defaults GET");
    assert_eq!(g["model"], "veo-3-fast", "default model: {g}");
    assert_eq!(g["aspect_ratio"], "16:9", "default aspect ratio: {g}");
    assert_eq!(g["seed"], b["seed"], "GET seed == create seed: {g}");
    assert!(g["callback_url"].is_null(), "no callback_url: {g}");
    assert_eq!(
        g["webhook"]["state"], "none",
        "no callback → state none: {g}"
    );
    assert_eq!(g["webhook"]["attempts"], 0, "{g}");

    // model_type is an alias of model (RB).
    let b = s
        .generate_ok(
            &a.api_key,
            &with_prompt(json!({ "model_type": "veo-3-quality" })),
        )
        .await;
    let id = assert_created_shape(&b, "1.0000", "model_type alias");
    assert_eq!(
        s.generation(&a.api_key, &id).await["model"],
        "veo-3-quality"
    );

    // veo-3-fast explicitly, 16:9 explicitly.
    let b = s
        .generate_ok(
            &a.api_key,
            &with_prompt(json!({ "model": "veo-3-fast", "aspect_ratio": "16:9" })),
        )
        .await;
    assert_created_shape(&b, "0.2500", "explicit defaults");
}

#[tokio::test]
async fn prompt_length_is_10_to_4000_characters() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("prompt", "100").await;

    for n in [10usize, 11, 3999, 4000] {
        let p = prompt_of_len(n);
        let b = s.generate_ok(&a.api_key, &json!({ "prompt": p })).await;
        let id = assert_created_shape(&b, "0.2500", &format!("{n}-char prompt"));
        assert_eq!(
            s.generation(&a.api_key, &id).await["prompt"],
            p,
            "prompt stored verbatim"
        );
    }
    for n in [0usize, 1, 9, 4001, 10_000] {
        let r = s
            .generate(&a.api_key, &json!({ "prompt": prompt_of_len(n) }))
            .await;
        assert_invalid_field(&r, "prompt", &format!("{n}-char prompt"));
    }
    let r = s.generate(&a.api_key, &json!({})).await;
    assert_invalid_field(&r, "prompt", "missing prompt");
    let r = s.generate(&a.api_key, &json!({ "prompt": null })).await;
    assert_invalid_field(&r, "prompt", "null prompt");
    let r = s
        .generate(&a.api_key, &json!({ "prompt": 1234567890123u64 }))
        .await;
    assert_invalid_field(&r, "prompt", "numeric prompt");
    let r = s
        .generate(
            &a.api_key,
            &json!({ "callback_url": "https://hooks.example.invalid/x" }),
        )
        .await;
    assert_invalid_field(&r, "prompt", "callback without prompt");

    // 4 accepted creates charged, nothing for the refused ones.
    assert_eq!(s.balance(&a.api_key).await, "99.0000");
}

#[tokio::test]
async fn prompt_length_counts_characters_not_bytes() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("unicode", "10").await;
    // 'é' is 2 bytes in UTF-8: 10 characters = 20 bytes, 4000 characters = 8000 bytes.
    for n in [10usize, 4000] {
        let p = "é".repeat(n);
        let r = s.generate(&a.api_key, &json!({ "prompt": p })).await;
        assert_eq!(
            r.status, 201,
            "{n} two-byte characters is a valid prompt: {r}"
        );
    }
    for n in [9usize, 4001] {
        let r = s
            .generate(&a.api_key, &json!({ "prompt": "é".repeat(n) }))
            .await;
        assert_invalid_field(&r, "prompt", &format!("{n} two-byte characters"));
    }
}

#[tokio::test]
async fn seed_model_aspect_ratio_and_watermark_rules() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("fields", "100").await;

    for seed in [json!(0), json!(1), json!(4294967295u64)] {
        let b = s
            .generate_ok(&a.api_key, &with_prompt(json!({ "seed": seed })))
            .await;
        assert_eq!(b["seed"], seed, "seed {seed} echoed in {b}");
    }
    for seed in [
        json!(-1),
        json!(4294967296u64),
        json!(18446744073709551615u64),
        json!("123"),
        json!(1.5),
        json!(true),
        json!([1]),
    ] {
        let r = s
            .generate(&a.api_key, &with_prompt(json!({ "seed": seed })))
            .await;
        assert_invalid_field(&r, "seed", &format!("seed {seed}"));
    }

    for model in ["veo-2", "VEO-3-FAST", "", "veo-3"] {
        let r = s
            .generate(&a.api_key, &with_prompt(json!({ "model": model })))
            .await;
        assert_invalid_field(&r, "model", &format!("model {model:?}"));
    }
    let r = s
        .generate(&a.api_key, &with_prompt(json!({ "model": 3 })))
        .await;
    assert_invalid_field(&r, "model", "numeric model");
    let r = s
        .generate(&a.api_key, &with_prompt(json!({ "model_type": "veo-9" })))
        .await;
    assert_eq!(r.status, 422, "bad model_type alias: {r}");
    assert_eq!(r.body["detail"], "INVALID_PARAMETERS", "{r}");

    for ar in ["4:3", "1:1", "16x9", "", "9:16 "] {
        let r = s
            .generate(&a.api_key, &with_prompt(json!({ "aspect_ratio": ar })))
            .await;
        assert_invalid_field(&r, "aspect_ratio", &format!("aspect_ratio {ar:?}"));
    }

    for wm in ["abc", "abcdefghijklmn"] {
        let b = s
            .generate_ok(&a.api_key, &with_prompt(json!({ "watermark_text": wm })))
            .await;
        assert_created_shape(&b, "0.2500", &format!("watermark {wm:?}"));
    }
    for wm in ["", "ab", "abcdefghijklmno", "a much too long watermark"] {
        let r = s
            .generate(&a.api_key, &with_prompt(json!({ "watermark_text": wm })))
            .await;
        assert_invalid_field(&r, "watermark_text", &format!("watermark {wm:?}"));
    }
    let r = s
        .generate(&a.api_key, &with_prompt(json!({ "watermark_text": 12345 })))
        .await;
    assert_invalid_field(&r, "watermark_text", "numeric watermark");

    // 3 seeds + 2 watermarks accepted = 5 × 0.25.
    assert_eq!(s.balance(&a.api_key).await, "98.7500");
}

#[tokio::test]
async fn callback_url_rules_in_production_mode() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("callbacks", "10").await;

    let ok = "https://hooks.example.invalid/webhook?x=1";
    let b = s
        .generate_ok(&a.api_key, &with_prompt(json!({ "callback_url": ok })))
        .await;
    let id = assert_created_shape(&b, "0.2500", "https callback");
    assert_eq!(s.generation(&a.api_key, &id).await["callback_url"], ok);

    // Exactly 2048 characters is accepted, 2049 is not.
    let base = "https://hooks.example.invalid/";
    let url_2048 = format!("{base}{}", "a".repeat(2048 - base.len()));
    assert_eq!(url_2048.len(), 2048);
    let r = s
        .generate(
            &a.api_key,
            &with_prompt(json!({ "callback_url": url_2048 })),
        )
        .await;
    assert_eq!(r.status, 201, "2048-char https callback_url: {r}");
    let url_2049 = format!("{url_2048}b");
    let r = s
        .generate(
            &a.api_key,
            &with_prompt(json!({ "callback_url": url_2049 })),
        )
        .await;
    assert_invalid_field(&r, "callback_url", "2049-char callback_url");

    let refused = [
        (
            "plain http",
            "http://hooks.example.invalid/webhook".to_string(),
        ),
        (
            "credentials",
            "https://user:secret@hooks.example.invalid/webhook".to_string(),
        ),
        (
            "user only",
            "https://user@hooks.example.invalid/webhook".to_string(),
        ),
        ("relative", "/webhook".to_string()),
        ("no scheme", "hooks.example.invalid/webhook".to_string()),
        ("ftp", "ftp://hooks.example.invalid/webhook".to_string()),
        ("empty", String::new()),
        ("not a url", "not a url at all".to_string()),
        ("loopback https", "https://127.0.0.1:9/webhook".to_string()),
        ("loopback v6", "https://[::1]:9/webhook".to_string()),
        ("localhost", "https://localhost:9/webhook".to_string()),
        (
            "very long",
            format!("https://hooks.example.invalid/{}", "a".repeat(5000)),
        ),
    ];
    for (what, url) in refused {
        let r = s
            .generate(&a.api_key, &with_prompt(json!({ "callback_url": url })))
            .await;
        assert_invalid_field(
            &r,
            "callback_url",
            &format!("callback_url {what}: {url:.80}"),
        );
    }
    let r = s
        .generate(&a.api_key, &with_prompt(json!({ "callback_url": 42 })))
        .await;
    assert_invalid_field(&r, "callback_url", "numeric callback_url");

    // Two accepted.
    assert_eq!(s.balance(&a.api_key).await, "9.5000");
}

#[tokio::test]
async fn callback_url_rules_with_insecure_callbacks_allowed() {
    let s = TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
    ])
    .await;
    let a = s.create_account("insecure", "10").await;

    // Port 9 (discard) on loopback: nothing listens, any delivery attempt fails harmlessly.
    for url in [
        "http://127.0.0.1:9/webhook",
        "http://localhost:9/webhook",
        "https://127.0.0.1:9/webhook",
    ] {
        let b = s
            .generate_ok(&a.api_key, &with_prompt(json!({ "callback_url": url })))
            .await;
        let id = assert_created_shape(&b, "0.2500", url);
        assert_eq!(s.generation(&a.api_key, &id).await["callback_url"], url);
    }
    // Still refused in dev mode.
    for (what, url) in [
        (
            "credentials",
            "http://user:pw@127.0.0.1:9/webhook".to_string(),
        ),
        ("relative", "/webhook".to_string()),
        ("ftp", "ftp://127.0.0.1:9/webhook".to_string()),
        (
            "too long",
            format!("http://127.0.0.1:9/{}", "a".repeat(2100)),
        ),
    ] {
        let r = s
            .generate(&a.api_key, &with_prompt(json!({ "callback_url": url })))
            .await;
        assert_invalid_field(&r, "callback_url", &format!("dev mode, {what}"));
    }
}

#[tokio::test]
async fn unknown_fields_and_unsupported_images_are_rejected() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("unknown", "10").await;

    for field in ["foo", "callbackUrl", "duration", "negative_prompt"] {
        let r = s
            .generate(&a.api_key, &with_prompt(json!({ field: 1 })))
            .await;
        assert_error(
            &r,
            422,
            "INVALID_PARAMETERS",
            &format!("unknown field {field}"),
        );
        assert_eq!(
            r.body["errors"][0]["field"], field,
            "errors[0].field names the unknown field: {r}"
        );
    }

    // Nothing charged.
    assert_eq!(s.balance(&a.api_key).await, "10.0000");
    assert_eq!(s.list(&a.api_key, "").await["total"], 0);
}

#[tokio::test]
async fn malformed_bodies_are_422() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("malformed", "10").await;
    let good = json!({ "prompt": PROMPT }).to_string();

    let cases: Vec<(&str, Option<&str>, String)> = vec![
        ("broken json", Some("application/json"), "{not json".into()),
        (
            "truncated json",
            Some("application/json"),
            good[..good.len() - 1].into(),
        ),
        ("empty body", Some("application/json"), String::new()),
        ("json array", Some("application/json"), format!("[{good}]")),
        (
            "json string",
            Some("application/json"),
            "\"a prompt here\"".into(),
        ),
        ("json null", Some("application/json"), "null".into()),
        ("text/plain", Some("text/plain"), good.clone()),
        (
            "form",
            Some("application/x-www-form-urlencoded"),
            "prompt=A+red+fox+in+the+snow".into(),
        ),
    ];
    for (what, ct, body) in cases {
        let mut rb = s
            .req(Method::POST, "/v1/veo/generate", Some(&a.api_key))
            .body(body);
        if let Some(ct) = ct {
            rb = rb.header("Content-Type", ct);
        }
        let r = send(rb).await;
        assert_error(&r, 422, "INVALID_PARAMETERS", what);
    }
    // The same body with the right content type is fine.
    let r = send(
        s.req(Method::POST, "/v1/veo/generate", Some(&a.api_key))
            .header("Content-Type", "application/json")
            .body(good),
    )
    .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(s.balance(&a.api_key).await, "9.7500");
}

#[tokio::test]
async fn generation_ids_unknown_and_malformed() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("ids", "10").await;

    for bad in [
        "not-a-uuid",
        "123",
        "ffd473d5-5bef-4e14-bf22-8d559be3c19",
        "ffd473d5-5bef-4e14-bf22-8d559be3c19fz",
    ] {
        let r = s
            .get(&a.api_key, &format!("/v1/veo/generations/{bad}"))
            .await;
        assert_error(&r, 400, "INVALID_TASK_ID", &format!("GET {bad}"));
        let r = s.cancel(&a.api_key, bad).await;
        assert_error(&r, 400, "INVALID_TASK_ID", &format!("cancel {bad}"));
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = s
        .get(&a.api_key, &format!("/v1/veo/generations/{unknown}"))
        .await;
    assert_error(&r, 404, "TASK_NOT_FOUND", "GET unknown uuid");
    let r = s.cancel(&a.api_key, &unknown).await;
    assert_error(&r, 404, "TASK_NOT_FOUND", "cancel unknown uuid");

    let id = s.create_generation(&a.api_key, PROMPT).await;
    let g = s.generation(&a.api_key, &id).await;
    assert_generation_shape(&g, "GET known");
}

#[tokio::test]
async fn list_pagination_and_status_filter() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("lists", "10").await;

    let empty = s.list(&a.api_key, "").await;
    assert_eq!(empty["generations"], json!([]), "{empty}");
    assert_eq!(empty["total"], 0, "{empty}");
    assert_eq!(empty["limit"], 50, "default limit is 50: {empty}");
    assert_eq!(empty["offset"], 0, "default offset is 0: {empty}");

    // 5 that complete, 2 refused by moderation (failed UNSAFE_CONTENT).
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            s.create_generation(&a.api_key, &format!("A lighthouse in a storm, take {i}"))
                .await,
        );
    }
    let mut failed = Vec::new();
    for i in 0..2 {
        let id = s
            .create_generation(&a.api_key, &format!("Something nsfw happening, take {i}"))
            .await;
        ids.push(id.clone());
        failed.push(id);
    }
    for id in &ids {
        s.wait_terminal(&a.api_key, id, RENDER_DEADLINE).await;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    let all = s.list(&a.api_key, "").await;
    assert_eq!(all["total"], 7, "{all}");
    let got: Vec<String> = all["generations"]
        .as_array()
        .expect("generations array")
        .iter()
        .map(|g| g["generation_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, newest_first, "newest first");
    for g in all["generations"].as_array().unwrap() {
        assert_generation_shape(g, "list item");
    }

    let p1 = s.list(&a.api_key, "?limit=3&offset=0").await;
    let p2 = s.list(&a.api_key, "?limit=3&offset=3").await;
    let p3 = s.list(&a.api_key, "?limit=3&offset=6").await;
    let p4 = s.list(&a.api_key, "?limit=3&offset=9").await;
    assert_eq!(p1["limit"], 3);
    assert_eq!(p2["offset"], 3);
    for p in [&p1, &p2, &p3, &p4] {
        assert_eq!(p["total"], 7, "total counts all pages: {p}");
    }
    let ids_of = |p: &Value| -> Vec<String> {
        p["generations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["generation_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids_of(&p1), newest_first[0..3]);
    assert_eq!(ids_of(&p2), newest_first[3..6]);
    assert_eq!(ids_of(&p3), newest_first[6..7]);
    assert!(ids_of(&p4).is_empty(), "offset past the end: {p4}");
    let p = s.list(&a.api_key, "?limit=100").await;
    assert_eq!(ids_of(&p).len(), 7);
    let p = s.list(&a.api_key, "?limit=1").await;
    assert_eq!(ids_of(&p), newest_first[0..1]);

    let f = s.list(&a.api_key, "?status=failed").await;
    assert_eq!(f["total"], 2, "{f}");
    let mut want_failed: Vec<String> = failed.iter().rev().cloned().collect();
    assert_eq!(ids_of(&f), want_failed);
    for g in f["generations"].as_array().unwrap() {
        assert_eq!(g["status"], "failed");
    }
    let c = s.list(&a.api_key, "?status=completed&limit=2").await;
    assert_eq!(c["total"], 5, "{c}");
    assert_eq!(ids_of(&c).len(), 2);
    for g in c["generations"].as_array().unwrap() {
        assert_eq!(g["status"], "completed");
    }
    let f2 = s.list(&a.api_key, "?status=failed&limit=1&offset=1").await;
    want_failed.remove(0);
    assert_eq!(ids_of(&f2), want_failed);
    for st in ["pending", "processing"] {
        let p = s.list(&a.api_key, &format!("?status={st}")).await;
        assert_eq!(p["total"], 0, "{st}: {p}");
    }

    for q in [
        "?limit=0",
        "?limit=101",
        "?limit=-1",
        "?limit=abc",
        "?offset=-1",
        "?status=done",
        "?status=COMPLETED",
    ] {
        let r = s.get(&a.api_key, &format!("/v1/veo/generations{q}")).await;
        assert_error(&r, 422, "INVALID_PARAMETERS", &format!("list {q}"));
    }
}

#[tokio::test]
async fn balance_and_account_endpoints() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("Acme Films", "10").await;
    assert_eq!(a.created["balance"], "10.0000", "{}", a.created);
    assert_eq!(a.created["name"], "Acme Films", "{}", a.created);

    let r = s.get(&a.api_key, "/v1/data/balance").await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body, json!({ "balance": "10.0000" }));
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{r:?}"
    );

    let r = s.get(&a.api_key, "/v1/account").await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["account_id"], a.account_id.as_str(), "{r}");
    assert_eq!(r.body["name"], "Acme Films", "{r}");
    assert_eq!(r.body["balance"], "10.0000", "{r}");
    assert_timestamp(&r.body["created_at"], "account created_at");

    s.generate_ok(&a.api_key, &json!({ "prompt": PROMPT }))
        .await;
    assert_eq!(s.balance(&a.api_key).await, "9.7500");
    s.generate_ok(
        &a.api_key,
        &with_prompt(json!({ "model": "veo-3-quality" })),
    )
    .await;
    assert_eq!(s.balance(&a.api_key).await, "8.7500");
    let r = s.get(&a.api_key, "/v1/account").await;
    assert_eq!(r.body["balance"], "8.7500", "{r}");

    // Credits added by the CLI while the server runs are visible at once.
    let v = s.add_credits(&a.account_id, "2.5").await;
    assert_eq!(v["account_id"], a.account_id.as_str(), "{v}");
    assert_eq!(v["balance"], "11.2500", "{v}");
    assert_eq!(s.balance(&a.api_key).await, "11.2500");

    // Four decimal places are kept exactly.
    let b = s.create_account("precise", "1.2345").await;
    assert_eq!(b.created["balance"], "1.2345", "{}", b.created);
    assert_eq!(s.balance(&b.api_key).await, "1.2345");
    let v = s.add_credits(&b.account_id, "0.0001").await;
    assert_eq!(v["balance"], "1.2346", "{v}");
}
