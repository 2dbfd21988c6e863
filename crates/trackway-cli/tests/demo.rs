//! `trackway demo --exit`: the README's first command reports events at every destination,
//! OpenCDP and its Customer.io dual-write included.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::watchdog;

/// Every destination trackway has, as the demo names them.
const DESTINATIONS: &[&str] = &["json", "umami"];

#[test]
fn demo_exit_reports_the_session_at_every_destination() {
    watchdog(Duration::from_secs(60), || {
        // `output` reads stdout and stderr together, so neither pipe can fill and stall the demo;
        // `--exit` ends it by itself, and the watchdog bounds the wait.
        let output = Command::new(env!("CARGO_BIN_EXE_trackway"))
            .args(["demo", "--exit", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()
            .expect("trackway demo runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let status = output.status;
        assert!(status.success(), "demo failed: {status}\n{text}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(text.contains("live page: http://127.0.0.1:"), "{text}");
        assert!(text.contains("-> 503"), "the failure injected on purpose is shown, and retried:\n{text}");
        // Sessions and the push token go where they mean something (not to Umami).
        let json = text.split("== ").find(|s| s.starts_with("json:")).expect("json section");
        for event in ["session_start", "session_end", "notification_state"] {
            assert!(json.contains(event), "json lacks {event}:\n{json}");
        }
        // OpenCDP with its Customer.io dual-write: each a section of its own, with what it takes.
        let opencdp = section(&text, "opencdp");
        assert!(delivered(opencdp) >= 3, "OpenCDP: identify, purchase, push token:\n{opencdp}");
        for expected in [
            "/gateway/data-gateway/v1/persons/identify -> 200",
            "/gateway/data-gateway/v1/persons/track -> 200",
            "/gateway/data-gateway/v1/persons/registerDevice -> 200",
            "purchase_completed",
            "jane@example.com",
        ] {
            assert!(opencdp.contains(expected), "OpenCDP lacks {expected:?}:\n{opencdp}");
        }
        for absent in ["session_start", "installation", "screen"] {
            assert!(!opencdp.contains(absent), "OpenCDP has no call for {absent}:\n{opencdp}");
        }
        let cio = section(&text, "customerio");
        assert!(delivered(cio) >= 7, "Customer.io: screens, page, identify, purchase, payment, device:\n{cio}");
        assert!(cio.contains(", 0 duplicates dropped by id"), "{cio}");
        for expected in ["POST /api/v2/batch -> 200", "purchase_completed", "payment", "jane@example.com"] {
            assert!(cio.contains(expected), "Customer.io lacks {expected:?}:\n{cio}");
        }
        for name in DESTINATIONS {
            let section = section(&text, name);
            let delivered = delivered(section);
            assert!(delivered >= 7, "{name} got {delivered} events:\n{section}");
            for event in ["installation", "purchase_completed", "payment", "jane@example.com"] {
                assert!(section.contains(event), "{name} lacks {event}:\n{section}");
            }
        }
    });
}

/// The demo's report for destination `name` (from its `== name:` line to the next).
fn section<'a>(text: &'a str, name: &str) -> &'a str {
    text.split("== ")
        .find(|s| s.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no section for {name}:\n{text}"))
}

/// The delivered count of a section (`name: N events delivered, …`).
fn delivered(section: &str) -> u64 {
    section.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {section}"))
}
