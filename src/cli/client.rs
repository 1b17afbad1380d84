//! The client of Ferry's management API that every client command uses: where the server is
//! and the token ([`ClientArgs`], the options they share), the HTTP calls, and why a call
//! failed. What the answers look like for people is `table.rs`'s.

/// Where the server is and how to talk to it: every client command takes these.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API token.
    #[arg(long, env = "FERRY_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// A client of the server these arguments name.
    pub fn client(&self) -> Result<ApiClient, ClientError> {
        ApiClient::new(&self.url, self.token.clone())
    }
}

/// A query string of the pairs that have a value (`a=1&b=x%20y`), for a list's filters.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach Ferry at {url}: {reason} (is `ferry serve` running there? set --url or FERRY_URL)"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "no API token: pass --token or set FERRY_API_TOKEN (a new server writes one to DATA/api-token)"
    )]
    NoToken,
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the answer from {url} is not JSON: {reason}")]
    Decode { url: String, reason: String },
}

/// A client of the management API.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// The client for Ferry's own API, at the address a person gives: not an outbound request of
/// the engine, so not under the egress guard; redirects are not followed.
fn api_http_client() -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> Result<ApiClient, ClientError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(ClientError::NoToken)?;
        let http = api_http_client().map_err(|e| ClientError::Unreachable {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: crate::deliver::attempt::describe_error(&e),
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| ClientError::Decode {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                url: url.clone(),
                reason: e.to_string(),
            })?
        };
        if status >= 400 {
            return Err(ClientError::Api {
                status,
                code: value["error"].as_str().unwrap_or("error").to_string(),
                message: value["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(value)
    }
}
