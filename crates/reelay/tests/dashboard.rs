//! `/dashboard` in a real browser: headless Chromium (Debian's package, installed by
//! `scripts/chromium.sh` when missing) driven over WebDriver by chromedriver, against a real
//! `reelay serve` and a webhook receiver run by the test.
//!
//! It signs in with an API key, watches a generation complete in the live list, opens it,
//! sees the `<video>` and the webhook attempts, presses Redeliver and sees the new attempt
//! arrive; it checks that a second account never sees the first's generations, that a POST
//! without the session's CSRF token is refused, and takes the screenshot the README shows
//! (`docs/dashboard.png`, rewritten with `REELAY_UPDATE_SCREENSHOT=1`). The HTTP-level checks (headers, cookies, 403/404) use plain HTTP.
//!
//! Every wait is bounded by a generous deadline, never a timing assertion.

mod common;
mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use receiver::{Plan, Receiver, Reply};
use serde_json::{Value, json};

/// Upper bound for a page element to show up (a refresh is every 3 s).
const SEEN: Duration = Duration::from_secs(60);
const ADMIN_TOKEN: &str = "dashboard-test-admin-token";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the screenshot goes: the README's `docs/dashboard.png` when
/// `REELAY_UPDATE_SCREENSHOT=1` asks for it, otherwise beside the build, so that running the
/// tests leaves the checkout as it was.
fn screenshot_path() -> PathBuf {
    if std::env::var_os("REELAY_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        repo_root().join("docs/dashboard.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    }
}

