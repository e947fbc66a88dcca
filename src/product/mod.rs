//! The data products dpss-sync syncs, each a declaration (`declaration.rs`) read from TOML: the
//! built-in ones beside this file (`hid_work_orders.toml`, `atm_temperature_stats.toml`) and any
//! an operator declares under `[catalog.<name>]`, read by the same parser with the same fields.
//! A [`Product`] is a copyable handle to one; every stage reads what it needs from it.

mod declaration;
mod parse;

use std::collections::BTreeMap;
use std::sync::OnceLock;

pub use declaration::{
    ColumnDecl, Declaration, Filter, Kind, QUARANTINE_EXTRA, WindowToken, fold, timestamp,
};
pub use parse::DeclarationError;

/// A product: a handle to its declaration, which lives as long as the process (a catalog is
/// read once, at start). Compared, ordered and hashed by name.
#[derive(Clone, Copy)]
pub struct Product(&'static Declaration);

impl Product {
    pub fn config_name(self) -> &'static str {
        &self.0.name
    }

    pub fn declaration(self) -> &'static Declaration {
        self.0
    }

    pub fn data_product_id(self) -> &'static str {
        &self.0.data_product
    }
}

impl std::ops::Deref for Product {
    type Target = Declaration;
    fn deref(&self) -> &Declaration {
        self.0
    }
}

impl PartialEq for Product {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Product {}

impl PartialOrd for Product {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Product {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

impl std::hash::Hash for Product {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.hash(state)
    }
}

impl std::fmt::Debug for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.name)
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.name)
    }
}

/// The built-in declarations, as TOML.
const BUILTIN: [(&str, &str); 2] = [
    ("hid_work_orders", include_str!("hid_work_orders.toml")),
    (
        "atm_temperature_stats",
        include_str!("atm_temperature_stats.toml"),
    ),
];

/// A declaration's TOML as a tree, read by the `config` crate's TOML reader, as the
/// configuration's own files are (so a built-in and an operator's declaration read alike).
pub fn toml_tree(text: &str) -> Result<serde_json::Value, String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| e.to_string())
}

/// A declaration checked and made a product for the life of the process.
pub fn declare(name: &str, tree: &serde_json::Value) -> Result<Product, DeclarationError> {
    let d = parse::parse(name, tree)?;
    Ok(Product(Box::leak(Box::new(d))))
}

/// The built-in products, in name order. Their TOML is part of the binary and a unit test
/// reads it, so a broken built-in never ships.
pub fn builtins() -> &'static [Product] {
    static BUILT: OnceLock<Vec<Product>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut all: Vec<Product> = BUILTIN
            .iter()
            .map(|(name, text)| {
                let tree = toml_tree(text).expect("a built-in declaration is TOML");
                declare(name, &tree).expect("a built-in declaration is valid")
            })
            .collect();
        all.sort();
        all
    })
}

/// A built-in product by name.
pub fn builtin(name: &str) -> Option<Product> {
    builtins().iter().copied().find(|p| p.config_name() == name)
}

/// The products one configuration knows: the built-ins, and those it declares.
#[derive(Debug, Clone)]
pub struct Catalog {
    products: BTreeMap<&'static str, Product>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            products: builtins().iter().map(|p| (p.config_name(), *p)).collect(),
        }
    }
}

impl Catalog {
    /// Adds a declared product; false when a product of that name is there already.
    pub fn add(&mut self, p: Product) -> bool {
        if self.products.contains_key(p.config_name()) {
            return false;
        }
        self.products.insert(p.config_name(), p);
        true
    }

    pub fn get(&self, name: &str) -> Option<Product> {
        self.products.get(name).copied()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.products.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = Product> + '_ {
        self.products.values().copied()
    }
}

#[cfg(test)]
mod tests;

/// The built-in products, and column positions by name, for the crate's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Product, builtin};

    pub(crate) fn hid() -> Product {
        builtin("hid_work_orders").expect("built in")
    }

    pub(crate) fn atm() -> Product {
        builtin("atm_temperature_stats").expect("built in")
    }

    /// The declared position of the column `lake` of `product`.
    pub(crate) fn col(product: Product, lake: &str) -> usize {
        product
            .columns
            .iter()
            .position(|c| c.lake == lake)
            .unwrap_or_else(|| panic!("{product} has no column {lake}"))
    }
}
