//! Event types, the unit of routing: every kind of event the client sends (the four
//! [`EventKind`]s and the five events app mode tracks by itself) can be routed on its own, as
//! Bloomreach's project mapping does (spec §6: `install`, `sessionStart`, `sessionEnd`,
//! `trackEvent`, `trackCustomer`, `payment`, `pushToken`).

use serde::{Deserialize, Serialize};
use trackway_wire::EventKind;

use super::AppEvent;

/// What an event is, for routing ([`Destination::accepts_event_type`](super::Destination::accepts_event_type),
/// [`Anonymize::route`](crate::Anonymize::route)). The route is fixed into each event when it is
/// queued: a later change of routing never moves queued events.
///
/// Bloomreach's mapping keys are these: `install` → [`Installation`](Self::Installation),
/// `sessionStart`, `sessionEnd`, `trackEvent` → [`Custom`](Self::Custom) **and** the page and
/// screen views (Bloomreach has no view type: they are custom events there, so map all three,
/// [`EventType::CUSTOM_EVENTS`]), `trackCustomer` → [`CustomerUpdate`](Self::CustomerUpdate),
/// `payment`, `pushToken`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventType {
    /// `installation`, tracked by app mode on the first run and after `anonymize`.
    Installation,
    /// `session_start`.
    SessionStart,
    /// `session_end`.
    SessionEnd,
    /// A custom event (`track`, `capture(Track)`).
    Custom,
    /// A page view.
    Page,
    /// A screen view.
    Screen,
    /// A customer update (`identify`, `identify_customer`).
    CustomerUpdate,
    /// `payment` (`track_payment`).
    Payment,
    /// `notification_state` (a push token registered or invalidated).
    PushToken,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 9] = [
        EventType::Installation,
        EventType::SessionStart,
        EventType::SessionEnd,
        EventType::Custom,
        EventType::Page,
        EventType::Screen,
        EventType::CustomerUpdate,
        EventType::Payment,
        EventType::PushToken,
    ];

    /// What Bloomreach's `trackEvent` mapping key covers: custom events, page and screen views.
    pub const CUSTOM_EVENTS: [EventType; 3] = [EventType::Custom, EventType::Page, EventType::Screen];

    /// How many event types there are (the size of a routing table).
    pub(crate) const COUNT: usize = 9;

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The type of an event of `kind` that app mode did not track by itself.
    pub fn of_kind(kind: EventKind) -> Self {
        match kind {
            EventKind::Track => EventType::Custom,
            EventKind::Page => EventType::Page,
            EventKind::Screen => EventType::Screen,
            EventKind::Identify => EventType::CustomerUpdate,
        }
    }

    /// The kind of the events of this type (the app events are `track` events).
    pub fn kind(self) -> EventKind {
        match self {
            EventType::Page => EventKind::Page,
            EventType::Screen => EventKind::Screen,
            EventType::CustomerUpdate => EventKind::Identify,
            _ => EventKind::Track,
        }
    }

    /// The app event this type is, if it is one.
    pub fn app_event(self) -> Option<AppEvent> {
        match self {
            EventType::Installation => Some(AppEvent::Installation),
            EventType::SessionStart => Some(AppEvent::SessionStart),
            EventType::SessionEnd => Some(AppEvent::SessionEnd),
            EventType::Payment => Some(AppEvent::Payment),
            EventType::PushToken => Some(AppEvent::PushToken),
            _ => None,
        }
    }
}

impl From<AppEvent> for EventType {
    fn from(event: AppEvent) -> Self {
        match event {
            AppEvent::Installation => EventType::Installation,
            AppEvent::SessionStart => EventType::SessionStart,
            AppEvent::SessionEnd => EventType::SessionEnd,
            AppEvent::PushToken => EventType::PushToken,
            AppEvent::Payment => EventType::Payment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_its_own_index_and_round_trips_through_kind_and_app_event() {
        for (i, t) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
            match t.app_event() {
                Some(e) => assert_eq!(EventType::from(e), t),
                None => assert_eq!(EventType::of_kind(t.kind()), t),
            }
        }
        assert_eq!(EventType::ALL.len(), EventType::COUNT);
        assert_eq!(serde_json::to_string(&EventType::CustomerUpdate).expect("json"), r#""customer_update""#);
    }
}
