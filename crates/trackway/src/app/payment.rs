//! Payments: the Bloomreach SDK's `trackPaymentEvent(PurchasedItem)` as a `payment` event.

use trackway_wire::{Properties, Timestamp};

use crate::Error;

/// A payment for a product or service ([`Client::track_payment`](crate::Client::track_payment)),
/// tracked as a `payment` event with the properties `brutto`, `currency`, `payment_system`,
/// `item_id`, `product_title` and `receipt` (the names Bloomreach uses).
///
/// ```
/// use trackway::Payment;
/// let item = Payment::new(0.99, "EUR")
///     .payment_system("Virtual")
///     .product_id("android.test.purchased")
///     .product_title("Silver sword")
///     .receipt("receipt-123");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct Payment {
    value: f64,
    currency: String,
    payment_system: Option<String>,
    product_id: Option<String>,
    product_title: Option<String>,
    receipt: Option<String>,
    timestamp: Option<Timestamp>,
}

impl Payment {
    /// A payment of `value` (gross) in `currency` (e.g. `EUR`).
    pub fn new(value: f64, currency: impl Into<String>) -> Self {
        Payment {
            value,
            currency: currency.into(),
            payment_system: None,
            product_id: None,
            product_title: None,
            receipt: None,
            timestamp: None,
        }
    }

    /// The payment system, e.g. `Google Play`.
    pub fn payment_system(mut self, system: impl Into<String>) -> Self {
        self.payment_system = Some(system.into());
        self
    }

    /// The product (SKU) id.
    pub fn product_id(mut self, id: impl Into<String>) -> Self {
        self.product_id = Some(id.into());
        self
    }

    /// The product's title.
    pub fn product_title(mut self, title: impl Into<String>) -> Self {
        self.product_title = Some(title.into());
        self
    }

    /// The store's receipt.
    pub fn receipt(mut self, receipt: impl Into<String>) -> Self {
        self.receipt = Some(receipt.into());
        self
    }

    /// When the payment happened, if not now (the seed's `trackPaymentEvent(item, timestamp:)`).
    pub fn timestamp(mut self, at: Timestamp) -> Self {
        self.timestamp = Some(at);
        self
    }

    /// The time the caller gave, if any.
    pub(crate) fn at(&self) -> Option<Timestamp> {
        self.timestamp
    }

    /// Checks the payment and turns it into event properties.
    pub(crate) fn into_properties(self) -> Result<Properties, Error> {
        if !self.value.is_finite() {
            return Err(Error::InvalidPayment(format!("value must be a finite number, got {}", self.value)));
        }
        if self.currency.trim().is_empty() {
            return Err(Error::InvalidPayment("currency cannot be empty (an ISO 4217 code such as EUR)".into()));
        }
        let mut p = Properties::with_capacity(6).with("brutto", self.value).with("currency", self.currency);
        let optional = [
            ("payment_system", self.payment_system),
            ("item_id", self.product_id),
            ("product_title", self.product_title),
            ("receipt", self.receipt),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                p.insert(key, v);
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_use_bloomreach_names_and_absent_ones_are_omitted() {
        let p = Payment::new(9.99, "EUR").product_id("sku-1").into_properties().expect("valid");
        assert_eq!(serde_json::to_string(&p).expect("json"), r#"{"brutto":9.99,"currency":"EUR","item_id":"sku-1"}"#);
    }

    #[test]
    fn nan_value_and_empty_currency_are_refused() {
        assert!(Payment::new(f64::NAN, "EUR").into_properties().is_err());
        let e = Payment::new(1.0, " ").into_properties().unwrap_err();
        assert!(e.to_string().contains("currency"), "{e}");
    }
}
