//! Unit tests of the Umami destination: golden bodies from the spec (§2.3), limits, the UA check,
//! timestamps, cache tokens and the classification of answers.

use std::sync::Arc;
use std::time::Duration;

use trackway_wire::{Context, Event, EventKind, Identity, MessageId, PageInfo, Properties, Timestamp, props};

use super::classify::{NO_BATCH, PROBE, cache_key};
use super::*;
use crate::destination::{DestinationState, Outcome, Response};

const SITE: &str = "b59e9c65-ae32-47f1-8400-119fcf4861c4";
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) myapp/1.2.3";
const T0: i64 = 1_700_000_000_000;

fn umami() -> Umami {
    Umami::new(SITE.to_uppercase())
        .base_url("http://umami.test")
        .hostname("myapp.example")
        .language("en-US")
        .screen("1920x1080")
        .user_agent(UA)
}

fn event(kind: EventKind, name: Option<&str>, properties: Properties) -> Event {
    let at = Timestamp::from_unix_millis(T0);
    Event {
        id: MessageId::new_v7(at),
        kind,
        name: name.map(Into::into),
        timestamp: at,
        properties,
        identity: Identity::default(),
        session_id: None,
        page: None,
        imported: false,
        context: Arc::new(Context::default()),
    }
}

fn records(events: &[Event]) -> Vec<EventRecord> {
    events.iter().enumerate().map(|(i, e)| EventRecord::from_event(i as u64, e).expect("record")).collect()
}

fn encode_at(dest: &Umami, events: &[Event], state: &DestinationState, now_ms: i64) -> Encoded {
    dest.encode(&records(events), state, Timestamp::from_unix_millis(now_ms))
}

fn body(e: &Encoded, i: usize) -> String {
    String::from_utf8(e.requests[i].body.to_vec()).expect("utf8")
}

fn page_view() -> Event {
    let mut e = event(EventKind::Page, None, Properties::new());
    e.page = Some(PageInfo { url: "/settings".into(), title: Some("Settings".into()), referrer: Some(String::new()) });
    e
}

fn purchase() -> Event {
    event(
        EventKind::Track,
        Some("purchase"),
        props! {
            "$url" => "/checkout",
            "plan" => "pro", "price" => 49.99, "trial" => false, "items" => vec!["a", "b"],
            "meta" => props! { "coupon" => "X" },
        },
    )
}

fn identify() -> Event {
    let mut e = event(
        EventKind::Identify,
        None,
        props! { "plan" => "pro", "signup" => Timestamp::from_unix_millis(1_705_312_800_000) },
    );
    e.identity.user_id = Some("user-123".into());
    e
}

#[test]
fn golden_bodies_match_the_spec_examples() {
    let dest = umami();
    let state = DestinationState::default();
    // One event per encode: each is then its own batch of one.
    let pv = encode_at(&dest, &[page_view()], &state, T0);
    assert_eq!(
        body(&pv, 0),
        r#"[{"type":"event","payload":{"website":"b59e9c65-ae32-47f1-8400-119fcf4861c4","hostname":"myapp.example","language":"en-US","screen":"1920x1080","title":"Settings","url":"/settings","referrer":""}}]"#
    );
    assert_eq!(pv.requests[0].url, "http://umami.test/api/batch");
    assert_eq!(pv.requests[0].headers["user-agent"], UA);
    assert_eq!(pv.requests[0].headers["content-type"], "application/json");
    assert!(pv.requests[0].headers.get("x-umami-cache").is_none(), "no token held, none sent");

    let ev = encode_at(&dest, &[purchase()], &state, T0);
    assert_eq!(
        body(&ev, 0),
        r#"[{"type":"event","payload":{"website":"b59e9c65-ae32-47f1-8400-119fcf4861c4","hostname":"myapp.example","language":"en-US","screen":"1920x1080","url":"/checkout","name":"purchase","data":{"plan":"pro","price":49.99,"trial":false,"items":["a","b"],"meta":{"coupon":"X"}}}}]"#
    );

    let id = encode_at(&dest, &[identify()], &state, T0);
    assert_eq!(
        body(&id, 0),
        r#"[{"type":"identify","payload":{"website":"b59e9c65-ae32-47f1-8400-119fcf4861c4","hostname":"myapp.example","language":"en-US","screen":"1920x1080","url":"/","id":"user-123","data":{"plan":"pro","signup":"2024-01-15T10:00:00.000Z"}}}]"#
    );
}

