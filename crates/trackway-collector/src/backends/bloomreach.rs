//! Bloomreach Engagement's tracking API: `POST /track/v2/projects/{token}/customers`,
//! `…/customers/events`, `…/batch` and `GET …/system/time`, answered as the docs describe
//! (spec `bloomreach.md` §1): an `Authorization` of `Token …` or `Basic …` (else 401), a known
//! project (when [`BloomreachConfig::projects`] names them; else 404), each body checked
//! (`customer_ids` with at least one id, `event_type` on events, a numeric or text `timestamp`,
//! an object of `properties`), answers of `{"success": true}` or 400 `{"success": false,
//! "errors": […]}`, batches of at most 50 commands with one result per command (in sink mode
//! too), and 429 past a configured rate. Accepted commands are kept ([`BloomreachRow`]).
//!
//! A failing command's result is `{"success": false, "errors": […]}`: the shape the spec assumes
//! (§12), as no real answer was seen.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use trackway_wire::bloomreach::{COOKIE, DEFAULT_HARD_ID, MAX_BATCH_COMMANDS, split_path};

use super::{Backend, BackendRequest, DecodedEvent};
use crate::reply::Reply;
use crate::util::lock;

/// The label of Bloomreach's requests and events in the inspection API.
pub(crate) const LABEL: &str = "bloomreach";

/// How the collector's Bloomreach server behaves ([`CollectorBuilder::bloomreach`](crate::CollectorBuilder::bloomreach)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BloomreachConfig {
    /// The project tokens the server knows; a request for another is answered 404. `None`:
    /// every token.
    pub projects: Option<Vec<String>>,
    /// At most this many requests per second (one window per second), the rest answered 429
    /// with `Retry-After: 1` (the real default is 6 000 a minute per IP). `None`: no limit.
    pub rate_limit: Option<u32>,
}

impl BloomreachConfig {
    /// Only these project tokens are known.
    #[must_use]
    pub fn projects<S: Into<String>>(mut self, tokens: impl IntoIterator<Item = S>) -> Self {
        self.projects = Some(tokens.into_iter().map(Into::into).collect());
        self
    }

    /// At most `per_second` requests a second.
    #[must_use]
    pub fn rate_limit(mut self, per_second: u32) -> Self {
        self.rate_limit = Some(per_second);
        self
    }
}

/// A command the server accepted, as kept for tests ([`RunningCollector::bloomreach_stored`](crate::RunningCollector::bloomreach_stored)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BloomreachRow {
    /// The project token of the path.
    pub project: String,
    /// `customers/events` or `customers`.
    pub command: String,
    /// The command's data (the body of a single request).
    pub data: Value,
    /// The `command_id`, for batch commands that had one.
    pub command_id: Option<String>,
}

/// The collector's Bloomreach server.
#[derive(Debug, Default)]
pub(crate) struct BloomreachServer {
    config: BloomreachConfig,
    window: Mutex<Option<(Instant, u32)>>,
    stored: Mutex<Vec<BloomreachRow>>,
}

impl BloomreachServer {
    pub(crate) fn new(config: BloomreachConfig) -> Self {
        BloomreachServer { config, ..BloomreachServer::default() }
    }

    /// The accepted commands, in order.
    pub(crate) fn stored(&self) -> Vec<BloomreachRow> {
        lock(&self.stored).clone()
    }

    /// Counts a request in the current window; `false` when it is over the rate.
    fn admit(&self) -> bool {
        let Some(limit) = self.config.rate_limit else { return true };
        let mut window = lock(&self.window);
        let now = Instant::now();
        match window.as_mut() {
            Some((start, n)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *n += 1;
                *n <= limit
            }
            _ => {
                *window = Some((now, 1));
                limit >= 1
            }
        }
    }

    /// What is answered before the body is read: the rate, the path, the auth, the project.
    fn gate(&self, request: &BackendRequest<'_>) -> Result<(String, String), Box<Reply>> {
        if !self.admit() {
            return Err(Box::new(failure(429, "rate limit exceeded").header("retry-after", "1")));
        }
        let Some((token, command)) = split_path(request.path()) else {
            return Err(Box::new(failure(404, "not found")));
        };
        let auth = request.header("authorization").unwrap_or("");
        let scheme_ok =
            auth.strip_prefix("Token ").or_else(|| auth.strip_prefix("Basic ")).is_some_and(|k| !k.trim().is_empty());
        if !scheme_ok {
            return Err(Box::new(failure(
                401,
                "missing or invalid Authorization (`Token <key>` or `Basic <credentials>`)",
            )));
        }
        if let Some(known) = &self.config.projects
            && !known.iter().any(|k| k == token)
        {
            return Err(Box::new(failure(404, "project not found")));
        }
        Ok((token.to_owned(), command.to_owned()))
    }

