//! The call API: validation before anything is queued, never blocking, shutdown, hooks, imports.

mod support;

use std::time::{Duration, Instant};

use support::{fast_builder, json, watchdog};
use trackway::destination::{Destination, InMemoryDestination, LimitError};
use trackway::{
    BuildError, Client, Clock, Error, Event, EventKind, FlushError, HttpOptions, Identify, MessageId, Page,
    PersistError, Screen, ShutdownError, Timestamp, Track, props,
};
use trackway_collector::Collector;

const LIMIT: Duration = Duration::from_secs(30);

fn memory_client(dest: &InMemoryDestination) -> trackway::Client {
    fast_builder().destination(dest.clone()).build().expect("client")
}

/// A client in app mode: messages that name no user are the app's current user's.
fn app_client(dest: &InMemoryDestination) -> trackway::Client {
    fast_builder().app_mode().destination(dest.clone()).build().expect("client")
}

#[test]
fn every_documented_validation_error_is_returned_before_queueing() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        assert_eq!(c.track("", "e", props! {}), Err(Error::EmptyIdentifier));
        assert_eq!(c.track("  ", "e", props! {}), Err(Error::EmptyIdentifier));
        assert_eq!(c.track("u", "", props! {}), Err(Error::EmptyEventName));
        assert_eq!(c.track("u", "", props! {}).unwrap_err().to_string(), "Event name cannot be empty");
        assert_eq!(c.page("u", Page::new("")), Err(Error::EmptyUrl));
        assert_eq!(c.screen("u", "", props! {}), Err(Error::EmptyScreenName));
        let app = app_client(&InMemoryDestination::new("app"));
        assert_eq!(app.capture(Identify::new()), Err(Error::NoIds));
        assert_eq!(app.identify_customer(Identify::new().id("registered", "")), Err(Error::EmptyIdentifier));
        let long = "x".repeat(trackway::MAX_NAME_BYTES + 1);
        assert!(matches!(c.track("u", &long, props! {}), Err(Error::TooLong { what: "event name", .. })));
        assert!(matches!(c.track(&long, "e", props! {}), Err(Error::TooLong { what: "identifier", .. })));
        let err = c.track("u", "e", props! { "nested" => props! { "" => 1 } }).unwrap_err();
        assert!(matches!(err, Error::InvalidProperty(ref p) if p.path == "nested."), "{err}");
        assert_eq!(c.stats().enqueued, 0, "nothing invalid is queued");
        c.flush(Duration::from_secs(5)).expect("flush");
        assert!(dest.received().is_empty());
    });
}

#[test]
fn nan_and_infinite_properties_are_errors_with_their_path() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        let err = c.track("u", "e", props! { "amount" => f64::NAN }).unwrap_err();
        assert_eq!(err.to_string(), "property `amount` is NaN; only finite numbers can be sent");
        let err = c
            .capture(Track::new("e").user("u").property("items", vec![props! { "price" => f64::INFINITY }]))
            .unwrap_err();
        assert!(err.to_string().contains("items[0].price"), "{err}");
        #[derive(serde::Serialize)]
        struct Order {
            total: f64,
        }
        let err = trackway::Properties::from_serialize(&Order { total: f64::NAN }).unwrap_err();
        assert_eq!(err.path, "total");
        assert_eq!(c.stats().enqueued, 0);
    });
}

#[derive(Debug)]
struct Tiny;
impl Destination for Tiny {
    fn name(&self) -> &str {
        "tiny"
    }
    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        let len = event.name.as_deref().map_or(0, str::len);
        if len > 5 {
            return Err(LimitError::new(format!("event name is {len} bytes; the limit is 5")));
        }
        Ok(())
    }
    fn encode(
        &self,
        events: &[trackway::destination::EventRecord],
        _: &trackway::destination::DestinationState,
        _: Timestamp,
    ) -> trackway::destination::Encoded {
        let mut e = trackway::destination::Encoded::default();
        e.rejected = (0..events.len()).map(|i| (i, "tiny never sends".to_owned())).collect();
        e
    }
}

