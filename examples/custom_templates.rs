//! Error bodies of your own: an HTML page in your site's style, a text template for one kind of
//! failure, and problem+json rendered by minijinja through the `renderer` escape hatch.
//!
//! ```text
//! cargo run --example custom_templates -- [--listen 127.0.0.1:8080]
//! ```
//!
//! The proxy in front of an embedded demo upstream (whose routes fail in different ways) is the
//! one from the crate docs; everything about the bodies is in `layer()`.

#[path = "support/demo_upstream.rs"]
mod demo_upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::body::UploadBody;
use gateway_errors::render::Bodies;
use gateway_errors::render::ErrorView;
use gateway_errors::render::{Format, Template};
use gateway_errors::{GatewayErrorLayer, ProxyErrorKind, ProxyName};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

/// The HTML page. Placeholders are HTML-escaped; `{{`/`}}` are literal braces (for the CSS);
/// `{#request_id}...{/request_id}` shows only when the request has an id.
const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} · Acme</title>
<style>body{{font:18px/1.5 system-ui,sans-serif;max-width:32rem;margin:15vh auto;padding:0 1rem}}</style>
</head>
<body>
<h1>Sorry, that did not work ({status})</h1>
<p>{detail} {advice}</p>
{#request_id}<p><small>Quote <code>{request_id}</code> if you contact support.</small></p>{/request_id}
</body>
</html>
"#;

/// Plain text for one kind of failure only; other kinds keep the built-in text.
const SLOW_TEXT: &str = "{status} {title}: the upstream took too long to answer.\n{advice}\n";

/// problem+json with minijinja. A template named `*.json` escapes every value as JSON (quotes
/// included), so `{{ title }}` is already a JSON string.
const PROBLEM: &str = r#"{
  "type": {{ "https://errors.example.com/" ~ (error_type or "unknown") }},
  "title": {{ title }},
  "status": {{ status }},
  "detail": {{ detail }},
  "retryable": {{ retryable }}{% if request_id %},
  "request_id": {{ request_id }}{% endif %}
}
"#;

/// The layer with all three replacements. Each template is compiled (and checked) here, once.
pub fn layer() -> Result<GatewayErrorLayer, Box<dyn std::error::Error>> {
    let mut env = minijinja::Environment::new();
    env.add_template("problem.json", PROBLEM)?;
    Ok(GatewayErrorLayer::new()
        .proxy_name(ProxyName::from_static("edge-1"))
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(2)))
        .bodies(
            Bodies::new()
                .template(Template::html(PAGE)?)
                .template_for_kind(
                    ProxyErrorKind::HttpResponseTimeout,
                    Template::text(SLOW_TEXT)?,
                )
                .renderer(move |view: &ErrorView<'_>, format: Format| {
                    if format != Format::ProblemJson {
                        return None; // the templates above (or the built-in ones) apply
                    }
                    let context = minijinja::context! {
                        status => view.status().as_u16(),
                        title => view.title(),
                        detail => view.detail(),
                        error_type => view.error_type(),
                        retryable => view.retryable(),
                        request_id => view.request_id(),
                    };
                    let body = env
                        .get_template("problem.json")
                        .ok()?
                        .render(context)
                        .ok()?;
                    Some(Bytes::from(body))
                }),
        ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = match (args.next().as_deref(), args.next()) {
        (None, _) => "127.0.0.1:8080".parse()?,
        (Some("--listen"), Some(addr)) => addr.parse()?,
        _ => return Err("usage: custom_templates [--listen ADDR]".into()),
    };

    let upstream = demo_upstream::spawn().await?;
    let upstream_addr = upstream.addr;
    // The layer hands the client the request body it watches (`UploadBody`).
    let client = Client::builder(TokioExecutor::new()).build_http::<UploadBody<axum::body::Body>>();
    let gateway = ServiceBuilder::new()
        .layer(layer()?)
        .map_request(
            move |mut request: http::Request<UploadBody<axum::body::Body>>| {
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                *request.uri_mut() = format!("http://{upstream_addr}{path}")
                    .parse()
                    .expect("a path that was already a valid URI");
                request
            },
        )
        .service(client);
    let app = axum::Router::new().fallback_service(gateway);

    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("try:");
    println!(
        "  curl -i -H 'Accept: text/html' -H 'x-request-id: 7f3a' http://{addr}/reset   # your page"
    );
    println!(
        "  curl -i -H 'Accept: text/plain' http://{addr}/slow   # your text, for timeouts only"
    );
    println!("  curl -i -H 'Accept: text/plain' http://{addr}/close  # the built-in text");
    println!("  curl -i http://{addr}/close                         # problem+json by minijinja");
    println!("listening on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
