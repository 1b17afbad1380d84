//! API tokens: made with a scope (`admin` or `read`), shown once, kept as a SHA-256 digest,
//! listed without their value, revoked. Only an `admin` token manages tokens.

use super::Scope;
use super::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

fn admin_only(scope: Scope) -> Result<(), ApiError> {
    match scope {
        Scope::Admin => Ok(()),
        Scope::Read => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "tokens are managed with an `admin` token",
        )),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    name: String,
    scope: String,
}

/// `POST /api/v1/tokens` with `{"name", "scope"}`: `201` with the token, shown this once.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", security(("bearer" = [])), request_body(content = crate::api::schemas::NewTokenDoc),
    responses((status = 201, description = "created", body = crate::api::schemas::NewTokenAnswer), (status = 422, description = "the body is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin_only(scope)?;
    let invalid =
        |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message);
    let body: NewTokenBody = crate::json::parse(&body).map_err(|e| {
        invalid(format!(
            "the body must be {{\"name\": ..., \"scope\": \"admin\" | \"read\"}}: {e}"
        ))
    })?;
    if !matches!(body.scope.as_str(), "admin" | "read") {
        return Err(invalid(format!(
            "`scope` is `{}`; use `admin` or `read`",
            body.scope
        )));
    }
    if !crate::config::valid_id(&body.name) {
        return Err(invalid(format!("`name` {}", crate::config::ID_RULE)));
    }
    use sha2::Digest;
    let token = crate::ids::random_token("fry_").map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot make a random token: {e}"),
        )
    })?;
    let id = crate::ids::new_id("tok");
    let now = app.clock.now_ms();
    app.store
        .create_token(crate::store::NewToken {
            id: id.clone(),
            name: body.name.clone(),
            scope: body.scope.clone(),
            hash: sha2::Sha256::digest(token.as_bytes()).to_vec(),
            created_at: now,
        })
        .await?;
    tracing::info!(token_id = %id, scope = %body.scope, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "name": body.name,
            "scope": body.scope,
            "created_at": crate::clock::rfc3339(now),
            "token": token,
        })),
    )
        .into_response())
}

/// `GET /api/v1/tokens`: the live tokens, without their values.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", security(("bearer" = [])), responses((status = 200, description = "OK", body = crate::api::schemas::ListPage<crate::store::TokenView>), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
) -> Result<Response, ApiError> {
    admin_only(scope)?;
    let tokens = app.store.tokens().await?;
    Ok(Json(json!({"data": tokens, "next": null})).into_response())
}

/// `DELETE /api/v1/tokens/{id}`: `204`; the token stops working at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn revoke(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_only(scope)?;
    if app.store.revoke_token(&id, app.clock.now_ms()).await? {
        tracing::info!(token_id = %id, "API token revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("token", &id))
    }
}