#[test]
fn a_limit_of_one_destination_fails_the_whole_call_and_names_it() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = fast_builder().destination(dest.clone()).destination(Tiny).build().expect("client");
        let err = c.track("u", "toolong", props! {}).unwrap_err();
        assert_eq!(
            err,
            Error::DestinationLimit {
                destination: "tiny".into(),
                message: "event name is 7 bytes; the limit is 5".into()
            }
        );
        assert_eq!(err.to_string(), "destination `tiny`: event name is 7 bytes; the limit is 5");
        c.flush(Duration::from_secs(5)).expect("flush");
        assert!(dest.received().is_empty(), "not queued for the other destination either");
    });
}

#[test]
fn events_are_routed_only_to_destinations_that_take_their_kind() {
    watchdog(LIMIT, || {
        let tracks = InMemoryDestination::new("tracks").kinds(&[EventKind::Track]);
        let all = InMemoryDestination::new("all");
        let c = fast_builder().destination(tracks.clone()).destination(all.clone()).build().expect("client");
        c.track("u", "e", props! {}).expect("track");
        c.page("u", Page::new("/p")).expect("page");
        c.flush(Duration::from_secs(5)).expect("flush");
        assert_eq!(tracks.received().len(), 1);
        assert_eq!(all.received().len(), 2);
        let only_tracks = fast_builder()
            .destination(InMemoryDestination::new("t").kinds(&[EventKind::Track]))
            .build()
            .expect("client");
        assert_eq!(only_tracks.page("u", Page::new("/p")), Err(Error::NoRoute { kind: "page" }));
    });
}

#[test]
fn with_the_worker_paused_queue_full_is_exactly_the_overflow_and_no_call_blocks() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let capacity = 100;
        let c = fast_builder().app_mode().queue_capacity(capacity).destination(dest.clone()).build().expect("client");
        c.pause_worker();
        let calls = 250;
        let mut slowest = Duration::ZERO;
        let mut full = 0;
        for i in 0..calls {
            let t = Instant::now();
            match c.track("u", "e", props! { "i" => i }) {
                Ok(_) => {}
                Err(Error::QueueFull) => full += 1,
                Err(e) => panic!("unexpected {e}"),
            }
            slowest = slowest.max(t.elapsed());
        }
        let stats = c.stats();
        assert_eq!(stats.dropped.queue_full, (calls - capacity) as u64);
        assert_eq!(full, calls - capacity);
        assert_eq!(stats.enqueued, capacity as u64);
        // Not a performance assertion: a blocked call would wait for the worker, i.e. forever.
        assert!(slowest < Duration::from_secs(1), "a call blocked for {slowest:?}");
        // State changes use reserved capacity: identify still gets in.
        c.identify_customer(Identify::new().id("registered", "jane")).expect("identify uses reserved slots");
        c.resume_worker();
        c.flush(Duration::from_secs(5)).expect("flush");
        assert_eq!(dest.received().len(), capacity + 1);
    });
}

#[test]
fn a_burst_past_a_tiny_ring_is_absorbed_by_the_spill_in_order() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        // 8 slots: a tight loop of 5 000 fills the ring at once; the spill takes the rest
        // (about 1.5 MB, within the 16 MiB byte budget) while the worker drains.
        let c = fast_builder().queue_capacity(8).destination(dest.clone()).build().expect("client");
        let n = 5_000;
        for i in 0..n {
            c.track("u", "e", props! { "i" => i }).expect("absorbed, not refused");
        }
        c.flush(Duration::from_secs(20)).expect("flush");
        let stats = c.stats();
        assert_eq!((stats.dropped.queue_full, stats.enqueued), (0, n as u64));
        let order: Vec<f64> =
            dest.received().iter().map(|r| r.event.properties.get("i").and_then(|v| v.as_f64()).expect("i")).collect();
        assert_eq!(order, (0..n).map(f64::from).collect::<Vec<_>>(), "one caller's events in its order");
    });
}

#[test]
fn async_flush_inside_a_current_thread_runtime_returns() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let c = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
            c.track("u", "e", props! {}).expect("track");
            let report = c.flush_async(Duration::from_secs(5)).await.expect("flush");
            assert_eq!(report.destination("a").expect("a").delivered, 1);
            c.persisted_async(Duration::from_secs(5)).await.expect("persisted");
            c.shutdown_async(Duration::from_secs(5)).await.expect("shutdown");
        });
    });
}

