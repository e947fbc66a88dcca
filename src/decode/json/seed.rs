//! Reading one row object: keys matched to columns once per spelling, values as text borrowed
//! from the element where they have no escapes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::product::Product;

/// Distinct key spellings remembered with their column: a file with a million distinct keys
/// costs this many entries, the rest are looked up each time.
const MAX_KEYS: usize = 1024;

/// The keys met in row objects: each spelling's declared column (up to [`MAX_KEYS`]
/// spellings), and which columns some row named.
pub(super) struct Keys {
    pub(super) product: Product,
    pub(super) columns: HashMap<String, Option<usize>>,
    pub(super) named: Vec<bool>,
}

impl Keys {
    pub(super) fn new(product: Product) -> Self {
        Self {
            product,
            columns: HashMap::new(),
            named: vec![false; product.columns.len()],
        }
    }
}

/// A row's cells by declared column (the last of a repeated key wins), or `None` when the
/// value is not an object.
pub(super) type Cells<'de> = Option<Vec<Option<Cow<'de, str>>>>;

pub(super) struct RowSeed<'k>(pub(super) &'k mut Keys);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Cells<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cells<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Cells<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cells<'de>, A::Error> {
        let mut cells: Vec<Option<Cow<'de, str>>> = vec![None; self.0.named.len()];
        let product = self.0.product;
        while let Some(col) = map.next_key_seed(KeySeed(product, &mut self.0.columns))? {
            match col {
                Some(c) => {
                    self.0.named[c] = true;
                    cells[c] = map.next_value_seed(CellSeed)?
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(cells))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cells<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Cells<'de>, E> {
        Ok(None)
    }
}

/// A key, mapped to its declared column once per distinct spelling.
struct KeySeed<'k>(Product, &'k mut HashMap<String, Option<usize>>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, k: &str) -> Result<Option<usize>, E> {
        if let Some(c) = self.1.get(k) {
            return Ok(*c);
        }
        let c = self.0.column_of(k);
        if self.1.len() < MAX_KEYS {
            self.1.insert(k.to_string(), c);
        }
        Ok(c)
    }
}

/// A value as text: strings borrowed where they have no escapes, numbers and booleans
/// written out, null and empty containers absent, other containers as their JSON.
struct CellSeed;

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(
            serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string()),
        )))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(container_text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(container_text(v))
    }
}

fn container_text(v: Value) -> Option<Cow<'static, str>> {
    crate::model::scalar_text(&v).map(Cow::Owned)
}
