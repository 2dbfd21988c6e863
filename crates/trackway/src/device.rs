//! Push devices in server mode: [`Client::register_device`] queues a device registration for a
//! named user (OpenCDP's `registerDevice`; Customer.io's `PUT …/devices` in a dual-write).
//!
//! A registration is an event like any other (durable, retried, counted), of
//! [`EventType::PushToken`](crate::destination::EventType::PushToken): it goes where app mode's
//! push tokens go, to the destinations that take push tokens. Its name is [`DEVICE_EVENT`] and
//! its properties are the device's fields under OpenCDP's wire keys (`deviceId`, `platform`,
//! `fcmToken`, `apnToken`, `name`, `osVersion`, `model`, `appVersion`, `last_active_at`,
//! `attributes`), so every destination reads one shape.

use std::str::FromStr;

use trackway_wire::{MessageId, Properties, Timestamp};

use crate::Client;
use crate::client::{Options, check_len};
use crate::destination::{AppEvent, EventType};
use crate::error::Error;
use crate::message::Track;

/// The name of the events [`Client::register_device`] queues. Reserved: `track` refuses it, so
/// a destination that sees it knows the event is a device registration.
pub const DEVICE_EVENT: &str = "$register_device";

/// The platform of a push device, as OpenCDP names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DevicePlatform {
    /// An Android device (FCM).
    Android,
    /// An iOS device (APNs, or FCM on iOS).
    Ios,
    /// A web browser (web push through FCM). Customer.io has no such platform: a dual-write does
    /// not send web devices there.
    Web,
}

impl DevicePlatform {
    /// The wire name: `android`, `ios` or `web`.
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePlatform::Android => "android",
            DevicePlatform::Ios => "ios",
            DevicePlatform::Web => "web",
        }
    }
}

impl FromStr for DevicePlatform {
    type Err = String;

    /// `android`, `ios` or `web` (as OpenCDP spells them, lowercase).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "android" => Ok(DevicePlatform::Android),
            "ios" => Ok(DevicePlatform::Ios),
            "web" => Ok(DevicePlatform::Web),
            other => Err(format!("platform {other:?} must be one of android, ios, web")),
        }
    }
}

/// A push device to register for a user ([`Client::register_device`]): OpenCDP's
/// `DeviceRegistrationParameters`.
///
/// ```
/// use trackway::{Device, DevicePlatform};
/// let device = Device::new("device-abc", DevicePlatform::Ios, "fcm-token")
///     .apn_token("apns-token")
///     .os_version("17.4")
///     .model("iPhone 15")
///     .app_version("1.0.0");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct Device {
    device_id: String,
    platform: DevicePlatform,
    fcm_token: String,
    apn_token: Option<String>,
    name: Option<String>,
    os_version: Option<String>,
    model: Option<String>,
    app_version: Option<String>,
    last_active_at: Option<Timestamp>,
    attributes: Properties,
}

impl Device {
    /// A device with the app's own id for it, its platform and its FCM token (the three fields
    /// OpenCDP requires).
    pub fn new(device_id: impl Into<String>, platform: DevicePlatform, fcm_token: impl Into<String>) -> Self {
        Device {
            device_id: device_id.into(),
            platform,
            fcm_token: fcm_token.into(),
            apn_token: None,
            name: None,
            os_version: None,
            model: None,
            app_version: None,
            last_active_at: None,
            attributes: Properties::new(),
        }
    }

    /// The APNs token (iOS); a dual-write to Customer.io registers it as the push token.
    pub fn apn_token(mut self, token: impl Into<String>) -> Self {
        self.apn_token = Some(token.into());
        self
    }

    /// A name for the device.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The operating system's version, e.g. `14`.
    pub fn os_version(mut self, version: impl Into<String>) -> Self {
        self.os_version = Some(version.into());
        self
    }

    /// The device model, e.g. `Pixel 8`.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The app's version on the device.
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// When the device was last active (sent as RFC 3339 text, as the SDK's ISO string).
    pub fn last_active_at(mut self, at: Timestamp) -> Self {
        self.last_active_at = Some(at);
        self
    }

    /// Other attributes of the device.
    pub fn attributes(mut self, attributes: Properties) -> Self {
        self.attributes = attributes;
        self
    }

    /// The platform.
    pub fn platform(&self) -> DevicePlatform {
        self.platform
    }

