//! The guest's interest: which parts of each span the host must extract into the span-view
//! batch. Mirrors the WIT `interest` record.

/// The resource attribute every configuration reads: the service of a span.
pub const SERVICE_NAME: &str = "service.name";

/// What the host extracts from each span for the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interest {
    /// Span attribute keys the policies read.
    pub span_attributes: Vec<String>,
    /// Resource attribute keys the policies read.
    pub resource_attributes: Vec<String>,
    /// Send every span attribute (keys inline).
    pub all_span_attributes: bool,
    /// Send every resource attribute (keys inline).
    pub all_resource_attributes: bool,
    /// Send span links.
    pub links: bool,
    /// Send span events.
    pub events: bool,
}

impl Interest {
    /// The interest of the policies implemented so far: the service name only.
    pub fn for_current_policies() -> Self {
        Interest {
            resource_attributes: vec![SERVICE_NAME.to_owned()],
            ..Interest::default()
        }
    }
}
