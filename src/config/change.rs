//! One object created, replaced or deleted through the API, applied to a running config at the
//! cost of that object: it is checked alone against the config's other objects, which are
//! shared with the config before (neither checked again nor copied), and a delete checks the
//! objects that name it. With ten thousand flows a change takes what one flow takes, not what
//! the whole config takes (`build` reads everything).

use super::places::Places;
use super::raw::RawConfig;
use super::{
    Checker, Config, ConfigError, ConfigErrors, Flow, ObjectKind, ObjectSpec, add_raw_object,
    alerts::{AlertRule, Condition},
    program::Op,
    routes::Routes,
};
use std::sync::Arc;

impl Config {
    /// This config with the API object `kind`/`id` made or replaced by `object`, or deleted
    /// when `object` is `None`. The new config's `expressions` are those of the changed object
    /// only: what a worker has still to compile. A delete is refused while other objects name
    /// the deleted one, with their places.
    pub fn changed(
        &self,
        kind: ObjectKind,
        id: &str,
        object: Option<ObjectSpec>,
    ) -> Result<Config, ConfigErrors> {
        let key = (kind, id.to_string());
        let place = format!("api ({} {id})", kind.noun());
        // The file's objects: those it provisions, and those checked but not kept as specs
        // (the file may write an id as a number: `id: 7` is the flow `7`).
        let from_api = self.objects.get(&key).is_some_and(|o| !o.provisioned);
        if !from_api && self.has(kind, id) {
            return Err(one_error(
                place,
                format!(
                    "the config file `{}` defines this {} too; delete one of them",
                    self.file.name,
                    kind.noun()
                ),
            ));
        }
        let mut next = self.shallow_copy();
        match object {
            Some(object) => {
                next.put(object)?;
            }
            None => {
                next.remove(kind, id);
                next.check_referrers(kind, id)?;
            }
        }
        next.routes = Routes::new(&next.flows);
        Ok(next)
    }

    /// Whether `kind`/`id` was made through the API.
    fn is_api_object(&self, kind: ObjectKind, id: &str) -> bool {
        self.objects
            .get(&(kind, id.to_string()))
            .is_some_and(|o| !o.provisioned)
    }

    /// Whether the config has a checked object `kind`/`id`.
    fn has(&self, kind: ObjectKind, id: &str) -> bool {
        match kind {
            ObjectKind::Source => self.sources.contains_key(id),
            ObjectKind::EventType => self.event_types.contains_key(id),
            ObjectKind::Destination => self.destinations.contains_key(id),
            ObjectKind::Flow => self.flow(id).is_some(),
            ObjectKind::Alert => self.alerts.iter().any(|r| r.id == id),
        }
    }

    /// A config sharing every checked object with this one.
    fn shallow_copy(&self) -> Config {
        Config {
            settings: self.settings.clone(),
            sources: self.sources.clone(),
            event_types: self.event_types.clone(),
            destinations: self.destinations.clone(),
            flows: self.flows.clone(),
            channels: self.channels.clone(),
            alerts: self.alerts.clone(),
            objects: self.objects.clone(),
            file: self.file.clone(),
            expressions: Vec::new(),
            routes: Routes::default(),
        }
    }

    /// Checks `object` against the rest and puts it in place of the one with its id (or last).
    fn put(&mut self, object: ObjectSpec) -> Result<(), ConfigErrors> {
        let (kind, id) = (object.kind, object.id.clone());
        let mut raw = RawConfig::default();
        add_raw_object(&mut raw, &object)
            .map_err(|message| one_error(format!("api ({} {id})", kind.noun()), message))?;
        let mut places = Places::new(&self.file.name, "");
        places.add_api_object(kind.section(), &id);
        let mut checker = Checker {
            places: &places,
            base: &self.file.base,
            errors: Vec::new(),
            expressions: Vec::new(),
        };
        let settings = self.settings.clone();
        match kind {
            ObjectKind::Source => {
                for s in raw.sources {
                    let place = places.object("sources", "source", &s.id);
                    if let Some(source) = checker.source(&place, s, &settings) {
                        self.sources.insert(id.clone(), Arc::new(source));
                    }
                }
            }
            ObjectKind::EventType => {
                for t in raw.event_types {
                    let place = places.object_named("event_types", "event type", "name", &t.name);
                    checker.check_name(&place, "name", &t.name);
                    let checked = checker.event_type(&place, t);
                    self.event_types.insert(id.clone(), Arc::new(checked));
                }
            }
            ObjectKind::Destination => {
                for d in raw.destinations {
                    let place = places.object("destinations", "destination", &d.id);
                    if let Some(dest) = checker.destination(&place, d, &settings) {
                        self.destinations.insert(id.clone(), Arc::new(dest));
                    }
                }
            }
            ObjectKind::Flow => {
                for f in raw.flows {
                    let place = places.object("flows", "flow", &f.id);
                    checker.check_id(&place, &f.id);
                    let flow = checker.flow(
                        &place,
                        f,
                        &self.sources,
                        &self.event_types,
                        &self.destinations,
                        &settings,
                    );
                    if let Some(flow) = flow {
                        let api = |f: &Flow| self.is_api_object(ObjectKind::Flow, &f.id);
                        let at = place_of(&self.flows, &id, |f| &f.id, api);
                        put_at(&mut self.flows, at, Arc::new(flow));
                    }
                }
            }
            ObjectKind::Alert => {
                let rules = checker.alerts(
                    raw.alerts,
                    &self.channels,
                    &self.sources,
                    &self.destinations,
                );
                for rule in rules {
                    let api = |r: &AlertRule| self.is_api_object(ObjectKind::Alert, &r.id);
                    let at = place_of(&self.alerts, &id, |r| &r.id, api);
                    put_at(&mut self.alerts, at, rule);
                }
            }
        }
        if !checker.errors.is_empty() {
            return Err(ConfigErrors(checker.errors, checker.expressions));
        }
        self.expressions = checker.expressions;
        self.objects.insert((kind, id), Arc::new(object));
        Ok(())
    }

