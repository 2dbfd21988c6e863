//! Umami destination against the loopback collector.
