//! App mode: sessions, anonymize, installation, push tokens, payments, default properties and
//! consent. Time comes from the injected clock, never from sleeping.

mod support;

use std::path::Path;
use std::time::Duration;

use support::watchdog;
use trackway::destination::{InMemoryDestination, Received};
use trackway::store::{MemoryStore, SqliteStore};
use trackway::{
    Anonymize, AppLifecycle, Client, ClientBuilder, Clock, Error, Identify, ManualClock, Payment, PushToken, Screen,
    Timestamp, TokenFrequency, Track, props,
};

const LIMIT: Duration = Duration::from_secs(30);
const T0: i64 = 1_700_000_000_000;
const FLUSH: Duration = Duration::from_secs(5);

/// An app-mode builder (manual sessions unless the test adds a lifecycle).
fn app_builder(clock: Clock) -> ClientBuilder {
    Client::builder()
        .app_mode()
        .app("notes", "1.0.0")
        .clock(clock)
        .store(MemoryStore::new())
        .shutdown_timeout(Duration::from_millis(200))
}

fn manual() -> (Clock, ManualClock) {
    Clock::manual(Timestamp::from_unix_millis(T0))
}

/// A client with automatic sessions on a manual clock at `T0`, delivering to memory.
fn app_client() -> (Client, InMemoryDestination, ManualClock) {
    let (clock, hand) = manual();
    let dest = InMemoryDestination::new("m");
    let c =
        app_builder(clock).app_lifecycle(AppLifecycle::default()).destination(dest.clone()).build().expect("client");
    (c, dest, hand)
}

fn names(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.event.name.as_deref().unwrap_or_default().to_owned()).collect()
}

fn named<'a>(received: &'a [Received], name: &str) -> Vec<&'a Received> {
    received.iter().filter(|r| r.event.name.as_deref() == Some(name)).collect()
}

fn received(client: &Client, dest: &InMemoryDestination) -> Vec<Received> {
    client.flush(FLUSH).expect("flush");
    dest.received()
}

#[test]
fn a_return_within_the_timeout_continues_the_session_a_later_one_starts_a_new_one() {
    watchdog(LIMIT, || {
        let (c, dest, hand) = app_client();
        let first = c.current_session().expect("build starts a session");
        c.capture(Track::new("opened_note")).expect("track");
        hand.advance(Duration::from_secs(10));
        c.app_background().expect("background");
        let background_at = T0 + 10_000;
        hand.advance(Duration::from_secs(59));
        c.app_foreground().expect("foreground");
        assert_eq!(c.current_session().as_deref(), Some(first.as_str()), "59 s away continues");
        c.capture(Track::new("edited_note")).expect("track");
        hand.advance(Duration::from_secs(5));
        c.app_background().expect("background");
        let second_background = T0 + 74_000;
        hand.advance(Duration::from_secs(60));
        c.app_foreground().expect("foreground");
        let second = c.current_session().expect("a new session");
        assert_ne!(second, first, "60 s away ends the session");
        c.capture(Track::new("closed_note")).expect("track");

        let got = received(&c, &dest);
        assert_eq!(
            names(&got),
            [
                "installation",
                "session_start",
                "opened_note",
                "edited_note",
                "session_end",
                "session_start",
                "closed_note"
            ]
        );
        let end = named(&got, "session_end")[0];
        assert_eq!(end.event.session_id.as_deref(), Some(first.as_str()));
        assert_eq!(end.event.timestamp.unix_millis(), second_background, "ends when the app left");
        assert_eq!(end.event.properties.get("duration").and_then(|v| v.as_f64()), Some(74.0));
        assert!(background_at < second_background);
        for r in &got[1..4] {
            assert_eq!(r.event.session_id.as_deref(), Some(first.as_str()), "{:?}", r.event.name);
        }
        assert_eq!(got[5].event.session_id.as_deref(), Some(second.as_str()));
        assert_eq!(got[6].event.session_id.as_deref(), Some(second.as_str()));
        assert_eq!(got[5].event.timestamp.unix_millis(), T0 + 134_000);
    });
}

