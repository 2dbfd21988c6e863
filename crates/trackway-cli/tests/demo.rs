//! `trackway demo --exit`: the README's first command reports events at every destination.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{KillOnDrop, watchdog};

/// Every destination trackway has, as the demo names them.
const DESTINATIONS: &[&str] = &["json", "umami"];

#[test]
fn demo_exit_reports_the_session_at_every_destination() {
    watchdog(Duration::from_secs(60), || {
        let child = Command::new(env!("CARGO_BIN_EXE_trackway"))
            .args(["demo", "--exit", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trackway demo starts");
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().expect("stdout");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { stdout }, &mut text).expect("read stdout");
        let status = child.0.wait().expect("demo exits");
        assert!(status.success(), "demo failed: {status}\n{text}");
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
