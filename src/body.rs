//! The body type of every response the gateway sends, whoever made it: the upstream,
//! a page, an endpoint, the access log's wrapper.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends: streamed from the upstream, or a page.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`ResponseBody`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
