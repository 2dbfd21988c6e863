//! One configuration, several destinations: destination sets, routing by event type fixed at
//! enqueue, and destinations added at run time (re-created, held or forgotten at the next
//! build), against the collector on loopback.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::{json, wait_until, watchdog};
use trackway::destination::{Destination, DestinationFactory, DestinationSet, EventType, JsonHttp};
use trackway::health::LastErrorKind;
use trackway::store::{MemoryStore, SqliteStore};
use trackway::{
    Anonymize, AppLifecycle, BuildError, Client, ClientBuilder, Error, HealthState, HttpOptions, Identify, Page,
    Payment, PushToken, RetryPolicy, Screen, Track,
};
use trackway_collector::{Collector, Reply, Rule, RunningCollector};

const LIMIT: Duration = Duration::from_secs(60);
const FLUSH: Duration = Duration::from_secs(10);

/// An app-mode builder with fast timings (no installation, manual sessions).
fn app() -> ClientBuilder {
    Client::builder()
        .app_mode()
        .batch_interval(Duration::from_millis(10))
        .retry_policy(RetryPolicy::default().backoff(Duration::from_millis(5), Duration::from_millis(40)))
        .shutdown_timeout(Duration::from_millis(300))
}

/// Event names in the requests the collector answered 2xx on `path`.
fn names_at(collector: &RunningCollector, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in collector.requests().iter().filter(|r| r.path == path && (200..300).contains(&r.status)) {
        if let Some(serde_json::Value::Array(events)) = r.json() {
            for e in events {
                let name = e["name"]
                    .as_str()
                    .or_else(|| e["page"]["url"].as_str())
                    .unwrap_or(e["type"].as_str().unwrap_or(""));
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// A Bloomreach-like project set: the main project takes everything, each mapped project only
/// the types mapped to it. Names come from the project token, never from the position.
struct Projects {
    base: String,
    main: &'static str,
    mapping: Vec<(EventType, &'static str)>,
}

impl DestinationSet for Projects {
    fn expand(self) -> Vec<(Arc<dyn Destination>, HttpOptions)> {
        let mut out: Vec<(Arc<dyn Destination>, HttpOptions)> = vec![(
            Arc::new(JsonHttp::new(format!("{}/{}", self.base, self.main)).name(format!("bloomreach:{}", self.main))),
            HttpOptions::default(),
        )];
        for (t, token) in self.mapping {
            let d =
                JsonHttp::new(format!("{}/{token}", self.base)).name(format!("bloomreach:{token}")).event_types(&[t]);
            out.push((Arc::new(d), HttpOptions::default()));
        }
        out
    }
}

#[test]
fn a_destination_set_expands_into_lanes_of_their_own_and_one_down_never_delays_another() {
    watchdog(LIMIT, || {
        let collector =
            Collector::builder().rule(Rule::path("/payments", Reply::status(503))).start().expect("collector");
        let set = Projects { base: collector.url(""), main: "main", mapping: vec![(EventType::Payment, "payments")] };
        let client = app().destinations(set).store(MemoryStore::new()).build().expect("client");
        client.capture(Track::new("viewed")).expect("track");
        client.track_payment(Payment::new(9.5, "EUR")).expect("payment");
        assert!(
            wait_until(Duration::from_secs(10), || names_at(&collector, "/main").len() == 2),
            "the main project gets both while the payments project is down: {:?}",
            names_at(&collector, "/main")
        );
        assert!(wait_until(Duration::from_secs(10), || client
            .stats()
            .destination("bloomreach:main")
            .is_some_and(|d| d.delivered == 2)));
        let stats = client.stats();
        assert_eq!(
            stats.destinations.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["bloomreach:main", "bloomreach:payments"]
        );
        assert_eq!(stats.destination("bloomreach:main").map(|d| (d.delivered, d.pending)), Some((2, 0)));
        let payments = stats.destination("bloomreach:payments").expect("payments");
        assert_eq!((payments.delivered, payments.pending), (0, 1), "only the payment is routed to it, still held");
        let only_payments =
            collector.requests().iter().filter(|r| r.path == "/payments").all(
                |r| matches!(r.json(), Some(serde_json::Value::Array(e)) if e.iter().all(|e| e["name"] == "payment")),
            );
        assert!(only_payments, "the mapped project never sees other types");
    });
}

#[test]
fn a_destination_name_with_a_slash_is_refused_at_build() {
    let err = app()
        .destination(json("bloomreach/payments", "http://127.0.0.1:9/e".into()))
        .store(MemoryStore::new())
        .build()
        .expect_err("a slash in a name");
    match err {
        BuildError::Destination { destination, message } => {
            assert_eq!(destination, "bloomreach/payments");
            assert!(message.contains("contains `/`"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn every_event_type_is_routed_on_its_own() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let mut b = app().app_lifecycle(AppLifecycle::default().manual_sessions()).store(MemoryStore::new());
        for t in EventType::ALL {
            let name = serde_json::to_value(t).expect("json").as_str().expect("str").to_owned();
            b = b.destination(JsonHttp::new(collector.url(&format!("/{name}"))).name(name).event_types(&[t]));
        }
        let client = b.build().expect("client");
        client.session_start().expect("session start");
        client.capture(Track::new("custom")).expect("track");
        client.capture(Page::new("https://example.com/p")).expect("page");
        client.capture(Screen::new("home")).expect("screen");
        client.identify_customer(Identify::new().id("registered", "jane@example.com")).expect("identify");
        client.track_payment(Payment::new(1.0, "EUR")).expect("payment");
        client.track_push_token(PushToken::fcm("tok")).expect("token");
        client.session_end().expect("session end");
        client.flush(FLUSH).expect("flush");
        let expect = [
            ("/installation", "installation"),
            ("/session_start", "session_start"),
            ("/session_end", "session_end"),
            ("/custom", "custom"),
            ("/page", "https://example.com/p"),
            ("/screen", "home"),
            ("/customer_update", "identify"),
            ("/payment", "payment"),
            ("/push_token", "notification_state"),
        ];
        for (path, name) in expect {
            assert_eq!(names_at(&collector, path), [name], "{path}");
        }
    });
}

#[test]
fn queued_events_keep_the_route_they_were_given_when_anonymize_switches_projects() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = app()
            .destination(json("a", collector.url("/a")))
            .destination(json("b", collector.url("/b")))
            .destination(json("c", collector.url("/c")))
            .store(MemoryStore::new())
            .build()
            .expect("client");
        client.anonymize(Anonymize::new().destinations(["a"])).expect("anonymize");
        // Held in the channel while anonymize switches projects: their routes are already fixed.
        client.pause_worker();
        client.capture(Track::new("before")).expect("track");
        client.track_payment(Payment::new(2.0, "EUR")).expect("payment");
        client
            .anonymize(Anonymize::new().destinations(["b"]).route(EventType::Payment, ["c"]))
            .expect("switch projects");
        client.capture(Track::new("after")).expect("track");
        client.track_payment(Payment::new(3.0, "EUR")).expect("payment");
        client.resume_worker();
        client.flush(FLUSH).expect("flush");
        assert_eq!(names_at(&collector, "/a"), ["before", "payment"], "queued before the switch: the old project");
        assert_eq!(names_at(&collector, "/b"), ["after", "payment"]);
        assert_eq!(names_at(&collector, "/c"), ["payment"], "the mapping adds payments from the switch on");
        assert_eq!(
            client.anonymize(Anonymize::new().route(EventType::Payment, ["nope"])),
            Err(Error::UnknownDestination("nope".into()))
        );
    });
}

/// A factory of JSON destinations for project names, with the project's URL taken from the
/// app (here `urls`), as a factory takes credentials: the store keeps only the name.
fn projects(urls: BTreeMap<&'static str, String>) -> impl DestinationFactory + Clone {
    move |config: &[u8]| {
        let project = std::str::from_utf8(config).map_err(|e| e.to_string())?;
        let url = urls.get(project).ok_or_else(|| format!("no URL for project `{project}`"))?;
        let d: Arc<dyn Destination> = Arc::new(JsonHttp::new(url.clone()).name(format!("project:{project}")));
        Ok((d, HttpOptions::default()))
    }
}

fn durable(path: &Path, collector: &RunningCollector) -> ClientBuilder {
    app().store(SqliteStore::new(path)).destination(json("a", collector.url("/a")))
}

/// An app-mode client on a memory store with destination `a` and the `project` factory for
/// the projects at these collector paths.
fn in_memory<const N: usize>(collector: &RunningCollector, projects_at: [(&'static str, &str); N]) -> Client {
    let urls = projects_at.into_iter().map(|(p, path)| (p, collector.url(path))).collect();
    app()
        .destination(json("a", collector.url("/a")))
        .runtime_destinations("project", projects(urls))
        .store(MemoryStore::new())
        .build()
        .expect("client")
}

#[test]
fn a_destination_added_at_run_time_gets_its_own_lane_and_app_events_once_anonymize_routes_to_it() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = in_memory(&collector, [("new", "/new"), ("bad/name", "/x")]);
        assert_eq!(
            client.anonymize(Anonymize::new().destinations(["project:new"])),
            Err(Error::UnknownDestination("project:new".into())),
            "not added yet"
        );
        assert_eq!(client.add_destination("nope", "new"), Err(Error::UnknownDestinationKind("nope".into())));
        assert!(matches!(client.add_destination("project", "bad/name"), Err(Error::DestinationConfig { .. })));
        assert!(matches!(client.add_destination("project", "unknown"), Err(Error::DestinationConfig { .. })));
        let name = client.add_destination("project", "new").expect("add");
        assert_eq!(name, "project:new");
        assert_eq!(client.add_destination("project", "new").expect("again"), name, "adding it again changes nothing");
        client.capture(Track::new("still_a")).expect("track");
        client.anonymize(Anonymize::new().destinations([name.as_str()])).expect("switch to the new project");
        client.capture(Track::new("to_new")).expect("track");
        client.flush(FLUSH).expect("flush");
        assert_eq!(names_at(&collector, "/a"), ["still_a"]);
        assert_eq!(names_at(&collector, "/new"), ["to_new"]);
        let stats = client.stats();
        assert_eq!(stats.destination("project:new").map(|d| (d.delivered, d.pending)), Some((1, 0)));
    });
}

#[tokio::test(flavor = "current_thread")]
async fn add_destination_async_works_on_a_current_thread_runtime() {
    let collector = Collector::start().expect("collector");
    let client = in_memory(&collector, [("new", "/new")]);
    let added = tokio::time::timeout(Duration::from_secs(10), client.add_destination_async("project", "new")).await;
    assert_eq!(added.expect("no deadlock").expect("add"), "project:new");
    client.track("server-user", "server_event", trackway::props! {}).expect("server mode goes everywhere");
    tokio::time::timeout(Duration::from_secs(10), client.flush_async(FLUSH))
        .await
        .expect("no deadlock")
        .expect("flush");
    assert_eq!(names_at(&collector, "/new"), ["server_event"]);
}

/// A run that adds the project `new` (down), switches app events to it, tracks `events` and
/// shuts down with them pending in the store at `path`.
fn leave_pending_for_new_project(path: &Path, up: &RunningCollector, events: &[&str]) {
    let down = Collector::builder().default_reply(Reply::status(503)).start().expect("down");
    let factory = projects(BTreeMap::from([("new", down.url("/new"))]));
    let client = durable(path, up).runtime_destinations("project", factory).build().expect("client");
    let name = client.add_destination("project", "new").expect("add");
    client.anonymize(Anonymize::new().destinations([name])).expect("switch");
    for e in events {
        client.capture(Track::new(*e)).expect("track");
    }
    client.persisted(FLUSH).expect("persisted");
    assert!(client.shutdown(Duration::from_millis(200)).is_err(), "the project is down");
}

#[test]
fn a_restart_re_creates_a_run_time_destination_from_its_factory_and_delivers_what_it_holds() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let up = Collector::start().expect("collector");
        leave_pending_for_new_project(&path, &up, &["pending_1", "pending_2"]);
        // The factory now knows the project is reachable at `up` (the app's own configuration).
        let factory = projects(BTreeMap::from([("new", up.url("/new"))]));
        let client = durable(&path, &up).runtime_destinations("project", factory).build().expect("rebuilt");
        client.flush(FLUSH).expect("flush");
        assert_eq!(names_at(&up, "/new"), ["pending_1", "pending_2"]);
        let stats = client.stats();
        assert_eq!(stats.destination("project:new").map(|d| (d.delivered, d.pending)), Some((2, 0)));
        client.capture(Track::new("later")).expect("still routed to it (the stored routing names it)");
        client.flush(FLUSH).expect("flush");
        assert_eq!(names_at(&up, "/new").last().map(String::as_str), Some("later"));
    });
}

