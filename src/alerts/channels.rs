//! Sending an alert notice: a signed JSON webhook, a Slack incoming-webhook message, or an email
//! over SMTP. Every notice names the rule, its severity, its state, the destination or source,
//! what is wrong, since when, and a link to the UI page that shows it.

use super::AlertParts;
use crate::clock::{Millis, rfc3339};
use crate::config::{AlertRule, Channel, ChannelKind, SmtpTls};
use crate::deliver::attempt::refused_text;
use crate::egress::{EgressPolicy, ResolveError};
use crate::store::AlertState;
use std::time::Duration;

/// The notice as the webhook channel sends it (and as the other channels word it).
pub fn notice(parts: &AlertParts, rule: &AlertRule, state: &AlertState) -> serde_json::Value {
    let status = if state.firing { "firing" } else { "resolved" };
    let (kind, id) = state
        .subject
        .split_once(' ')
        .unwrap_or((state.subject.as_str(), ""));
    serde_json::json!({
        "type": format!("alert.{status}"),
        "alert": rule.id,
        "severity": rule.severity.as_str(),
        "state": status,
        "subject": { "kind": kind, "id": id },
        "message": state.message,
        "since": rfc3339(state.since),
        "url": link(parts, &state.subject),
    })
}

/// The console page that shows the subject, under `settings.public_url`.
fn link(parts: &AlertParts, subject: &str) -> String {
    let base = parts
        .config
        .get()
        .settings
        .public_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let path = match subject.split_once(' ') {
        Some(("destination", id)) => format!("/destinations/{}", crate::ids::in_path(id)),
        Some(("source", id)) => format!("/sources/{}", crate::ids::in_path(id)),
        _ if subject == "dead letters" => "/dead-letters".to_string(),
        _ => "/alerts".to_string(),
    };
    format!("{base}{path}")
}

/// One line for people: Slack's text and the email's subject.
fn headline(rule: &AlertRule, state: &AlertState) -> String {
    format!(
        "[{}] {} {}: {}",
        rule.severity.as_str(),
        rule.id,
        if state.firing { "FIRING" } else { "RESOLVED" },
        state.subject
    )
}

/// Sends the notice to each of the rule's channels; failures are logged and counted. Answers
/// what each channel's sending did (for the rule's history).
pub async fn notify(
    parts: &AlertParts,
    rule: &AlertRule,
    state: &AlertState,
    now: Millis,
) -> Vec<crate::store::NoticeSent> {
    let body = notice(parts, rule, state);
    let status = if state.firing { "firing" } else { "resolved" };
    let config = parts.config.get();
    let mut sent_to = Vec::with_capacity(rule.notify.len());
    for channel_id in &rule.notify {
        let Some(channel) = config.channels.get(channel_id) else {
            continue;
        };
        let sent = send(parts, channel, rule, state, &body, now).await;
        crate::telemetry::events::alert_notice(
            &parts.metrics,
            &rule.id,
            status,
            channel_id,
            sent.as_ref().err().map(String::as_str),
        );
        sent_to.push(crate::store::NoticeSent {
            channel: channel_id.clone(),
            error: sent.err(),
        });
    }
    sent_to
}

async fn send(
    parts: &AlertParts,
    channel: &Channel,
    rule: &AlertRule,
    state: &AlertState,
    body: &serde_json::Value,
    now: Millis,
) -> Result<(), String> {
    match &channel.kind {
        ChannelKind::Webhook { url, signing } => {
            let payload = body.to_string();
            let mut request = parts
                .client
                .request(reqwest::Method::POST, url)
                .map_err(|refused| refused_text(&refused))?
                .timeout(Duration::from_secs(10))
                .header(reqwest::header::CONTENT_TYPE, "application/json");
            if let Some(key) = signing {
                let id = crate::ids::new_id("ntc");
                let timestamp = now.div_euclid(1000);
                request = request
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header(
                        "webhook-signature",
                        crate::deliver::signing::sign(
                            key.expose(),
                            &id,
                            timestamp,
                            payload.as_bytes(),
                        ),
                    );
            }
            check(request.body(payload).send().await)
        }
        ChannelKind::Slack { url } => {
            // The URL is a credential: errors are reported without it.
            let url = std::str::from_utf8(url.expose())
                .ok()
                .and_then(|u| url::Url::parse(u).ok())
                .ok_or("the Slack URL is not a URL")?;
            let text = format!(
                "*{}*\n{}\nSince {} · <{}|Open in Ferry>",
                headline(rule, state),
                state.message,
                rfc3339(state.since),
                body["url"].as_str().unwrap_or_default()
            );
            let request = parts
                .client
                .request(reqwest::Method::POST, &url)
                .map_err(|refused| refused_text(&refused))?
                .timeout(Duration::from_secs(10))
                .json(&serde_json::json!({ "text": text }));
            check(request.send().await.map_err(|e| e.without_url()))
        }
        ChannelKind::Email { smtp, from, to } => {
            send_email(
                parts.client.policy(),
                smtp,
                from,
                to,
                &headline(rule, state),
                &email_body(state, body),
            )
            .await
        }
    }
}

fn email_body(state: &AlertState, body: &serde_json::Value) -> String {
    format!(
        "{}\n\nAlert: {}\nSeverity: {}\nState: {}\nSubject: {}\nSince: {}\n\nOpen in Ferry: {}\n",
        state.message,
        body["alert"].as_str().unwrap_or_default(),
        body["severity"].as_str().unwrap_or_default(),
        body["state"].as_str().unwrap_or_default(),
        state.subject,
        rfc3339(state.since),
        body["url"].as_str().unwrap_or_default()
    )
}

fn check(result: Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
    match result {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(crate::deliver::attempt::describe_error(&e)),
    }
}

/// Sends one email. The SMTP host is resolved and checked by the egress guard here, and the
/// connection goes to the first address that passed (TLS still verifies the host's name), so
/// the address lettre connects to is the one that was checked.
async fn send_email(
    egress: &EgressPolicy,
    smtp: &crate::config::Smtp,
    from: &str,
    to: &[String],
    subject: &str,
    text: &str,
) -> Result<(), String> {
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let mut message = Message::builder()
        .from(from.parse().map_err(|e| format!("from `{from}`: {e}"))?)
        .subject(subject);
    for address in to {
        message = message.to(address
            .parse()
            .map_err(|e| format!("to `{address}`: {e}"))?);
    }
    let message = message
        .body(text.to_string())
        .map_err(|e| format!("cannot build the email: {e}"))?;
    let failed = |e: &dyn std::fmt::Display| format!("SMTP {}:{}: {e}", smtp.host, smtp.port);
    let address = match egress.resolve(&smtp.host, smtp.port).await {
        Ok(addresses) => addresses
            .first()
            .map(|a| a.ip())
            .ok_or_else(|| failed(&"the host resolves to no address"))?,
        Err(ResolveError::Refused(refused)) => return Err(failed(&refused_text(&refused))),
        Err(e) => return Err(failed(&e)),
    };
    let tls = |name: &str| TlsParameters::new(name.to_string()).map_err(|e| failed(&e));
    let tls = match smtp.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls => Tls::Required(tls(&smtp.host)?),
        SmtpTls::Tls => Tls::Wrapper(tls(&smtp.host)?),
    };
    let builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.to_string()).tls(tls);
    let mut builder = builder
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(20)));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            String::from_utf8_lossy(password.expose()).into_owned(),
        ));
    }
    builder
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP {}:{}: {e}", smtp.host, smtp.port))
}
