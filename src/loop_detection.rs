//! [`LoopDetection`]: forwarding loops, told by RFC 8586's `CDN-Loop`.

/// Whether and when the layer takes a request for a forwarding loop, for
/// [`GatewayErrorLayer::loop_detection`](crate::GatewayErrorLayer::loop_detection). On by default
/// ([`LoopDetection::default`]): a request is a loop the first time it comes back.
///
/// While it is on, the layer appends this gateway's [proxy name](crate::ProxyName) to the
/// `CDN-Loop` header of every request it forwards (an RFC 8586 list: the members already there
/// are kept, in order), and a request that arrives already carrying that name (as many times as
/// [`after`](LoopDetection::after) says) is a loop: it is answered at once with `502 Bad
/// Gateway`, `Proxy-Status: <name>; error=proxy_loop_detected`, the negotiated body, and
/// `retryable: false` (another attempt would loop again); a gRPC caller gets `INTERNAL`. The
/// inner service is not called, so a gateway that reaches itself, or two gateways that point at
/// each other, answer within the first turn instead of multiplying the load.
///
/// The name is what identifies this deployment, so give each deployment its own: two gateways
/// that share a name take each other's requests for loops. A member that does not parse is never
/// taken for the name, and names compare ASCII case-insensitively, as host names do.
///
/// ```
/// use gateway_errors::{GatewayErrorLayer, LoopDetection, ProxyName};
///
/// // The default, spelled out: refuse a request the first time it comes back.
/// let layer = GatewayErrorLayer::new()
///     .proxy_name(ProxyName::from_static("edge-eu-1"))
///     .loop_detection(LoopDetection::default());
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopDetection {
    /// A request that names us this many times is a loop; `None`: off.
    pub(crate) threshold: Option<u32>,
}

impl Default for LoopDetection {
    /// On: a request is a loop the first time it comes back (`LoopDetection::after(1)`).
    fn default() -> Self {
        LoopDetection::after(1)
    }
}

impl LoopDetection {
    /// No loop detection: the layer neither reads nor writes `CDN-Loop`. For where something
    /// else already owns the header for this hop (a CDN edge that appends its own name under the
    /// same identity).
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, LoopDetection};
    ///
    /// let layer = GatewayErrorLayer::new().loop_detection(LoopDetection::off());
    /// # let _ = layer;
    /// ```
    pub const fn off() -> Self {
        LoopDetection { threshold: None }
    }

    /// On: a request is a loop when it arrives naming this gateway `times` times in `CDN-Loop`.
    /// `1` (the default) refuses it the first time it comes back. Raise it where a request may
    /// rightly pass through the same gateway more than once (a service behind it that calls back
    /// through it): with `2`, a request may come back once, and is refused when it arrives naming
    /// this gateway twice. `0` counts as `1`.
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, LoopDetection};
    ///
    /// // The orders service calls the catalogue through this same gateway: one return is fine.
    /// let layer = GatewayErrorLayer::new().loop_detection(LoopDetection::after(2));
    /// # let _ = layer;
    /// ```
    pub const fn after(times: u32) -> Self {
        LoopDetection {
            threshold: Some(if times == 0 { 1 } else { times }),
        }
    }
}