#[test]
fn without_its_factory_a_run_time_destination_holds_its_events_until_a_build_has_it() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let up = Collector::start().expect("collector");
        leave_pending_for_new_project(&path, &up, &["held"]);
        {
            let client = durable(&path, &up).build().expect("built without the factory");
            let stats = client.stats();
            let held = stats.destination("project:new").expect("kept, with its events");
            assert_eq!(held.pending, 1, "held and counted");
            assert_eq!(held.health.state, HealthState::Stopped);
            let error = held.health.last_error.as_ref().expect("why");
            assert_eq!(error.kind, LastErrorKind::Unavailable);
            assert!(error.message.contains("no factory for run-time destinations of kind `project`"), "{error}");
            client.track("server-user", "to_a", trackway::props! {}).expect("a works");
            client.flush(Duration::from_millis(300)).expect_err("the held destination never finishes");
            assert_eq!(names_at(&up, "/a"), ["to_a"], "nothing of it is sent elsewhere");
            client.shutdown(Duration::from_millis(200)).ok();
        }
        let factory = projects(BTreeMap::from([("new", up.url("/new"))]));
        let client = durable(&path, &up).runtime_destinations("project", factory).build().expect("with the factory");
        assert!(wait_until(Duration::from_secs(10), || names_at(&up, "/new").contains(&"held".to_owned())));
        // Tracked while it was held: app-mode routing named it, so it was queued for it too.
        client.flush(FLUSH).expect("flush");
        assert_eq!(client.stats().destination("project:new").map(|d| d.pending), Some(0));
    });
}

