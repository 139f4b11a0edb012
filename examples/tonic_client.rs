//! A gRPC client with the client stack: a template to copy.
//!
//! Around the tonic `Channel`, outermost first:
//! - a typed client (`String` symbol → `Quote`) with a **fallback** to the last known
//!   good quote of that symbol (each one served is reported as a `FallbackServed` event);
//! - a **circuit breaker** that counts server-fault gRPC statuses as failures;
//! - a **timeout** that also writes the time left into `grpc-timeout`, so the server
//!   gives up when the client does.
//!
//! It starts the server template (`tonic_server.rs`) in-process on loopback, asks for a
//! few quotes while the server's dependency fails, prints what it got, and exits.
//!
//! ```sh
//! cargo run --example tonic_client --features tonic
//! ```

#[path = "tonic_server.rs"]
mod server;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use server::{GET, Pricing, Quote, QuoteRequest};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_parapet::BoxError;
use tower_parapet::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, SlidingWindow};
use tower_parapet::fallback::{FallbackLayer, LastKnownGood};
use tower_parapet::key;
use tower_parapet::timeout::{HttpDeadline, TimeoutLayer};

/// The HTTP-level stack around the channel: breaker → timeout (propagating). Its errors
/// (a rejection, a transport failure) are turned into `tonic::Status`, which is what a
/// tonic client expects (a rejection keeps its code and retry pushback).
type Transport = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::Status,
>;

/// `String` symbol → `Quote`, over the transport stack.
#[derive(Clone)]
struct QuoteClient {
    grpc: tonic::client::Grpc<Transport>,
}

impl Service<String> for QuoteClient {
    type Response = Quote;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Quote, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, symbol: String) -> Self::Future {
        let mut grpc = self.grpc.clone();
        Box::pin(async move {
            if let Err(e) = grpc.ready().await {
                return Err::<Quote, BoxError>(Box::new(e));
            }
            match grpc
                .unary(
                    tonic::Request::new(QuoteRequest { symbol }),
                    PathAndQuery::from_static(GET),
                    ProstCodec::default(),
                )
                .await
            {
                Ok(res) => Ok(res.into_inner()),
                Err(status) => Err(Box::new(status) as BoxError),
            }
        })
    }
}

/// The client stack; the breaker's handle.
fn client(
    channel: Channel,
) -> (
    BoxCloneSyncService<String, Quote, BoxError>,
    CircuitBreakerHandle,
) {
    let breaker = CircuitBreakerLayer::grpc()
        .name("quotes")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(5))
        .build()
        .expect("a valid breaker");
    let handle = breaker.handle();
    let transport: Transport = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_err(tower_parapet::grpc::status_from_error)
            .layer(breaker)
            .layer(
                TimeoutLayer::new(Duration::from_secs(2))
                    .deadline(HttpDeadline::new().propagate_grpc_timeout(true)),
            )
            .service(channel),
    );
    let typed = QuoteClient {
        grpc: tonic::client::Grpc::new(transport),
    };
    let stack = ServiceBuilder::new()
        .layer(FallbackLayer::new(LastKnownGood::new(key::from_fn(
            |symbol: &String| Ok::<_, key::KeyError>(symbol.clone()),
        ))))
        .service(typed);
    (BoxCloneSyncService::new(stack), handle)
}

async fn start() -> (Channel, Pricing) {
    let pricing = Pricing::default();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    server::serve(listener, &pricing);
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("the server is up");
    (channel, pricing)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (channel, pricing) = start().await;
    let (quotes, breaker) = client(channel);
    let ask = |what: &'static str| {
        let quotes = quotes.clone();
        async move {
            let answer = quotes.oneshot("ACME".to_owned()).await;
            println!("{what:<40} {answer:?}");
        }
    };
    ask("server healthy").await;
    pricing.set(1);
    for _ in 0..3 {
        ask("server's dependency failing").await;
    }
    println!("client breaker: {:?}", breaker.state());
}

#[cfg(test)]
mod client_tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_answered_from_the_last_known_good_quote() {
        let (channel, pricing) = start().await;
        let (quotes, _) = client(channel);
        let fresh = quotes.clone().oneshot("ACME".into()).await.unwrap();
        pricing.set(1);
        for _ in 0..6 {
            let stale = quotes.clone().oneshot("ACME".into()).await.unwrap();
            assert_eq!(stale, fresh, "the last good quote answers");
        }
        // A symbol never seen has no last known good: the failure shows.
        assert!(quotes.oneshot("NEW".into()).await.is_err());
    }

    #[tokio::test]
    async fn the_client_breaker_opens_on_server_faults() {
        let (channel, pricing) = start().await;
        let (quotes, breaker) = client(channel);
        pricing.set(1);
        // The server's own breaker answers UNAVAILABLE after 4 failures; the client's
        // counts UNKNOWN/UNAVAILABLE as server faults.
        for _ in 0..6 {
            let _ = quotes.clone().oneshot("NEW".into()).await;
        }
        assert_eq!(breaker.state(), tower_parapet::circuit_breaker::State::Open);
    }

    #[tokio::test]
    async fn the_remaining_deadline_travels_as_grpc_timeout() {
        let (channel, pricing) = start().await;
        let (quotes, _) = client(channel);
        // The dependency hangs: the server's own 500 ms timeout or the client's 2 s one
        // ends it; the client never waits past its deadline.
        pricing.set(2);
        let started = std::time::Instant::now();
        assert!(quotes.oneshot("SLOW".into()).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