    fn remove(&mut self, kind: ObjectKind, id: &str) {
        match kind {
            ObjectKind::Source => {
                self.sources.remove(id);
            }
            ObjectKind::EventType => {
                self.event_types.remove(id);
            }
            ObjectKind::Destination => {
                self.destinations.remove(id);
            }
            ObjectKind::Flow => self.flows.retain(|f| f.id != id),
            ObjectKind::Alert => self.alerts.retain(|r| r.id != id),
        }
        self.objects.remove(&(kind, id.to_string()));
    }

    /// Checks again the flows and alert rules that name the object `kind`/`id`, as the file's
    /// check would: each one that names it is an error at its place.
    fn check_referrers(&self, kind: ObjectKind, id: &str) -> Result<(), ConfigErrors> {
        let flows = self.flows.iter().filter(|f| flow_names(f, kind, id));
        let alerts = self.alerts.iter().filter(|r| alert_names(r, kind, id));
        let named: Vec<(ObjectKind, String)> = flows
            .map(|f| (ObjectKind::Flow, f.id.clone()))
            .chain(alerts.map(|r| (ObjectKind::Alert, r.id.clone())))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        let mut places = Places::new(&self.file.name, &self.file.text);
        let mut raw = RawConfig::default();
        let mut errors = Vec::new();
        let mut referrers: Vec<&ObjectSpec> = Vec::new();
        for key in &named {
            match self.objects.get(key) {
                Some(object) => referrers.push(object),
                // A file's object kept without its spec (an id written as a number).
                None => errors.push(ConfigError {
                    place: places.object(key.0.section(), key.0.noun(), &key.1),
                    message: format!("names {} `{id}`", kind.noun()),
                }),
            }
        }
        for object in &referrers {
            if !object.provisioned {
                places.add_api_object(object.kind.section(), &object.id);
            }
            if let Err(message) = add_raw_object(&mut raw, object) {
                errors.push(ConfigError {
                    place: format!("{} {}", object.kind.noun(), object.id),
                    message,
                });
            }
        }
        let mut checker = Checker {
            places: &places,
            base: &self.file.base,
            errors,
            expressions: Vec::new(),
        };
        for f in raw.flows {
            let place = places.object("flows", "flow", &f.id);
            checker.flow(
                &place,
                f,
                &self.sources,
                &self.event_types,
                &self.destinations,
                &self.settings,
            );
        }
        checker.alerts(
            raw.alerts,
            &self.channels,
            &self.sources,
            &self.destinations,
        );
        if checker.errors.is_empty() {
            // Named by their checked form but not by their spec: say so rather than drop them.
            checker.errors = referrers
                .iter()
                .map(|o| ConfigError {
                    place: format!("api ({} {})", o.kind.noun(), o.id),
                    message: format!("names {} `{id}`", kind.noun()),
                })
                .collect();
        }
        Err(ConfigErrors(checker.errors, Vec::new()))
    }
}

/// Where an item with `id` goes in a list of flows or alert rules, in the order a start builds
/// them (and runs are planned in): the file's first, then the API's by id. `Ok` replaces the
/// item there; `Err` inserts.
fn place_of<T>(
    items: &[Arc<T>],
    id: &str,
    id_of: impl Fn(&T) -> &String,
    from_api: impl Fn(&T) -> bool,
) -> Result<usize, usize> {
    match items.iter().position(|i| id_of(i) == id) {
        Some(at) => Ok(at),
        None => Err(items
            .iter()
            .position(|i| from_api(i) && id_of(i).as_str() > id)
            .unwrap_or(items.len())),
    }
}

fn put_at<T>(items: &mut Vec<Arc<T>>, at: Result<usize, usize>, item: Arc<T>) {
    match at {
        Ok(at) => items[at] = item,
        Err(at) => items.insert(at, item),
    }
}

/// Whether `flow` takes events of, or delivers to, the object `kind`/`id`.
fn flow_names(flow: &Flow, kind: ObjectKind, id: &str) -> bool {
    match kind {
        ObjectKind::Source => flow.source == id,
        ObjectKind::EventType => flow.event_types.contains(id),
        ObjectKind::Destination => flow.program.instrs.iter().any(|i| match &i.op {
            Op::Deliver(targets) => targets.iter().any(|t| t.destination_id == id),
            _ => false,
        }),
        ObjectKind::Flow | ObjectKind::Alert => false,
    }
}

/// Whether `rule`'s condition watches the object `kind`/`id`.
fn alert_names(rule: &AlertRule, kind: ObjectKind, id: &str) -> bool {
    let (source, destination) = match &rule.condition {
        Condition::DestinationFailing { destination, .. }
        | Condition::FailureRatio { destination, .. }
        | Condition::DeliveryLatency { destination, .. } => (None, Some(destination.as_str())),
        Condition::DeadLetters { destination, .. }
        | Condition::DestinationPaused { destination } => (None, destination.as_deref()),
        Condition::SourceSilent { source, .. } | Condition::SourceFailing { source, .. } => {
            (Some(source.as_str()), None)
        }
        Condition::BacklogAge { .. } | Condition::StoreUnwritable {} => (None, None),
    };
    match kind {
        ObjectKind::Source => source == Some(id),
        ObjectKind::Destination => destination == Some(id),
        _ => false,
    }
}

fn one_error(place: String, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError { place, message }], Vec::new())
}
