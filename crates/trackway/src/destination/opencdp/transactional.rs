//! Transactional email, push and SMS, and `ping`: OpenCDP's [direct calls](crate::direct).
//!
//! Each is checked before anything is sent, with the SDK's messages (spec §1.3), then sent
//! once: never queued, never retried once the request may have reached the server, never
//! dual-written to Customer.io (it would send the message twice). The answer is the server's
//! status and body as they are ([`Answer`]), or a typed [`DirectError`].

use bytes::Bytes;
use serde::Serialize;
use trackway_wire::Value;

use super::encode::json_request;
use super::{OpenCdp, validate};
use crate::destination::{Request, Response};
use crate::direct::{Direct, DirectCall, DirectError};

/// Whom a transactional message is for: exactly one identifier (`{"id": …}`, `{"email": …}` or
/// `{"cdp_id": …}` on the wire). Email takes `id` or `email`; push and SMS any of the three.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Identifiers {
    /// The person's id (the `identifier` of `identify`).
    #[serde(rename = "id")]
    Id(String),
    /// The person's email address.
    #[serde(rename = "email")]
    Email(String),
    /// OpenCDP's own id of the person.
    #[serde(rename = "cdp_id")]
    CdpId(String),
}

impl Identifiers {
    /// `{"id": id}`.
    pub fn id(id: impl Into<String>) -> Self {
        Identifiers::Id(id.into())
    }
    /// `{"email": email}`.
    pub fn email(email: impl Into<String>) -> Self {
        Identifiers::Email(email.into())
    }
    /// `{"cdp_id": id}`.
    pub fn cdp_id(id: impl Into<String>) -> Self {
        Identifiers::CdpId(id.into())
    }

    fn value(&self) -> &str {
        match self {
            Identifiers::Id(v) | Identifiers::Email(v) | Identifiers::CdpId(v) => v,
        }
    }
}

/// The SDK's check of `identifiers`: present, and one non-empty value of a kind the call takes.
fn check_identifiers(identifiers: Option<&Identifiers>, cdp_id_allowed: bool) -> Result<(), String> {
    let Some(identifiers) = identifiers else { return Err("identifiers is required".into()) };
    let allowed = cdp_id_allowed || !matches!(identifiers, Identifiers::CdpId(_));
    if !allowed || identifiers.value().is_empty() {
        return Err("identifiers must contain exactly one of: id, email, or cdp_id".into());
    }
    Ok(())
}

/// A transactional message template (`transactional_message_id`): its id as text or a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TemplateId {
    /// A text id.
    Text(String),
    /// A numeric id.
    Number(u64),
}

impl TemplateId {
    /// What the SDK's `!transactional_message_id` calls missing: `""` and `0`.
    fn is_missing(&self) -> bool {
        matches!(self, TemplateId::Text(t) if t.is_empty()) || *self == TemplateId::Number(0)
    }
}

impl From<&str> for TemplateId {
    fn from(id: &str) -> Self {
        TemplateId::Text(id.to_owned())
    }
}
impl From<String> for TemplateId {
    fn from(id: String) -> Self {
        TemplateId::Text(id)
    }
}
impl From<u64> for TemplateId {
    fn from(id: u64) -> Self {
        TemplateId::Number(id)
    }
}
impl From<u32> for TemplateId {
    fn from(id: u32) -> Self {
        TemplateId::Number(u64::from(id))
    }
}

/// The server's answer to a direct call that succeeded (any 2xx): its status and body as sent.
/// OpenCDP does not document its bodies, so nothing here depends on their shape.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body (at most 1 MiB is read).
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn read(response: Response) -> Result<Answer, DirectError> {
        DirectError::check_status(&response)?;
        Ok(Answer { status: response.status.as_u16(), body: response.body })
    }
}

/// The SDK's "not blank if present" check.
fn non_blank_if_present(what: &str, value: Option<&String>) -> Result<(), String> {
    match value {
        Some(v) if v.trim().is_empty() => Err(format!("{what} cannot be empty if provided")),
        _ => Ok(()),
    }
}

/// The SDK's "must be an object" check.
fn object_if_present(what: &str, value: Option<&Value>) -> Result<(), String> {
    match value {
        Some(Value::Object(_)) | None => Ok(()),
        Some(_) => Err(format!("{what} must be an object")),
    }
}

fn json_body(body: &impl Serialize) -> Result<Vec<u8>, DirectError> {
    serde_json::to_vec(body).map_err(|e| DirectError::Invalid(format!("could not encode the request: {e}")))
}