#[test]
fn a_repeated_foreground_call_does_not_end_an_idle_session() {
    watchdog(LIMIT, || {
        let (c, dest, hand) = app_client();
        let session = c.current_session();
        hand.advance(Duration::from_secs(600));
        c.app_foreground().expect("foreground");
        assert_eq!(c.current_session(), session);
        assert!(named(&received(&c, &dest), "session_end").is_empty());
    });
}

/// The crash test's helper: builds an app client on the store at `TRACKWAY_APP_CRASH_STORE`,
/// starts a session, tracks at T0 + 5 s, waits until it is committed, and aborts (no `Drop`, no
/// shutdown). Only runs when the parent test sets the variable.
#[test]
fn crash_helper() {
    let Ok(path) = std::env::var("TRACKWAY_APP_CRASH_STORE") else { return };
    let (clock, hand) = manual();
    let c = Client::builder()
        .app("notes", "1.0.0")
        .clock(clock)
        .store(SqliteStore::new(&path))
        .app_lifecycle(AppLifecycle::default())
        .destination(InMemoryDestination::new("m"))
        .build()
        .expect("client");
    hand.advance(Duration::from_secs(5));
    c.capture(Track::new("last_thing_before_the_crash")).expect("track");
    c.persisted(FLUSH).expect("persisted");
    std::process::abort();
}

#[test]
fn a_session_left_open_by_a_crash_ends_at_its_last_seen_time_on_the_next_start() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "crash_helper", "--nocapture", "--test-threads=1"])
            .env("TRACKWAY_APP_CRASH_STORE", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("helper runs");
        assert!(!status.success(), "the helper aborts");

        // Ten minutes later, a new process.
        let (clock, _hand) = Clock::manual(Timestamp::from_unix_millis(T0 + 600_000));
        let dest = InMemoryDestination::new("m");
        let c = restart(&path, clock, dest.clone(), AppLifecycle::default());
        let got = received(&c, &dest);
        let ends = named(&got, "session_end");
        assert_eq!(ends.len(), 1, "{:#?}", got);
        assert_eq!(ends[0].event.timestamp.unix_millis(), T0 + 5_000, "at the last-seen time, not now");
        assert_eq!(ends[0].event.properties.get("duration").and_then(|v| v.as_f64()), Some(5.0));
        // The crashed run's own events may be delivered by this run too: look at this run's.
        let now = T0 + 600_000;
        let starts: Vec<_> =
            named(&got, "session_start").into_iter().filter(|r| r.event.timestamp.unix_millis() == now).collect();
        assert_eq!(starts.len(), 1);
        assert_ne!(starts[0].event.session_id, ends[0].event.session_id);
        assert!(
            named(&got, "installation").iter().all(|r| r.event.timestamp.unix_millis() == T0),
            "installed in the first run only"
        );
        // The crashed run's event is delivered by this one, with its own session.
        assert_eq!(named(&got, "last_thing_before_the_crash")[0].event.session_id, ends[0].event.session_id);
    });
}

fn restart(path: &Path, clock: Clock, dest: InMemoryDestination, lifecycle: AppLifecycle) -> Client {
    Client::builder()
        .app("notes", "1.0.0")
        .clock(clock)
        .store(SqliteStore::new(path))
        .app_lifecycle(lifecycle)
        .destination(dest)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .expect("client")
}

#[test]
fn installation_is_tracked_once_across_restarts() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let mut installs = 0;
        let mut anonymous_ids = Vec::new();
        for _ in 0..3 {
            let dest = InMemoryDestination::new("m");
            let c = restart(&path, Clock::system(), dest.clone(), AppLifecycle::default().manual_sessions());
            installs += named(&received(&c, &dest), "installation").len();
            anonymous_ids.push(c.current_identity().anonymous_id.expect("anonymous id"));
            c.shutdown(FLUSH).expect("shutdown");
        }
        assert_eq!(installs, 1);
        assert!(anonymous_ids.windows(2).all(|w| w[0] == w[1]), "the anonymous id persists: {anonymous_ids:?}");
        let id = &anonymous_ids[0];
        assert_eq!(id, &id.to_lowercase());
        assert!(uuid::Uuid::parse_str(id).is_ok());
    });
}