/// Installs Chromium and chromedriver when they are missing: this test never skips.
fn ensure_chromium() {
    let present = || {
        [
            "/usr/bin/chromium",
            "/usr/bin/chromedriver",
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        ]
        .iter()
        .all(|p| Path::new(p).exists())
    };
    if present() {
        return;
    }
    let script = repo_root().join("scripts/chromium.sh");
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        status.success() && present(),
        "{} could not install chromium and chromium-driver ({status}); the dashboard test needs \
         them",
        script.display()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A chromedriver on a free loopback port; on drop it is asked to quit its browsers and itself.
struct Driver {
    child: Option<Child>,
    port: u16,
    url: String,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        ensure_chromium();
        let port = free_port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child: Some(child),
            port,
            url: format!("http://127.0.0.1:{port}"),
            profile: tempfile::tempdir().expect("a browser profile directory"),
        };
        let http = http();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    async fn browser(&self) -> Browser {
        let profile = self.profile.path().display().to_string();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1500", "--hide-scrollbars", "--no-first-run",
                    "--mute-audio", format!("--user-data-dir={profile}"),
                ],
            },
        }}});
        let http = http();
        let r = http
            .post(format!("{}/session", self.url))
            .json(&caps)
            .send()
            .await
            .expect("POST /session");
        let v: Value = r.json().await.expect("session answer");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Browser {
            base: format!("{}/session/{id}", self.url),
            http,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(mut child) = self.child.take() else {
            return;
        };
        // chromedriver's own way out closes the browsers of its sessions too (a panicking
        // test never reached `quit`); killing it would leave them behind.
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.write_all(
                b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let _ = stream.read(&mut [0u8; 1024]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A minimal WebDriver client: the few commands this test uses.
struct Browser {
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn try_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            rb = rb.json(&body);
        } else if method == reqwest::Method::POST {
            rb = rb.json(&json!({}));
        }
        let r = rb
            .send()
            .await
            .map_err(|e| format!("WebDriver {path}: {e}"))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        match status.is_success() {
            true => Ok(v["value"].clone()),
            false => Err(format!("WebDriver {method} {path} -> {status}: {v}")),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for an element matching `css`; panics with the page's text at the deadline.
    async fn wait_for(&self, css: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            if Instant::now() > deadline {
                let text = self.body_text().await;
                panic!(
                    "no `{css}` within {within:?} at {}; the page says:\n{text}",
                    self.url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.find_all(css).await.len()
    }

    async fn click(&self, element: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            None,
        )
        .await;
    }

    /// Clicks the first element matching `css`, finding it again when the page's script
    /// replaced it between the finding and the click (a live list is redrawn when it changes).
    async fn click_css(&self, css: &str) {
        let deadline = Instant::now() + SEEN;
        loop {
            let element = self.wait_for(css, SEEN).await;
            let path = format!("/element/{element}/click");
            match self.try_cmd(reqwest::Method::POST, &path, None).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("clicking `{css}`: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn type_into(&self, element: &str, text: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn attr(&self, element: &str, name: &str) -> Option<String> {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{element}/attribute/{name}"),
            None,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    async fn script(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn body_text(&self) -> String {
        self.script("return document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn html(&self) -> String {
        self.script("return document.documentElement.outerHTML")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn screenshot(&self, to: &Path) {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(to, png).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
    }

    async fn sign_in(&self, server: &str, key: &str) {
        self.goto(&format!("{server}/dashboard")).await;
        let field = self.wait_for("#api_key", SEEN).await;
        assert!(
            self.url().await.ends_with("/dashboard/sign-in"),
            "not sent to sign in"
        );
        self.type_into(&field, key).await;
        let submit = self.wait_for("form.card button[type=submit]", SEEN).await;
        self.click(&submit).await;
        self.wait_for("table.generations, p.empty", SEEN).await;
    }

    async fn sign_out(&self) {
        let button = self.wait_for("form.sign-out button", SEEN).await;
        self.click(&button).await;
        self.wait_for("#api_key", SEEN).await;
    }

    async fn quit(&self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

/// A dashboard session opened over plain HTTP: its cookie header.
async fn http_session(s: &TestServer, key: &str) -> String {
    let r = http()
        .post(format!("{}/dashboard/sign-in", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("api_key", key)]))
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status().as_u16(), 303, "sign-in answers a redirect");
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/dashboard")
    );
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(
            cookie.contains(attribute),
            "the cookie lacks {attribute}: {cookie}"
        );
    }
    assert!(
        !cookie.contains(key),
        "the cookie carries the API key: {cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

async fn get_page(s: &TestServer, cookie: &str, path: &str) -> Resp {
    send(
        http()
            .get(format!("{}{path}", s.url))
            .header("cookie", cookie),
    )
    .await
}

/// A form body; every byte outside the unreserved set is percent-encoded.
fn urlencoded<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k.as_ref()), enc(v.as_ref())))
        .collect::<Vec<_>>()
        .join("&")
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a CSRF field in the page");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let rx = Receiver::with_plan(Plan::always(Reply::ok().body("{\"thanks\":true}"))).await;
    let s = TestServer::start(&[
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        // Slow enough to watch the list go from pending to completed.
        ("REELAY_RENDER_DELAY", "3s"),
        ("REELAY_ADMIN_TOKEN", ADMIN_TOKEN),
    ])
    .await;
    let alice = s.create_account("alice", "10").await;
    let bob = s.create_account("bob", "10").await;
    let prompt = "A <b>paper boat</b> & a lighthouse at dusk, slow pan";
    let id = create_with_callback(&s, &alice.api_key, prompt, &rx.url("/hook")).await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // Signed in, the list shows the generation, and it completes there without a reload.
    browser.sign_in(&s.url, &alice.api_key).await;
    let row = format!("tr[data-generation-id=\"{id}\"]");
    browser.wait_for(&row, SEEN).await;
    assert!(
        !browser.html().await.contains(&alice.api_key),
        "the API key is in the page"
    );
    let page_text = browser.body_text().await;
    assert!(
        page_text.contains(prompt),
        "the prompt is shown as text: {page_text}"
    );
    browser
        .wait_for(
            &format!("{row}[data-status=\"completed\"]"),
            RENDER_DEADLINE,
        )
        .await;

    // Its page: the video, the payload, the delivered attempt.
    // Keyboard users keep their place: a refresh with no news leaves the focus where it is.
    browser
        .script(&format!("document.getElementById('g-{id}').focus()"))
        .await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let focused = browser.script("return document.activeElement.id").await;
    assert_eq!(
        focused,
        json!(format!("g-{id}")),
        "the list's refresh took the focus"
    );
    browser.click_css(&format!("{row} a")).await;
    let video = browser.wait_for("video[controls]", SEEN).await;
    let g = s.generation(&alice.api_key, &id).await;
    assert_eq!(
        browser.attr(&video, "src").await.as_deref(),
        g["video_url"].as_str(),
        "the video plays the generation's video_url"
    );
    let deadline = Instant::now() + SEEN;
    loop {
        let state = browser
            .script("const v = document.querySelector('video'); return [v.readyState, v.error ? v.error.code : 0]")
            .await;
        if state[0].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert_eq!(state[1], 0, "the browser cannot play the video: {state}");
        assert!(
            Instant::now() < deadline,
            "the video's metadata never loaded: {state}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    browser
        .wait_for("tr.attempt[data-number=\"1\"]", SEEN)
        .await;
    let text = browser.body_text().await;
    assert!(text.contains("delivered"), "the attempt's outcome: {text}");
    assert!(
        text.contains("\"thanks\": true") || text.contains("{\"thanks\":true}"),
        "the receiver's answer: {text}"
    );
    assert!(
        text.contains(&format!("\"generation_id\": \"{id}\"")),
        "the payload: {text}"
    );

    // Redeliver: a new attempt appears on the page by itself.
    let before = rx.count();
    browser.click_css("#redeliver").await;
    browser.wait_for("p.notice", SEEN).await;
    browser
        .wait_for("tr.attempt[data-number=\"2\"]", SEEN)
        .await;
    assert_eq!(browser.count("tr.attempt").await, 2);
    let got = rx.wait_for(before + 1, SEEN).await;
    assert_eq!(
        got[before].webhook_id(),
        got[0].webhook_id(),
        "a redelivery keeps the webhook-id"
    );
    browser.script("window.scrollTo(0, 0)").await;
    browser.screenshot(&screenshot_path()).await;

    // Another account sees none of it.
    browser.sign_out().await;
    let bobs = s
        .create_generation(&bob.api_key, "Bob's own prompt: a windmill in the rain")
        .await;
    browser.sign_in(&s.url, &bob.api_key).await;
    browser
        .wait_for(&format!("tr[data-generation-id=\"{bobs}\"]"), SEEN)
        .await;
    assert_eq!(
        browser.count(&row).await,
        0,
        "bob's list shows alice's generation"
    );
    assert!(!browser.body_text().await.contains("paper boat"));
    // On a phone's width nothing runs off the side of the list.
    browser
        .cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 390, "height": 844})),
        )
        .await;
    let widths = browser
        .script("return [document.documentElement.scrollWidth, window.innerWidth]")
        .await;
    assert!(
        widths[1].as_u64().is_some_and(|w| w <= 400),
        "the window did not become phone-sized: {widths}"
    );
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the list is wider than a phone: {widths}"
    );
    browser
        .goto(&format!("{}/dashboard/generations/{id}", s.url))
        .await;
    assert!(
        browser
            .body_text()
            .await
            .contains("No generation with this id")
    );
    browser.quit().await;

    // Over plain HTTP: a cross-account page is a 404, forms need the session's CSRF token.
    let bob_cookie = http_session(&s, &bob.api_key).await;
    let r = get_page(&s, &bob_cookie, &format!("/dashboard/generations/{id}")).await;
    assert_eq!(r.status, 404, "another account's generation: {r}");
    assert!(!r.text().contains("paper boat"));

    let alice_cookie = http_session(&s, &alice.api_key).await;
    let page = get_page(&s, &alice_cookie, &format!("/dashboard/generations/{id}")).await;
    assert_eq!(page.status, 200, "{page}");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(
        page.text()
            .contains("&lt;b&gt;paper boat&lt;/b&gt; &amp; a lighthouse"),
        "the prompt is escaped"
    );
    assert!(
        !page.text().contains("<b>paper boat"),
        "the prompt is not escaped"
    );
    let csrf = csrf_of(&page.text());

    let attempts_before = rx.count();
    let redeliver = format!("{}/dashboard/generations/{id}/redeliver", s.url);
    for form in [vec![], vec![("csrf", "forged")], vec![("csrf", &csrf[1..])]] {
        let r = send(
            http()
                .post(&redeliver)
                .header("cookie", &alice_cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(urlencoded(&form)),
        )
        .await;
        assert_eq!(r.status, 403, "a redeliver with CSRF {form:?}: {r}");
    }
    // Bob's session with Alice's token is refused too: the token is the session's own.
    let r = send(
        http()
            .post(&redeliver)
            .header("cookie", &bob_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("csrf", csrf.as_str())])),
    )
    .await;
    assert!(matches!(r.status, 403 | 404), "bob with alice's token: {r}");
    // From another site, even with the right token.
    let r = send(
        http()
            .post(&redeliver)
            .header("cookie", &alice_cookie)
            .header("origin", "https://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("csrf", csrf.as_str())])),
    )
    .await;
    assert_eq!(r.status, 403, "a cross-site POST: {r}");
    // The right token works (a cancel of a finished generation changes nothing).
    let r = send(
        http()
            .post(format!("{}/dashboard/generations/{id}/cancel", s.url))
            .header("cookie", &alice_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("csrf", csrf.as_str())])),
    )
    .await;
    assert_eq!(r.status, 303, "a cancel with the right token: {r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.count(), attempts_before, "a refused form sent a webhook");

    // The signing secret is shown only on a POST with the token; never cached.
    let account = get_page(&s, &alice_cookie, "/dashboard/account").await;
    let balance = s.balance(&alice.api_key).await;
    assert!(
        account
            .text()
            .contains(&format!("<span id=\"balance\">{balance}</span>")),
        "the balance {balance}: {account}"
    );
    let secret = s.get(&alice.api_key, "/v1/webhooks/secret").await.body["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !account.text().contains(&secret),
        "the secret is in the page by default"
    );
    let revealed = send(
        http()
            .post(format!("{}/dashboard/account/secret", s.url))
            .header("cookie", &alice_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("csrf", csrf.as_str())])),
    )
    .await;
    assert_eq!(revealed.status, 200, "{revealed}");
    assert!(revealed.text().contains(&secret), "the revealed secret");
    assert_eq!(
        revealed.header("cache-control").as_deref(),
        Some("no-store")
    );

    // Rotate: a new secret, shown once; a second rotation at once is refused.
    let rotate = format!("{}/dashboard/account/secret/rotate", s.url);
    let rotated = send(
        http()
            .post(&rotate)
            .header("cookie", &alice_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("csrf", csrf.as_str())])),
    )
    .await;
    assert_eq!(rotated.status, 200, "{rotated}");
    let new_secret = s.get(&alice.api_key, "/v1/webhooks/secret").await.body["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_secret, secret, "the secret did not change");
    assert!(
        rotated.text().contains(&new_secret),
        "the new secret is shown"
    );
    let again = send(
        http()
            .post(&rotate)
            .header("cookie", &alice_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("csrf", csrf.as_str())])),
    )
    .await;
    assert_eq!(again.status, 429, "a second rotation at once: {again}");

    // Cancel from the dashboard: the generation fails with CANCELLED, as the API's cancel does.
    let doomed = s
        .create_generation(&alice.api_key, "A glacier calving into a grey sea")
        .await;
    let r = send(
        http()
            .post(format!("{}/dashboard/generations/{doomed}/cancel", s.url))
            .header("cookie", &alice_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("csrf", csrf.as_str())])),
    )
    .await;
    assert_eq!(r.status, 303, "{r}");
    assert!(
        r.header("location")
            .unwrap_or_default()
            .ends_with("notice=cancelled"),
        "{r:?}"
    );
    let g = s.generation(&alice.api_key, &doomed).await;
    assert_eq!(g["error"]["message"], "CANCELLED", "{g}");

    // Revoking the key ends its sessions.
    let (code, _, err) = s.cli(&["keys", "revoke", &alice.key_id]).await;
    assert_eq!(code, 0, "{err}");
    let r = get_page(&s, &alice_cookie, "/dashboard").await;
    assert_eq!(r.status, 303, "a revoked key's session: {r}");

    // The operator view, behind the admin token.
    let r = get_page(&s, "", "/dashboard/operator").await;
    assert_eq!(r.status, 303, "the operator view without a session: {r}");
    let r = send(
        http()
            .post(format!("{}/dashboard/operator/sign-in", s.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("admin_token", "wrong")])),
    )
    .await;
    assert_eq!(r.status, 401, "a wrong admin token: {r}");
    let r = send(
        http()
            .post(format!("{}/dashboard/operator/sign-in", s.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&[("admin_token", ADMIN_TOKEN)])),
    )
    .await;
    assert_eq!(r.status, 303, "the admin token: {r}");
    let operator = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let view = get_page(&s, &operator, "/dashboard/operator").await;
    assert_eq!(view.status, 200, "{view}");
    for needle in ["alice", "bob", "Pending generations", "<svg", "Workers"] {
        assert!(
            view.text().contains(needle),
            "the operator view lacks {needle}: {view}"
        );
    }
    // An account session is no operator session.
    let bob_on_operator = get_page(&s, &bob_cookie, "/dashboard/operator").await;
    assert_eq!(bob_on_operator.status, 303);
}