/// A client whose worker is paused with the ring and its reserved slots full: the next control
/// request has to wait for room until the worker resumes.
fn client_with_a_full_queue(dest: &InMemoryDestination) -> trackway::Client {
    let capacity = 16;
    let reserved = 8;
    let c = fast_builder()
        .queue_capacity(capacity)
        .reserved_capacity(reserved)
        .destination(dest.clone())
        .build()
        .expect("client");
    c.pause_worker();
    for i in 0..capacity {
        c.track("u", "e", props! { "i" => i }).expect("room in the ring");
    }
    assert_eq!(c.track("u", "e", props! {}), Err(Error::QueueFull), "the ring is full");
    for i in 0..reserved {
        c.checkpoint(&format!("k{i}"), "v").expect("room in the reserved slots");
    }
    c
}

/// Runs `call` on a client with a full queue inside a current-thread runtime while a timer task
/// ticks every 5 ms; the worker resumes after 300 ms. Returns how often the timer ticked while
/// the call waited, and how long it waited.
fn ticks_while_waiting<F, Fut>(name: &str, call: F) -> (u64, Duration)
where
    F: FnOnce(trackway::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dest = InMemoryDestination::new("m");
    let c = client_with_a_full_queue(&dest);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    rt.block_on(async {
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Let the ticker start before the call can hog the thread.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let resumer = {
            let c = c.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                c.resume_worker();
            })
        };
        let before = ticks.load(Ordering::Relaxed);
        let started = Instant::now();
        call(c).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let waited = started.elapsed();
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        resumer.join().expect("resumer");
        (during, waited)
    })
}

#[test]
fn async_calls_wait_for_room_without_blocking_a_current_thread_runtime() {
    fn send<T: Send>(t: T) -> T {
        t
    }
    watchdog(Duration::from_secs(60), || {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let calls: Vec<(&str, u64, Duration)> = vec![
            {
                let (n, w) = ticks_while_waiting("flush_async", |c| async move {
                    send(c.flush_async(Duration::from_secs(10))).await.map(drop).map_err(|e| err(&e))
                });
                ("flush_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("persisted_async", |c| async move {
                    send(c.persisted_async(Duration::from_secs(10))).await.map_err(|e| err(&e))
                });
                ("persisted_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("shutdown_async", |c| async move {
                    send(c.shutdown_async(Duration::from_secs(10))).await.map(drop).map_err(|e| err(&e))
                });
                ("shutdown_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("dead_letters_async", |c| async move {
                    send(c.dead_letters_async(10)).await.map(drop).map_err(|e| err(&e))
                });
                ("dead_letters_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("requeue_dead_letters_async", |c| async move {
                    send(c.requeue_dead_letters_async(None, 10)).await.map(drop).map_err(|e| err(&e))
                });
                ("requeue_dead_letters_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("purge_queued_async", |c| async move {
                    send(c.purge_queued_async()).await.map(drop).map_err(|e| err(&e))
                });
                ("purge_queued_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("erase_user_async", |c| async move {
                    send(c.erase_user_async("u")).await.map(drop).map_err(|e| err(&e))
                });
                ("erase_user_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("waiting.capture_async", |c| async move {
                    let waiting = c.waiting(Duration::from_secs(10));
                    send(waiting.capture_async(Track::new("e").user("u"))).await.map(drop).map_err(|e| err(&e))?;
                    assert_eq!(c.stats().dropped.queue_full, 1, "only the plain call's refusal is counted");
                    Ok(())
                });
                ("waiting.capture_async", n, w)
            },
            {
                let (n, w) = ticks_while_waiting("checkpoint_async", |c| async move {
                    send(c.checkpoint_async("import", "42")).await.map_err(|e| err(&e))?;
                    assert_eq!(c.checkpoint_value("import").as_deref(), Some(&b"42"[..]));
                    Ok(())
                });
                ("checkpoint_async", n, w)
            },
        ];
        for (name, ticks, waited) in calls {
            // The call had to wait for the worker to resume (300 ms after the timer started)...
            assert!(waited >= Duration::from_millis(200), "{name} did not wait for room: {waited:?}");
            // ...and the timer kept ticking meanwhile (every 5 ms; a blocked thread gives 0).
            assert!(ticks >= 10, "{name} blocked the runtime: the timer ticked {ticks} times in {waited:?}");
        }
    });
}

#[test]
fn blocking_flush_inside_a_current_thread_runtime_does_not_deadlock() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let c = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
            c.track("u", "e", props! {}).expect("track");
            c.flush(Duration::from_secs(5)).expect("the worker has its own runtime");
        });
    });
}