#[test]
fn anonymize_ends_the_session_moves_the_push_token_and_starts_over_as_a_new_user() {
    watchdog(LIMIT, || {
        let (c, dest, hand) = app_client();
        c.capture(Identify::new().id("registered", "jane@example.com").property("plan", "pro")).expect("identify");
        c.track_push_token(PushToken::fcm("tok-1")).expect("token").expect("tracked");
        let before = c.current_identity();
        let old_session = c.current_session();
        c.capture(Track::new("signed_out")).expect("track");
        hand.advance(Duration::from_secs(30));
        c.anonymize(Anonymize::new()).expect("anonymize");
        let after = c.current_identity();
        c.capture(Track::new("browsing")).expect("track");

        assert_ne!(after.anonymous_id, before.anonymous_id);
        assert!(after.ids.is_empty() && after.user_id.is_none());
        assert_ne!(c.current_session(), old_session);

        let got = received(&c, &dest);
        assert_eq!(
            names(&got),
            [
                "installation",
                "session_start",
                "", // identify
                "notification_state",
                "signed_out",
                "session_end",
                "notification_state",
                "installation",
                "session_start",
                "notification_state",
                "browsing"
            ]
        );
        let old_user = |r: &Received| r.event.identity.user_id.as_deref() == Some("jane@example.com");
        // Queued before: the old identity, whatever happened after.
        assert!(got[2..7].iter().all(old_user), "{got:#?}");
        assert!(got[7..].iter().all(|r| r.event.identity.anonymous_id == after.anonymous_id && !old_user(r)));
        let end = &got[5].event;
        assert_eq!(end.session_id, old_session);
        assert_eq!(end.properties.get("duration").and_then(|v| v.as_f64()), Some(30.0));
        let invalidated = &got[6].event.properties;
        assert_eq!(invalidated.get("valid").and_then(|v| v.as_bool()), Some(false));
        assert_eq!(invalidated.get("description").and_then(|v| v.as_str()), Some("Invalidated"));
        assert_eq!(invalidated.get("push_notification_token").and_then(|v| v.as_str()), Some("tok-1"));
        let moved = &got[9].event.properties;
        assert_eq!(moved.get("valid").and_then(|v| v.as_bool()), Some(true));
        assert_eq!(moved.get("platform").and_then(|v| v.as_str()), Some("android"));
        assert_eq!(got[8].event.session_id, c.current_session());
    });
}

#[test]
fn anonymize_can_switch_app_events_to_other_destinations() {
    watchdog(LIMIT, || {
        let (a, b) = (InMemoryDestination::new("project-a"), InMemoryDestination::new("project-b"));
        let c = app_builder(Clock::system()).destination(a.clone()).destination(b.clone()).build().expect("client");
        assert_eq!(c.anonymize(Anonymize::new().destinations(["nope"])), Err(Error::UnknownDestination("nope".into())));
        c.anonymize(Anonymize::new().destinations(["project-b"])).expect("anonymize");
        c.capture(Track::new("app_event")).expect("track");
        c.track("server-user", "server_event", props! {}).expect("server mode");
        c.flush(FLUSH).expect("flush");
        assert_eq!(names(&a.received()), ["server_event"]);
        assert_eq!(names(&b.received()), ["app_event", "server_event"]);
    });
}

