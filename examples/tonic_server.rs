//! A gRPC service with the server stack: a template to copy.
//!
//! `parapet.example.Quotes/Get` answers a price for a symbol, asking a pricing
//! dependency through its own client stack (circuit breaker → timeout). Around the whole
//! tonic server, outermost first: logging, refusals as gRPC statuses (trailers-only, with
//! `grpc-retry-pushback-ms`), a rate limit, and a timeout that honours the caller's
//! `grpc-timeout`.
//!
//! Messages are declared in Rust with `prost` (no `protoc` needed); in a real project they
//! come from `tonic-prost-build`.
//!
//! ```sh
//! cargo run --example tonic_server --features tonic   # serves 127.0.0.1:50051 for 30 s
//! ```
#![allow(dead_code, unreachable_pub)] // shared with tonic_client.rs, which uses a part of it

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Server;
use tonic_prost::ProstCodec;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, SlidingWindow};
use tower_parapet::grpc::status_from_error;
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::logging::LoggingLayer;
use tower_parapet::rate_limit::Quota;
use tower_parapet::timeout::{HttpDeadline, TimeoutLayer};
use tower_parapet::{BoxError, RateLimitLayer};

/// The request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuoteRequest {
    /// The ticker symbol.
    #[prost(string, tag = "1")]
    pub symbol: String,
}

/// The answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Quote {
    /// The ticker symbol.
    #[prost(string, tag = "1")]
    pub symbol: String,
    /// The price in cents.
    #[prost(int64, tag = "2")]
    pub cents: i64,
}

/// The method's path.
pub const GET: &str = "/parapet.example.Quotes/Get";

/// How the pricing dependency behaves (switched by tests).
#[derive(Debug, Clone, Default)]
pub struct Pricing(Arc<AtomicU8>);

impl Pricing {
    /// 0 healthy, 1 failing, 2 hanging.
    pub fn set(&self, how: u8) {
        self.0.store(how, Ordering::SeqCst);
    }

    /// The dependency's client: breaker → timeout around the pricing call.
    fn client(
        &self,
    ) -> (
        BoxCloneSyncService<String, i64, BoxError>,
        CircuitBreakerHandle,
    ) {
        let how = self.0.clone();
        let pricing = service_fn(move |symbol: String| {
            let how = how.load(Ordering::SeqCst);
            async move {
                match how {
                    0 => Ok(symbol.len() as i64 * 1_234),
                    1 => Err::<i64, BoxError>("pricing database unreachable".into()),
                    _ => std::future::pending().await,
                }
            }
        });
        let breaker = CircuitBreakerLayer::builder()
            .name("pricing")
            .sliding_window(SlidingWindow::count(10))
            .minimum_calls(5)
            .wait_in_open(Duration::from_secs(20))
            .build()
            .expect("a valid breaker");
        let handle = breaker.handle();
        let client = ServiceBuilder::new()
            .layer(breaker)
            .layer(TimeoutLayer::new(Duration::from_millis(500)))
            .service(pricing);
        (BoxCloneSyncService::new(client), handle)
    }
}

/// The tonic service: one unary method.
#[derive(Clone)]
#[allow(missing_debug_implementations)]
pub struct Quotes {
    pricing: BoxCloneSyncService<String, i64, BoxError>,
}

impl tonic::server::NamedService for Quotes {
    const NAME: &'static str = "parapet.example.Quotes";
}

impl Service<http::Request<Body>> for Quotes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let pricing = self.pricing.clone();
        Box::pin(async move {
            if req.uri().path() != GET {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let get = service_fn(move |r: tonic::Request<QuoteRequest>| {
                let pricing = pricing.clone();
                async move {
                    let symbol = r.into_inner().symbol;
                    // A refusal of the dependency's stack (open breaker, timeout) becomes
                    // its gRPC status, retry hint included.
                    let cents = pricing
                        .oneshot(symbol.clone())
                        .await
                        .map_err(status_from_error)?;
                    Ok::<_, Status>(tonic::Response::new(Quote { symbol, cents }))
                }
            });
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Quote, QuoteRequest>::default());
            Ok(grpc.unary(get, req).await)
        })
    }
}

/// Serve on `listener` with the server stack; the pricing breaker's handle is returned.
pub fn serve(listener: TcpListener, pricing: &Pricing) -> CircuitBreakerHandle {
    let (client, handle) = pricing.client();
    let stack = ServiceBuilder::new()
        .layer(LoggingLayer::new())
        .layer(RejectionResponseLayer::new())
        .layer(RateLimitLayer::new(Quota::per_second(50)))
        .layer(TimeoutLayer::new(Duration::from_secs(5)).deadline(HttpDeadline::new()));
    tokio::spawn(
        Server::builder()
            .layer(stack)
            .add_service(Quotes { pricing: client })
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    handle
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().init();
    let addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
    let listener = TcpListener::bind(addr).await.expect("port 50051 free");
    serve(listener, &Pricing::default());
    println!("serving parapet.example.Quotes on {addr} for 30 s");
    tokio::time::sleep(Duration::from_secs(30)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::PathAndQuery;
    use tonic::Code;
    use tonic::transport::Channel;

    async fn start(pricing: &Pricing) -> (Channel, CircuitBreakerHandle) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = serve(listener, pricing);
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (channel, handle)
    }

    async fn get(channel: &Channel, symbol: &str) -> Result<Quote, Status> {
        let mut client = tonic::client::Grpc::new(channel.clone());
        client.ready().await.unwrap();
        client
            .unary(
                tonic::Request::new(QuoteRequest {
                    symbol: symbol.into(),
                }),
                PathAndQuery::from_static(GET),
                ProstCodec::default(),
            )
            .await
            .map(tonic::Response::into_inner)
    }

    #[tokio::test]
    async fn a_quote_and_the_codes_of_refusals() {
        let pricing = Pricing::default();
        let (channel, breaker) = start(&pricing).await;
        assert_eq!(get(&channel, "ACME").await.unwrap().cents, 4 * 1_234);

        // The dependency fails: its errors come back UNKNOWN until the breaker opens (4
        // failures of 5 calls), then UNAVAILABLE with a retry pushback.
        pricing.set(1);
        for _ in 0..4 {
            assert_eq!(
                get(&channel, "ACME").await.unwrap_err().code(),
                Code::Unknown
            );
        }
        let status = get(&channel, "ACME").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let pushback: u64 = status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .expect("a pushback")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pushback > 10_000 && pushback <= 20_000, "{pushback}");
        breaker.close();
        pricing.set(0);
        assert!(get(&channel, "ACME").await.is_ok());
    }

    #[tokio::test]
    async fn a_flood_is_resource_exhausted_with_pushback() {
        let (channel, _) = start(&Pricing::default()).await;
        let mut exhausted = None;
        for _ in 0..200 {
            if let Err(status) = get(&channel, "ACME").await {
                exhausted = Some(status);
                break;
            }
        }
        let status = exhausted.expect("the quota of 50 a second ran out");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.metadata().contains_key("grpc-retry-pushback-ms"));
    }
}
