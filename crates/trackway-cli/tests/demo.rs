//! `trackway demo --exit`: the README's first command reports events at every destination.

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
        for name in DESTINATIONS {
            let section = text
                .split("== ")
                .find(|s| s.starts_with(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no section for {name}:\n{text}"));
            let delivered: u64 = section
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count for {name}: {section}"));
            assert!(delivered >= 7, "{name} got {delivered} events:\n{section}");
            for event in ["installation", "purchase_completed", "payment", "jane@example.com"] {
                assert!(section.contains(event), "{name} lacks {event}:\n{section}");
            }
        }
    });
}
