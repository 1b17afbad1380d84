//! The kinds of config object the API makes, changes and deletes, in reference order: what
//! the objects, the secret fields and the API's paths are keyed by.

/// The kinds of object the API can create, change and delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Source,
    EventType,
    Destination,
    Flow,
    /// Alert rules (their channels come from the config file only).
    Alert,
}

impl ObjectKind {
    /// In reference order: an object refers only to kinds before it.
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Source,
        ObjectKind::EventType,
        ObjectKind::Destination,
        ObjectKind::Flow,
        ObjectKind::Alert,
    ];

    /// The top-level list of the config file that holds this kind.
    pub fn section(self) -> &'static str {
        match self {
            ObjectKind::Source => "sources",
            ObjectKind::EventType => "event_types",
            ObjectKind::Destination => "destinations",
            ObjectKind::Flow => "flows",
            ObjectKind::Alert => "alerts",
        }
    }

    /// How errors and people name one of this kind.
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Source => "source",
            ObjectKind::EventType => "event type",
            ObjectKind::Destination => "destination",
            ObjectKind::Flow => "flow",
            ObjectKind::Alert => "alert",
        }
    }

    /// The field that holds the object's id (`name` for event types).
    pub fn id_field(self) -> &'static str {
        match self {
            ObjectKind::EventType => "name",
            _ => "id",
        }
    }

    /// The stored name of the kind, as in the API's paths.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Source => "sources",
            ObjectKind::EventType => "event-types",
            ObjectKind::Destination => "destinations",
            ObjectKind::Flow => "flows",
            ObjectKind::Alert => "alerts",
        }
    }

    pub fn parse(text: &str) -> Option<ObjectKind> {
        ObjectKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}