#[test]
fn shutdown_twice_says_already_shut_down_and_later_calls_are_counted() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        c.track("u", "e", props! {}).expect("track");
        let report = c.shutdown(Duration::from_secs(5)).expect("first shutdown delivers");
        assert_eq!(report.destination("m").expect("m").delivered, 1);
        let clone = c.clone();
        assert_eq!(clone.shutdown(Duration::from_secs(1)).unwrap_err(), ShutdownError::AlreadyShutdown);
        assert_eq!(c.track("u", "e", props! {}), Err(Error::ShutDown));
        assert_eq!(c.flush(Duration::from_secs(1)).unwrap_err(), FlushError::AlreadyShutdown);
        assert_eq!(c.stats().dropped.shutdown, 1);
        assert_eq!(dest.received().len(), 1);
    });
}

#[test]
fn dropping_the_last_clone_delivers_what_is_queued() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let c = fast_builder()
            .batch_interval(Duration::from_secs(60))
            .shutdown_timeout(Duration::from_secs(5))
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        for _ in 0..3 {
            c.track("u", "e", props! {}).expect("track");
        }
        let clone = c.clone();
        drop(c);
        assert_eq!(collector.request_count(), 0, "a clone is still alive");
        drop(clone);
        assert_eq!(support::delivered_ids(&collector.requests()).len(), 3);
    });
}

#[test]
fn import_keeps_the_callers_message_id_and_timestamp() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        let id: MessageId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().expect("uuid");
        let at: Timestamp = "2023-07-01T12:00:00.000Z".parse().expect("ts");
        assert_eq!(c.import(Track::new("old").user("u"), id, at).expect("import"), id);
        c.flush(Duration::from_secs(5)).expect("flush");
        let got = &dest.received()[0].event;
        assert_eq!((got.id, got.timestamp, got.imported), (id, at, true));
    });
}

#[test]
fn before_send_may_change_or_drop_events() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = fast_builder()
            .before_send(|e| {
                e.properties.remove("password");
                e.name.as_deref() != Some("internal")
            })
            .destination(dest.clone())
            .build()
            .expect("client");
        c.track("u", "login", props! { "password" => "hunter2", "ok" => true }).expect("track");
        c.track("u", "internal", props! {}).expect("dropped by the hook is not an error");
        c.flush(Duration::from_secs(5)).expect("flush");
        let received = dest.received();
        assert_eq!(received.len(), 1);
        assert!(received[0].event.properties.get("password").is_none());
        assert_eq!(c.stats().dropped.filtered, 1);
    });
}

#[test]
fn app_mode_stamps_the_current_user_and_server_mode_leaves_it_alone() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = app_client(&dest);
        c.capture(Screen::new("Home")).expect("screen");
        let anon = c.current_identity().anonymous_id.expect("anonymous id created on first use");
        assert_eq!(anon, anon.to_lowercase());
        c.track("server-user", "e", props! {}).expect("server mode");
        assert_eq!(c.current_identity().user_id, None, "server mode does not touch app state");
        c.capture(Identify::new().id("registered", "jane@example.com")).expect("identify");
        c.capture(Track::new("after")).expect("track");
        c.flush(Duration::from_secs(5)).expect("flush");
        let r = dest.received();
        assert_eq!(r[0].event.identity.anonymous_id.as_deref(), Some(anon.as_str()));
        assert_eq!(r[0].event.identity.user_id, None);
        assert_eq!(r[1].event.identity.user_id.as_deref(), Some("server-user"));
        assert_eq!(r[1].event.identity.anonymous_id, None);
        assert_eq!(r[3].event.identity.user_id.as_deref(), Some("jane@example.com"));
        assert_eq!(r[3].event.identity.primary.as_deref(), Some("registered"));
        assert_eq!(r[3].event.identity.anonymous_id.as_deref(), Some(anon.as_str()));
    });
}