#[test]
fn on_api_send_the_body_is_one_object() {
    let mut state = DestinationState::default();
    state.apply(&[(NO_BATCH.to_owned(), Some(b"1".to_vec()))]);
    let out = encode_at(&umami(), &[page_view(), purchase()], &state, T0);
    assert_eq!(out.requests.len(), 2, "one request per event on /api/send");
    assert_eq!(out.requests[0].url, "http://umami.test/api/send");
    assert!(body(&out, 0).starts_with(r#"{"type":"event","payload":{"website":"#), "{}", body(&out, 0));
}

#[test]
fn null_is_never_serialized() {
    let e = event(
        EventKind::Track,
        Some("e"),
        props! { "gone" => Option::<i64>::None, "list" => vec![Value::Null, Value::Int(1)], "inner" => props! { "x" => Value::Null } },
    );
    let out = encode_at(&Umami::new(SITE), &[e], &DestinationState::default(), T0);
    let text = body(&out, 0);
    assert!(!text.contains("null"), "{text}");
    assert!(text.contains(r#""data":{"list":[1],"inner":{}}"#), "{text}");
    assert!(!text.contains("hostname"), "absent config is omitted: {text}");
}

#[test]
fn utf16_limits_at_the_call() {
    let dest = Umami::new(SITE);
    let ok = event(EventKind::Track, Some(&"😀".repeat(25)), Properties::new());
    assert_eq!(dest.validate(&ok), Ok(()));
    let too_long = event(EventKind::Track, Some(&"😀".repeat(26)), Properties::new());
    let err = dest.validate(&too_long).expect_err("26 emoji are 52 units");
    assert!(err.message.contains("52 UTF-16 units"), "{}", err.message);
    assert!(dest.validate(&event(EventKind::Track, Some(&"é".repeat(50)), Properties::new())).is_ok());

    let tag = event(EventKind::Track, Some("e"), props! { "$tag" => "😀".repeat(26) });
    assert!(dest.validate(&tag).is_err());
    let mut id = identify();
    id.identity.user_id = Some("😀".repeat(25).into());
    assert!(dest.validate(&id).is_ok());
    id.identity.user_id = Some("x".repeat(51).into());
    assert!(dest.validate(&id).expect_err("51").message.contains("distinct id"));
    let huge = event(EventKind::Track, Some("e"), props! { "n" => 1e16 });
    assert!(dest.validate(&huge).is_err(), "beyond decimal(19,4)");
}

#[test]
fn long_title_url_and_data_strings_are_truncated_and_counted() {
    let mut e = event(EventKind::Page, None, props! { "s" => "x".repeat(600) });
    e.page = Some(PageInfo { url: format!("/{}", "p".repeat(600)), title: Some("😀".repeat(300)), referrer: None });
    let out = encode_at(&Umami::new(SITE), &[e], &DestinationState::default(), T0);
    assert_eq!(out.truncated, 3);
    let v: serde_json::Value = serde_json::from_slice(&out.requests[0].body).expect("json");
    let p = &v[0]["payload"];
    assert_eq!(p["url"].as_str().map(str::len), Some(500));
    assert_eq!(p["title"].as_str().map(|t| t.chars().count()), Some(250));
    assert_eq!(p["data"]["s"].as_str().map(str::len), Some(500));
}

#[test]
fn bot_user_agents_are_build_errors() {
    for ua in ["curl/8.0.1", "my-rust-app/1.0", "Mozilla/5.0 (compatible; MyApp/1.0)", "HeadlessChrome/120"] {
        let err = Umami::new(SITE).user_agent(ua).check_config().expect_err(ua);
        assert!(err.contains("bot check"), "{err}");
    }
    assert_eq!(Umami::new(SITE).user_agent(UA).check_config(), Ok(()));
    assert_eq!(umami().check_config(), Ok(()));
}

#[test]
fn invalid_configuration_is_a_build_error() {
    assert!(Umami::new("nope").check_config().expect_err("uuid").contains("not a UUID"));
    assert!(Umami::new(SITE).base_url("ftp://x").check_config().is_err());
    assert!(Umami::new(SITE).hostname("h".repeat(101)).check_config().is_err());
    assert!(Umami::new(SITE).language("l".repeat(36)).check_config().is_err());
    assert!(Umami::new(SITE).screen("1920 x 1080").check_config().is_err());
    assert!(Umami::new(SITE).ip("300.1.1.1").check_config().is_err());
    assert!(Umami::new(SITE).ip("::1").check_config().is_ok());
}

#[test]
fn late_events_carry_their_time_and_on_time_ones_none() {
    let dest = umami().late_after(Duration::from_secs(60));
    let state = DestinationState::default();
    let on_time = encode_at(&dest, &[purchase()], &state, T0 + 60_000);
    assert!(!body(&on_time, 0).contains("timestamp"));
    let late = encode_at(&dest, &[purchase()], &state, T0 + 61_000);
    assert!(body(&late, 0).contains(&format!(r#""timestamp":{}"#, T0 / 1000)), "{}", body(&late, 0));
    let mut imported = purchase();
    imported.imported = true;
    assert!(body(&encode_at(&dest, &[imported], &state, T0), 0).contains("timestamp"));
}

#[test]
fn a_request_never_mixes_identities_and_carries_its_identitys_token() {
    let dest = umami();
    let anon = purchase();
    let known = identify();
    let key = cache_key(SITE, Some("user-123"), None, UA);
    let mut state = DestinationState::default();
    state.apply(&[(key, Some(b"tok-user".to_vec()))]);
    let out = encode_at(&dest, &[anon.clone(), known.clone(), anon, known], &state, T0);
    assert_eq!(out.requests.len(), 2);
    assert_eq!(out.requests[0].items, vec![0, 2]);
    assert!(out.requests[0].headers.get("x-umami-cache").is_none());
    assert_eq!(out.requests[1].items, vec![1, 3]);
    assert_eq!(out.requests[1].headers["x-umami-cache"], "tok-user");
}

#[test]
fn page_and_screen_mapping() {
    let mut page = event(EventKind::Page, Some("Home"), Properties::new());
    page.page = Some(PageInfo { url: "https://shop.example/a?b=1".into(), title: None, referrer: None });
    let screen = event(EventKind::Screen, Some("Order Details"), Properties::new());
    let out = encode_at(&Umami::new(SITE), &[page, screen], &DestinationState::default(), T0);
    let v: serde_json::Value = serde_json::from_slice(&out.requests[0].body).expect("json");
    assert_eq!(v[0]["payload"]["url"], "/a?b=1");
    assert_eq!(v[0]["payload"]["hostname"], "shop.example");
    assert_eq!(v[0]["payload"]["title"], "Home");
    assert!(v[0]["payload"].get("name").is_none(), "a name would make it a custom event");
    assert_eq!(v[1]["payload"]["url"], "/Order%20Details");
    assert_eq!(v[1]["payload"]["title"], "Order Details");
}

fn request(dest: &Umami, events: &[Event], state: &DestinationState) -> Request {
    encode_at(dest, events, state, T0).requests.remove(0)
}

#[test]
fn batch_details_fail_only_their_items_and_the_token_is_kept() {
    let dest = umami();
    let req = request(&dest, &[purchase(), purchase(), purchase()], &DestinationState::default());
    let answer = Response::new(
        200,
        r#"{"size":3,"processed":2,"errors":1,"details":[{"index":1,"response":{"error":{"message":"Bad request","code":"bad-request","status":400}}}],"cache":"tok"}"#,
    );
    let c = dest.classify(&req, &answer);
    assert_eq!(c.outcomes[0], Outcome::Delivered);
    assert!(matches!(&c.outcomes[1], Outcome::Reject(r) if r.contains("Bad request")));
    assert_eq!(c.outcomes[2], Outcome::Delivered);
    assert_eq!(c.state, vec![(cache_key(SITE, None, None, UA), Some(b"tok".to_vec()))]);
}

#[test]
fn fallback_states_and_send_answers() {
    let dest = umami();
    let req = request(&dest, &[purchase()], &DestinationState::default());
    let c = dest.classify(&req, &Response::new(404, ""));
    assert_eq!((c.outcomes[0].clone(), c.state[0].0.as_str()), (Outcome::Retry, NO_BATCH));
    let c = dest.classify(&req, &Response::new(500, ""));
    assert_eq!((c.outcomes[0].clone(), c.state[0].0.as_str()), (Outcome::Retry, PROBE));
    assert!(matches!(dest.classify(&req, &Response::new(400, "{}")).outcomes[0], Outcome::Reject(_)));

    let mut probing = DestinationState::default();
    probing.apply(&[(PROBE.to_owned(), Some(b"1".to_vec()))]);
    let send = request(&dest, &[purchase()], &probing);
    assert!(send.url.ends_with("/api/send"));
    let c = dest.classify(&send, &Response::new(200, "eyJ.plain.token"));
    assert_eq!(c.outcomes, vec![Outcome::Delivered]);
    assert!(c.state.contains(&(NO_BATCH.to_owned(), Some(b"1".to_vec()))));
    assert!(c.state.contains(&(PROBE.to_owned(), None)));
    assert!(c.state.contains(&(cache_key(SITE, None, None, UA), Some(b"eyJ.plain.token".to_vec()))));

    let beep = dest.classify(&send, &Response::new(200, r#"{"beep":"boop"}"#));
    assert!(matches!(&beep.outcomes[0], Outcome::Reject(r) if r.contains("bot check")));
    assert!(!beep.state.iter().any(|(k, _)| k.starts_with("cache/")), "a bot reply leaves the token alone");
    assert!(matches!(dest.classify(&send, &Response::new(404, "")).outcomes[0], Outcome::Reject(_)));
    assert_eq!(dest.classify(&send, &Response::new(503, "")).outcomes[0], Outcome::Retry);
}

#[test]
fn the_token_lru_is_bounded() {
    let dest = umami().cache_capacity(2);
    let mut state = DestinationState::default();
    for user in ["a", "b", "c"] {
        let mut e = identify();
        e.identity.user_id = Some(user.into());
        let req = request(&dest, &[e], &state);
        let c = dest.classify(&req, &Response::new(200, format!(r#"{{"cache":"t-{user}"}}"#)));
        state.apply(&c.state);
    }
    let tokens: Vec<&str> = state.keys().filter(|k| k.starts_with("cache/")).collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(state.get(&cache_key(SITE, Some("a"), None, UA)).is_none(), "the least recently used went");
}

/// Checked by `fuzz/fuzz_targets/umami_classify.rs` (stored tokens are valid headers): a cache
/// token with a control character was stored, replacing the good one, though no request can
/// carry it as a header.
#[test]
fn a_token_that_cannot_be_a_header_is_not_stored() {
    let dest = umami();
    let mut state = DestinationState::default();
    let req = request(&dest, &[purchase()], &state);
    state.apply(&dest.classify(&req, &Response::new(200, r#"{"cache":"good"}"#)).state);
    let c = dest.classify(&req, &Response::new(200, r#"{"cache":"bad\ntoken"}"#));
    assert_eq!(c.outcomes, vec![Outcome::Delivered], "the events were taken all the same");
    assert!(!c.state.iter().any(|(k, _)| k.starts_with("cache/")), "{:?}", c.state);
    state.apply(&c.state);
    let next = request(&dest, &[purchase()], &state);
    assert_eq!(next.headers.get("x-umami-cache").map(|v| v.as_bytes()), Some(&b"good"[..]));

    state.apply(&[(NO_BATCH.to_owned(), Some(b"1".to_vec()))]);
    let send = request(&dest, &[purchase()], &state);
    let c = dest.classify(&send, &Response::new(200, "\u{1}token"));
    assert!(!c.state.iter().any(|(k, _)| k.starts_with("cache/")), "plain-text token: {:?}", c.state);
}