    fn answer(&self, request: &BackendRequest<'_>) -> Reply {
        let (token, command) = match self.gate(request) {
            Ok(p) => p,
            Err(reply) => return *reply,
        };
        if command == "system/time" {
            return Reply::status(200).json(json!({ "success": true, "time": now_secs() }));
        }
        let Ok(body) = serde_json::from_slice::<Value>(request.body()) else {
            return failure(400, "the body is not JSON");
        };
        match command.as_str() {
            "customers" | "customers/events" => match check(&command, &body) {
                Ok(()) => {
                    self.keep(&token, &command, body, None);
                    Reply::status(200).json(json!({ "success": true, "errors": [] }))
                }
                Err(e) => failure(400, &e),
            },
            "batch" => {
                let Some(commands) = body.get("commands").and_then(Value::as_array) else {
                    return failure(400, "`commands` must be an array");
                };
                if commands.len() > MAX_BATCH_COMMANDS {
                    return failure(
                        400,
                        &format!("at most {MAX_BATCH_COMMANDS} commands per batch, got {}", commands.len()),
                    );
                }
                let results: Vec<Value> = commands.iter().map(|c| self.run(&token, c)).collect();
                Reply::status(200).json(json!({
                    "success": true, "start_time": now_secs(), "end_time": now_secs(), "results": results
                }))
            }
            _ => failure(404, "not found"),
        }
    }

    /// One batch command's result.
    fn run(&self, token: &str, command: &Value) -> Value {
        let name = command.get("name").and_then(Value::as_str).unwrap_or("");
        match name {
            "system/time" => json!({ "success": true, "time": now_secs() }),
            "customers" | "customers/events" => {
                let data = command.get("data").cloned().unwrap_or(Value::Null);
                match check(name, &data) {
                    Ok(()) => {
                        let id = command.get("command_id").and_then(Value::as_str).map(str::to_owned);
                        self.keep(token, name, data, id);
                        json!({ "success": true })
                    }
                    Err(e) => json!({ "success": false, "errors": [e] }),
                }
            }
            other => json!({ "success": false, "errors": [format!("unknown command {other:?}")] }),
        }
    }

    fn keep(&self, project: &str, command: &str, data: Value, command_id: Option<String>) {
        lock(&self.stored).push(BloomreachRow {
            project: project.to_owned(),
            command: command.to_owned(),
            data,
            command_id,
        });
    }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn failure(status: u16, error: &str) -> Reply {
    Reply::status(status).json(json!({ "success": false, "errors": [error] }))
}

/// What the server requires of a `customers` or `customers/events` body.
fn check(command: &str, data: &Value) -> Result<(), String> {
    let Some(obj) = data.as_object() else { return Err("the body must be an object".into()) };
    match obj.get("customer_ids") {
        Some(Value::Object(ids)) if !ids.is_empty() => {
            if let Some((k, _)) = ids.iter().find(|(_, v)| !v.is_string()) {
                return Err(format!("customer_ids.{k} must be a string"));
            }
        }
        _ => return Err("customer_ids must hold at least one id".into()),
    }
    if command == "customers/events" && obj.get("event_type").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err("event_type is required".into());
    }
    match obj.get("timestamp") {
        None | Some(Value::Number(_) | Value::String(_)) => {}
        Some(_) => return Err("timestamp must be a number of seconds or an ISO 8601 string".into()),
    }
    match obj.get("properties") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err("properties must be an object".into()),
    }
}

/// An event as the inspection API and the live page show it.
fn shown(project: &str, command: &str, data: &Value) -> Value {
    let ids = data.get("customer_ids").and_then(Value::as_object).cloned().unwrap_or_default();
    let user = ids
        .get(DEFAULT_HARD_ID)
        .or_else(|| ids.iter().find(|(k, _)| *k != COOKIE).map(|(_, v)| v))
        .or_else(|| ids.get(COOKIE))
        .cloned();
    let mut event = Map::new();
    let customer = command == "customers";
    event.insert("type".into(), json!(if customer { "identify" } else { "track" }));
    if let Some(name) = data.get("event_type") {
        event.insert("name".into(), name.clone());
    }
    if let Some(user) = user {
        event.insert("user".into(), user);
    }
    event.insert("project".into(), json!(project));
    for key in ["timestamp", "customer_ids", "properties"] {
        if let Some(v) = data.get(key) {
            event.insert(key.into(), v.clone());
        }
    }
    if let Some(url) = data.get("properties").and_then(|p| p.get("location")) {
        event.insert("url".into(), url.clone());
    }
    Value::Object(event)
}

impl Backend for BloomreachServer {
    fn label(&self) -> &str {
        LABEL
    }

    fn claims(&self, method: &str, path: &str) -> bool {
        match split_path(path) {
            Some((_, "customers" | "customers/events" | "batch")) => method == "POST",
            Some((_, "system/time")) => method == "GET",
            _ => false,
        }
    }

