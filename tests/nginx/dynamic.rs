//! The dynamic router against real nginx with its Lua module: route changes without reloads,
//! the in-flight drain, retries after a change, dead workers' counts, a failed structural
//! reload, switching routings, and adopting a running nginx.

use super::*;

/// Dynamic routing: after the service's first apply (a reload: its server is new), route
/// changes move traffic without a reload: no new generation, no new workers, the files stay
/// as they are, and the state file holds the last confirmed routing.
#[tokio::test]
async fn dynamic_route_changes_move_traffic_without_a_reload() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start_with(&bin, RoutingChoice::Dynamic).await;
    let first = n.router.apply(&n.set(&a)).await.expect("first apply");
    n.router.wait_drained(&first, DRAIN_TIMEOUT).await.unwrap();
    n.assert_serves(&a, 5).await;
    let workers = procs::workers(n.nginx.master);
    let generation = n.router.disk_generation();
    let files = n.files();
    for (i, backend) in [&b, &a, &b].into_iter().enumerate() {
        let change = n.router.apply(&n.set(backend)).await.expect("route change");
        // Every worker reads the shared dict: the first fresh request already sees it.
        n.assert_serves(backend, 5).await;
        let drained = n.router.wait_drained(&change, DRAIN_TIMEOUT).await.unwrap();
        assert_eq!(drained.lingering, None, "change {i}");
        assert_eq!(procs::workers(n.nginx.master), workers, "no new workers");
        assert_eq!(n.router.disk_generation(), generation, "no reload");
        assert_eq!(n.files(), files, "no file rewritten");
        assert_eq!(change.generation, first.generation + 1 + i as u64);
    }
    let state = std::fs::read_to_string(n.file("routing.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["web"]["stable"]["peers"][0], b.addr.to_string());
    assert_eq!(state["web"]["generation"], first.generation + 3);
}

/// Dynamic drain: a request in flight on a peer the new routing left out keeps the drain
/// waiting (and is named when the wait times out); once it is answered the drain ends.
#[tokio::test]
async fn dynamic_drain_waits_for_requests_in_flight_on_removed_peers() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (slow_addr, release, slow) = held_backend(Some("slow")).await;
    let fast = Backend::start("fast").await;
    let n = Nginx::start_with(&bin, RoutingChoice::Dynamic).await;
    let set = |addr| UpstreamSet {
        backends: vec![addr],
        ..n.set(&fast)
    };
    n.router.apply(&set(slow_addr)).await.unwrap();
    let in_flight = one_in_flight(&n, slow_addr).await;
    let change = n.router.apply(&set(fast.addr)).await.unwrap();
    n.assert_serves(&fast, 3).await;
    let timed_out = n
        .router
        .wait_drained(&change, Duration::from_millis(300))
        .await
        .unwrap();
    let left = timed_out
        .lingering
        .expect("the slow request is still in flight");
    assert!(left.contains(&format!("1 on {slow_addr}")), "{left}");
    release.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().as_deref(), Ok("slow"));
    let drained = n.router.wait_drained(&change, DRAIN_TIMEOUT).await.unwrap();
    assert_eq!(drained.lingering, None);
    slow.await.unwrap();
}

/// Switching an installation to dynamic routing while its nginx runs: the adopted nginx loads
/// the Lua module at the first apply's reload, and route changes after it reload nothing.
#[tokio::test]
async fn a_running_reload_nginx_is_taken_over_by_the_dynamic_router() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start(&bin).await;
    n.apply_drained(&a).await;
    let dynamic = NginxRouter::new(
        n.router.layout.clone(),
        n.router.control,
        Templates::builtin(),
    )
    .with_routing(RoutingChoice::Dynamic);
    let adopted = ManagedNginx::start(&dynamic, DRAIN_TIMEOUT).await.unwrap();
    assert_eq!(
        adopted.master, n.nginx.master,
        "the running nginx is adopted"
    );
    let first = dynamic
        .apply(&n.set(&b))
        .await
        .expect("the first dynamic apply");
    dynamic.wait_drained(&first, DRAIN_TIMEOUT).await.unwrap();
    n.assert_serves(&b, 5).await;
    let generation = dynamic.disk_generation();
    dynamic.apply(&n.set(&a)).await.expect("a route change");
    n.assert_serves(&a, 5).await;
    assert_eq!(dynamic.disk_generation(), generation, "no reload");
}

