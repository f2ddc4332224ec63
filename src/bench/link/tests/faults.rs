//! Faults, configuration changes and the lifecycle of the link emulator.

use super::*;

#[tokio::test]
async fn stall_delivers_exactly_n_bytes_then_nothing() {
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::StallAfter(100_000),
        ),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", true).await;
    assert_eq!(reception.total(), 100_000);
    assert_eq!(reception.end.unwrap_err().kind(), io::ErrorKind::TimedOut);
    let stats = link.stats();
    assert_eq!((stats.faults.stalls, stats.faults.total()), (1, 1));
}

#[tokio::test]
async fn stall_at_zero_sends_nothing_and_keeps_the_socket_open() {
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::StallAfter(0)),
    )
    .await
    .unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    let mut buf = [0; 1];
    let read = timeout(QUIET, stream.read(&mut buf)).await;
    assert!(read.is_err(), "{read:?}");
    assert_eq!(link.stats().active, 1);
    // Closing the client ends the stalled connection.
    drop(stream);
    timeout(Duration::from_secs(5), async {
        while link.stats().active > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn reset_delivers_exactly_n_bytes_then_connection_reset() {
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::ResetAfter(123_456),
        ),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 123_456);
    assert_eq!(
        reception.end.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(link.stats().faults.resets, 1);
}

#[tokio::test]
async fn reset_reaches_a_client_that_reads_late_after_its_bytes() {
    // Small enough to sit in the client's receive buffer when the RST comes.
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::ResetAfter(50_000),
        ),
    )
    .await
    .unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    while link.stats().faults.resets == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut received = Vec::new();
    let error = stream.read_to_end(&mut received).await.unwrap_err();
    assert_eq!(received.len(), 50_000);
    assert!(received == *pattern(0, 50_000));
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn refused_connection_is_reset_without_reaching_upstream() {
    let server = Server::source(1_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::RefuseConnection),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 0);
    assert_eq!(
        reception.end.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(server.accepted(), 0);
    assert_eq!(link.stats().faults.refusals, 1);
}

#[tokio::test]
async fn black_hole_never_answers_nor_reaches_upstream() {
    let server = Server::responder(10).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::BlackHole),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"GET / HTTP/1.1\r\n\r\n", true).await;
    assert_eq!(reception.total(), 0);
    assert_eq!(reception.end.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert_eq!(server.accepted(), 0);
    let stats = link.stats();
    assert_eq!((stats.faults.black_holes, stats.bytes_up), (1, 0));
}

#[tokio::test]
async fn nth_connection_fault_hits_only_that_connection() {
    let server = Server::source(20_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::NthConnection(2),
            FaultAction::ResetAfter(1_000),
        ),
    )
    .await
    .unwrap();
    for index in 1..=3 {
        let reception = receive(link.addr(), b"", false).await;
        if index == 2 {
            assert_eq!(reception.total(), 1_000);
            assert!(reception.end.is_err());
        } else {
            assert_eq!(reception.total(), 20_000, "connection {index}");
            reception.end.unwrap();
        }
    }
    let stats = link.stats();
    assert_eq!((stats.connections, stats.faults.total()), (3, 1));
}

#[tokio::test]
async fn every_nth_connection_fault_hits_every_nth() {
    let server = Server::source(5_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryNthConnection(2),
            FaultAction::RefuseConnection,
        ),
    )
    .await
    .unwrap();
    for index in 1..=5 {
        let reception = receive(link.addr(), b"", false).await;
        let expected = if index % 2 == 0 { 0 } else { 5_000 };
        assert_eq!(reception.total(), expected, "connection {index}");
    }
    assert_eq!(server.accepted(), 3);
    assert_eq!(link.stats().faults.refusals, 2);
}

#[tokio::test]
async fn new_config_applies_to_new_connections() {
    let server = Server::source(5_000).await;
    let link = Link::start(server.addr, LinkConfig::default())
        .await
        .unwrap();
    let mut open = TcpStream::connect(link.addr()).await.unwrap();
    let mut first = [0; 5_000];
    open.read_exact(&mut first).await.unwrap();
    let refuse = fault(FaultTrigger::EveryConnection, FaultAction::RefuseConnection);
    link.set_config(refuse.clone()).unwrap();
    assert_eq!(link.config(), refuse);
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 0);
    // The connection opened before is untouched.
    assert_eq!(open.read(&mut first).await.unwrap(), 0);
    assert_eq!(link.stats().faults.refusals, 1);
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    let server = Server::source(1).await;
    let invalid = [
        LinkConfig {
            rate: Some(0),
            ..LinkConfig::default()
        },
        LinkConfig {
            per_connection_rate: Some(0),
            ..LinkConfig::default()
        },
        fault(FaultTrigger::NthConnection(0), FaultAction::BlackHole),
        fault(FaultTrigger::EveryNthConnection(0), FaultAction::BlackHole),
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::TrickleAfter { bytes: 1, rate: 0 },
        ),
    ];
    let link = Link::start(server.addr, LinkConfig::default())
        .await
        .unwrap();
    for config in invalid {
        let error = Link::start(server.addr, config.clone()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{config:?}");
        let error = link.set_config(config.clone()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{config:?}");
    }
    assert_eq!(link.config(), LinkConfig::default());
}

#[tokio::test]
async fn only_loopback_upstreams() {
    // TEST-NET-1: refused before any socket is made, so nothing is sent there.
    let error = Link::start("192.0.2.1:80".parse().unwrap(), LinkConfig::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("192.0.2.1:80"), "{error}");
    let link = Link::start("[::1]:9".parse().unwrap(), LinkConfig::default())
        .await
        .unwrap();
    assert!(link.addr().ip().is_loopback());
}

#[tokio::test]
async fn unreachable_upstream_resets_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let vacant = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let link = Link::start(vacant, LinkConfig::default()).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 0);
    assert_eq!(
        reception.end.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(link.stats().upstream_errors, 1);
}

#[tokio::test]
async fn shutdown_closes_listener_and_connections() {
    let server = Server::source(1_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::BlackHole),
    )
    .await
    .unwrap();
    let addr = link.addr();
    let mut open = TcpStream::connect(addr).await.unwrap();
    while link.stats().active == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    link.shutdown().await;
    let mut buf = [0; 1];
    let read = timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drop_closes_connections() {
    let server = Server::source(1_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::BlackHole),
    )
    .await
    .unwrap();
    let mut open = TcpStream::connect(link.addr()).await.unwrap();
    while link.stats().active == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(link);
    let mut buf = [0; 1];
    let read = timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_slows_the_connection_after_n_bytes() {
    let _serial = SERIAL.lock().await;
    let (bytes, rate) = (200_000, 100_000);
    let server = Server::source(300_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::TrickleAfter { bytes, rate },
        ),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_eq!(reception.total(), 300_000);
    let fast = reception.reached(bytes).0 - reception.start;
    assert!(
        fast < Duration::from_secs(1),
        "first {bytes} bytes in {fast:?}"
    );
    // Measured from the first trickled slice, which is itself paced.
    assert_rate("trickle", reception.rate_from(bytes + 1), rate);
    assert_eq!(link.stats().faults.trickles, 1);
}
