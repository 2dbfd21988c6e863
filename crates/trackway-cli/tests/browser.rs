//! The collector's live page in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver (plain HTTP, so the test needs no client library beyond reqwest), shows an
//! event sent through the SDK before the page loaded, and one sent after, without a reload.
//!
//! Without Chromium and chromedriver the test is skipped with a message, unless
//! `TRACKWAY_REQUIRE_BROWSER=1` (set by `.ci/run`), which makes it fail instead. The binaries are
//! `$CHROMIUM` (else `chromium`, `chromium-browser` or `google-chrome` on the `PATH`) and
//! `$CHROMEDRIVER` (else `chromedriver`). As root (CI), Chromium runs with `--no-sandbox`.
//!
//! With `TRACKWAY_SCREENSHOT=FILE` the test also sends a mix of requests (Umami, a faulted one,
//! a closed connection, a body that is not JSON), opens a failed one and saves a screenshot of the
//! page as a PNG: that is how `docs/live-page.png` is made.
//!
//! Every wait is bounded (WebDriver calls by the HTTP client's timeout, page checks by a
//! deadline), so the test fails rather than hangs, and the browser is killed when the test ends,
//! however it ends.

mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trackway::destination::JsonHttp;
use trackway::store::MemoryStore;
use trackway::{Client, props};
use trackway_collector::{Collector, Faults};

/// How long the page may take to show an event (the bound).
const SHOW_WITHIN: Duration = Duration::from_secs(10);
/// Bound on any single WebDriver call; starting a session launches Chromium, slow on a busy CI.
const WEBDRIVER_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn live_page_shows_events_sent_before_and_after_it_loaded() {
    let Some((chromium, chromedriver)) = browser_binaries() else { return };
    // Each wait is bounded on its own; the watchdog bounds the whole (Chromium may be slow to
    // start on a busy machine, hence the margin).
    support::watchdog(Duration::from_secs(240), move || browser_test(&chromium, &chromedriver));
}

fn browser_test(chromium: &Path, chromedriver: &Path) {
    let collector = Collector::start().expect("collector");
    let client = Client::builder()
        .destination(JsonHttp::new(collector.url("/events")))
        .store(MemoryStore::new())
        .build()
        .expect("client");
    let user = "browser-test-user";
    client.track(user, "sent_before_the_page_loaded", props! { "plan" => "pro" }).expect("track");
    client.flush(Duration::from_secs(10)).expect("first event delivered");

    let driver = WebDriver::start(chromedriver).expect("chromedriver starts");
    let page = driver.open(chromium).expect("a headless Chromium session");
    page.navigate(&collector.url("/")).expect("load the live page");
    page.wait_for_text("sent_before_the_page_loaded").expect("the page shows the event sent before it loaded");

    client.track(user, "sent_after_the_page_loaded", props! { "step" => 2 }).expect("track");
    client.flush(Duration::from_secs(10)).expect("second event delivered");
    page.wait_for_text("sent_after_the_page_loaded").expect("the page shows the event sent after it loaded");

    // A row opens to the exact request received and the collector's answer.
    let detail = page
        .execute(
            "const row = document.querySelector('tr.row[data-name=\"sent_after_the_page_loaded\"]');
             row.click();
             return row.nextElementSibling.innerText;",
        )
        .expect("open the row");
    let detail = detail.as_str().unwrap_or_default();
    for expected in ["POST /events", "sent_after_the_page_loaded", "COLLECTOR'S ANSWER", "200", "OK"] {
        assert!(
            detail.to_uppercase().contains(&expected.to_uppercase()),
            "{expected:?} missing from the open row:\n{detail}"
        );
    }

    if let Some(path) = std::env::var_os("TRACKWAY_SCREENSHOT") {
        send_demo_traffic(&collector, &client);
        page.wait_for_text("checkout_started").expect("the demo traffic is shown");
        page.execute("document.querySelector('tr.row[data-failed]').click(); window.scrollTo(0, 0); return 0;")
            .expect("open a failed row");
        std::thread::sleep(Duration::from_millis(1500));
        let png = page.screenshot().expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
    }
    client.shutdown(Duration::from_secs(5)).expect("client shutdown");
}

