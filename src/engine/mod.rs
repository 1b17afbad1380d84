//! The engine: decides what an event sets in motion. Given the config and an accepted event,
//! it runs each matching flow's pure steps and returns the runs and deliveries to store.
//!
//! **Invariant:** the engine does no I/O. It returns rows; the store commits them and the
//! deliverer performs them.

pub mod expr;

use crate::config::{Config, Step};
use crate::store::{NewDelivery, NewRun};
use expr::Payload;

/// What one event starts: a run per matching flow, and the deliveries those runs asked for.
#[derive(Default)]
pub struct Plan {
    pub runs: Vec<NewRun>,
    pub deliveries: Vec<NewDelivery>,
}

pub fn plan(config: &Config, source: &str, event_type: &str, payload: &mut Payload<'_>) -> Plan {
    let mut plan = Plan::default();
    for flow in config.flows.iter().filter(|f| {
        f.source == source && (f.event_types.is_empty() || f.event_types.contains(event_type))
    }) {
        let run_id = crate::ids::run_id();
        let mut status = "completed";
        let mut error = None;
        let mut deliveries = Vec::new();
        for (index, step) in flow.steps.iter().enumerate() {
            match step {
                Step::Filter { expr, .. } => match expr.truthy_of(payload) {
                    Ok(true) => {}
                    Ok(false) => {
                        status = "filtered";
                        break;
                    }
                    Err(e) => {
                        status = "failed";
                        error = Some(format!("step {} (filter): {e}", index + 1));
                        break;
                    }
                },
                Step::Deliver { destinations, .. } => {
                    for destination_id in destinations {
                        deliveries.push(NewDelivery {
                            id: crate::ids::delivery_id(),
                            run_id: run_id.clone(),
                            destination_id: destination_id.clone(),
                        });
                    }
                }
            }
        }
        if status != "completed" {
            deliveries.clear();
        }
        plan.deliveries.extend(deliveries);
        plan.runs.push(NewRun {
            id: run_id,
            flow_id: flow.id.clone(),
            status,
            error,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_route_and_fan_out() {
        let yaml = r#"
settings: { allow_private_destinations: true }
sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]
destinations:
  - { id: a, kind: http, url: "http://127.0.0.1:1/" }
  - { id: b, kind: http, url: "http://127.0.0.1:2/" }
flows:
  - id: paid
    on: { source: shop }
    steps: [ { filter: '.plan != "free"' }, { deliver: [a, b] } ]
  - id: broken
    on: { source: shop }
    steps: [ { filter: '.plan + 1' }, { deliver: a } ]
  - id: other-source
    on: { source: shop, event_types: [] }
    steps: [ { deliver: a } ]
"#;
        let config =
            crate::config::load_str(yaml, "t.yaml", std::path::Path::new("."), &|_| None).unwrap();
        let p = plan(
            &config,
            "shop",
            "x",
            &mut Payload::new(br#"{"plan":"pro"}"#),
        );
        let statuses: Vec<_> = p
            .runs
            .iter()
            .map(|r| (r.flow_id.as_str(), r.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("paid", "completed"),
                ("broken", "failed"),
                ("other-source", "completed")
            ]
        );
        assert!(
            p.runs[1]
                .error
                .as_deref()
                .unwrap()
                .contains("step 1 (filter)")
        );
        assert_eq!(p.deliveries.len(), 3);
        let free = br#"{"plan":"free"}"#;
        let p = plan(&config, "shop", "x", &mut Payload::new(free));
        assert_eq!(p.runs[0].status, "filtered");
        assert_eq!(p.deliveries.len(), 1, "only the unfiltered flow delivers");
        assert!(
            plan(&config, "elsewhere", "x", &mut Payload::new(free))
                .runs
                .is_empty()
        );
    }
}
