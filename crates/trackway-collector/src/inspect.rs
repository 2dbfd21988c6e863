//! The collector's own HTTP API under `/_trackway/`, for looking at a running collector from
//! outside the process (a benchmark that spawned the binary, a person with curl).
//!
//! The prefix cannot collide with a destination's path, and requests under it are neither
//! recorded nor counted, and do not consume the script.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::recorder::RecordedRequest;
use crate::server::Shared;

const PREFIX: &str = "/_trackway/";
const STATS: &str = "/_trackway/api/stats";
const REQUESTS: &str = "/_trackway/api/requests";

/// Whether `path` belongs to the inspection API rather than to the simulated destination.
pub(crate) fn is_inspection(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// Answers a request under [`PREFIX`].
pub(crate) fn answer(shared: &Shared, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = path == STATS || path == REQUESTS;
    if !known {
        return respond(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    }
    if method != Method::GET && method != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method not allowed"}));
    }
    if path == STATS {
        let stats = shared.recorder.stats();
        respond(
            StatusCode::OK,
            &json!({
                "requests": stats.requests,
                "events": stats.events,
                "bytes": stats.bytes,
                "json_errors": stats.json_errors,
            }),
        )
    } else {
        let requests: Vec<Value> = shared.recorder.requests().iter().map(request_json).collect();
        respond(StatusCode::OK, &Value::Array(requests))
    }
}

fn request_json(request: &RecordedRequest) -> Value {
    json!({
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "status": request.status,
        "headers": request.headers,
        "body": request.body_str(),
    })
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
