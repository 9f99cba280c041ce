//! Per-client limits at the edge: a rate per client address and per user (GCRA, through the
//! backend's limiter: in memory on the embedded default, Redis when several edges share the counts),
//! stricter rates on logins and sign-ups, and login lock-outs that grow with repeated failures per
//! account and per address. Over a limit the answer is `429` with `Retry-After`, as problem+json.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ridehail_ports::{Admission, LockoutPolicy, Rate};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Off only to measure what the limits cost (benchmarks); production refuses to start without.
    pub enabled: bool,
    /// Every request, per client address.
    pub per_ip: Rate,
    /// Every authenticated request, per user.
    pub per_user: Rate,
    /// `POST /v1/sessions`, per client address.
    pub logins_per_ip: Rate,
    /// `POST /v1/users`, per client address.
    pub signups_per_ip: Rate,
    /// Failed logins per account (by a keyed hash of the address).
    pub login_failures_per_account: LockoutPolicy,
    /// Failed logins per client address (one address trying many accounts).
    pub login_failures_per_ip: LockoutPolicy,
    /// Proxies in front of the edge whose `X-Forwarded-For` is believed; the client address is the
    /// last hop before them. Empty: the peer address is the client.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_ip: Rate::new(200, 1, 400),
            per_user: Rate::new(50, 1, 100),
            logins_per_ip: Rate::new(30, 60, 10),
            signups_per_ip: Rate::new(20, 60, 10),
            login_failures_per_account: LockoutPolicy {
                free_failures: 5,
                first_lockout_seconds: 30,
                max_lockout_seconds: 15 * 60,
                window_seconds: 15 * 60,
            },
            login_failures_per_ip: LockoutPolicy {
                free_failures: 20,
                first_lockout_seconds: 60,
                max_lockout_seconds: 60 * 60,
                window_seconds: 60 * 60,
            },
            trusted_proxies: Vec::new(),
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.per_ip.validate("edge.limits.per_ip")?;
        self.per_user.validate("edge.limits.per_user")?;
        self.logins_per_ip.validate("edge.limits.logins_per_ip")?;
        self.signups_per_ip.validate("edge.limits.signups_per_ip")?;
        self.login_failures_per_account.validate("edge.limits.login_failures_per_account")?;
        self.login_failures_per_ip.validate("edge.limits.login_failures_per_ip")
    }
}

/// The client's address, as the limits see it (set by [`rate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// The key of this address in the limiter (`unknown` when the transport gave none, as in tests
    /// driving the router directly).
    pub fn key(&self) -> String {
        self.0.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

/// The client address of `request`: the peer, or, behind a trusted proxy, the last address of
/// `X-Forwarded-For` that is not one of the trusted proxies.
pub fn client_ip(request: &Request, trusted_proxies: &[IpAddr]) -> Option<IpAddr> {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())?;
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let forwarded = request.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<IpAddr> = forwarded.flat_map(|v| v.split(',')).filter_map(|hop| hop.trim().parse().ok()).collect();
    Some(hops.into_iter().rev().find(|hop| !trusted_proxies.contains(hop)).unwrap_or(peer))
}

/// Middleware: the rates per client address (stricter for logins and sign-ups) and per user, all
/// counted in one call to the limiter (one round trip to Redis).
pub async fn rate_limit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let limits = &state.config.limits;
    let ip = ClientIp(client_ip(&request, &limits.trusted_proxies));
    request.extensions_mut().insert(ip);
    if !limits.enabled {
        return next.run(request).await;
    }
    let ip_key = ip.key();
    let mut checks = vec![(format!("ip:{ip_key}"), limits.per_ip)];
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/sessions") => checks.push((format!("login-ip:{ip_key}"), limits.logins_per_ip)),
        (&Method::POST, "/v1/users") => checks.push((format!("signup-ip:{ip_key}"), limits.signups_per_ip)),
        _ => {}
    }
    let (mut parts, body) = request.into_parts();
    if let Some(Ok(user)) = crate::auth::caller(&mut parts, &state) {
        checks.push((format!("user:{}", user.user_id), limits.per_user));
    }
    match state.backend.limiter.admit_all(&checks).await {
        Ok(Admission::Admitted) => {}
        Ok(Admission::Limited { retry_after }) => {
            ridehail_runtime::metrics::http_shed("rate_limited");
            return ApiError::TooManyRequests { code: "rate_limited", retry_after }.into_response();
        }
        Err(e) => tracing::warn!(error = %e, "rate limiter unavailable; request let through"),
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The `Retry-After` value of a wait: whole seconds, rounded up, at least one.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn the_client_behind_a_trusted_proxy_is_the_last_hop_before_it() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let request = |peer: &str, forwarded: Option<&str>| {
            let mut builder = axum::http::Request::builder();
            if let Some(forwarded) = forwarded {
                builder = builder.header("x-forwarded-for", forwarded);
            }
            let mut request = builder.body(axum::body::Body::empty()).unwrap();
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(format!("{peer}:5000").parse().unwrap()));
            request
        };
        let direct = request("203.0.113.9", Some("198.51.100.1"));
        assert_eq!(
            client_ip(&direct, &[proxy]),
            Some("203.0.113.9".parse().unwrap()),
            "untrusted peers are not believed"
        );
        let proxied = request("10.0.0.1", Some("198.51.100.1, 203.0.113.7"));
        assert_eq!(client_ip(&proxied, &[proxy]), Some("203.0.113.7".parse().unwrap()));
        let no_header = request("10.0.0.1", None);
        assert_eq!(client_ip(&no_header, &[proxy]), Some(proxy));
    }
}