#[test]
fn defaults_sit_beneath_event_properties_and_trackway_fields_win_over_both() {
    watchdog(LIMIT, || {
        let (clock, _hand) = manual();
        let dest = InMemoryDestination::new("m");
        let c = app_builder(clock)
            .default_properties(props! { "plan" => "free", "source" => "app", "duration" => -1, "currency" => "XXX" })
            .destination(dest.clone())
            .build()
            .expect("client");
        assert_eq!(c.default_properties().get("source").and_then(|v| v.as_str()), Some("app"));
        c.capture(Track::new("upgrade").property("plan", "pro")).expect("track");
        c.pause_worker();
        c.capture(Track::new("queued_before_the_change")).expect("track");
        c.set_default_properties(props! { "source" => "settings" }).expect("set");
        c.resume_worker();
        c.capture(Screen::new("Settings")).expect("screen");
        c.session_start().expect("start");
        c.session_end().expect("end");
        c.track_payment(Payment::new(4.99, "EUR").product_id("pro")).expect("payment");
        c.track_push_token(PushToken::fcm("tok")).expect("token");
        c.track("server-user", "server_event", props! { "source" => "api" }).expect("server mode");
        assert_eq!(
            c.set_default_properties(props! { "x" => f64::NAN }).unwrap_err().to_string(),
            "property `x` is NaN; only finite numbers can be sent",
        );

        let got = received(&c, &dest);
        let prop = |name: &str, key: &str| {
            named(&got, name)[0].event.properties.get(key).map(|v| serde_json::to_string(v).expect("json"))
        };
        assert_eq!(prop("upgrade", "plan").as_deref(), Some(r#""pro""#), "the event wins over defaults");
        assert_eq!(prop("upgrade", "source").as_deref(), Some(r#""app""#));
        assert_eq!(prop("queued_before_the_change", "source").as_deref(), Some(r#""app""#), "copied at enqueue");
        assert_eq!(prop("Settings", "source").as_deref(), Some(r#""settings""#), "replaced, not merged");
        assert_eq!(prop("Settings", "plan"), None);
        let got_end = named(&got, "session_end")[0];
        assert_eq!(
            got_end.event.properties.get("duration").and_then(|v| v.as_f64()),
            Some(0.0),
            "trackway's field wins"
        );
        assert_eq!(prop("payment", "currency").as_deref(), Some(r#""EUR""#));
        assert_eq!(prop("payment", "brutto").as_deref(), Some("4.99"));
        assert_eq!(prop("notification_state", "source"), None, "push-token events take no defaults");
        assert_eq!(prop("server_event", "source").as_deref(), Some(r#""api""#));
    });
}

#[test]
fn set_default_properties_survive_a_restart_unless_the_builder_sets_some() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let build = |defaults: Option<trackway::Properties>| {
            let b = Client::builder()
                .app_mode()
                .app("notes", "1")
                .store(SqliteStore::new(&path))
                .destination(InMemoryDestination::new("m"));
            match defaults {
                Some(d) => b.default_properties(d),
                None => b,
            }
            .build()
            .expect("client")
        };
        let c = build(None);
        c.set_default_properties(props! { "theme" => "dark" }).expect("set");
        c.shutdown(FLUSH).expect("shutdown");
        let c = build(None);
        assert_eq!(c.default_properties().get("theme").and_then(|v| v.as_str()), Some("dark"));
        c.shutdown(FLUSH).expect("shutdown");
        let c = build(Some(props! { "theme" => "light" }));
        assert_eq!(c.default_properties().get("theme").and_then(|v| v.as_str()), Some("light"));
    });
}

#[test]
fn push_tokens_follow_their_frequency() {
    watchdog(LIMIT, || {
        // On change (the default): the same token again is skipped; a new token, a permission
        // change or `force` is tracked.
        let (clock, hand) = manual();
        let dest = InMemoryDestination::new("m");
        let c = app_builder(clock).destination(dest.clone()).build().expect("client");
        assert!(c.track_push_token(PushToken::fcm("a")).expect("first").is_some());
        assert!(c.track_push_token(PushToken::fcm("a")).expect("same").is_none());
        hand.advance(Duration::from_secs(3 * 86_400));
        assert!(c.track_push_token(PushToken::fcm("a")).expect("days later").is_none());
        assert!(c.track_push_token(PushToken::fcm("b")).expect("new token").is_some());
        assert!(c.track_push_token(PushToken::fcm("b").permission_granted(false)).expect("permission").is_some());
        assert!(c.track_push_token(PushToken::fcm("b").permission_granted(false).force()).expect("forced").is_some());
        assert_eq!(c.track_push_token(PushToken::hms(" ")), Err(Error::EmptyPushToken));
        assert_eq!(named(&received(&c, &dest), "notification_state").len(), 4);

        // Daily: once per UTC day, also when the app comes back to the foreground.
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_006_400_000)); // 00:00 UTC
        let dest = InMemoryDestination::new("m");
        let c = app_builder(clock)
            .app_lifecycle(AppLifecycle::default().installation(false).push_token_frequency(TokenFrequency::Daily))
            .destination(dest.clone())
            .build()
            .expect("client");
        assert!(c.track_push_token(PushToken::fcm("a")).expect("first").is_some());
        hand.advance(Duration::from_secs(23 * 3600));
        assert!(c.track_push_token(PushToken::fcm("a")).expect("same day").is_none());
        c.app_foreground().expect("foreground");
        hand.advance(Duration::from_secs(3600));
        c.app_foreground().expect("next day, in front");
        assert!(c.track_push_token(PushToken::fcm("a")).expect("tracked by the foreground").is_none());
        let days: Vec<i64> = named(&received(&c, &dest), "notification_state")
            .iter()
            .map(|r| r.event.timestamp.unix_millis().div_euclid(86_400_000))
            .collect();
        assert_eq!(days.len(), 2, "{days:?}");
        assert_eq!(days[1], days[0] + 1);
    });
}

#[test]
fn every_launch_tracks_an_unchanged_token_once_per_process() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let lifecycle = AppLifecycle::default().installation(false).push_token_frequency(TokenFrequency::EveryLaunch);
        let mut per_launch = Vec::new();
        for _ in 0..3 {
            let dest = InMemoryDestination::new("m");
            let c = restart(&path, Clock::system(), dest.clone(), lifecycle.clone());
            // The app hands the token over at each launch (the stored one is re-checked at the
            // start too): one event per launch either way.
            c.track_push_token(PushToken::fcm("a")).expect("launch");
            c.track_push_token(PushToken::fcm("a")).expect("again");
            c.app_foreground().expect("foreground");
            per_launch.push(named(&received(&c, &dest), "notification_state").len());
            c.shutdown(FLUSH).expect("shutdown");
        }
        assert_eq!(per_launch, [1, 1, 1]);
    });
}

#[test]
fn opting_out_persists_holds_what_is_queued_and_purges_on_request() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let dest = InMemoryDestination::new("m");
        let c = restart(&path, Clock::system(), dest.clone(), AppLifecycle::server());
        c.pause_worker();
        for i in 0..3 {
            c.capture(Track::new("before_opt_out").property("i", i)).expect("track");
        }
        c.set_enabled(false).expect("opt out");
        c.resume_worker();
        assert_eq!(c.capture(Track::new("after")), Err(Error::Disabled));
        assert_eq!(c.track("server-user", "after", props! {}), Err(Error::Disabled));
        assert_eq!(c.app_foreground(), Err(Error::Disabled));
        c.flush(FLUSH).expect("a flush answers at once while tracking is off");
        assert!(dest.received().is_empty(), "nothing is sent after opting out");
        assert_eq!(c.stats().dropped.disabled, 2, "the two refused events");
        c.shutdown(FLUSH).expect("shutdown");

        // The choice survives a restart, and so do the held events, until purged.
        let dest = InMemoryDestination::new("m");
        let c = restart(&path, Clock::system(), dest.clone(), AppLifecycle::default());
        assert!(!c.is_enabled());
        assert_eq!(c.current_session(), None, "no session is started while opted out");
        assert_eq!(c.purge_queued().expect("purge"), 3);
        assert_eq!(c.stats().dropped.purged, 3);
        assert_eq!(c.stats().destination("m").expect("m").pending, 0);
        c.set_enabled(true).expect("opt in");
        c.capture(Track::new("after_opt_in")).expect("track");
        // Back on: what this start skipped happens now, then the new event.
        assert_eq!(names(&received(&c, &dest)), ["installation", "session_start", "after_opt_in"]);
    });
}

#[test]
fn erase_user_removes_only_that_users_queued_events_and_dead_letters() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = app_builder(Clock::system()).destination(dest.clone()).build().expect("client");
        dest.fail_next(400, 1);
        c.track("alice", "rejected", props! {}).expect("track");
        c.flush(FLUSH).expect("flush");
        assert_eq!(c.dead_letters(10).expect("letters").len(), 1);
        c.pause_worker();
        c.track("alice", "a1", props! {}).expect("track");
        c.track("bob", "b1", props! {}).expect("track");
        c.capture(Identify::new().id("registered", "alice")).expect("identify");
        c.capture(Track::new("a2")).expect("track");
        c.track("bob", "b2", props! {}).expect("track");
        c.resume_worker();
        // alice's server-mode event, her app-mode identify and event, and her dead letter.
        assert_eq!(c.erase_user("alice").expect("erase"), 4);
        assert!(c.dead_letters(10).expect("letters").is_empty());
        assert_eq!(names(&received(&c, &dest)), ["b1", "b2"]);
    });
}