    /// Checks the required fields, before anything is queued.
    fn check(&self) -> Result<(), Error> {
        for (what, value) in [("deviceId", &self.device_id), ("fcmToken", &self.fcm_token)] {
            if value.trim().is_empty() {
                return Err(Error::InvalidDevice(format!("{what} cannot be empty")));
            }
        }
        check_len("device id", &self.device_id)?;
        check_len("push token", &self.fcm_token)?;
        if let Some(apn) = &self.apn_token {
            check_len("push token", apn)?;
        }
        self.attributes.validate()?;
        Ok(())
    }

    /// The event's properties: the fields under OpenCDP's wire keys, absent ones left out.
    fn properties(self) -> Properties {
        let mut p = Properties::with_capacity(10)
            .with("deviceId", self.device_id)
            .with("platform", self.platform.as_str())
            .with("fcmToken", self.fcm_token);
        let optional = [
            ("apnToken", self.apn_token),
            ("name", self.name),
            ("osVersion", self.os_version),
            ("model", self.model),
            ("appVersion", self.app_version),
            ("last_active_at", self.last_active_at.map(|t| t.to_string())),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                p.insert(key, value);
            }
        }
        if !self.attributes.is_empty() {
            p.insert("attributes", self.attributes);
        }
        p
    }
}

impl Client {
    /// Registers a push device for the user `identifier` (server mode; OpenCDP's
    /// `registerDevice`). Queued durably and retried like any event, routed like app mode's push
    /// tokens ([`EventType::PushToken`]); no default properties are added.
    ///
    /// ```
    /// use std::time::Duration;
    /// use trackway::{Client, Device, DevicePlatform, destination::JsonHttp, store::MemoryStore};
    /// # let collector = trackway_collector::Collector::start().unwrap();
    /// let client = Client::builder().destination(JsonHttp::new(collector.url("/e"))).store(MemoryStore::new()).build()?;
    /// client.register_device("user123", Device::new("device-abc", DevicePlatform::Android, "fcm-token"))?;
    /// let empty = Device::new("", DevicePlatform::Android, "fcm-token");
    /// assert_eq!(client.register_device("user123", empty).unwrap_err().to_string(), "deviceId cannot be empty");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `EmptyIdentifier` (`Identifier cannot be empty`, also for whitespace), `InvalidDevice`
    /// (`deviceId cannot be empty`, `fcmToken cannot be empty`), `TooLong`, `InvalidProperty`,
    /// `NoRoute` when no destination takes push devices, `DestinationLimit`, `QueueFull`,
    /// `ShutDown`.
    pub fn register_device(&self, identifier: &str, device: Device) -> Result<MessageId, Error> {
        if identifier.trim().is_empty() {
            return Err(Error::EmptyIdentifier);
        }
        device.check()?;
        // An app event that no destination takes is skipped without a word (its state change
        // still applies); a registration has no state change, so that would be a silent loss.
        if self.inner.shared.routing.mask(EventType::PushToken) == 0 {
            return Err(Error::NoRoute { kind: "push device" });
        }
        let opts = Options { no_defaults: true, app_event: Some(AppEvent::PushToken), ..Options::default() };
        self.enqueue(Track::new(DEVICE_EVENT).user(identifier).properties(device.properties()).into(), opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_use_opencdp_wire_keys_and_leave_absent_fields_out() {
        let d = Device::new("d1", DevicePlatform::Ios, "fcm")
            .apn_token("apn")
            .last_active_at(Timestamp::from_unix_millis(1_700_000_000_000))
            .attributes(trackway_wire::props! { "push_enabled" => true });
        let json = serde_json::to_value(d.properties()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "deviceId": "d1", "platform": "ios", "fcmToken": "fcm", "apnToken": "apn",
                "last_active_at": "2023-11-14T22:13:20.000Z", "attributes": {"push_enabled": true}
            })
        );
        let bare = serde_json::to_value(Device::new("d", DevicePlatform::Web, "t").properties()).expect("json");
        assert_eq!(bare, serde_json::json!({"deviceId": "d", "platform": "web", "fcmToken": "t"}));
    }

    #[test]
    fn required_fields_are_checked() {
        let err = |d: Device| d.check().unwrap_err().to_string();
        assert_eq!(err(Device::new(" ", DevicePlatform::Android, "t")), "deviceId cannot be empty");
        assert_eq!(err(Device::new("d", DevicePlatform::Android, "")), "fcmToken cannot be empty");
        assert!(Device::new("d", DevicePlatform::Android, "t").check().is_ok());
        assert_eq!("ios".parse::<DevicePlatform>(), Ok(DevicePlatform::Ios));
        assert!("iOS".parse::<DevicePlatform>().unwrap_err().contains("android, ios, web"));
    }
}