    fn answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        Some(BloomreachServer::answer(self, request))
    }

    /// Success without checking bodies or keeping them, but with one result per command (counted,
    /// not parsed) and the auth and rate checks.
    fn sink_answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        #[derive(Deserialize)]
        struct Commands {
            commands: Vec<serde::de::IgnoredAny>,
        }
        if let Err(reply) = self.gate(request) {
            return Some(*reply);
        }
        if request.path().ends_with("/batch") {
            return Some(match serde_json::from_slice::<Commands>(request.body()) {
                Ok(c) if c.commands.len() <= MAX_BATCH_COMMANDS => {
                    let results = vec![json!({ "success": true }); c.commands.len()];
                    Reply::status(200).json(json!({ "success": true, "results": results }))
                }
                Ok(c) => {
                    failure(400, &format!("at most {MAX_BATCH_COMMANDS} commands per batch, got {}", c.commands.len()))
                }
                Err(_) => failure(400, "`commands` must be an array"),
            });
        }
        Some(Reply::status(200).json(json!({ "success": true })))
    }

    fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
        #[derive(Deserialize)]
        struct Batch<'a> {
            #[serde(borrow)]
            commands: Vec<&'a RawValue>,
        }
        let Some((project, command)) = split_path(request.path()) else { return Vec::new() };
        let Ok(text) = std::str::from_utf8(request.body()) else { return Vec::new() };
        if command != "batch" {
            return match serde_json::from_str::<Value>(text) {
                Ok(data @ Value::Object(_)) => vec![DecodedEvent::new(shown(project, command, &data), Some(text))],
                _ => Vec::new(),
            };
        }
        let Ok(batch) = serde_json::from_str::<Batch<'a>>(text) else { return Vec::new() };
        batch
            .commands
            .into_iter()
            .filter_map(|raw| {
                let c: Value = serde_json::from_str(raw.get()).ok()?;
                let name = c.get("name")?.as_str()?;
                let data = c.get("data")?;
                Some(DecodedEvent::new(shown(project, name, data), Some(raw.get())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post<'a>(path: &'a str, body: &'a [u8], headers: &'a [(String, String)]) -> BackendRequest<'a> {
        BackendRequest::new("POST", path, body).with_headers(headers)
    }

    fn token() -> Vec<(String, String)> {
        vec![("Authorization".into(), "Token k".into())]
    }

    #[test]
    fn events_need_auth_ids_and_a_type() {
        let server = BloomreachServer::new(BloomreachConfig::default().projects(["p"]));
        let ok = br#"{"event_type":"x","timestamp":1.5,"customer_ids":{"cookie":"c"},"properties":{}}"#;
        let status =
            |path: &str, body: &[u8], h: &[(String, String)]| server.answer(&post(path, body, h)).recorded_status();
        let h = token();
        assert_eq!(status("/track/v2/projects/p/customers/events", ok, &h), 200);
        assert_eq!(status("/track/v2/projects/p/customers/events", ok, &[]), 401);
        assert_eq!(status("/track/v2/projects/q/customers/events", ok, &h), 404);
        assert_eq!(status("/track/v2/projects/p/customers/events", br#"{"customer_ids":{}}"#, &h), 400);
        assert_eq!(status("/track/v2/projects/p/customers", br#"{"customer_ids":{"registered":"a"}}"#, &h), 200);
        assert_eq!(server.stored().len(), 2);
    }

    #[test]
    fn batches_answer_per_command_and_refuse_more_than_50() {
        let server = BloomreachServer::new(BloomreachConfig::default());
        let h = token();
        let body = br#"{"commands":[{"name":"customers","data":{"customer_ids":{"registered":"a"}}},{"name":"customers/events","data":{"customer_ids":{"cookie":"c"}}}]}"#;
        let reply = server.answer(&post("/track/v2/projects/p/batch", body, &h));
        let v: Value = serde_json::from_slice(reply.body_bytes()).expect("json");
        assert_eq!(v["results"][0]["success"], true);
        assert_eq!(v["results"][1]["success"], false);
        let many = json!({ "commands": vec![json!({"name":"system/time"}); 51] }).to_string();
        assert_eq!(server.answer(&post("/track/v2/projects/p/batch", many.as_bytes(), &h)).recorded_status(), 400);
        let sink = server.sink_answer(&post("/track/v2/projects/p/batch", body, &h)).expect("reply");
        let v: Value = serde_json::from_slice(sink.body_bytes()).expect("json");
        assert_eq!(v["results"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn over_the_rate_is_429() {
        let server = BloomreachServer::new(BloomreachConfig::default().rate_limit(1));
        let h = token();
        let body = br#"{"event_type":"x","customer_ids":{"cookie":"c"}}"#;
        assert_eq!(server.answer(&post("/track/v2/projects/p/customers/events", body, &h)).recorded_status(), 200);
        assert_eq!(server.answer(&post("/track/v2/projects/p/customers/events", body, &h)).recorded_status(), 429);
    }
}