#[test]
fn a_server_mode_call_leaves_the_app_state_alone() {
    watchdog(LIMIT, || {
        let (c, dest, _hand) = app_client();
        c.capture(Identify::new().id("registered", "jane")).expect("identify");
        let identity = c.current_identity();
        let session = c.current_session();
        c.track("bob", "server_event", props! {}).expect("track");
        c.identify("bob", props! { "plan" => "team" }).expect("identify");
        c.capture(Identify::new().user("carol").id("registered", "carol")).expect("server identify");
        assert_eq!(c.current_identity(), identity);
        assert_eq!(c.current_session(), session);
        let got = received(&c, &dest);
        let server = named(&got, "server_event")[0];
        assert_eq!(server.event.identity.user_id.as_deref(), Some("bob"));
        assert_eq!(server.event.session_id, None, "server-mode events are not in the app's session");
        assert_eq!(server.event.identity.anonymous_id, None);
    });
}

#[test]
fn manual_sessions_start_and_end_on_request() {
    watchdog(LIMIT, || {
        let (clock, hand) = manual();
        let dest = InMemoryDestination::new("m");
        let c = app_builder(clock).destination(dest.clone()).build().expect("client");
        assert_eq!(c.session_end(), Err(Error::NoSession));
        assert_eq!(c.current_session(), None);
        c.session_start().expect("start");
        let first = c.current_session().expect("open");
        hand.advance(Duration::from_millis(1500));
        c.session_start().expect("a second start closes the first");
        hand.advance(Duration::from_secs(2));
        c.capture(Track::new("inside")).expect("track");
        c.session_end().expect("end");
        c.capture(Track::new("outside")).expect("track");
        let got = received(&c, &dest);
        assert_eq!(names(&got), ["session_start", "session_end", "session_start", "inside", "session_end", "outside"]);
        assert_eq!(got[1].event.session_id.as_deref(), Some(first.as_str()));
        assert_eq!(got[1].event.properties.get("duration").and_then(|v| v.as_f64()), Some(1.5));
        assert_eq!(got[3].event.session_id, got[2].event.session_id);
        assert_eq!(got[5].event.session_id, None);

        let auto = app_builder(Clock::system())
            .app_lifecycle(AppLifecycle::default())
            .destination(InMemoryDestination::new("m"))
            .build()
            .expect("client");
        assert_eq!(auto.session_start(), Err(Error::AutomaticSessions));
    });
}

