//! trackway's event model and its compact serialized form.
//!
//! Both the SDK (`trackway`) and the local collector (`trackway-collector`) depend on this crate,
//! so the format of an event is defined once. It does no I/O.
//!
//! - [`Event`]: one event as stamped at enqueue (message id, timestamp, identity snapshot, …).
//! - [`Properties`] / [`Value`]: JSON-like properties whose numbers must be finite.
//! - [`Timestamp`]: UTC milliseconds, serialized as RFC 3339.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bloomreach;
pub mod customerio;
mod encode;
mod event;
mod ser;
mod timestamp;
pub mod umami;
mod value;

pub use encode::{CONTEXT_KEY, encode_event, encode_event_head, finish_event};
pub use event::{Context, Event, EventKind, Identity, MessageId, PageInfo};
pub use timestamp::{ParseTimestampError, Timestamp};
pub use value::{MAX_PROPERTY_DEPTH, Properties, PropertyError, Value};

/// The string type of names, user ids and string values: up to 24 bytes inline, no allocation.
pub use compact_str::CompactString;