/// A backend that takes one connection, reads its request, and on `release` answers `body`,
/// or closes the connection without an answer for None (nginx then retries another peer).
async fn held_backend(
    body: Option<&'static str>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = released.await;
        if let Some(body) = body {
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (addr, release, task)
}

/// One request through `n`, in the background, once it is in flight on `peer`.
async fn one_in_flight(n: &Nginx, peer: SocketAddr) -> JoinHandle<Result<String, String>> {
    let listen = n.listen;
    let request = tokio::spawn(async move { fetch(listen).await });
    support::eventually(
        Duration::from_secs(5),
        "a request in flight on the held peer",
        || async { in_flight_on(n, peer).await == 1 },
    )
    .await;
    request
}

/// In-flight requests of `service` on `peer`, summed over nginx's workers.
async fn in_flight_on(n: &Nginx, peer: SocketAddr) -> i64 {
    let counts = switchyard_nginx::routing::inflight(n.router.control, "web")
        .await
        .unwrap_or_default();
    counts
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{peer} ")))
        .map(|(_, n)| n)
        .sum()
}

/// Regression (review): a request retried after a route change goes to a peer of the *live*
/// routing, never back to one the change took away (whose drain may be over).
#[tokio::test]
async fn a_retry_after_a_route_change_goes_to_the_live_routing() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (hanging, release, task) = held_backend(None).await;
    let (a, b) = backends().await;
    let n = Nginx::start_with(&bin, RoutingChoice::Dynamic).await;
    let set = |peers: Vec<SocketAddr>| UpstreamSet {
        backends: peers,
        ..n.set(&a)
    };
    // Round robin from the first peer: the first request goes to the hanging one.
    n.router.apply(&set(vec![hanging, a.addr])).await.unwrap();
    let request = one_in_flight(&n, hanging).await;
    let change = n.router.apply(&set(vec![hanging, b.addr])).await.unwrap();
    let drained = n
        .router
        .wait_drained(&change, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        drained.lingering, None,
        "nothing is in flight on {}",
        a.addr
    );
    release.send(()).unwrap();
    assert_eq!(request.await.unwrap().as_deref(), Ok("backend-b"));
    assert_eq!(in_flight_on(&n, a.addr).await, 0);
    task.await.unwrap();
}

/// Regression (review): a worker killed with a request in flight leaves its count behind;
/// the drain ignores counts of workers that no longer run.
#[tokio::test]
async fn a_count_left_by_a_dead_worker_does_not_hold_the_drain() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (hanging, _release, _task) = held_backend(None).await;
    let fast = Backend::start("fast").await;
    let n = Nginx::start_with(&bin, RoutingChoice::Dynamic).await;
    let set = |addr| UpstreamSet {
        backends: vec![addr],
        ..n.set(&fast)
    };
    n.router.apply(&set(hanging)).await.unwrap();
    let request = one_in_flight(&n, hanging).await;
    for worker in procs::workers(n.nginx.master) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    assert!(request.await.unwrap().is_err(), "its worker died");
    assert_eq!(in_flight_on(&n, hanging).await, 1, "the count is left");
    support::eventually(
        Duration::from_secs(5),
        "the master's new workers",
        || async { !procs::workers(n.nginx.master).is_empty() },
    )
    .await;
    let change = n.router.apply(&set(fast.addr)).await.unwrap();
    let drained = n
        .router
        .wait_drained(&change, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(drained.lingering, None);
    assert!(drained.waited_ms < 1000, "{drained:?}");
}

/// Regression (review): a structural reload that fails after `nginx -t` passed (its new
/// listen is taken) leaves the previous routing live, in nginx and in the state file.
#[tokio::test]
async fn a_failed_structural_reload_leaves_the_previous_routing_live() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start_with(&bin, RoutingChoice::Dynamic).await;
    n.router.apply(&n.set(&a)).await.unwrap();
    n.assert_serves(&a, 3).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = UpstreamSet {
        listen: taken.local_addr().unwrap(),
        ..n.set(&b)
    };
    let err = n
        .router
        .apply(&moved)
        .await
        .expect_err("the reload cannot bind");
    assert!(matches!(err, RouterError::NotConfirmed(_)), "{err:?}");
    n.assert_serves(&a, 10).await;
    let state = std::fs::read_to_string(n.file("routing.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["web"]["stable"]["peers"][0], a.addr.to_string());
    let live = switchyard_nginx::routing::live_generation(n.router.control, "web")
        .await
        .unwrap();
    assert_eq!(
        state["web"]["generation"], live,
        "the file names what is live"
    );
    // And the next change works.
    n.router.apply(&n.set(&b)).await.unwrap();
    n.assert_serves(&b, 3).await;
}

/// Regression (review): a reload router deploying one service leaves the others, routed
/// dynamically, working: the control file keeps the Lua while they are on disk.
#[tokio::test]
async fn switching_one_service_to_reload_routing_keeps_the_dynamic_ones_working() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start_with(&bin, RoutingChoice::Dynamic).await;
    let api = UpstreamSet {
        service: Name::parse("api").unwrap(),
        listen: SocketAddr::from(([127, 0, 0, 1], support::free_port())),
        ..n.set(&b)
    };
    n.router.apply(&api).await.unwrap();
    n.router.apply(&n.set(&a)).await.unwrap();
    let reload = NginxRouter::new(
        n.router.layout.clone(),
        n.router.control,
        Templates::builtin(),
    );
    let change = reload.apply(&n.set(&b)).await.expect("a reload apply");
    reload.wait_drained(&change, DRAIN_TIMEOUT).await.unwrap();
    n.assert_serves(&b, 5).await;
    assert_eq!(
        fetch(api.listen).await.as_deref(),
        Ok("backend-b"),
        "api still routes"
    );
    let web = std::fs::read_to_string(n.file("web.conf")).unwrap();
    assert!(
        web.contains(&format!("server {} max_fails=0;", b.addr)),
        "{web}"
    );
}