#[test]
fn without_app_mode_a_message_that_names_no_user_is_an_error_not_a_shared_anonymous_id() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        assert_eq!(c.capture(Track::new("checkout")), Err(Error::NoUser));
        assert_eq!(c.capture(Screen::new("Home")), Err(Error::NoUser));
        assert_eq!(c.identify_customer(Identify::new().id("registered", "jane")), Err(Error::NoUser));
        assert_eq!(c.track_payment(trackway::Payment::new(1.0, "EUR")), Err(Error::NoUser));
        let text = Error::NoUser.to_string();
        assert!(text.contains(".user(") && text.contains(".app_mode()"), "says what to do: {text}");
        assert_eq!(c.current_identity().user_id, None);
        // Server-mode calls are untouched.
        c.capture(Track::new("checkout").user("u1")).expect("names its user");
        c.identify("u1", props! { "plan" => "pro" }).expect("server-mode identify");
        c.flush(Duration::from_secs(5)).expect("flush");
        let r = dest.received();
        assert_eq!(r.len(), 2, "nothing without a user was queued");
        assert!(
            r.iter()
                .all(|e| e.event.identity.user_id.as_deref() == Some("u1") && e.event.identity.anonymous_id.is_none())
        );
    });
}

#[test]
fn an_app_mode_client_takes_server_mode_calls_and_identify_customer_is_the_app_identify() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = app_client(&dest);
        c.identify("server-user", props! { "plan" => "team" }).expect("server-mode identify on an app client");
        assert_eq!(c.current_identity().user_id, None, "the server-mode identify leaves the app's user alone");
        assert_eq!(
            c.identify_customer(Identify::new().user("someone")),
            Err(Error::UserInAppIdentify),
            "a named user is a server-mode identify"
        );
        c.identify_customer(Identify::new().id("registered", "jane@example.com")).expect("app identify");
        assert_eq!(c.current_identity().user_id.as_deref(), Some("jane@example.com"));
        c.capture(Track::new("after")).expect("app-mode track");
        c.flush(Duration::from_secs(5)).expect("flush");
        let r = dest.received();
        assert_eq!(r[0].event.identity.user_id.as_deref(), Some("server-user"));
        assert_eq!(r[2].event.identity.user_id.as_deref(), Some("jane@example.com"));
    });
}

#[test]
fn server_mode_names_an_anonymous_visitor_without_touching_app_state() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        let app_anon = c.current_identity().anonymous_id;
        c.capture(Track::new("viewed").anonymous_id("visitor-42")).expect("anonymous visitor");
        c.capture(Track::new("signed_in").user("u1").anonymous_id("visitor-42")).expect("both");
        assert_eq!(c.capture(Track::new("e").anonymous_id(" ")), Err(Error::EmptyAnonymousId));
        assert_eq!(c.current_identity().anonymous_id, app_anon, "server mode leaves the app's anonymous id");
        c.flush(Duration::from_secs(5)).expect("flush");
        let r = dest.received();
        assert_eq!(r[0].event.identity.anonymous_id.as_deref(), Some("visitor-42"));
        assert_eq!(r[0].event.identity.user_id, None);
        assert_eq!(r[1].event.identity.user_id.as_deref(), Some("u1"));
        assert_eq!(r[1].event.identity.anonymous_id.as_deref(), Some("visitor-42"));
    });
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let http = HttpOptions::default()
        .header("authorization", "Bearer s3cr3t-token")
        .proxy("http://user:pr0xy-pass@127.0.0.1:1");
    let builder = fast_builder().destination_with(json("a", "http://127.0.0.1:1/e".into()), http.clone());
    let shown = format!("{http:?} {builder:?}");
    assert!(!shown.contains("s3cr3t-token") && !shown.contains("pr0xy-pass"), "{shown}");
    let bad = fast_builder().destination_with(
        json("a", "http://127.0.0.1:1/e".into()),
        HttpOptions::default().proxy("::not a url:pr0xy-pass"),
    );
    let e = bad.build().expect_err("an unparseable proxy URL is a build error");
    assert!(matches!(e, BuildError::Http { .. }), "{e:?}");
    assert!(!e.to_string().contains("pr0xy-pass"), "{e}");
    let client =
        fast_builder().destination_with(json("a", "http://127.0.0.1:1/e".into()), http).build().expect("client");
    assert!(!format!("{client:?}").contains("s3cr3t"));
}