#[test]
fn payments_are_validated_and_sent_with_bloomreach_field_names() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = app_builder(Clock::system()).destination(dest.clone()).build().expect("client");
        assert!(matches!(c.track_payment(Payment::new(f64::INFINITY, "EUR")), Err(Error::InvalidPayment(_))));
        c.track_payment(
            Payment::new(0.99, "EUR")
                .payment_system("Virtual")
                .product_id("android.test.purchased")
                .product_title("Silver sword")
                .receipt("r-1"),
        )
        .expect("payment");
        let got = received(&c, &dest);
        assert_eq!(
            serde_json::to_value(&got[0].event.properties).expect("json"),
            serde_json::json!({
                "brutto": 0.99, "currency": "EUR", "payment_system": "Virtual",
                "item_id": "android.test.purchased", "product_title": "Silver sword", "receipt": "r-1"
            })
        );
        assert_eq!(got[0].event.name.as_deref(), Some("payment"));
    });
}

#[test]
fn lifecycle_events_dropped_by_before_send_still_move_the_app_state() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = app_builder(Clock::system())
            .before_send(|e| !e.name.as_deref().is_some_and(|n| n.starts_with("session_")))
            .destination(dest.clone())
            .build()
            .expect("client");
        c.session_start().expect("start");
        assert!(c.current_session().is_some(), "the session started though its event was dropped");
        c.capture(Track::new("inside")).expect("track");
        c.session_end().expect("end");
        assert_eq!(c.current_session(), None);
        let got = received(&c, &dest);
        assert_eq!(names(&got), ["inside"]);
        assert!(got[0].event.session_id.is_some());
        assert_eq!(c.stats().dropped.filtered, 2);
    });
}