#[test]
fn a_run_time_destination_no_longer_routed_to_and_idle_is_forgotten_at_the_next_build() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let up = Collector::start().expect("collector");
        let urls = BTreeMap::from([("old", up.url("/old")), ("current", up.url("/current"))]);
        {
            let client =
                durable(&path, &up).runtime_destinations("project", projects(urls.clone())).build().expect("client");
            let old = client.add_destination("project", "old").expect("add");
            client.anonymize(Anonymize::new().destinations([old])).expect("switch");
            client.capture(Track::new("to_old")).expect("track");
            let current = client.add_destination("project", "current").expect("add");
            client.anonymize(Anonymize::new().destinations([current])).expect("switch away from old");
            client.flush(FLUSH).expect("flush");
            client.shutdown(Duration::from_millis(500)).expect("shutdown");
        }
        let inspection = SqliteStore::inspect(&path).expect("inspect");
        assert!(inspection.pending.iter().any(|(n, _)| n == "project:old"), "still mapped before the next build");
        let client = durable(&path, &up).runtime_destinations("project", projects(urls)).build().expect("rebuilt");
        let names: Vec<String> = client.stats().destinations.into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["a", "project:current"], "old is forgotten, current (routed to, idle) is kept");
        client.capture(Track::new("to_current")).expect("track");
        client.flush(FLUSH).expect("flush");
        client.shutdown(Duration::from_millis(500)).expect("shutdown");
        assert_eq!(names_at(&up, "/old"), ["to_old"]);
        assert_eq!(names_at(&up, "/current"), ["to_current"]);
        let inspection = SqliteStore::inspect(&path).expect("inspect");
        let stored: Vec<&str> = inspection.pending.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(stored, ["a", "project:current"], "its bit is given up in the store");
    });
}