#[test]
fn build_errors_say_what_to_fix() {
    assert_eq!(trackway::Client::builder().build().unwrap_err(), BuildError::NoDestination);
    let dup =
        fast_builder().destination(InMemoryDestination::new("x")).destination(InMemoryDestination::new("x")).build();
    assert_eq!(dup.unwrap_err(), BuildError::DuplicateDestination("x".into()));
    let bad_url = fast_builder().destination(json("j", "not a url".into())).build().unwrap_err();
    assert!(matches!(bad_url, BuildError::Destination { ref destination, .. } if destination == "j"), "{bad_url}");
    let zero = fast_builder().queue_capacity(0).destination(InMemoryDestination::new("x")).build().unwrap_err();
    assert!(matches!(zero, BuildError::InvalidSetting { setting: "queue_capacity", .. }));
}

#[test]
fn a_url_with_an_empty_port_is_refused_at_build_instead_of_dialing_port_80() {
    let err = fast_builder().destination(json("j", "http://127.0.0.1:/events".into())).build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "destination `j`: URL has an empty port after `127.0.0.1:`, which would dial port 80 (http's default): \
         write the port (`127.0.0.1:8080`) or remove the `:`"
    );
    let err = fast_builder().destination(json("j", "https://user:hunter2@[::1]:/e".into())).build().unwrap_err();
    assert!(err.to_string().contains("empty port after `[::1]:`") && !err.to_string().contains("hunter2"), "{err}");
    // A colon elsewhere is not a port.
    fast_builder().destination(json("j", "http://127.0.0.1:8080/a:b?c=d:".into())).build().expect("a port");
    #[cfg(feature = "umami")]
    {
        let umami = trackway::destination::Umami::new("6f2a9c1e-7b3d-4e8a-9f10-2c4d5e6f7a8b");
        let err = fast_builder().destination(umami.base_url("http://umami.local:")).build().unwrap_err();
        assert!(err.to_string().contains("base URL has an empty port after `umami.local:`"), "{err}");
    }
}

#[test]
fn events_older_than_max_event_age_expire_by_the_injected_clock() {
    watchdog(LIMIT, || {
        let down =
            Collector::builder().default_reply(trackway_collector::Reply::status(503)).start().expect("collector");
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_000_000_000));
        let c = fast_builder()
            .clock(clock)
            .max_event_age(Duration::from_secs(3600))
            .destination(json("a", down.url("/e")))
            .build()
            .expect("client");
        let id = c.track("u", "e", props! {}).expect("track");
        c.persisted(Duration::from_secs(5)).expect("persisted");
        // The batch interval runs on the manual clock too: nothing is sent until it moves.
        hand.advance(Duration::from_millis(20));
        assert!(support::wait_until(Duration::from_secs(5), || c
            .stats()
            .destination("a")
            .is_some_and(|a| a.failed_requests >= 1)));
        hand.advance(Duration::from_secs(2 * 3600));
        // Expiry is checked when the event is next sent. A retry in flight across the jump is
        // scheduled after it, by the manual clock: keep that clock moving so the retry comes.
        assert!(support::wait_until(Duration::from_secs(5), || {
            hand.advance(Duration::from_millis(5));
            c.stats().destination("a").is_some_and(|a| a.expired == 1)
        }));
        let letters = c.dead_letters(10).expect("dead letters");
        assert_eq!((letters[0].id, letters[0].reason), (id, trackway::store::DeadLetterReason::Expired));
        assert_eq!(c.stats().destination("a").expect("a").pending, 0);
    });
}

#[test]
fn a_context_swapped_by_before_send_is_the_one_delivered() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let c = fast_builder()
            .app("shop", "1.0.0")
            .before_send(|e| {
                if e.name.as_deref() == Some("beta") {
                    let mut ctx = (*e.context).clone();
                    ctx.app_version = Some("2.0.0-beta".into());
                    e.context = std::sync::Arc::new(ctx);
                }
                true
            })
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        c.track("u", "stable", props! {}).expect("track");
        c.track("u", "beta", props! {}).expect("track");
        c.flush(Duration::from_secs(5)).expect("flush");
        let body = collector.requests().iter().find_map(|r| r.json()).expect("a request");
        let versions: Vec<&str> = body
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["context"]["app_version"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(versions, ["1.0.0", "2.0.0-beta"]);
    });
}

