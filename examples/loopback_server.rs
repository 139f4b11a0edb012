//! The handler of `benches/stack.rs` served over TCP, bare or behind a whole stack, for
//! the loopback load test (`scripts/loopback.sh` puts `wrk` in front of it).
//!
//! ```sh
//! cargo run --release --example loopback_server --features axum -- --port 8080 --stack parapet
//! ```
//!
//! - `--port P`: listen on 127.0.0.1:P and serve until killed (or for `--seconds S`).
//! - `--stack bare|parapet|peers`: the router alone, parapet's recommended stack, or the
//!   closest stack assembled from tower-http, tower_governor and tower-resilience (the
//!   stacks are in `benches/common/stacks.rs`; its top comment lists their layers).
//!   `--stack floor` (and `floor-without-id`) serves the least work the stack must do, in
//!   one service (`floor_stack` there): a reference, not a stack to use.
//!   `--stack only-<layer>` serves one layer of parapet's stack alone (`noop`, `logging`,
//!   `rejection`, `rate_limit`, `gate`, `idempotency`, `fallback`, `breaker`, `timeout`;
//!   see `single_layer` there), to measure each layer's share.
//! - `--threads N`: tokio worker threads (default 1: the script pins the server to one
//!   core and the load generator to the other).
//! - `--calls N`: no server: drive N requests through the stack in-process (a
//!   current-thread runtime, the router made ready once as `axum::serve` does) and exit;
//!   `scripts/instructions.sh stack` runs it under callgrind for instructions per request.
//!
//! Without `--port` it serves nothing for long: it starts each stack on an ephemeral port,
//! sends one request to each over TCP, prints the answers and exits (a smoke check).

#[path = "../benches/common/stacks.rs"]
mod stacks;

use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Args {
    port: Option<u16>,
    stack: String,
    threads: usize,
    seconds: Option<u64>,
    calls: Option<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: loopback_server [--port P] [--stack bare|parapet|peers|floor|floor-without-id|only-<layer>] [--threads N] [--seconds S] [--calls N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        port: None,
        stack: "parapet".to_owned(),
        threads: 1,
        seconds: None,
        calls: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => args.port = Some(value.parse().unwrap_or_else(|_| usage())),
            "--stack" => args.stack = value,
            "--threads" => args.threads = value.parse().unwrap_or_else(|_| usage()),
            "--seconds" => args.seconds = Some(value.parse().unwrap_or_else(|_| usage())),
            "--calls" => args.calls = Some(value.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    args
}

fn router(stack: &str) -> Router {
    match stack {
        "bare" => stacks::routes(),
        "parapet" => stacks::parapet_stack(),
        "peers" => stacks::peer_stack(),
        "floor" => stacks::floor_stack(),
        "floor-without-id" => stacks::floor_without_id(),
        other => other
            .strip_prefix("only-")
            .and_then(stacks::single_layer)
            .unwrap_or_else(|| usage()),
    }
}

/// One `GET /products` over a fresh connection; the status line and the body.
async fn get_once(port: u16) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(b"GET /products HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await?;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(format!("{status} {body}"))
}

async fn smoke_check() {
    for stack in ["bare", "parapet", "peers"] {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, router(stack)).await.unwrap();
        });
        let answer = tokio::time::timeout(Duration::from_secs(5), get_once(port))
            .await
            .expect("answered within 5 s")
            .expect("answered");
        println!("{stack:>8}: {answer}");
        assert!(answer.starts_with("HTTP/1.1 200"), "{stack}: {answer}");
        server.abort();
    }
}

/// Drives `n` requests through the stack in-process, each to completion, and checks the
/// last answer.
fn drive_in_process(stack: &str, n: u64) {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let app: Router = router(stack).with_state(());
    rt.block_on(async {
        let mut status = 200;
        for _ in 0..n {
            // As hyper's adapter does per request: a clone of the service, called once.
            let req = Request::get("/products").body(Body::empty()).unwrap();
            status = app.clone().oneshot(req).await.unwrap().status().as_u16();
        }
        assert_eq!(status, 200, "{stack}");
    });
}

fn main() {
    let args = parse_args();
    if let Some(n) = args.calls {
        drive_in_process(&args.stack, n);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let Some(port) = args.port else {
            smoke_check().await;
            return;
        };
        let app = router(&args.stack);
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        eprintln!(
            "serving {} on 127.0.0.1:{port} ({} worker thread(s))",
            args.stack, args.threads
        );
        let serve = axum::serve(listener, app);
        match args.seconds {
            Some(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(s), serve).await;
            }
            None => serve.await.unwrap(),
        }
    });
}
