//! Parsing a stored event whose context is kept apart (a *head*): the context is parsed once and
//! shared, not once per event.
//!
//! Every event of a client carries the same context, and a store keeps it once. Parsing each
//! event's whole JSON (head and context) made the context's strings again for every event: in
//! the backends bench's Bloomreach row, the JSON parser was a third of the worker's time (perf,
//! 2026-12-04), for destinations that read only a field or two of the context.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use trackway_wire::{Context, Event};

/// Closes a head with a context that needs no allocation; the real one replaces it after.
const STAND_IN: &[u8] = b",\"context\":{\"library\":\"\",\"library_version\":\"\"}}";

/// Heads longer than this are parsed from a buffer of their own, so a thread does not keep a
/// large one after a rare large event.
const KEEP_SCRATCH: usize = 16 << 10;

/// Per thread (the worker's, in practice): the last context parsed, and a buffer for heads.
#[derive(Default)]
struct Cache {
    context: Option<(Bytes, Arc<Context>)>,
    scratch: Vec<u8>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::default();
}

/// The event of `head` completed by `context` (as `EventRecord::write_json` joins them), with
/// the context parsed once per thread while it stays the same. `None` if either does not
/// parse here: the caller then parses the joined JSON, for the same result or its error.
pub(super) fn event_from_head(head: &[u8], context: &Bytes) -> Option<Event> {
    // `try_with`: during the thread's teardown the cache is gone, and the joined parse serves.
    CACHE
        .try_with(|cache| {
            let mut cache = cache.borrow_mut();
            let Cache { context: last, scratch } = &mut *cache;
            let shared = match last {
                Some((bytes, parsed)) if crate::store::same_context(bytes, context) => parsed.clone(),
                _ => {
                    let parsed = Arc::new(serde_json::from_slice::<Context>(context).ok()?);
                    *last = Some((context.clone(), parsed.clone()));
                    parsed
                }
            };
            let mut own = Vec::new();
            let buffer = if head.len() <= KEEP_SCRATCH { scratch } else { &mut own };
            buffer.clear();
            buffer.extend_from_slice(head);
            buffer.extend_from_slice(STAND_IN);
            let mut event: Event = serde_json::from_slice(buffer).ok()?;
            event.context = shared;
            Some(event)
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use trackway_wire::{Context, Event, EventKind, Identity, Timestamp, props};

    use super::event_from_head;
    use crate::destination::EventRecord;

    fn context(app: &str) -> Context {
        Context {
            library: "trackway".into(),
            library_version: "0.1.0".into(),
            os: Some("linux".into()),
            app_name: Some(app.into()),
            os_name: Some("Linux".into()),
            device_id: Some("d-1".into()),
            ..Context::default()
        }
    }

    fn event(context: &Arc<Context>) -> Event {
        Event {
            name: Some("purchase".into()),
            properties: props! { "amount" => 9.5, "plan" => "pro", "tags" => vec!["a", "b"] },
            identity: Identity::user("u-1"),
            session_id: Some("s-1".into()),
            context: context.clone(),
            ..Event::new(EventKind::Track, Timestamp::from_unix_millis(1_700_000_000_123))
        }
    }

    /// A record as the stores hand it out: the head, and the client's context apart.
    fn head_record(event: &Event, context: &Bytes) -> EventRecord {
        let mut head = Vec::new();
        trackway_wire::encode_event_head(event, &mut head).expect("head");
        EventRecord::from_head(0, event.id, event.timestamp, Bytes::from(head), context.clone())
    }

    #[test]
    fn a_head_and_its_context_parse_to_the_event_of_the_joined_json() {
        let ctx = Arc::new(context("shop"));
        let json = Bytes::from(serde_json::to_vec(&*ctx).expect("context"));
        let e = event(&ctx);
        let record = head_record(&e, &json);
        let joined: Event = serde_json::from_slice(record.json()).expect("joined");
        assert_eq!(record.event().expect("parsed"), &joined);
        assert_eq!(record.event().expect("parsed"), &e);
    }

    #[test]
    fn events_of_one_context_share_its_parse_and_another_context_gets_its_own() {
        let (a, b) = (Arc::new(context("a")), Arc::new(context("b")));
        let (ja, jb) =
            (Bytes::from(serde_json::to_vec(&*a).expect("a")), Bytes::from(serde_json::to_vec(&*b).expect("b")));
        let first = head_record(&event(&a), &ja);
        let second = head_record(&event(&a), &ja);
        // The same bytes in another buffer (a store that reads the context back per record).
        let copied = head_record(&event(&a), &Bytes::copy_from_slice(&ja));
        let other = head_record(&event(&b), &jb);
        let ctx = |r: &EventRecord| r.event().expect("parsed").context.clone();
        assert!(Arc::ptr_eq(&ctx(&first), &ctx(&second)));
        assert!(Arc::ptr_eq(&ctx(&first), &ctx(&copied)));
        assert_eq!(ctx(&other).app_name.as_deref(), Some("b"));
        assert_eq!(ctx(&first).app_name.as_deref(), Some("a"));
    }

    #[test]
    fn what_does_not_parse_here_is_left_to_the_joined_parse_and_its_error() {
        let json = Bytes::from_static(b"{\"library\":");
        let e = event(&Arc::new(context("x")));
        assert!(event_from_head(b"{\"id\":", &Bytes::from_static(b"{}")).is_none(), "a broken head");
        let record = head_record(&e, &json);
        assert!(event_from_head(&record.head, &json).is_none(), "a broken context");
        assert!(record.event().expect_err("invalid").starts_with("stored event is not valid"));
    }

    #[test]
    fn a_large_head_parses_without_growing_the_kept_buffer() {
        let ctx = Arc::new(context("big"));
        let json = Bytes::from(serde_json::to_vec(&*ctx).expect("context"));
        let e = Event { properties: props! { "blob" => "x".repeat(100_000) }, ..event(&ctx) };
        let record = head_record(&e, &json);
        assert_eq!(record.event().expect("parsed"), &e);
        super::CACHE.with(|c| assert!(c.borrow().scratch.capacity() <= 2 * super::KEEP_SCRATCH, "not kept"));
    }
}
