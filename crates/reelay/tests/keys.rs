//! API keys: created and revoked from the CLI while the server runs; accounts are isolated.

mod common;

use common::*;
use serde_json::{Value, json};

const INSTANT: &[(&str, &str)] = &[("REELAY_GENERATOR", "instant")];

fn key_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("`keys list --json` prints an array: {list}"))
        .iter()
        .map(|k| {
            k["key_id"]
                .as_str()
                .unwrap_or_else(|| panic!("key without key_id: {k}"))
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn keys_created_listed_and_revoked_while_serving() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("studio", "10").await;
    assert!(a.api_key.starts_with("rly_"), "{}", a.created);
    assert_eq!(a.created["name"], "studio");
    assert_eq!(a.created["balance"], "10.0000");

    // Works at once.
    let id = s.create_generation(&a.api_key, PROMPT).await;

    // A second key on the same account sees the same account.
    let a2 = s.add_key(&a.account_id, "studio-ci").await;
    assert_eq!(a2.account_id, a.account_id);
    assert_ne!(a2.key_id, a.key_id);
    assert_ne!(a2.api_key, a.api_key);
    assert!(a2.api_key.starts_with("rly_"));
    assert_eq!(s.balance(&a2.api_key).await, "9.7500", "same balance");
    assert_eq!(
        s.generation(&a2.api_key, &id).await["generation_id"],
        id.as_str(),
        "the account's other key sees its generations"
    );
    assert_eq!(
        s.get(&a2.api_key, "/v1/account").await.body["account_id"],
        a.account_id.as_str()
    );

    // List: both keys, never a secret.
    let (code, stdout, stderr) = s.cli(&["keys", "list", "--json"]).await;
    assert_eq!(code, 0, "keys list: {stderr}");
    let list: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("keys list --json: {e}: {stdout}"));
    let ids = key_ids(&list);
    assert!(
        ids.contains(&a.key_id) && ids.contains(&a2.key_id),
        "{list}"
    );
    assert!(
        !stdout.contains(&a.api_key) && !stdout.contains(&a2.api_key),
        "keys list must never print a secret: {stdout}"
    );
    let secret_body = &a.api_key["rly_".len()..];
    assert!(
        !stdout.contains(secret_body),
        "keys list must never print a secret: {stdout}"
    );

    // Revoke the first key: 401 from then on, on every route; the other key keeps working.
    let (code, _out, stderr) = s.cli(&["keys", "revoke", &a.key_id]).await;
    assert_eq!(code, 0, "keys revoke: {stderr}");
    let r = s.generate(&a.api_key, &json!({ "prompt": PROMPT })).await;
    assert_error(&r, 401, "UNAUTHORIZED", "create with a revoked key");
    let r = s
        .get(&a.api_key, &format!("/v1/veo/generations/{id}"))
        .await;
    assert_error(&r, 401, "UNAUTHORIZED", "GET with a revoked key");
    let r = s.get(&a.api_key, "/v1/data/balance").await;
    assert_error(&r, 401, "UNAUTHORIZED", "balance with a revoked key");
    let r = s.get(&a.api_key, "/v1/veo/generations").await;
    assert_error(&r, 401, "UNAUTHORIZED", "list with a revoked key");

    assert_eq!(
        s.balance(&a2.api_key).await,
        "9.7500",
        "revoking charged nothing"
    );
    s.create_generation(&a2.api_key, PROMPT).await;
    assert_eq!(s.balance(&a2.api_key).await, "9.5000");

    // Still listed (revoked keys are not forgotten), still no secret.
    let (code, stdout, _) = s.cli(&["keys", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert!(!stdout.contains(&a2.api_key), "{stdout}");
}

#[tokio::test]
async fn accounts_cannot_see_each_others_generations() {
    let s = TestServer::start(INSTANT).await;
    let alice = s.create_account("alice", "10").await;
    let bob = s.create_account("bob", "10").await;
    assert_ne!(alice.account_id, bob.account_id);

    let a_id = s
        .create_generation(&alice.api_key, "Alice's private garden at noon")
        .await;
    let b_id = s
        .create_generation(&bob.api_key, "Bob's workshop full of clocks")
        .await;

    let unknown = uuid::Uuid::new_v4().to_string();
    let r_unknown = s
        .get(&bob.api_key, &format!("/v1/veo/generations/{unknown}"))
        .await;
    assert_error(&r_unknown, 404, "TASK_NOT_FOUND", "unknown id");

    // Bob asks for Alice's generation: exactly like an unknown one.
    let r = s
        .get(&bob.api_key, &format!("/v1/veo/generations/{a_id}"))
        .await;
    assert_error(&r, 404, "TASK_NOT_FOUND", "another account's generation");
    let normalize = |v: &Value, id: &str| -> String { v.to_string().replace(id, "<id>") };
    assert_eq!(
        normalize(&r.body, &a_id),
        normalize(&r_unknown.body, &unknown),
        "another account's id answers exactly like an unknown id"
    );

    let r = s.cancel(&bob.api_key, &a_id).await;
    assert_error(
        &r,
        404,
        "TASK_NOT_FOUND",
        "cancel another account's generation",
    );
    let g = s.generation(&alice.api_key, &a_id).await;
    assert_ne!(
        g["error"]["message"], "CANCELLED",
        "Bob's cancel did not touch Alice's generation: {g}"
    );

    let bl = s.list(&bob.api_key, "").await;
    assert_eq!(bl["total"], 1, "{bl}");
    assert_eq!(bl["generations"][0]["generation_id"], b_id.as_str());
    let al = s.list(&alice.api_key, "").await;
    assert_eq!(al["total"], 1, "{al}");
    assert_eq!(al["generations"][0]["generation_id"], a_id.as_str());

    // Balances are separate.
    assert_eq!(s.balance(&alice.api_key).await, "9.7500");
    assert_eq!(s.balance(&bob.api_key).await, "9.7500");
    assert_eq!(s.get(&bob.api_key, "/v1/account").await.body["name"], "bob");
}
