//! What the collector's integration tests share: a watchdog and an HTTP client.
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{Value, json};
use trackway_collector::{Backend, BackendRequest, DecodedEvent, Reply};

/// Runs `test` on its own thread and fails if it has not finished within `limit`, so a hang
/// fails fast instead of eating the CI time.
pub(crate) fn watchdog(limit: Duration, test: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        test();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test thread"),
        // The test panicked (its sender was dropped): re-raise its panic here.
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("test finished without reporting"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test still running after {limit:?}"),
    }
}

/// A blocking HTTP client for the loopback collector: no proxy, a 10 s timeout.
pub(crate) fn client() -> Client {
    Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("reqwest client")
}

/// `GET url`, its body parsed as JSON.
pub(crate) fn get_json(url: &str) -> Value {
    let text = client().get(url).send().expect("get").text().expect("text");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// A server of the tests' own, plugged in through [`Backend`]: `PUT /toy/customers/{id}`
/// updates a customer (a JSON object, else 400), `POST /toy/batch` runs `{"commands": [...]}`
/// and answers one result per command (a command without a `name` fails).
#[derive(Debug)]
pub(crate) struct Toy;

impl Toy {
    const CUSTOMERS: &str = "/toy/customers/";
    const BATCH: &str = "/toy/batch";
}

impl Backend for Toy {
    fn label(&self) -> &str {
        "toy"
    }

    fn claims(&self, method: &str, path: &str) -> bool {
        (method == "PUT" && path.strip_prefix(Self::CUSTOMERS).is_some_and(|id| !id.is_empty()))
            || (method == "POST" && path == Self::BATCH)
    }

    fn answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        let body: Option<Value> = serde_json::from_slice(request.body()).ok();
        if request.path() == Self::BATCH {
            let Some(commands) = body.as_ref().and_then(|b| b.get("commands")).and_then(Value::as_array) else {
                return Some(
                    Reply::status(400).json(json!({"success": false, "errors": ["commands must be an array"]})),
                );
            };
            let results: Vec<Value> =
                commands.iter().map(|c| json!({"success": c.get("name").is_some_and(Value::is_string)})).collect();
            return Some(Reply::status(200).json(json!({"success": true, "results": results})));
        }
        Some(match body {
            Some(Value::Object(_)) => Reply::status(200).json(json!({"ok": true})),
            _ => Reply::status(400).json(json!({"meta": {"error": "the body must be a JSON object"}})),
        })
    }

    /// Every command succeeds, counted without being parsed.
    fn sink_answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        #[derive(serde::Deserialize)]
        struct Commands {
            commands: Vec<serde::de::IgnoredAny>,
        }
        if request.path() != Self::BATCH {
            return self.answer(request);
        }
        let n = serde_json::from_slice::<Commands>(request.body()).map_or(0, |c| c.commands.len());
        Some(Reply::status(200).json(json!({"success": true, "results": vec![json!({"success": true}); n]})))
    }

    fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
        if let Some(id) = request.path().strip_prefix(Self::CUSTOMERS) {
            // Built from the path and the body: no one piece of the body is the event.
            let attributes: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
            return vec![DecodedEvent::new(json!({"type": "identify", "user": id, "attributes": attributes}), None)];
        }
        #[derive(serde::Deserialize)]
        struct Commands<'a> {
            #[serde(borrow)]
            commands: Vec<&'a serde_json::value::RawValue>,
        }
        let Ok(text) = std::str::from_utf8(request.body()) else { return Vec::new() };
        let Ok(Commands { commands }) = serde_json::from_str(text) else { return Vec::new() };
        commands
            .into_iter()
            .filter_map(|raw| {
                let command: Value = serde_json::from_str(raw.get()).ok()?;
                let event = json!({
                    "type": command.get("name")?,
                    "name": command.pointer("/data/event"),
                    "user": command.pointer("/data/user"),
                });
                Some(DecodedEvent::new(event, Some(raw.get())))
            })
            .collect()
    }
}
