//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! views' `ToSchema` derives (the types that only describe JSON handlers build directly are in
//! `schemas.rs`), served at `/api/v1/openapi.json` and committed as `docs/openapi.json` (a test
//! fails when the two differ).

use super::schemas::{
    ConfigSpec, DestinationSpec, FlowSpec, HttpStepSpec, ObjectKindDoc, SourceSpec,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry",
        description = "Ferry's management API: sources, event types, destinations and flows; events, runs, deliveries, dead letters, replay, alerts and tokens. Every /api/v1 route needs a bearer token.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::list_events,
        super::get_event,
        super::runs::replay_event_route,
        super::list_deliveries,
        super::get_delivery,
        super::retry_delivery,
        super::list_dead_letters,
        super::list_rejections,
        super::runs::list_runs,
        super::runs::get_run,
        super::runs::replay_run,
        super::runs::replay_runs,
        super::runs::test_flow,
        super::check_expression_route,
        super::runs::replay_dead_letters,
        super::config_objects::list,
        super::config_objects::get,
        super::config_objects::create,
        super::config_objects::put,
        super::config_objects::delete,
        super::operations::pause,
        super::operations::resume,
        super::tokens::create,
        super::tokens::list,
        super::tokens::revoke,
        super::healthz,
        super::readyz,
        super::operations::metrics,
    ),
    components(schemas(ObjectKindDoc, ConfigSpec, SourceSpec, DestinationSpec, FlowSpec, HttpStepSpec)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served and committed (pretty JSON, a final newline).
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
