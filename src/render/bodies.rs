//! [`Bodies`]: what a generated error's body looks like, and what survives when the layer
//! replaces an origin's.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, StatusCode};

use super::negotiate::Format;
use super::template::Template;
use super::{RenderBody, Templates};
use crate::kind::ProxyErrorKind;

/// The bodies of generated errors, for
/// [`GatewayErrorLayer::bodies`](crate::GatewayErrorLayer::bodies): the format for clients
/// without a preference, the templates (per format, per status, per kind), your own renderer,
/// and the origin headers kept when the layer replaces an origin's response.
///
/// [`Bodies::new`] is the defaults: problem+json for clients without a preference, the
/// built-in templates, and `Retry-After`, `WWW-Authenticate`, `Proxy-Authenticate` and `Allow`
/// kept on a rewrite.
///
/// Which template answers: a renderer's body if it returns one, else the template for the
/// error's kind, else for its status, else for the format, else the built-in one; each in the
/// format negotiated from the request's `Accept`.
///
/// ```
/// use gateway_errors::render::{Bodies, Format, Template};
/// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
/// use http::StatusCode;
///
/// let bodies = Bodies::new()
///     .default_format(Format::Html)
///     .template(Template::html("<h1>{status} {title}</h1><p>{detail}</p>")?)
///     .template_for_status(
///         StatusCode::GATEWAY_TIMEOUT,
///         Template::html("<h1>Still working on it</h1><p>{detail}</p>")?,
///     )
///     .template_for_kind(
///         ProxyErrorKind::ProxyLoopDetected,
///         Template::text("This request went round in circles at {proxy}.")?,
///     );
/// let layer = GatewayErrorLayer::new().bodies(bodies);
/// # let _ = layer;
/// # Ok::<(), gateway_errors::render::TemplateError>(())
/// ```
#[derive(Clone)]
pub struct Bodies {
    pub(crate) default_format: Format,
    pub(crate) templates: Templates,
    pub(crate) keep_on_rewrite: Vec<HeaderName>,
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies::new()
    }
}

impl Bodies {
    /// The defaults: problem+json for clients without a preference, the built-in templates, no
    /// renderer, and `Retry-After`, `WWW-Authenticate`, `Proxy-Authenticate` and `Allow` kept on
    /// a rewrite.
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    /// use gateway_errors::render::Bodies;
    ///
    /// // The same as not calling `bodies` at all.
    /// let layer = GatewayErrorLayer::new().bodies(Bodies::new());
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        Bodies {
            default_format: Format::ProblemJson,
            templates: Templates::default(),
            keep_on_rewrite: vec![
                http::header::RETRY_AFTER,
                http::header::WWW_AUTHENTICATE,
                http::header::PROXY_AUTHENTICATE,
                http::header::ALLOW,
            ],
        }
    }

    /// The body format for clients that state no preference, or whose `Accept` allows none of the
    /// formats. Default: problem+json.
    ///
    /// ```
    /// use gateway_errors::render::{Bodies, Format};
    ///
    /// // A site for browsers: a page unless the client asks for JSON or text.
    /// let bodies = Bodies::new().default_format(Format::Html);
    /// # let _ = bodies;
    /// ```
    pub fn default_format(mut self, format: Format) -> Self {
        self.default_format = format;
        self
    }

    /// Replaces the body template of the template's format for every error (a template for a
    /// status or a kind still wins where it applies).
    ///
    /// ```
    /// use gateway_errors::render::{Bodies, Template};
    ///
    /// let bodies = Bodies::new().template(Template::text("{status} {title}: {detail}\n")?);
    /// # let _ = bodies;
    /// # Ok::<(), gateway_errors::render::TemplateError>(())
    /// ```
    pub fn template(mut self, template: Template) -> Self {
        self.templates.set_default(template);
        self
    }

    /// Uses `template` for errors with this status (in the template's format).
    ///
    /// ```
    /// use gateway_errors::render::{Bodies, Template};
    /// use http::StatusCode;
    ///
    /// let bodies = Bodies::new().template_for_status(
    ///     StatusCode::SERVICE_UNAVAILABLE,
    ///     Template::html("<h1>Down for a moment</h1>{#retry_after}<p>Back in {retry_after} s.</p>{/retry_after}")?,
    /// );
    /// # let _ = bodies;
    /// # Ok::<(), gateway_errors::render::TemplateError>(())
    /// ```
    pub fn template_for_status(mut self, status: StatusCode, template: Template) -> Self {
        self.templates.set_for_status(status, template);
        self
    }

    /// Uses `template` for errors of this kind (in the template's format). Beats a template for a
    /// status.
    ///
    /// ```
    /// use gateway_errors::ProxyErrorKind;
    /// use gateway_errors::render::{Bodies, Template};
    ///
    /// let bodies = Bodies::new().template_for_kind(
    ///     ProxyErrorKind::ConnectionRefused,
    ///     Template::text("The shop is restarting; try again in a minute.")?,
    /// );
    /// # let _ = bodies;
    /// # Ok::<(), gateway_errors::render::TemplateError>(())
    /// ```
    pub fn template_for_kind(mut self, kind: ProxyErrorKind, template: Template) -> Self {
        self.templates.set_for_kind(kind, template);
        self
    }

    /// Renders bodies with your own engine (see [`RenderBody`]); where it returns `None`, the
    /// templates apply.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use gateway_errors::render::{Bodies, ErrorView, Format};
    ///
    /// let bodies = Bodies::new().renderer(|view: &ErrorView<'_>, format: Format| {
    ///     (format == Format::Text).then(|| Bytes::from(format!("{} — try later\n", view.status())))
    /// });
    /// # let _ = bodies;
    /// ```
    pub fn renderer<R: RenderBody>(mut self, renderer: R) -> Self {
        self.templates.set_renderer(Arc::new(renderer));
        self
    }

    /// Keeps this origin header, besides the default ones, when the layer replaces an origin's or
    /// a handler's response (an origin status in
    /// [`failure_statuses`](crate::GatewayErrorLayer::failure_statuses)).
    ///
    /// ```
    /// use gateway_errors::render::Bodies;
    /// use http::HeaderName;
    ///
    /// // The origin's rate-limit state still reaches the client under the generated body.
    /// let bodies = Bodies::new().keep_origin_header(HeaderName::from_static("ratelimit-policy"));
    /// # let _ = bodies;
    /// ```
    pub fn keep_origin_header(mut self, name: HeaderName) -> Self {
        if !self.keep_on_rewrite.contains(&name) {
            self.keep_on_rewrite.push(name);
        }
        self
    }
}

impl fmt::Debug for Bodies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bodies")
            .field("default_format", &self.default_format)
            .field("custom_renderer", &self.templates.has_renderer())
            .field("keep_origin_headers", &self.keep_on_rewrite)
            .finish_non_exhaustive()
    }
}
