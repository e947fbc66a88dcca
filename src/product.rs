//! The data products dpss-sync knows: their vendor column names, lake table and schema.
//!
//! Only HID work order details exists today. Everything product-specific lives here so that a
//! second product is a new variant, not a hunt through the pipeline.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Product {
    HidWorkOrders,
}

/// A source column of the vendor's export, in the order the lake schema keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    ServicePointId,
    Phase,
    IssueId,
    Status,
    StatusDatetime,
    Reason,
    EventDate,
    WorkOrderId,
}

impl Column {
    pub const ALL: [Column; 8] = [
        Column::ServicePointId,
        Column::Phase,
        Column::IssueId,
        Column::Status,
        Column::StatusDatetime,
        Column::Reason,
        Column::EventDate,
        Column::WorkOrderId,
    ];

    /// The vendor's name as its data table spells it.
    pub fn vendor_name(self) -> &'static str {
        match self {
            Column::ServicePointId => "ServicePointId",
            Column::Phase => "Phase",
            Column::IssueId => "IssueId",
            Column::Status => "Status",
            Column::StatusDatetime => "StatusDatetime",
            Column::Reason => "Reason",
            Column::EventDate => "EventDate",
            Column::WorkOrderId => "WorkOrderId",
        }
    }

    /// The lake's snake_case name.
    pub fn lake_name(self) -> &'static str {
        match self {
            Column::ServicePointId => "service_point_id",
            Column::Phase => "phase",
            Column::IssueId => "issue_id",
            Column::Status => "status",
            Column::StatusDatetime => "status_datetime",
            Column::Reason => "reason",
            Column::EventDate => "event_date",
            Column::WorkOrderId => "work_order_id",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Matches a header or key however the source cased or separated it (`IssueID`, `Issueid`,
    /// `issue_id`, `Status DateTime`): the vendor's examples use all of these.
    pub fn from_header(name: &str) -> Option<Column> {
        let folded: String = name
            .trim()
            .trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Column::ALL.into_iter().find(|c| {
            c.vendor_name().eq_ignore_ascii_case(&folded)
                || c.lake_name().replace('_', "") == folded
        })
    }
}

impl Product {
    pub const ALL: [Product; 1] = [Product::HidWorkOrders];

    pub fn config_name(self) -> &'static str {
        match self {
            Product::HidWorkOrders => "hid_work_orders",
        }
    }

    pub fn from_config_name(name: &str) -> Option<Product> {
        Self::ALL.into_iter().find(|p| p.config_name() == name)
    }

    pub fn config_names() -> Vec<&'static str> {
        Self::ALL.iter().map(|p| p.config_name()).collect()
    }

    pub fn data_product_id(self) -> &'static str {
        match self {
            Product::HidWorkOrders => "82624588-c005-4cbb-bc7d-420a2332f1ef",
        }
    }

    /// The batch token that selects one UTC day of status changes.
    pub fn day_token(self) -> &'static str {
        match self {
            Product::HidWorkOrders => "StatusDatetime",
        }
    }

    /// The lake schema of DESIGN.md; the partition column lives in the path only.
    pub fn lake_schema(self) -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("service_point_id", DataType::Utf8, false),
            Field::new("phase", DataType::Int8, false),
            Field::new("issue_id", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("status_datetime", ts.clone(), false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("work_order_id", DataType::Utf8, false),
            Field::new("_job_id", DataType::Utf8, false),
            Field::new("_ingested_at", ts, false),
        ]))
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.config_name())
    }
}

impl std::str::FromStr for Product {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Product::from_config_name(s).ok_or_else(|| {
            format!(
                "unknown product `{s}` (known: {})",
                Product::config_names().join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_in_any_casing() {
        assert_eq!(Column::from_header("IssueID"), Some(Column::IssueId));
        assert_eq!(Column::from_header("Issueid"), Some(Column::IssueId));
        assert_eq!(
            Column::from_header("\u{feff}ServicePointId"),
            Some(Column::ServicePointId)
        );
        assert_eq!(
            Column::from_header("status_datetime"),
            Some(Column::StatusDatetime)
        );
        assert_eq!(
            Column::from_header("StatusDateTime"),
            Some(Column::StatusDatetime)
        );
        assert_eq!(
            Column::from_header("work order id"),
            Some(Column::WorkOrderId)
        );
        assert_eq!(Column::from_header(""), None);
        assert_eq!(Column::from_header("Feeder"), None);
    }
}
