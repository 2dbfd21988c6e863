//! [`OpenCdpConfig`]: the SDK's constructor options, and the destinations they stand for.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::OpenCdp;
use crate::config::HttpOptions;
use crate::destination::{Destination, DestinationSet};

/// The SDK's default endpoint (`cdpEndpoint`).
pub const DEFAULT_ENDPOINT: &str = "https://api.opencdp.io/gateway/data-gateway";

/// The fallback endpoints the SDK's `server-failover` branch uses by default. trackway uses none
/// unless asked ([`OpenCdpConfig::fallback_endpoints`]): a fallback receives the API key, so
/// which domains get it is the user's choice.
pub const EXAMPLE_FALLBACK_ENDPOINTS: [&str; 2] =
    ["https://api.opencdp.com/gateway/data-gateway", "https://api.opencdp.xyz/gateway/data-gateway"];

/// Requests in flight at once by default (`maxConcurrentRequests`).
pub const DEFAULT_CONCURRENCY: usize = 10;

/// The most requests in flight at once; more is capped to this, with a warning (as the SDK does).
pub const MAX_CONCURRENCY: usize = 30;

/// The OpenCDP SDK's configuration (`CDPConfig`, spec §1.1), given to
/// [`ClientBuilder::destinations`](crate::ClientBuilder::destinations). It makes the
/// [`OpenCdp`] destination, named `opencdp` unless renamed.
///
/// | SDK option | here | default |
/// |---|---|---|
/// | `cdpApiKey` | [`new`](Self::new) | required; sent raw as `Authorization` |
/// | `cdpEndpoint` | [`endpoint`](Self::endpoint) | [`DEFAULT_ENDPOINT`] |
/// | `cdpFallbackEndpoints` | [`fallback_endpoints`](Self::fallback_endpoints) | none (opt-in; the SDK's list is [`EXAMPLE_FALLBACK_ENDPOINTS`]) |
/// | `timeout` | [`timeout`](Self::timeout) | 10 s |
/// | `maxConcurrentRequests` | [`max_concurrent_requests`](Self::max_concurrent_requests) | 10, at most 30 |
/// | `sendToCustomerIo`, `customerIo` | [`customer_io`](Self::customer_io) (feature `customerio`) | off |
/// | `debug`, `cdpLogger` | `tracing` (errors are always logged and counted) | |
/// | `failOnException` | calls always return their errors | |
///
/// The API key never appears in `Debug` output, logs or errors:
///
/// ```
/// use trackway::destination::opencdp::OpenCdpConfig;
/// let config = OpenCdpConfig::new("s3cr3t-key").fallback_endpoints(["https://backup.example.com/gateway"]);
/// assert!(!format!("{config:?}").contains("s3cr3t"));
/// ```
#[must_use]
#[derive(Clone)]
pub struct OpenCdpConfig {
    name: String,
    api_key: String,
    endpoint: String,
    fallbacks: Vec<String>,
    timeout: Option<Duration>,
    concurrency: usize,
    http: HttpOptions,
    /// The dual-write's Customer.io destination and its HTTP options.
    customer_io: Option<(Arc<dyn Destination>, HttpOptions)>,
}

impl fmt::Debug for OpenCdpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenCdpConfig")
            .field("name", &self.name)
            .field("api_key", &"[redacted]")
            .field("endpoint", &crate::destination::redact_url(&self.endpoint))
            .field("fallbacks", &self.fallbacks.iter().map(|u| crate::destination::redact_url(u)).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("http", &self.http)
            .field("customer_io", &self.customer_io.as_ref().map(|(d, _)| d.name()))
            .finish()
    }
}

impl OpenCdpConfig {
    /// A configuration with the API key (`cdpApiKey`) and the SDK's defaults.
    pub fn new(api_key: impl Into<String>) -> Self {
        OpenCdpConfig {
            name: "opencdp".to_owned(),
            api_key: api_key.into(),
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            fallbacks: Vec::new(),
            timeout: None,
            concurrency: DEFAULT_CONCURRENCY,
            http: HttpOptions::default(),
            customer_io: None,
        }
    }

