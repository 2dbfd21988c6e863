//! Stored events to Customer.io requests: `/api/v2/batch` bodies of up to 500 KB (operations of
//! up to 32 KB), and v1 calls for what v2 does not carry (and for everything with `Api::V1`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use trackway_wire::customerio::{BATCH_MAX, OPERATION_MAX};

use super::ops::Mapped;
use super::{Api, CustomerIo};
use crate::destination::{Encoded, EventRecord, Request};

/// The batch endpoint's path.
pub(super) const BATCH_PATH: &str = "/api/v2/batch";

/// `{"batch":[` + `]}`.
const ENVELOPE: usize = 12;

fn headers(dest: &CustomerIo, body: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, dest.auth.clone());
    if body {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    h
}

/// A batch being filled: its items' JSON and which events they are.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    items: Vec<usize>,
}

impl Batch {
    fn push(&mut self, json: &[u8], index: usize) {
        self.body.push(if self.items.is_empty() { b'[' } else { b',' });
        self.body.extend_from_slice(json);
        self.items.push(index);
    }

    fn take(&mut self, dest: &CustomerIo) -> Option<Request> {
        if self.items.is_empty() {
            return None;
        }
        let mut body = Vec::with_capacity(self.body.len() + ENVELOPE);
        body.extend_from_slice(b"{\"batch\":");
        body.extend_from_slice(&self.body);
        body.extend_from_slice(b"]}");
        self.body.clear();
        let mut request = Request::post(&dest.endpoint(BATCH_PATH), Bytes::from(body), std::mem::take(&mut self.items));
        request.headers = headers(dest, true);
        Some(request)
    }
}

/// Encodes a batch: see the module docs of `customerio` for what goes where.
pub(super) fn encode(dest: &CustomerIo, events: &[EventRecord]) -> Encoded {
    let mut out = Encoded::default();
    let mut batch = Batch::default();
    for (i, record) in events.iter().enumerate() {
        let Some(event) = out.parse(i, record) else { continue };
        let op = match dest.operation(event, record.id()) {
            Ok(Mapped::Send(op)) => op,
            Ok(Mapped::Skip(reason)) => {
                if !dest.warned_skipped.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        destination = dest.name.as_str(),
                        "trackway: not sent to Customer.io: {reason} (counted as skipped in stats; logged once)"
                    );
                }
                out.skipped.push((i, reason));
                continue;
            }
            Err(reason) => {
                out.rejected.push((i, reason));
                continue;
            }
        };
        if dest.api == Api::V2Batch
            && let Some(item) = op.v2_item()
        {
            let json = serde_json::to_vec(&item).unwrap_or_default();
            if json.len() <= OPERATION_MAX {
                if batch.body.len() + 1 + json.len() + ENVELOPE > BATCH_MAX
                    && let Some(full) = batch.take(dest)
                {
                    out.requests.push(full);
                }
                batch.push(&json, i);
                continue;
            }
            // Over v2's 32 KB per operation, within v1's limits (checked at the call): alone, v1.
        }
        // Requests start in enqueue order: the operations batched so far go first.
        if let Some(before) = batch.take(dest) {
            out.requests.push(before);
        }
        let (method, path, body) = op.v1();
        let body = body.map(|b| serde_json::to_vec(&b).unwrap_or_default());
        let mut request = Request::post(&dest.endpoint(&path), Bytes::from(body.clone().unwrap_or_default()), vec![i]);
        request.method = method;
        request.headers = headers(dest, body.is_some());
        out.requests.push(request);
    }
    if let Some(last) = batch.take(dest) {
        out.requests.push(last);
    }
    out
}
