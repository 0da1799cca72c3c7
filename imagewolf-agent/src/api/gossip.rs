//! The control plane's agent routes (authenticated like every agent call, bodies checked
//! against the signed hash): rumors, deltas and digests (see `distributor/gossip.rs`).
//!
//! | route | method | answer |
//! |---|---|---|
//! | `/v1/gossip` | POST [`Offers`] | [`Wants`](crate::distributor::gossip::Wants) |
//! | `/v1/digest?hash=<h>` | GET | [`Digest`](crate::distributor::gossip::Digest) |
//! | `/v1/distributions/<id>?from=<k>` | GET | the distribution from segment k on |
//! | `/v1/distributions/<id>?from=<k>&relay=<0\|1>` | POST the part wanted | `{"status": ...}` |

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::server::ConnState;
use super::{
    auth_refused, body, check_media_type, json_response, ApiError, Ctx, PushOutcome, Route,
};
use crate::auth::{AuthError, BodyHash};
use crate::distributor::gossip::{is_id, Offers, MAX_OFFERS};
use crate::image::Distribution;
use crate::notification::validate_image_ref;

/// Largest `from` accepted (more segments than any distribution may have).
const MAX_FROM: usize = 1 << 16;

/// The value of `name` in a query string.
fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// `from=<k>` (absent: 0).
fn from_param(query: Option<&str>) -> Result<usize, ApiError> {
    match param(query, "from") {
        None => Ok(0),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|k| *k <= MAX_FROM)
            .ok_or_else(|| bad("from=<segments> expected")),
    }
}

/// Reads a JSON body whose hash the request's signature named.
async fn signed_body(
    req: Request<Incoming>,
    ctx: &Ctx,
    conn: &ConnState,
    hash: Option<BodyHash>,
) -> Result<Bytes, ApiError> {
    check_media_type(req.headers(), &["application/json"])?;
    let body = body::read_body(req, ctx, conn).await?;
    if hash.is_some_and(|hash| !hash.matches(&body)) {
        return Err(auth_refused(AuthError::BodyMismatch));
    }
    Ok(body)
}

/// Serves [`Route::Gossip`], [`Route::Digest`] and [`Route::DistributionById`].
pub(super) async fn dispatch(
    ctx: &Ctx,
    route: Route,
    req: Request<Incoming>,
    conn: &ConnState,
    hash: Option<BodyHash>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let api = &ctx.api;
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match route {
        Route::Gossip => {
            let body = signed_body(req, ctx, conn, hash).await?;
            let offers: Offers =
                serde_json::from_slice(&body).map_err(|e| bad(format!("malformed offers: {e}")))?;
            if offers.offers.len() > MAX_OFFERS {
                return Err(bad(format!("more than {MAX_OFFERS} offers")));
            }
            Ok(json_response(StatusCode::OK, &api.on_offers(&offers)))
        }
        Route::Digest => {
            if hash.is_some_and(|hash| !hash.matches(&[])) {
                return Err(auth_refused(AuthError::BodyMismatch));
            }
            let theirs = param(query, "hash");
            match api.digest(theirs) {
                Some(d) => Ok(json_response(StatusCode::OK, &d)),
                None => Err(ApiError::new(StatusCode::NOT_FOUND, "no digest here")),
            }
        }
        _ => {
            let id = req
                .uri()
                .path()
                .trim_start_matches("/v1/distributions/")
                .to_owned();
            let from = from_param(query)?;
            if req.method() == Method::GET {
                if hash.is_some_and(|hash| !hash.matches(&[])) {
                    return Err(auth_refused(AuthError::BodyMismatch));
                }
                return match api.distribution_since(&id, from) {
                    Some(d) => Ok(json_response(StatusCode::OK, &d)),
                    None => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no distribution {id} here"),
                    )),
                };
            }
            let relay = match param(query, "relay") {
                None | Some("0") => false,
                Some("1") => true,
                Some(_) => return Err(bad("relay=0|1 expected")),
            };
            let body = signed_body(req, ctx, conn, hash).await?;
            let delta: Distribution = serde_json::from_slice(&body)
                .map_err(|e| bad(format!("malformed distribution: {e}")))?;
            if delta.id != id {
                return Err(bad("the distribution's id is not the one in the path"));
            }
            validate_image_ref(&delta.image)?;
            let answer = match api.on_delta(from, relay, delta) {
                PushOutcome::Started => json!({ "status": "started" }),
                PushOutcome::Duplicate => json!({ "status": "known" }),
                PushOutcome::Ignored(reason) => json!({ "status": "ignored", "reason": reason }),
                PushOutcome::Busy(reason) => {
                    return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason))
                }
            };
            Ok(json_response(StatusCode::OK, &answer))
        }
    }
}

/// `/v1/distributions/<40 hex>`.
pub(super) fn is_distribution_path(path: &str) -> bool {
    path.strip_prefix("/v1/distributions/").is_some_and(is_id)
}
