//! Named limits and timeouts of the delivery engine, in one place so they can be read and tuned
//! together.

use std::time::Duration;

/// Response bodies are read up to this size; dead letters keep an excerpt.
pub(crate) const MAX_RESPONSE_BODY: usize = 1 << 20;

/// Redirects followed for one request (as browsers and reqwest's default policy allow, minus the
/// method change).
pub(crate) const MAX_REDIRECTS: usize = 5;

/// After failing over to a fallback base URL, how long before the primary is tried again.
pub(crate) const FALLBACK_PRIMARY_RETRY: Duration = Duration::from_secs(300);