#[test]
fn a_manual_session_left_open_by_an_earlier_run_ends_at_its_last_seen_time() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let (clock, hand) = manual();
        let dest = InMemoryDestination::new("m");
        let c = restart(&path, clock, dest.clone(), AppLifecycle::server());
        c.session_start().expect("start");
        hand.advance(Duration::from_secs(7));
        c.capture(Track::new("last")).expect("track");
        c.shutdown(FLUSH).expect("shutdown");

        // An hour later: the open session is ended where it was last seen, not now.
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(T0 + 3_600_000));
        let dest = InMemoryDestination::new("m");
        let c = restart(&path, clock, dest.clone(), AppLifecycle::server());
        assert_eq!(c.current_session(), None);
        c.session_start().expect("start");
        let got = received(&c, &dest);
        let end = named(&got, "session_end")[0];
        assert_eq!(end.event.timestamp.unix_millis(), T0 + 7_000);
        assert_eq!(end.event.properties.get("duration").and_then(|v| v.as_f64()), Some(7.0));

        // A session idle past the timeout and closed by the next session_start: the same.
        hand.advance(Duration::from_secs(600));
        c.session_start().expect("start again");
        let got = received(&c, &dest);
        let ends = named(&got, "session_end");
        assert_eq!(ends[1].event.timestamp.unix_millis(), T0 + 3_600_000);
        assert_eq!(ends[1].event.properties.get("duration").and_then(|v| v.as_f64()), Some(0.0));
    });
}

#[test]
fn a_session_left_in_the_background_ends_when_the_timeout_passes_without_a_return() {
    watchdog(LIMIT, || {
        let (c, dest, hand) = app_client();
        let first = c.current_session().expect("started");
        hand.advance(Duration::from_secs(3));
        c.app_background().expect("background");
        hand.advance(Duration::from_secs(59));
        // Wait until the timer has looked at the clock since it read 59 s, so a timer that ended
        // the session too early would have done so by now.
        let seen = c.session_timer_checks();
        let looked = || c.session_timer_checks() >= seen + 2 || c.current_session().is_none();
        assert!(support::wait_until(Duration::from_secs(5), looked), "the timer thread stopped checking");
        assert_eq!(c.current_session().as_deref(), Some(first.as_str()), "not yet timed out");
        hand.advance(Duration::from_secs(1));
        // The timer thread ends it by itself: no foreground, no restart.
        assert!(support::wait_until(Duration::from_secs(5), || c.current_session().is_none()));
        let got = received(&c, &dest);
        let end = named(&got, "session_end")[0];
        assert_eq!(end.event.session_id.as_deref(), Some(first.as_str()));
        assert_eq!(end.event.timestamp.unix_millis(), T0 + 3_000, "at the time the app left");
        assert_eq!(end.event.properties.get("duration").and_then(|v| v.as_f64()), Some(3.0));
        // Coming back starts a new session; nothing is ended twice.
        c.app_foreground().expect("foreground");
        let got = received(&c, &dest);
        assert_eq!(named(&got, "session_end").len(), 1);
        assert_eq!(named(&got, "session_start").len(), 2);
    });
}
