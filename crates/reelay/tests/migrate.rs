//! `reelay migrate --from sqlite://… --to postgres://…` (SPEC §5): an installation moves from
//! its SQLite file to PostgreSQL and goes on as it was: the same API key works, the balance,
//! the generation and its webhook history are there, and its signing secret still signs.

mod common;
mod receiver;

use std::time::Duration;

use common::*;
use receiver::Receiver;
use reelay_store::postgres::TestDatabase;
use serde_json::json;

#[tokio::test]
async fn an_installation_moves_from_sqlite_to_postgres() {
    let rx = Receiver::start().await;
    let mut s = TestServer::start(&[
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_GENERATOR", "instant"),
    ])
    .await;
    let a = s.create_account("mover", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/hook")).await;
    wait_webhook_state(&s, &a.api_key, &id, "delivered", Duration::from_secs(60)).await;
    let generation = s.generation(&a.api_key, &id).await;
    let balance = s.balance(&a.api_key).await;
    let secret = s.get(&a.api_key, "/v1/webhooks/secret").await.body["secret"].clone();
    let sqlite = format!("sqlite://{}", s.data_dir().join("reelay.sqlite3").display());
    let db = TestDatabase::create().await;

    let (code, _, err) = s
        .cli(&["migrate", "--from", &sqlite, "--to", db.url()])
        .await;
    assert_ne!(code, 0, "a copy beside the running server is refused");
    assert!(err.contains("still using"), "{err}");

    s.terminate(Duration::from_secs(30)).await;
    let (code, out, err) = s
        .cli(&["migrate", "--from", &sqlite, "--to", db.url()])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("generations: 1 rows"), "{out}");
    let (code, _, err) = s
        .cli(&["migrate", "--from", &sqlite, "--to", db.url()])
        .await;
    assert_ne!(
        code, 0,
        "a second copy into a database that has accounts is refused"
    );
    assert!(err.contains("empty"), "{err}");

    s.set_env("REELAY_DATABASE_URL", db.url());
    s.restart().await;
    assert_eq!(
        s.balance(&a.api_key).await,
        balance,
        "the same key, the same balance"
    );
    let moved = s.generation(&a.api_key, &id).await;
    assert_eq!(moved, generation, "the generation as it was");
    let d = deliveries(&s, &a.api_key, &id).await;
    assert_eq!(attempts(&d).len(), 1, "its webhook history: {d}");
    let moved_secret = s.get(&a.api_key, "/v1/webhooks/secret").await.body["secret"].clone();
    assert_eq!(
        moved_secret, secret,
        "the signing secret opens with the same master key"
    );

    // The secret still signs: a redelivery arrives, signed under it.
    let r = s
        .post(
            &a.api_key,
            &format!("/v1/veo/generations/{id}/webhook/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{r}");
    let got = rx.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(got[1].webhook_id(), got[0].webhook_id());
    standardwebhooks::Webhook::new(secret.as_str().unwrap())
        .unwrap()
        .verify(&got[1].body, &got[1].headers)
        .expect("the redelivery verifies under the moved secret");
}
