//! A data product the simulator serves, behind one subscription: its discovery tokens, how it
//! reads a request's tokens, and the rows a request selects. The protocol around it (tokens,
//! jobs, links, faults) is the same for every product, as the vendor's is.

use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

use super::SimState;
use super::record::{Columns, Record};

/// What one batch request or on-demand call asked of a product.
pub trait Query: Send + Sync {
    /// The one day the request selects, if it selects one (a day window).
    fn day(&self) -> Option<NaiveDate>;
    /// Every row the request selects in the data as of `as_of`, in export order, until `emit`
    /// says stop.
    fn rows(
        &self,
        s: &SimState,
        today: NaiveDate,
        as_of: DateTime<Utc>,
        emit: &mut dyn FnMut(Record) -> bool,
    );
}

/// A product the simulator serves.
pub trait Served: Send + Sync {
    /// The columns its exports write.
    fn columns(&self) -> &Columns;
    /// Its tokens as parameter discovery lists them: name, type, whether a list.
    fn discovery(&self) -> Vec<(String, &'static str, bool)>;
    /// The token that must be there for a vendor refusing unfiltered exports (`no-history`).
    fn day_token(&self) -> &str;
    /// Reads a request's tokens: names in any casing, `""` for not supplied, an unknown name or
    /// a bad value a 400 naming it.
    fn query(&self, tokens: &Map<String, Value>) -> Result<Box<dyn Query>, Box<Response>>;
}

/// The token named `name` among `tokens`, in any casing.
pub(super) fn lookup<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// The supplied tokens as (name, text): `""` and null are not supplied.
pub(super) fn supplied(tokens: &Map<String, Value>) -> Vec<(&String, String)> {
    tokens
        .iter()
        .filter_map(|(name, value)| {
            let text = match value {
                Value::String(s) => s.trim().to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (!text.is_empty()).then_some((name, text))
        })
        .collect()
}