#[test]
fn a_before_send_hook_may_itself_track_in_app_mode() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let inner: std::sync::Arc<std::sync::OnceLock<trackway::Client>> = std::sync::Arc::default();
        let hook_client = inner.clone();
        let c = fast_builder()
            .app_mode()
            .before_send(move |e| {
                // An audit event about the event: the hook tracks, in app mode, from inside a call.
                if e.name.as_deref() == Some("outer")
                    && let Some(client) = hook_client.get()
                {
                    client.capture(Track::new("audit")).expect("tracking from a hook");
                }
                true
            })
            .destination(dest.clone())
            .build()
            .expect("client");
        let _ = inner.set(c.clone());
        c.capture(Track::new("outer")).expect("no deadlock");
        c.flush(Duration::from_secs(5)).expect("flush");
        let names: Vec<String> =
            dest.received().iter().filter_map(|r| r.event.name.as_deref().map(str::to_owned)).collect();
        assert_eq!(names, ["audit", "outer"]);
        // The hook holds a clone (a cycle, so no Drop): stop the worker explicitly.
        c.shutdown(Duration::from_secs(1)).expect("shutdown");
    });
}

#[test]
fn an_event_over_the_size_cap_is_an_error_at_the_call() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        let err = c.track("u", "e", props! { "blob" => "x".repeat(trackway::MAX_EVENT_BYTES) }).unwrap_err();
        assert!(matches!(err, Error::TooLong { what: "serialized event", .. }), "{err}");
        assert_eq!(c.stats().enqueued, 0);
    });
}

#[test]
fn persisted_counts_each_event_once_through_shutdown() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        for i in 0..1000 {
            c.track("u", "e", props! { "i" => i }).expect("track");
        }
        c.persisted(Duration::from_secs(5)).expect("persisted");
        assert_eq!(c.stats().persisted, 1000);
        c.shutdown(Duration::from_secs(5)).expect("shutdown");
        assert_eq!(c.stats().persisted, 1000, "the shutdown commit must not count them again");
    });
}

#[test]
fn requeued_dead_letters_count_as_persisted_with_the_memory_store_too() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .script([trackway_collector::Reply::status(400).body("refused once")])
            .start()
            .expect("collector");
        let c = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
        c.track("u", "e", props! {}).expect("track");
        c.flush(Duration::from_secs(5)).expect("flush");
        assert_eq!(c.stats().persisted, 1);
        assert_eq!(c.requeue_dead_letters(Some("a"), 10).expect("requeue"), 1);
        c.flush(Duration::from_secs(5)).expect("flush");
        assert_eq!(c.stats().persisted, 2, "written to the store again, as the durable store counts it");
        c.shutdown(Duration::from_secs(5)).expect("shutdown");
        assert_eq!(c.stats().persisted, 2);
    });
}

#[test]
fn a_persist_barrier_that_times_out_says_what_is_not_committed() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = memory_client(&dest);
        c.pause_worker();
        for _ in 0..3 {
            c.track("u", "e", props! {}).expect("track");
        }
        let err = c.persisted(Duration::from_millis(50)).unwrap_err();
        assert!(
            matches!(err, PersistError::Timeout { uncommitted: 3, .. }),
            "the barrier's own error, with the count: {err:?}"
        );
        let text = err.to_string();
        // "within 50.1ms" or more: the time it waited, which a loaded machine stretches.
        assert!(text.starts_with("events not yet committed to the store within "), "{text}");
        assert!(text.ends_with(": 3 accepted event(s) still to commit"), "{text}");
        assert!(!text.contains("flush") && !text.contains("store:"), "no flush wording, no fake destination: {text}");
        c.resume_worker();
        c.persisted(Duration::from_secs(5)).expect("committed once the worker runs");
    });
}

#[test]
fn an_app_without_a_version_passes_an_empty_one_and_events_carry_none() {
    watchdog(LIMIT, || {
        let dest = InMemoryDestination::new("m");
        let c = fast_builder().app("tool", "").destination(dest.clone()).build().expect("client");
        c.track("u", "e", props! {}).expect("track");
        c.flush(Duration::from_secs(5)).expect("flush");
        let context = &dest.received()[0].event.context;
        assert_eq!((context.app_name.as_deref(), context.app_version.as_deref()), (Some("tool"), None));
    });
}

#[test]
fn the_default_store_without_an_app_name_says_to_call_app() {
    let err = Client::builder().destination(InMemoryDestination::new("m")).build().unwrap_err();
    assert!(err.to_string().contains("call .app(name, version)"), "{err}");
}