/// The requests behind `docs/live-page.png`: a few SDK events, Umami requests, an injected 503
/// the SDK retries, a closed connection, and a body that is not JSON.
fn send_demo_traffic(collector: &trackway_collector::RunningCollector, client: &Client) {
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("http");
    let umami = |path: &str, body: Value| {
        // A closed connection is an error here, and expected.
        let _ = http
            .post(collector.url(path))
            .header("content-type", "application/json")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
            .body(body.to_string())
            .send();
    };
    let website = "4f2c8a1e-0a4b-4c1e-9d5e-1b2c3d4e5f60";
    client.identify("user-123", props! { "plan" => "pro", "email" => "ada@example.com" }).expect("identify");
    client.track("user-123", "signup_completed", props! { "method" => "email" }).expect("track");
    client.flush(Duration::from_secs(10)).expect("flush");
    umami(
        "/api/send",
        json!({"type": "event", "payload": {"website": website, "hostname": "shop.example.com", "language": "en-US",
               "screen": "1920x1080", "url": "/pricing", "title": "Pricing"}}),
    );
    collector
        .set_faults(Faults { fail_every: Some(1), retry_after: Some("1".into()), ..Faults::default() })
        .expect("faults");
    client.track("user-456", "purchase_completed", props! { "amount" => 99.99, "currency" => "USD" }).expect("track");
    assert!(collector.wait_for_requests(collector.request_count() + 1, Duration::from_secs(5)));
    collector.set_faults(Faults { close_every: Some(1), ..Faults::default() }).expect("faults");
    umami(
        "/api/batch",
        json!([{"type": "event", "payload": {"website": website, "url": "/cart", "name": "cart_viewed", "id": "user-789"}}]),
    );
    collector
        .set_faults(Faults {
            fail_every: Some(3),
            retry_after: Some("2".into()),
            latency_ms: Some(40),
            ..Faults::default()
        })
        .expect("faults");
    client.flush(Duration::from_secs(10)).expect("flush after the injected failure");
    let _ = http.post(collector.url("/events")).header("content-type", "application/json").body("not json {").send();
    client.track("user-789", "search", props! { "query" => "red shoes" }).expect("track");
    client.flush(Duration::from_secs(10)).expect("flush");
    umami(
        "/api/send",
        json!({"type": "event", "payload": {"website": website, "hostname": "shop.example.com", "language": "en-US",
               "screen": "1920x1080", "url": "/checkout", "name": "checkout_started", "id": "user-123"}}),
    );
}

/// Chromium and chromedriver, or `None` (after saying so) when the test should be skipped.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    let chromium = from_env_or_path("CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = from_env_or_path("CHROMEDRIVER", &["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some((chromium, chromedriver)),
        (chromium, _) => {
            let missing = if chromium.is_none() { "Chromium" } else { "chromedriver" };
            if std::env::var("TRACKWAY_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!(
                    "{missing} not found and TRACKWAY_REQUIRE_BROWSER=1: install chromium and chromium-driver, \
                     or set $CHROMIUM / $CHROMEDRIVER"
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED live page browser test: {missing} not found (install chromium and chromium-driver, \
                 or set $CHROMIUM / $CHROMEDRIVER; TRACKWAY_REQUIRE_BROWSER=1 makes this a failure)"
            );
            None
        }
    }
}

/// `$var` if set, else the first of `names` found on the `PATH`.
fn from_env_or_path(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p)))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// A chromedriver process (and the Chromium it starts), killed with its whole process group
/// when dropped.
struct WebDriver {
    child: Child,
    url: String,
    http: reqwest::blocking::Client,
}

