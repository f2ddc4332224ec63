//! Rate and latency accuracy of the link emulator.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_gets_the_rate() {
    let _serial = SERIAL.lock().await;
    let rate = 100 * MBIT;
    let server = Server::source(15_000_000).await;
    let config = LinkConfig {
        rate: Some(rate),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_eq!(reception.total(), 15_000_000);
    assert_rate("one stream at 100 Mbit/s", reception.steady_rate(), rate);
    assert_eq!(link.stats().bytes_down, 15_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_at_their_cap_fill_the_aggregate() {
    let _serial = SERIAL.lock().await;
    let (rate, per_connection) = (100 * MBIT, 25 * MBIT);
    let server = Server::source(4_000_000).await;
    let config = LinkConfig {
        rate: Some(rate),
        per_connection_rate: Some(per_connection),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let receptions =
        futures::future::join_all((0..4).map(|_| receive(link.addr(), b"", false))).await;
    for (i, reception) in receptions.iter().enumerate() {
        reception.end.as_ref().unwrap();
        assert_eq!(reception.total(), 4_000_000);
        let measured = reception.steady_rate();
        eprintln!("stream {i}: {}", Rate(measured as u64));
        assert!(
            measured <= per_connection as f64 * (1.0 + TOLERANCE),
            "stream {i} at {} over its cap",
            Rate(measured as u64)
        );
    }
    assert_rate(
        "four streams capped at 25 Mbit/s",
        aggregate_rate(&receptions),
        rate,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_gets_its_connection_cap() {
    let _serial = SERIAL.lock().await;
    let per_connection = 25 * MBIT;
    let server = Server::source(4_000_000).await;
    let config = LinkConfig {
        rate: Some(100 * MBIT),
        per_connection_rate: Some(per_connection),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_rate(
        "one stream capped at 25 Mbit/s",
        reception.steady_rate(),
        per_connection,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_share_the_aggregate_equally() {
    let _serial = SERIAL.lock().await;
    let rate = 100 * MBIT;
    let server = Server::source(3_000_000).await;
    let config = LinkConfig {
        rate: Some(rate),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let receptions =
        futures::future::join_all((0..4).map(|_| receive(link.addr(), b"", false))).await;
    for (i, reception) in receptions.iter().enumerate() {
        reception.end.as_ref().unwrap();
        assert_rate_within(
            &format!("stream {i} of 4 sharing 100 Mbit/s"),
            reception.steady_rate(),
            rate / 4,
            FAIRNESS,
        );
    }
    assert_rate(
        "four streams sharing 100 Mbit/s",
        aggregate_rate(&receptions),
        rate,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_link_passes_everything() {
    // Serialised too: it is the one test that keeps both cores busy.
    let _serial = SERIAL.lock().await;
    let server = Server::source(50_000_000).await;
    let link = Link::start(server.addr, LinkConfig::default())
        .await
        .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_eq!(reception.total(), 50_000_000);
    let elapsed = reception.last_byte() - reception.first_byte();
    eprintln!(
        "unlimited: {}",
        Rate((50_000_000.0 / elapsed.as_secs_f64()) as u64)
    );
    let stats = link.stats();
    assert_eq!((stats.connections, stats.bytes_down), (1, 50_000_000));
}

#[tokio::test]
async fn connect_latency_delays_the_first_byte() {
    let latency = Duration::from_millis(40);
    let server = Server::source(1_000).await;
    let config = LinkConfig {
        connect_latency: latency,
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    let first = reception.first_byte() - reception.start;
    eprintln!("first byte after {first:?} with {latency:?} connect latency");
    assert!(first >= latency, "{first:?}");
    // A loose sanity bound: a loaded machine may add a lot.
    assert!(first < latency + Duration::from_secs(1), "{first:?}");
}

#[tokio::test]
async fn request_latency_delays_every_request() {
    let latency = Duration::from_millis(30);
    let server = Server::responder(100).await;
    let config = LinkConfig {
        request_latency: latency,
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    let mut answer = [0; 100];
    for request in 0..3 {
        let sent = Instant::now();
        stream.write_all(b"GET").await.unwrap();
        stream.read_exact(&mut answer).await.unwrap();
        let took = sent.elapsed();
        eprintln!("request {request}: {took:?} with {latency:?} request latency");
        assert!(took >= latency, "request {request}: {took:?}");
        assert!(
            took < latency + Duration::from_secs(1),
            "request {request}: {took:?}"
        );
    }
    // The half-close passes through: the server answers it and closes.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len(), 100);
    assert_eq!(link.stats().bytes_up, 9);
}
