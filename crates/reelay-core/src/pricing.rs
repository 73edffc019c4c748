//! What each model costs; configurable, with RunBlob-like defaults.

use std::collections::BTreeMap;

use crate::{Credits, Model};

/// The price list. Every model has a price, so a lookup cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prices(BTreeMap<Model, Credits>);

impl Default for Prices {
    fn default() -> Self {
        Self(BTreeMap::from([
            (Model::Veo3Fast, Credits::from_units(2_500)),
            (Model::Veo3Quality, Credits::from_units(10_000)),
        ]))
    }
}

impl Prices {
    /// The defaults with some prices replaced. A negative price is refused.
    pub fn with_overrides(
        overrides: impl IntoIterator<Item = (Model, Credits)>,
    ) -> Result<Self, String> {
        let mut prices = Self::default();
        for (model, price) in overrides {
            if price < Credits::ZERO {
                return Err(format!("the price of {model} cannot be negative"));
            }
            prices.0.insert(model, price);
        }
        Ok(prices)
    }

    pub fn of(&self, model: Model) -> Credits {
        self.0[&model]
    }

    pub fn iter(&self) -> impl Iterator<Item = (Model, Credits)> + '_ {
        self.0.iter().map(|(m, c)| (*m, *c))
    }
}