// === email ===

/// A transactional email (`sendEmail`, `POST {base}/v1/send/email`): a template
/// ([`template`](Self::template)) or a raw email (body, subject and from).
///
/// ```
/// use trackway::{props, destination::opencdp::{Identifiers, SendEmail}};
/// let welcome = SendEmail::new()
///     .to("jane@example.com")
///     .identifiers(Identifiers::id("user123"))
///     .template("welcome")
///     .message_data(props! { "first_name" => "Jane" });
/// let raw = SendEmail::new()
///     .to("jane@example.com")
///     .identifiers(Identifiers::email("jane@example.com"))
///     .from("hello@example.com")
///     .subject("Your receipt")
///     .body("<p>Thanks!</p>");
/// ```
///
/// Checked before sending, in the SDK's order and with its messages: `to is required`, `Email
/// address cannot be empty`, `Invalid email address format` (also for `from`, `cc`, `bcc` and
/// `reply_to`), `identifiers is required`, `identifiers must contain exactly one of: id, email,
/// or cdp_id` (email takes `id` or `email`), `send_at must be a positive integer`, `body cannot
/// be empty if provided` (and `amp_body …`, `plaintext_body …`), `headers must be an object`,
/// and without a template `When not using a template: body is required when not using a
/// template, subject is required when not using a template, from is required when not using a
/// template` (the missing ones).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[must_use]
pub struct SendEmail {
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "identifiers_object")]
    identifiers: Option<Identifiers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    send_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_message_retention: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    send_to_unsubscribed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_draft: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bcc: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cc: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fake_bcc: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preheader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_css_preprocessing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transactional_message_id: Option<TemplateId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    /// `amp_body` in the SDK.
    #[serde(rename = "body_amp", skip_serializing_if = "Option::is_none")]
    amp_body: Option<String>,
    /// `plaintext_body` in the SDK.
    #[serde(rename = "body_plain", skip_serializing_if = "Option::is_none")]
    plaintext_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<String>,
}

/// `identifiers` as its one-key object.
fn identifiers_object<S: serde::Serializer>(value: &Option<Identifiers>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(1))?;
    if let Some(identifiers) = value {
        let key = match identifiers {
            Identifiers::Id(_) => "id",
            Identifiers::Email(_) => "email",
            Identifiers::CdpId(_) => "cdp_id",
        };
        map.serialize_entry(key, identifiers.value())?;
    }
    map.end()
}

