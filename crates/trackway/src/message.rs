//! What a call describes before the client stamps it: [`Track`], [`Page`], [`Screen`], [`Identify`].
//!
//! A message that names no user is an **app-mode** message: the client's current user is
//! stamped on it. A message that names its user (`.user(..)`, or an anonymous visitor with
//! `.anonymous_id(..)`) is a **server-mode** message and leaves the client's state alone.

use std::collections::BTreeMap;

use trackway_wire::{CompactString, EventKind, MessageId, PageInfo, Properties, Timestamp, Value};

/// Everything a call can carry; built through [`Track`], [`Page`], [`Screen`] or [`Identify`].
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub(crate) kind: EventKind,
    pub(crate) name: Option<CompactString>,
    pub(crate) user: Option<CompactString>,
    pub(crate) anonymous_id: Option<CompactString>,
    pub(crate) properties: Properties,
    pub(crate) page: Option<PageInfo>,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) ids: BTreeMap<String, String>,
    pub(crate) primary: Option<String>,
    pub(crate) id: Option<MessageId>,
    pub(crate) timestamp: Option<Timestamp>,
}

impl Message {
    fn new(kind: EventKind) -> Self {
        Message {
            kind,
            name: None,
            user: None,
            anonymous_id: None,
            properties: Properties::new(),
            page: None,
            ip: None,
            user_agent: None,
            ids: BTreeMap::new(),
            primary: None,
            id: None,
            timestamp: None,
        }
    }
}

/// Setters shared by every message type.
macro_rules! common_setters {
    ($ty:ident) => {
        impl $ty {
            /// Names the user (server mode). Without it the client's current user is used (app mode).
            #[must_use]
            pub fn user(mut self, identifier: impl AsRef<str>) -> Self {
                self.0.user = Some(CompactString::new(identifier));
                self
            }

            /// Names an anonymous visitor (server mode), e.g. a web visitor who has not signed
            /// in, or a backfilled event that only had an anonymous id. With [`user`](Self::user)
            /// as well, the event carries both.
            #[must_use]
            pub fn anonymous_id(mut self, anonymous_id: impl AsRef<str>) -> Self {
                self.0.anonymous_id = Some(CompactString::new(anonymous_id));
                self
            }

            /// Replaces the properties.
            #[must_use]
            pub fn properties(mut self, properties: Properties) -> Self {
                self.0.properties = properties;
                self
            }

            /// Sets one property.
            #[must_use]
            pub fn property(mut self, key: impl AsRef<str>, value: impl Into<Value>) -> Self {
                self.0.properties.insert(key, value);
                self
            }

            /// The end user's IP address, forwarded to destinations that take one (server mode).
            #[must_use]
            pub fn ip(mut self, ip: impl Into<String>) -> Self {
                self.0.ip = Some(ip.into());
                self
            }

            /// The end user's user agent, forwarded to destinations that take one (server mode).
            #[must_use]
            pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
                self.0.user_agent = Some(ua.into());
                self
            }
        }

        impl From<$ty> for Message {
            fn from(m: $ty) -> Message {
                m.0
            }
        }
    };
}

/// A custom event.
///
/// ```
/// use trackway::Track;
/// let t = Track::new("purchase_completed").user("user123").property("amount", 99.99);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Track(Message);

impl Track {
    /// An event called `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        let mut m = Message::new(EventKind::Track);
        m.name = Some(CompactString::new(name));
        Track(m)
    }
}
common_setters!(Track);

/// A web page view.
///
/// ```
/// use trackway::Page;
/// let p = Page::new("/settings").title("User Settings").referrer("https://example.com/");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Page(Message);

impl Page {
    /// A view of the page at `url` (a URL or a path).
    pub fn new(url: impl Into<String>) -> Self {
        let mut m = Message::new(EventKind::Page);
        m.page = Some(PageInfo { url: url.into(), title: None, referrer: None });
        Page(m)
    }

    /// The page title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        if let Some(p) = self.0.page.as_mut() {
            p.title = Some(title.into());
        }
        self
    }

    /// The referring URL.
    #[must_use]
    pub fn referrer(mut self, referrer: impl Into<String>) -> Self {
        if let Some(p) = self.0.page.as_mut() {
            p.referrer = Some(referrer.into());
        }
        self
    }

    /// A name for the page (optional).
    #[must_use]
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.0.name = Some(CompactString::new(name));
        self
    }
}
common_setters!(Page);

/// An app screen view.
#[derive(Clone, Debug, PartialEq)]
pub struct Screen(Message);

impl Screen {
    /// A view of the screen called `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        let mut m = Message::new(EventKind::Screen);
        m.name = Some(CompactString::new(name));
        Screen(m)
    }
}
common_setters!(Screen);

/// Identifies a user and sets user properties.
///
/// In server mode (`.user(..)`), it sends the user's properties and changes nothing on the
/// client. In app mode, it sets the client's current user: the hard ids given here **replace**
/// the stored ones, and every later event carries them.
///
/// ```
/// use trackway::Identify;
/// let server = Identify::new().user("user123").property("plan", "pro");
/// let app = Identify::new().id("registered", "jane@example.com").primary("registered");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Identify(Message);

impl Identify {
    /// An identify call with no ids yet.
    pub fn new() -> Self {
        Identify(Message::new(EventKind::Identify))
    }

    /// A hard id, e.g. `("registered", "jane@example.com")` (app mode).
    #[must_use]
    pub fn id(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.ids.insert(name.into(), value.into());
        self
    }

    /// Which hard id is the primary user id (app mode; default: the only one, if there is one).
    #[must_use]
    pub fn primary(mut self, name: impl Into<String>) -> Self {
        self.0.primary = Some(name.into());
        self
    }
}

impl Default for Identify {
    fn default() -> Self {
        Identify::new()
    }
}
common_setters!(Identify);

/// Typed setters for the reserved properties `$tag` and `$url`, which destinations lift out of
/// the properties (Umami sends them as `tag` and `url`): a setter cannot be misspelled into
/// ordinary data, and it always sets a string.
macro_rules! tag_setter {
    ($ty:ident) => {
        impl $ty {
            /// A short label for the event (Umami's `tag`, at most 50 UTF-16 units), kept under
            /// the reserved property `$tag`.
            #[must_use]
            pub fn tag(mut self, tag: impl Into<String>) -> Self {
                self.0.properties.insert(trackway_wire::umami::TAG_PROPERTY, tag.into());
                self
            }
        }
    };
}

/// See [`tag_setter`].
macro_rules! url_setter {
    ($ty:ident) => {
        impl $ty {
            /// The URL (or path) where it happened (Umami's `url`; without one, `/` is sent),
            /// kept under the reserved property `$url`.
            #[must_use]
            pub fn url(mut self, url: impl Into<String>) -> Self {
                self.0.properties.insert(trackway_wire::umami::URL_PROPERTY, url.into());
                self
            }
        }
    };
}
impl Track {
    /// When the event happened, if not now (e.g. an event the app recorded while offline and
    /// hands over later). Destinations that send a time send this one (Bloomreach always sends
    /// `timestamp`); without it the time is taken when the event is queued, never when sent.
    ///
    /// ```
    /// use trackway::{Timestamp, Track};
    /// let t = Track::new("level_completed").timestamp(Timestamp::from_unix_millis(1_718_000_000_123));
    /// ```
    #[must_use]
    pub fn timestamp(mut self, at: Timestamp) -> Self {
        self.0.timestamp = Some(at);
        self
    }
}

tag_setter!(Track);
tag_setter!(Page);
tag_setter!(Screen);
url_setter!(Track);
url_setter!(Identify);