    /// Renames the destination (default `opencdp`; names key its delivery state in the store).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The base URL of every call (`cdpEndpoint`; a trailing `/` is ignored). Default:
    /// [`DEFAULT_ENDPOINT`].
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = url.into();
        self
    }

    /// Endpoints to fail over to, in order (`cdpFallbackEndpoints`): see the [module
    /// docs](super#answers-and-failover) for when. Default: none. The SDK's own list is
    /// [`EXAMPLE_FALLBACK_ENDPOINTS`]; pass it only if you want your key sent to those domains.
    pub fn fallback_endpoints<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.fallbacks = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The whole-request timeout of every call (`timeout`; default 10 s). A transactional
    /// message whose request timed out is not sent again: it may have arrived.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// Most requests in flight at once (`maxConcurrentRequests`): events and, separately,
    /// transactional messages each get this many. Default 10; 0 means the default, and more
    /// than [`MAX_CONCURRENCY`] (30) is capped with a warning, as the SDK does.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Other HTTP settings (proxy, CA, user agent, retry policy, rate cap). The timeout and
    /// fallbacks set here win over theirs.
    pub fn http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }

    /// Dual-writes to Customer.io (`sendToCustomerIo` with `customerIo`): every identify, track
    /// and device registration also goes to `cio`, a destination of its own with its own
    /// cursor, retries and stats, so an outage of either never blocks, delays or drops the
    /// other's writes (unlike the SDK with `failOnException`, which skips the OpenCDP write when
    /// Customer.io fails). Transactional messages are never dual-written.
    ///
    /// The calls map as the SDK's (spec §1.6), without its hazards: identify → `PUT
    /// /customers/{id}` (a `created_at` timestamp as Unix seconds), track → an event with its
    /// own timestamp and the message id as a ULID (a retry is deduplicated), register_device →
    /// a device whose id is the push token (`apnToken` on ios when given, else `fcmToken`); a
    /// `web` device is not sent (Customer.io has no such platform) and counted as skipped.
    ///
    /// ```
    /// use trackway::destination::customerio::{CustomerIo, Region};
    /// use trackway::destination::opencdp::OpenCdpConfig;
    /// let config = OpenCdpConfig::new("your-cdp-key")
    ///     .customer_io(CustomerIo::new("your-site-id", "your-api-key").region(Region::Eu));
    /// ```
    #[cfg(feature = "customerio")]
    pub fn customer_io(self, cio: crate::destination::customerio::CustomerIo) -> Self {
        self.customer_io_with(cio, HttpOptions::default())
    }

    /// [`customer_io`](Self::customer_io) with the Customer.io destination's own HTTP options
    /// (its timeout is its own, 10 s by default, as in the SDK).
    #[cfg(feature = "customerio")]
    pub fn customer_io_with(mut self, cio: crate::destination::customerio::CustomerIo, http: HttpOptions) -> Self {
        // Customer.io reads this client's device registrations as devices.
        let cio = cio.opencdp_device_event(Some(crate::device::DEVICE_EVENT));
        self.customer_io = Some((Arc::new(cio), http));
        self
    }

    /// Checks what `build()` would refuse of the OpenCDP side: the key, the endpoint and the
    /// fallback endpoints (a configuration file can say so when it is read).
    ///
    /// # Errors
    /// What to fix; the key is never quoted.
    pub fn check(&self) -> Result<(), String> {
        let (opencdp, _) = self.opencdp();
        opencdp.check_config()?;
        for url in &self.fallbacks {
            crate::destination::parse_http_url("fallback endpoint", url)?;
        }
        Ok(())
    }

    /// The concurrency the SDK's rule gives: 0 → the default, above the cap → the cap.
    fn effective_concurrency(&self) -> usize {
        match self.concurrency {
            0 => DEFAULT_CONCURRENCY,
            n if n > MAX_CONCURRENCY => {
                tracing::warn!(
                    "[CDP] maxConcurrentRequests ({n}) exceeds limit. Using capped value: {MAX_CONCURRENCY}"
                );
                MAX_CONCURRENCY
            }
            n => n,
        }
    }

    /// The OpenCDP destination and its HTTP options.
    pub(crate) fn opencdp(&self) -> (OpenCdp, HttpOptions) {
        let authorization = if self.api_key.trim().is_empty() {
            Err("the API key is empty".to_owned())
        } else {
            http::HeaderValue::from_str(&self.api_key)
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                // Never echo the key: say what is wrong with it.
                .map_err(|_| "the API key contains characters a header cannot carry (e.g. a line break)".to_owned())
        };
        let destination = OpenCdp {
            name: self.name.clone(),
            base: self.endpoint.trim_end_matches('/').to_owned(),
            authorization,
            concurrency: self.effective_concurrency(),
        };
        (destination, OpenCdp::http_options(self.http.clone(), self.timeout, &self.fallbacks))
    }
}

impl DestinationSet for OpenCdpConfig {
    fn expand(self) -> Vec<(Arc<dyn Destination>, HttpOptions)> {
        let (opencdp, http) = self.opencdp();
        let mut set = vec![(Arc::new(opencdp) as Arc<dyn Destination>, http)];
        set.extend(self.customer_io);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_follows_the_sdks_rule() {
        let c = |n| OpenCdpConfig::new("k").max_concurrent_requests(n).effective_concurrency();
        assert_eq!((c(0), c(1), c(30), c(31), c(500)), (10, 1, 30, 30, 30));
        assert_eq!(OpenCdpConfig::new("k").effective_concurrency(), DEFAULT_CONCURRENCY);
    }

    #[test]
    fn the_key_is_checked_without_being_echoed() {
        let (d, _) = OpenCdpConfig::new("  ").opencdp();
        assert_eq!(d.check_config().unwrap_err(), "the API key is empty");
        let (d, _) = OpenCdpConfig::new("bad\nkey-s3cr3t").opencdp();
        let err = d.check_config().unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        let (d, http) = OpenCdpConfig::new("k").endpoint("https://cdp.example.com/gw/").opencdp();
        assert_eq!(d.base_url(), Some("https://cdp.example.com/gw"));
        assert!(d.check_config().is_ok());
        assert!(http.fallback_base_urls.is_empty(), "fallbacks are opt-in");
        assert!(!format!("{d:?}").contains("k\""));
    }
}