/// Setters of optional text fields.
macro_rules! text_setters {
    ($ty:ident: $($(#[$doc:meta])* $field:ident),* $(,)?) => {
        impl $ty {
            $(
                $(#[$doc])*
                pub fn $field(mut self, value: impl Into<String>) -> Self {
                    self.$field = Some(value.into());
                    self
                }
            )*
        }
    };
}

/// Setters of optional flags.
macro_rules! flag_setters {
    ($ty:ident: $($(#[$doc:meta])* $field:ident),* $(,)?) => {
        impl $ty {
            $(
                $(#[$doc])*
                pub fn $field(mut self, on: bool) -> Self {
                    self.$field = Some(on);
                    self
                }
            )*
        }
    };
}

text_setters!(SendEmail:
    /// The recipient's address (required).
    to,
    /// The Reply-To address.
    reply_to,
    /// The preheader text.
    preheader,
    /// The HTML body (required without a template; overrides the template's).
    body,
    /// The AMP body (`body_amp` on the wire).
    amp_body,
    /// The plain-text body (`body_plain` on the wire).
    plaintext_body,
    /// The subject (required without a template).
    subject,
    /// The sender's address (required without a template).
    from,
    /// The template's language.
    language,
);

flag_setters!(SendEmail:
    /// Do not keep the message's content after sending.
    disable_message_retention,
    /// Send even if the person unsubscribed.
    send_to_unsubscribed,
    /// Queue the message as a draft instead of sending it.
    queue_draft,
    /// Send the BCC copies as separate messages.
    fake_bcc,
    /// Do not inline the CSS.
    disable_css_preprocessing,
    /// Track opens and clicks.
    tracked,
);

impl SendEmail {
    /// An email with nothing set yet.
    pub fn new() -> Self {
        SendEmail::default()
    }

    /// Whom the email is for (`id` or `email`; required).
    pub fn identifiers(mut self, identifiers: Identifiers) -> Self {
        self.identifiers = Some(identifiers);
        self
    }

    /// The template (`transactional_message_id`).
    pub fn template(mut self, id: impl Into<TemplateId>) -> Self {
        self.transactional_message_id = Some(id.into());
        self
    }

    /// Data for the template (an object, e.g. `props! {..}`).
    pub fn message_data(mut self, data: impl Into<Value>) -> Self {
        self.message_data = Some(data.into());
        self
    }

    /// When to send it (Unix seconds; at least 0).
    pub fn send_at(mut self, unix_seconds: i64) -> Self {
        self.send_at = Some(unix_seconds);
        self
    }

    /// BCC addresses.
    pub fn bcc<S: Into<String>>(mut self, addresses: impl IntoIterator<Item = S>) -> Self {
        self.bcc = Some(addresses.into_iter().map(Into::into).collect());
        self
    }

    /// CC addresses.
    pub fn cc<S: Into<String>>(mut self, addresses: impl IntoIterator<Item = S>) -> Self {
        self.cc = Some(addresses.into_iter().map(Into::into).collect());
        self
    }

    /// Extra email headers (an object).
    pub fn headers(mut self, headers: impl Into<Value>) -> Self {
        self.headers = Some(headers.into());
        self
    }

    /// The SDK's checks, in its order.
    ///
    /// # Errors
    /// The first broken rule, with the SDK's message.
    pub fn check(&self) -> Result<(), String> {
        let to = self.to.as_deref().filter(|t| !t.is_empty()).ok_or("to is required")?;
        validate::email(to)?;
        check_identifiers(self.identifiers.as_ref(), false)?;
        if let Some(from) = self.from.as_deref().filter(|f| !f.is_empty()) {
            validate::email(from)?;
        }
        for address in self.bcc.iter().chain(&self.cc).flatten() {
            validate::email(address)?;
        }
        if let Some(reply_to) = self.reply_to.as_deref().filter(|r| !r.is_empty()) {
            validate::email(reply_to)?;
        }
        if self.send_at.is_some_and(|t| t < 0) {
            return Err("send_at must be a positive integer".into());
        }
        non_blank_if_present("body", self.body.as_ref())?;
        non_blank_if_present("amp_body", self.amp_body.as_ref())?;
        non_blank_if_present("plaintext_body", self.plaintext_body.as_ref())?;
        object_if_present("headers", self.headers.as_ref())?;
        if self.transactional_message_id.is_none() {
            let missing = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
            let errors: Vec<&str> = [
                (missing(&self.body), "body is required when not using a template"),
                (missing(&self.subject), "subject is required when not using a template"),
                (missing(&self.from), "from is required when not using a template"),
            ]
            .into_iter()
            .filter_map(|(m, message)| m.then_some(message))
            .collect();
            if !errors.is_empty() {
                return Err(format!("When not using a template: {}", errors.join(", ")));
            }
        }
        Ok(())
    }
}

// === push ===

/// A transactional push notification (`sendPush`, `POST {base}/v1/send/push`).
///
/// ```
/// use trackway::destination::opencdp::{Identifiers, SendPush};
/// let push = SendPush::new().identifiers(Identifiers::cdp_id("cdp-42")).template(7u64).title("Your order shipped");
/// ```
///
/// Checked before sending: `identifiers is required`, `identifiers must contain exactly one of:
/// id, email, or cdp_id`, `transactional_message_id is required` (also for `""` and `0`, as the
/// SDK), `body cannot be empty if provided`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[must_use]
pub struct SendPush {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "identifiers_object")]
    identifiers: Option<Identifiers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transactional_message_id: Option<TemplateId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_data: Option<Value>,
}

text_setters!(SendPush:
    /// The title (overrides the template's).
    title,
    /// The body (overrides the template's).
    body,
);

impl SendPush {
    /// A push with nothing set yet.
    pub fn new() -> Self {
        SendPush::default()
    }

    /// Whom it is for (`id`, `email` or `cdp_id`; required).
    pub fn identifiers(mut self, identifiers: Identifiers) -> Self {
        self.identifiers = Some(identifiers);
        self
    }

    /// The template (`transactional_message_id`; required).
    pub fn template(mut self, id: impl Into<TemplateId>) -> Self {
        self.transactional_message_id = Some(id.into());
        self
    }

    /// Data for the template.
    pub fn message_data(mut self, data: impl Into<Value>) -> Self {
        self.message_data = Some(data.into());
        self
    }

    /// The SDK's checks, in its order.
    ///
    /// # Errors
    /// The first broken rule, with the SDK's message.
    pub fn check(&self) -> Result<(), String> {
        check_identifiers(self.identifiers.as_ref(), true)?;
        if self.transactional_message_id.as_ref().is_none_or(TemplateId::is_missing) {
            return Err("transactional_message_id is required".into());
        }
        non_blank_if_present("body", self.body.as_ref())
    }
}

// === sms ===

/// A transactional SMS (`sendSms`, `POST {base}/v1/send/sms`): a template, or a body.
///
/// ```
/// use trackway::destination::opencdp::{Identifiers, SendSms};
/// let sms = SendSms::new().identifiers(Identifiers::id("user123")).to("+15551234567").body("Your code is 123456");
/// ```
///
/// Checked before sending: `identifiers is required`, `identifiers must contain exactly one of:
/// id, email, or cdp_id`, `body is required when not using a template`, `Phone number cannot be
/// empty` and `Phone number must be in international format (e.g., +1234567890)` (E.164, for
/// `to` and `from`), `body cannot be empty if provided`, `message_data must be an object`. A
/// numeric template id is sent as text, as the SDK does.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[must_use]
pub struct SendSms {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "identifiers_object")]
    identifiers: Option<Identifiers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transactional_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_data: Option<Value>,
}

text_setters!(SendSms:
    /// The recipient's phone number (E.164, e.g. `+15551234567`).
    to,
    /// The sender's phone number (E.164).
    from,
    /// The text (required without a template).
    body,
);

impl SendSms {
    /// An SMS with nothing set yet.
    pub fn new() -> Self {
        SendSms::default()
    }

    /// Whom it is for (`id`, `email` or `cdp_id`; required).
    pub fn identifiers(mut self, identifiers: Identifiers) -> Self {
        self.identifiers = Some(identifiers);
        self
    }

    /// The template (`transactional_message_id`, sent as text; an empty one is none).
    pub fn template(mut self, id: impl Into<TemplateId>) -> Self {
        self.transactional_message_id = match id.into() {
            TemplateId::Text(t) => Some(t).filter(|t| !t.is_empty()),
            TemplateId::Number(n) => Some(n.to_string()),
        };
        self
    }

    /// Data for the template (an object).
    pub fn message_data(mut self, data: impl Into<Value>) -> Self {
        self.message_data = Some(data.into());
        self
    }

    /// The SDK's checks, in its order.
    ///
    /// # Errors
    /// The first broken rule, with the SDK's message.
    pub fn check(&self) -> Result<(), String> {
        check_identifiers(self.identifiers.as_ref(), true)?;
        if self.transactional_message_id.is_none() && self.body.as_deref().is_none_or(str::is_empty) {
            return Err("body is required when not using a template".into());
        }
        for number in [&self.to, &self.from].into_iter().flatten().filter(|n| !n.is_empty()) {
            validate::phone(number)?;
        }
        non_blank_if_present("body", self.body.as_ref())?;
        object_if_present("message_data", self.message_data.as_ref())
    }
}

// === ping ===

/// `GET {base}/v1/health/ping` (`ping()`): is the endpoint there, and does it take the key?
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ping;

// === direct calls ===

/// The direct-call side of each message: checked, then POSTed as JSON.
macro_rules! post_call {
    ($ty:ident, $path:literal) => {
        impl DirectCall<OpenCdp> for $ty {
            type Output = Answer;
            fn request(&self, cdp: &OpenCdp) -> Result<Request, DirectError> {
                self.check().map_err(DirectError::Invalid)?;
                Ok(json_request(cdp, &cdp.url($path), json_body(self)?, Vec::new()))
            }
            fn read(self, _: &OpenCdp, response: Response) -> Result<Answer, DirectError> {
                Answer::read(response)
            }
        }
    };
}

post_call!(SendEmail, "/v1/send/email");
post_call!(SendPush, "/v1/send/push");
post_call!(SendSms, "/v1/send/sms");

impl DirectCall<OpenCdp> for Ping {
    type Output = Answer;
    fn request(&self, cdp: &OpenCdp) -> Result<Request, DirectError> {
        Ok(cdp.authorize(Request::get(&cdp.url("/v1/health/ping"))))
    }
    fn read(self, _: &OpenCdp, response: Response) -> Result<Answer, DirectError> {
        Answer::read(response)
    }
}

/// OpenCDP's transactional messages and `ping`, on `client.direct::<OpenCdp>()`.
///
/// ```
/// use trackway::{Client, destination::opencdp::{Identifiers, OpenCdp, OpenCdpConfig, SendEmail}, store::MemoryStore};
/// # let collector = trackway_collector::Collector::start().unwrap();
/// let client = Client::builder()
///     .destinations(OpenCdpConfig::new("your-cdp-key").endpoint(collector.url("/gateway/data-gateway")))
///     .store(MemoryStore::new())
///     .build()?;
/// let cdp = client.direct::<OpenCdp>()?;
/// cdp.ping_blocking()?;
/// let sent = cdp.send_email_blocking(
///     SendEmail::new().to("jane@example.com").identifiers(Identifiers::id("user123")).template("welcome"),
/// )?;
/// assert_eq!(sent.status, 200);
/// let invalid = cdp.send_email_blocking(SendEmail::new().to("jane@").identifiers(Identifiers::id("u")));
/// assert_eq!(invalid.unwrap_err().to_string(), "Invalid email address format");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl Direct<OpenCdp> {
    /// Sends a transactional email and awaits the server's answer (from any async runtime).
    ///
    /// # Errors
    /// [`DirectError::Invalid`] with the SDK's message (nothing sent), or how sending failed.
    pub async fn send_email(&self, email: SendEmail) -> Result<Answer, DirectError> {
        self.call(email).await
    }

    /// [`send_email`](Self::send_email) for sync code.
    ///
    /// # Errors
    /// As [`send_email`](Self::send_email).
    pub fn send_email_blocking(&self, email: SendEmail) -> Result<Answer, DirectError> {
        self.call_blocking(email)
    }

    /// Sends a transactional push notification and awaits the server's answer.
    ///
    /// # Errors
    /// [`DirectError::Invalid`] with the SDK's message (nothing sent), or how sending failed.
    pub async fn send_push(&self, push: SendPush) -> Result<Answer, DirectError> {
        self.call(push).await
    }

    /// [`send_push`](Self::send_push) for sync code.
    ///
    /// # Errors
    /// As [`send_push`](Self::send_push).
    pub fn send_push_blocking(&self, push: SendPush) -> Result<Answer, DirectError> {
        self.call_blocking(push)
    }

    /// Sends a transactional SMS and awaits the server's answer.
    ///
    /// # Errors
    /// [`DirectError::Invalid`] with the SDK's message (nothing sent), or how sending failed.
    pub async fn send_sms(&self, sms: SendSms) -> Result<Answer, DirectError> {
        self.call(sms).await
    }

    /// [`send_sms`](Self::send_sms) for sync code.
    ///
    /// # Errors
    /// As [`send_sms`](Self::send_sms).
    pub fn send_sms_blocking(&self, sms: SendSms) -> Result<Answer, DirectError> {
        self.call_blocking(sms)
    }

    /// Pings the endpoint (`GET /v1/health/ping`): `Ok` when it answers 2xx, so the endpoint,
    /// the network and the key work. Do not ping before each call.
    ///
    /// # Errors
    /// [`DirectError::Status`] (401: the key is wrong), or how sending failed.
    pub async fn ping(&self) -> Result<Answer, DirectError> {
        self.call(Ping).await
    }

    /// [`ping`](Self::ping) for sync code.
    ///
    /// # Errors
    /// As [`ping`](Self::ping).
    pub fn ping_blocking(&self) -> Result<Answer, DirectError> {
        self.call_blocking(Ping)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trackway_wire::props;

    use super::*;

    fn to_json(value: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(value).expect("json")
    }

    #[test]
    fn email_bodies_carry_the_sdks_keys() {
        let email = SendEmail::new()
            .to("jane@example.com")
            .identifiers(Identifiers::id("u1"))
            .template(12u64)
            .message_data(props! { "name" => "Jane" })
            .amp_body("<amp/>")
            .plaintext_body("hi")
            .bcc(["b@example.com"])
            .send_at(0)
            .tracked(true);
        assert_eq!(email.check(), Ok(()));
        assert_eq!(
            to_json(&email),
            json!({"to": "jane@example.com", "identifiers": {"id": "u1"}, "message_data": {"name": "Jane"},
                   "send_at": 0, "bcc": ["b@example.com"], "tracked": true, "transactional_message_id": 12,
                   "body_amp": "<amp/>", "body_plain": "hi"})
        );
    }

    #[test]
    fn email_checks_use_the_sdks_messages() {
        let base = || SendEmail::new().to("jane@example.com").identifiers(Identifiers::id("u")).template("t");
        let err = |e: SendEmail| e.check().unwrap_err();
        assert_eq!(err(SendEmail::new()), "to is required");
        assert_eq!(err(SendEmail::new().to("")), "to is required");
        assert_eq!(err(SendEmail::new().to("  ")), "Email address cannot be empty");
        assert_eq!(err(SendEmail::new().to("jane")), "Invalid email address format");
        assert_eq!(err(SendEmail::new().to("a@b.co")), "identifiers is required");
        let msg = "identifiers must contain exactly one of: id, email, or cdp_id";
        assert_eq!(err(SendEmail::new().to("a@b.co").identifiers(Identifiers::id(""))), msg);
        assert_eq!(err(SendEmail::new().to("a@b.co").identifiers(Identifiers::cdp_id("c"))), msg);
        assert_eq!(err(base().from("nope")), "Invalid email address format");
        assert_eq!(err(base().cc(["ok@b.co", "bad"])), "Invalid email address format");
        assert_eq!(err(base().bcc(["bad"])), "Invalid email address format");
        assert_eq!(err(base().reply_to("bad")), "Invalid email address format");
        assert_eq!(err(base().send_at(-1)), "send_at must be a positive integer");
        assert_eq!(err(base().body(" ")), "body cannot be empty if provided");
        assert_eq!(err(base().amp_body("")), "amp_body cannot be empty if provided");
        assert_eq!(err(base().plaintext_body("\n")), "plaintext_body cannot be empty if provided");
        assert_eq!(err(base().headers(Value::from(vec![1]))), "headers must be an object");
        let raw = || SendEmail::new().to("jane@example.com").identifiers(Identifiers::email("jane@example.com"));
        assert_eq!(
            err(raw()),
            "When not using a template: body is required when not using a template, subject is required when not \
             using a template, from is required when not using a template"
        );
        assert_eq!(
            err(raw().body("<p>x</p>").from("a@b.co")),
            "When not using a template: subject is required when not using a template"
        );
        assert_eq!(raw().body("<p>x</p>").subject("s").from("a@b.co").check(), Ok(()));
        assert_eq!(base().headers(props! { "X-Tag" => "a" }).check(), Ok(()));
    }

    #[test]
    fn push_checks_and_body() {
        let err = |p: SendPush| p.check().unwrap_err();
        assert_eq!(err(SendPush::new()), "identifiers is required");
        let msg = "identifiers must contain exactly one of: id, email, or cdp_id";
        assert_eq!(err(SendPush::new().identifiers(Identifiers::email(""))), msg);
        let who = || SendPush::new().identifiers(Identifiers::cdp_id("c1"));
        assert_eq!(err(who()), "transactional_message_id is required");
        assert_eq!(err(who().template("")), "transactional_message_id is required");
        assert_eq!(err(who().template(0u64)), "transactional_message_id is required");
        assert_eq!(err(who().template(3u64).body(" ")), "body cannot be empty if provided");
        let push = who().template(3u64).title("T").message_data(props! { "k" => 1 });
        assert_eq!(push.check(), Ok(()));
        assert_eq!(
            to_json(&push),
            json!({"identifiers": {"cdp_id": "c1"}, "transactional_message_id": 3, "title": "T", "message_data": {"k": 1}})
        );
    }

    #[test]
    fn sms_checks_and_body() {
        let err = |s: SendSms| s.check().unwrap_err();
        assert_eq!(err(SendSms::new()), "identifiers is required");
        let who = || SendSms::new().identifiers(Identifiers::id("u"));
        assert_eq!(err(who()), "body is required when not using a template");
        assert_eq!(err(who().template("")), "body is required when not using a template");
        assert_eq!(
            err(who().template(5u64).to("0123")),
            "Phone number must be in international format (e.g., +1234567890)"
        );
        assert_eq!(err(who().template(5u64).from(" ")), "Phone number cannot be empty");
        assert_eq!(err(who().template(5u64).body(" ")), "body cannot be empty if provided");
        assert_eq!(err(who().body("x").message_data(Value::from("text"))), "message_data must be an object");
        let sms = who().template(5u64).to("+15551234567");
        assert_eq!(sms.check(), Ok(()));
        assert_eq!(
            to_json(&sms),
            json!({"identifiers": {"id": "u"}, "transactional_message_id": "5", "to": "+15551234567"})
        );
    }
}
