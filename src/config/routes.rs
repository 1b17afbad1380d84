//! Which flows an event starts, found by lookup rather than by a scan of every flow: by source,
//! then by event type, with the flows of every type of a source in a short list of their own;
//! and a flow by its id. Built once with the config, so that routing costs the same with one
//! flow or ten thousand.

use super::Flow;
use std::collections::HashMap;
use std::sync::Arc;

/// The flows of a config, indexed. Positions are in the config's list of flows, so that what a
/// lookup answers keeps the config's order (the order runs are planned in).
#[derive(Debug, Default)]
pub struct Routes {
    by_source: HashMap<String, SourceRoutes>,
    by_id: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct SourceRoutes {
    /// The flows that name the event type.
    by_type: HashMap<String, Vec<usize>>,
    /// The flows that name no event type: every event of the source starts them.
    every_type: Vec<usize>,
}

impl Routes {
    pub fn new(flows: &[Arc<Flow>]) -> Routes {
        let mut routes = Routes::default();
        for (at, flow) in flows.iter().enumerate() {
            routes.by_id.insert(flow.id.clone(), at);
            let source = routes.by_source.entry(flow.source.clone()).or_default();
            if flow.event_types.is_empty() {
                source.every_type.push(at);
            }
            for event_type in &flow.event_types {
                source
                    .by_type
                    .entry(event_type.clone())
                    .or_default()
                    .push(at);
            }
        }
        routes
    }

    /// The positions of the flows an event of `event_type` from `source` starts, in the
    /// config's order.
    pub fn matching(&self, source: &str, event_type: &str) -> Vec<usize> {
        let Some(routes) = self.by_source.get(source) else {
            return Vec::new();
        };
        let named = routes.by_type.get(event_type).map_or(&[][..], |v| &v[..]);
        let every = &routes.every_type[..];
        // Two ascending lists merged: a flow is in only one of them.
        let mut out = Vec::with_capacity(named.len() + every.len());
        let (mut i, mut j) = (0, 0);
        while i < named.len() || j < every.len() {
            if j == every.len() || (i < named.len() && named[i] < every[j]) {
                out.push(named[i]);
                i += 1;
            } else {
                out.push(every[j]);
                j += 1;
            }
        }
        out
    }

    /// The position of the flow with this id.
    pub fn flow(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
}