impl WebDriver {
    /// Starts chromedriver on a port of its choosing and waits until it says which.
    fn start(binary: &Path) -> Result<WebDriver, String> {
        let mut command = Command::new(binary);
        command.arg("--port=0").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        // Its own process group: chromedriver's Chromium processes join it, so one kill ends
        // them all, even if the session was never closed.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (port_tx, port_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // "ChromeDriver was started successfully on port 40123." Then keep reading, so
            // chromedriver never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    let _ = port_tx.send(port.trim_end_matches('.').trim().to_owned());
                }
            }
        });
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(WEBDRIVER_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let mut driver = WebDriver { child, url: String::new(), http };
        let port = port_rx.recv_timeout(Duration::from_secs(20)).map_err(|_| "chromedriver did not report its port")?;
        driver.url = format!("http://127.0.0.1:{port}");
        Ok(driver)
    }

    /// One WebDriver command; the command's `value`, or its error message.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().map_err(|e| format!("WebDriver {path}: {e}"))?;
        let status = response.status();
        let bytes = response.bytes().map_err(|e| format!("WebDriver {path}: {e}"))?;
        let answer: Value = serde_json::from_slice(&bytes).map_err(|e| format!("WebDriver {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("WebDriver {path}: {status}: {}", answer["value"]["message"]));
        }
        Ok(answer["value"].clone())
    }

    /// A new headless Chromium session.
    fn open(&self, chromium: &Path) -> Result<Page<'_>, String> {
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            "--hide-scrollbars",
        ];
        let session = self.call(
            reqwest::Method::POST,
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": chromium, "args": args}}}})),
        )?;
        let id = session["sessionId"].as_str().ok_or("no session id")?.to_owned();
        Ok(Page { driver: self, path: format!("/session/{id}") })
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            // The whole group: chromedriver and every Chromium process it started. `--` matters:
            // procps' `kill -KILL -20419` parses the group as `-2`, so a pid starting with 1
            // became `kill(-1)`, which kills every process the user may signal (the whole machine
            // as root). `-s KILL -- -PGID` is read the same way by procps and util-linux.
            let pgid = self.child.id();
            if pgid > 1 {
                let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session showing one page.
struct Page<'a> {
    driver: &'a WebDriver,
    path: String,
}

impl Page<'_> {
    fn navigate(&self, url: &str) -> Result<(), String> {
        self.driver.call(reqwest::Method::POST, &format!("{}/url", self.path), Some(json!({ "url": url }))).map(drop)
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn execute(&self, script: &str) -> Result<Value, String> {
        self.driver.call(
            reqwest::Method::POST,
            &format!("{}/execute/sync", self.path),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Polls the event table's visible text until it contains `text`, for at most
    /// [`SHOW_WITHIN`].
    fn wait_for_text(&self, text: &str) -> Result<(), String> {
        let deadline = Instant::now() + SHOW_WITHIN;
        loop {
            let shown =
                self.execute("const rows = document.getElementById('rows'); return rows ? rows.innerText : '';")?;
            if shown.as_str().is_some_and(|s| s.contains(text)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{text:?} not shown within {SHOW_WITHIN:?}; the table shows:\n{shown}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The page as a PNG.
    fn screenshot(&self) -> Result<Vec<u8>, String> {
        let encoded = self.driver.call(reqwest::Method::GET, &format!("{}/screenshot", self.path), None)?;
        base64_decode(encoded.as_str().ok_or("screenshot is not a string")?)
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        // Closes Chromium cleanly; the driver's drop kills whatever is left anyway.
        let _ = self.driver.call(reqwest::Method::DELETE, &self.path, None);
    }
}

/// Standard base64 (WebDriver's screenshot encoding); a few lines rather than a dependency.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("invalid base64 byte {c}")),
        }
        .into())
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let [_, a, b, c] = n.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..chunk.len().saturating_sub(1)]);
    }
    Ok(out)
}

#[test]
fn base64_decoding() {
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").as_deref(), Ok(&b"hello world"[..]));
    assert_eq!(base64_decode("YQ==").as_deref(), Ok(&b"a"[..]));
    assert_eq!(base64_decode("YWI=").as_deref(), Ok(&b"ab"[..]));
    assert_eq!(base64_decode("YWJj").as_deref(), Ok(&b"abc"[..]));
    assert!(base64_decode("a*").is_err());
}
