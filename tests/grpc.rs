//! A real tonic server on loopback, wrapped by a parapet stack, called by a real tonic
//! client. gRPC messages are declared in Rust (`prost::Message`), so no protoc is needed.
#![cfg(feature = "tonic")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderName;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder, service_fn};
use tower_parapet::Rejection;
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::timeout::{DeadlineUnit, HttpDeadline, TimeoutLayer};

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
}

/// A gRPC service with two unary methods: `Echo` answers at once, `Hang` never answers.
#[derive(Clone)]
struct Demo;

impl tonic::server::NamedService for Demo {
    const NAME: &'static str = "parapet.test.Demo";
}

impl Service<http::Request<Body>> for Demo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Ping, Ping>::default());
            let res = match req.uri().path() {
                "/parapet.test.Demo/Echo" => {
                    let echo = service_fn(|r: tonic::Request<Ping>| async move {
                        Ok::<_, Status>(tonic::Response::new(r.into_inner()))
                    });
                    grpc.unary(echo, req).await
                }
                "/parapet.test.Demo/Hang" => {
                    let hang = service_fn(|_: tonic::Request<Ping>| {
                        std::future::pending::<Result<tonic::Response<Ping>, Status>>()
                    });
                    grpc.unary(hang, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(res)
        })
    }
}

async fn serve(timeout: Duration) -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stack = ServiceBuilder::new()
        .layer(RejectionResponseLayer::new())
        .layer(
            TimeoutLayer::new(timeout).deadline(HttpDeadline::new().header(
                HeaderName::from_static("x-deadline-ms"),
                DeadlineUnit::Millis,
            )),
        );
    tokio::spawn(
        Server::builder()
            .layer(stack)
            .add_service(Demo)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn call(
    channel: &Channel,
    method: &'static str,
    deadline_ms: Option<&'static str>,
) -> Result<Ping, Status> {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.unwrap();
    let mut req = tonic::Request::new(Ping { text: "hi".into() });
    if let Some(ms) = deadline_ms {
        req.metadata_mut()
            .insert("x-deadline-ms", ms.parse().unwrap());
    }
    client
        .unary(
            req,
            PathAndQuery::from_static(method),
            ProstCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

// Paused time: the runtime jumps to the next timer whenever it is idle, so the 30 s deadline
// expires as soon as the hanging call is the only thing left, without a real wait.
#[tokio::test(start_paused = true)]
async fn hanging_method_answers_deadline_exceeded() {
    let channel = serve(Duration::from_secs(30)).await;
    let ok = call(&channel, "/parapet.test.Demo/Echo", None)
        .await
        .unwrap();
    assert_eq!(ok.text, "hi");

    let started = tokio::time::Instant::now();
    let status = call(&channel, "/parapet.test.Demo/Hang", None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "request timed out after 30s");
    assert!(started.elapsed() >= Duration::from_secs(30));
}

// The caller's deadline travels in a header of the service's choosing here. (A tonic client
// that sets `grpc-timeout` also enforces it locally and reports its own expiry as CANCELLED
// at the same instant the server's DEADLINE_EXCEEDED is sent, so it cannot show which side
// answered; `grpc-timeout` parsing is covered in tests/timeout.rs.)
#[tokio::test(start_paused = true)]
async fn callers_deadline_wins_and_answers_deadline_exceeded() {
    let channel = serve(Duration::from_secs(30)).await;
    let started = tokio::time::Instant::now();
    let status = call(&channel, "/parapet.test.Demo/Hang", Some("200"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    assert_eq!(status.message(), "request timed out after 200ms");
}

#[test]
fn rejections_convert_to_status_on_the_client_side() {
    let status: Status = Rejection::circuit_open("db", Some(Duration::from_millis(1500))).into();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "1500"
    );
    let status = tower_parapet::grpc::status_from_error(
        Rejection::rate_limited(Duration::from_secs(1), None).boxed(),
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    let passthrough =
        tower_parapet::grpc::status_from_error(Box::new(Status::not_found("no such user")));
    assert_eq!(passthrough.code(), Code::NotFound);
}
