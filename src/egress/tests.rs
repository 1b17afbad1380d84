//! Tests of the egress guard: the classification of addresses, the allow-list, and the client that
//! enforces them.

use super::*;

/// What `classify` says about `ip`, in short: the range, and for a form that carries IPv4
/// the form's range and the carried address first.
fn verdict(ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
    classify(ip).map(|b| match b.inside {
        None => b.range.to_string(),
        Some((form, v4)) => format!("{} {v4} -> {}", form.range, b.range),
    })
}

fn check(cases: &[(&str, Option<&str>)]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(ip, want)| verdict(ip).as_deref() != *want)
        .map(|(ip, want)| format!("{ip}: want {want:?}, got {:?}", verdict(ip)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn ipv4_ranges_are_blocked_up_to_their_edges_and_not_past_them() {
    check(&[
        ("0.0.0.0", Some("0.0.0.0/32")),
        ("0.0.0.1", Some("0.0.0.0/8")),
        ("0.255.255.255", Some("0.0.0.0/8")),
        ("1.0.0.0", None),
        ("9.255.255.255", None),
        ("10.0.0.0", Some("10.0.0.0/8")),
        ("10.255.255.255", Some("10.0.0.0/8")),
        ("11.0.0.0", None),
        ("100.63.255.255", None),
        ("100.64.0.0", Some("100.64.0.0/10")),
        ("100.127.255.255", Some("100.64.0.0/10")),
        ("100.128.0.0", None),
        ("126.255.255.255", None),
        ("127.0.0.0", Some("127.0.0.0/8")),
        ("127.0.0.1", Some("127.0.0.0/8")),
        ("127.255.255.255", Some("127.0.0.0/8")),
        ("128.0.0.0", None),
        ("169.253.255.255", None),
        ("169.254.0.0", Some("169.254.0.0/16")),
        ("169.254.169.254", Some("169.254.0.0/16")),
        ("169.254.255.255", Some("169.254.0.0/16")),
        ("169.255.0.0", None),
        ("172.15.255.255", None),
        ("172.16.0.0", Some("172.16.0.0/12")),
        ("172.31.255.255", Some("172.16.0.0/12")),
        ("172.32.0.0", None),
        ("191.255.255.255", None),
        ("192.0.0.0", Some("192.0.0.0/24")),
        ("192.0.0.255", Some("192.0.0.0/24")),
        ("192.0.1.0", None),
        ("192.0.2.0", Some("192.0.2.0/24")),
        ("192.0.2.255", Some("192.0.2.0/24")),
        ("192.0.3.0", None),
        ("192.88.98.255", None),
        ("192.88.99.0", Some("192.88.99.0/24")),
        ("192.88.99.255", Some("192.88.99.0/24")),
        ("192.88.100.0", None),
        ("192.167.255.255", None),
        ("192.168.0.0", Some("192.168.0.0/16")),
        ("192.168.255.255", Some("192.168.0.0/16")),
        ("192.169.0.0", None),
        ("198.17.255.255", None),
        ("198.18.0.0", Some("198.18.0.0/15")),
        ("198.19.255.255", Some("198.18.0.0/15")),
        ("198.20.0.0", None),
        ("198.51.99.255", None),
        ("198.51.100.0", Some("198.51.100.0/24")),
        ("198.51.100.255", Some("198.51.100.0/24")),
        ("198.51.101.0", None),
        ("203.0.112.255", None),
        ("203.0.113.0", Some("203.0.113.0/24")),
        ("203.0.113.255", Some("203.0.113.0/24")),
        ("203.0.114.0", None),
        ("223.255.255.255", None),
        ("224.0.0.0", Some("224.0.0.0/4")),
        ("239.255.255.255", Some("224.0.0.0/4")),
        ("240.0.0.0", Some("240.0.0.0/4")),
        ("255.255.255.254", Some("240.0.0.0/4")),
        ("255.255.255.255", Some("255.255.255.255/32")),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("93.184.215.14", None),
    ]);
}

#[test]
fn ipv6_ranges_are_blocked_up_to_their_edges_and_not_past_them() {
    check(&[
        ("::", Some("::/128")),
        ("::1", Some("::1/128")),
        ("100::", Some("100::/64")),
        ("100::ffff:ffff:ffff:ffff", Some("100::/64")),
        ("100:0:0:1::", Some("2000::/3")),
        ("2001::", Some("2001::/32")),
        ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some("2001::/32")),
        ("2001:1::1", None),
        ("2001:2::", Some("2001:2::/48")),
        ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some("2001:2::/48")),
        ("2001:2:1::", None),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001:db8::", Some("2001:db8::/32")),
        (
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("2001:db8::/32"),
        ),
        ("2001:db9::", None),
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("3fff::", Some("3fff::/20")),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Some("3fff::/20")),
        ("3fff:1000::", None),
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("2000::/3")),
        ("fc00::", Some("fc00::/7")),
        ("fd12:3456::1", Some("fc00::/7")),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("fc00::/7")),
        ("fe00::", Some("2000::/3")),
        ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("2000::/3")),
        ("fe80::", Some("fe80::/10")),
        ("fe80::1", Some("fe80::/10")),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("fe80::/10")),
        ("fec0::", Some("fec0::/10")),
        ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("fec0::/10")),
        ("ff00::", Some("ff00::/8")),
        ("ff02::1", Some("ff00::/8")),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("ff00::/8")),
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("2000::/3")),
        ("2000::", None),
        ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("4000::", Some("2000::/3")),
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001:80b::200e", None),
    ]);
}

#[test]
fn ipv4_inside_ipv6_is_classified_as_the_ipv4_it_carries() {
    check(&[
        // IPv4-mapped ::ffff:0:0/96
        (
            "::ffff:127.0.0.1",
            Some("::ffff:0.0.0.0/96 127.0.0.1 -> 127.0.0.0/8"),
        ),
        (
            "::ffff:0.0.0.0",
            Some("::ffff:0.0.0.0/96 0.0.0.0 -> 0.0.0.0/32"),
        ),
        (
            "::ffff:10.1.2.3",
            Some("::ffff:0.0.0.0/96 10.1.2.3 -> 10.0.0.0/8"),
        ),
        (
            "::ffff:100.64.0.1",
            Some("::ffff:0.0.0.0/96 100.64.0.1 -> 100.64.0.0/10"),
        ),
        (
            "::ffff:169.254.169.254",
            Some("::ffff:0.0.0.0/96 169.254.169.254 -> 169.254.0.0/16"),
        ),
        (
            "::ffff:255.255.255.255",
            Some("::ffff:0.0.0.0/96 255.255.255.255 -> 255.255.255.255/32"),
        ),
        ("::ffff:8.8.8.8", None),
        ("::fffe:ffff:ffff", Some("2000::/3")),
        ("::1:ffff:7f00:1", Some("2000::/3")),
        // IPv4-compatible ::/96 (deprecated); :: and ::1 are themselves
        ("::127.0.0.1", Some("::/96 127.0.0.1 -> 127.0.0.0/8")),
        ("::2", Some("::/96 0.0.0.2 -> 0.0.0.0/8")),
        ("::192.168.1.1", Some("::/96 192.168.1.1 -> 192.168.0.0/16")),
        ("::8.8.8.8", None),
        ("::1:0:0", Some("2000::/3")),
        // NAT64 64:ff9b::/96
        (
            "64:ff9b::7f00:1",
            Some("64:ff9b::/96 127.0.0.1 -> 127.0.0.0/8"),
        ),
        (
            "64:ff9b::a9fe:a9fe",
            Some("64:ff9b::/96 169.254.169.254 -> 169.254.0.0/16"),
        ),
        (
            "64:ff9b::6440:1",
            Some("64:ff9b::/96 100.64.0.1 -> 100.64.0.0/10"),
        ),
        ("64:ff9b::808:808", None),
        ("64:ff9b::1:7f00:1", Some("2000::/3")),
        ("64:ff9a:ffff:ffff:ffff:ffff:808:808", Some("2000::/3")),
        // Local-use NAT64 64:ff9b:1::/48
        (
            "64:ff9b:1::7f00:1",
            Some("64:ff9b:1::/48 127.0.0.1 -> 127.0.0.0/8"),
        ),
        (
            "64:ff9b:1:ffff:ffff:ffff:c0a8:1",
            Some("64:ff9b:1::/48 192.168.0.1 -> 192.168.0.0/16"),
        ),
        ("64:ff9b:1::808:808", None),
        ("64:ff9b:2::808:808", Some("2000::/3")),
        // 6to4 2002::/16: the IPv4 address is bits 16 to 48
        ("2002:7f00:1::1", Some("2002::/16 127.0.0.1 -> 127.0.0.0/8")),
        (
            "2002:a9fe:a9fe::",
            Some("2002::/16 169.254.169.254 -> 169.254.0.0/16"),
        ),
        (
            "2002:a00:1:ffff:ffff:ffff:ffff:ffff",
            Some("2002::/16 10.0.0.1 -> 10.0.0.0/8"),
        ),
        ("2002:e000::1", Some("2002::/16 224.0.0.0 -> 224.0.0.0/4")),
        ("2002:808:808::1", None),
        ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2003::1", None),
    ]);
}

#[test]
fn a_verdict_names_the_range_and_what_it_is_for() {
    let blocked = |ip: &str| classify(ip.parse().unwrap()).unwrap().to_string();
    assert_eq!(blocked("127.0.0.1"), "loopback (127.0.0.0/8)");
    assert_eq!(
        blocked("100.64.0.1"),
        "shared address space (carrier-grade NAT) (100.64.0.0/10)"
    );
    assert_eq!(
        blocked("::ffff:127.0.0.1"),
        "an IPv4-mapped IPv6 address (::ffff:0.0.0.0/96) carrying 127.0.0.1, which is loopback (127.0.0.0/8)"
    );
    assert_eq!(
        blocked("64:ff9b::a9fe:a9fe"),
        "a NAT64 address (64:ff9b::/96) carrying 169.254.169.254, which is link-local (cloud metadata services live here) (169.254.0.0/16)"
    );
    let refused = Refused::Resolved {
        host: "loop4.test".into(),
        address: "127.0.0.1".parse().unwrap(),
        blocked: Box::new(classify("127.0.0.1".parse().unwrap()).unwrap()),
    };
    assert_eq!(
        refused.to_string(),
        "host `loop4.test` resolves to 127.0.0.1, which is loopback (127.0.0.0/8); allow it by naming the host or its network in `settings.egress.allow`, or with `settings.allow_private_destinations: true`"
    );
}

#[test]
fn allow_entries_are_networks_addresses_or_host_names() {
    let net = |t: &str| AllowEntry::Network(t.parse().unwrap());
    for (text, want) in [
        ("10.1.2.0/24", net("10.1.2.0/24")),
        ("::1/128", net("::1/128")),
        ("fd00::/8", net("fd00::/8")),
        ("0.0.0.0/0", net("0.0.0.0/0")),
        ("127.0.0.1", net("127.0.0.1/32")),
        ("::1", net("::1/128")),
        (
            "hooks.internal.example",
            AllowEntry::Host("hooks.internal.example".into()),
        ),
        (
            "Hooks.Internal.Example.",
            AllowEntry::Host("hooks.internal.example".into()),
        ),
        ("svc_a.local", AllowEntry::Host("svc_a.local".into())),
        (
            "bücher.example",
            AllowEntry::Host("xn--bcher-kva.example".into()),
        ),
        ("localhost", AllowEntry::Host("localhost".into())),
    ] {
        assert_eq!(AllowEntry::parse(text), Ok(want), "{text}");
    }
}

#[test]
fn bad_allow_entries_are_refused_with_the_reason() {
    let err = |t: &str| AllowEntry::parse(t).unwrap_err().to_string();
    assert_eq!(err(""), "an empty entry");
    assert!(
        err("10.1.2.0/999").contains("the prefix length `/999` is not a whole number from 0 to 32")
    );
    assert!(err("::1/129").contains("from 0 to 128"));
    assert!(err("10.0.0.0/33").contains("from 0 to 32"));
    assert!(err("10.0.0.0/").contains("the prefix length `/`"));
    assert!(err("10.0.0.0/+8").contains("`/+8`"));
    assert!(err("10.0.0.0/08x").contains("`/08x`"));
    assert!(err("10.0.0.0/99999999999999999999999").contains("not a whole number"));
    assert!(
        err("10.1.2.3/24").contains("the network is `10.1.2.0/24`"),
        "{}",
        err("10.1.2.3/24")
    );
    assert!(err("garbage/8").contains("`garbage` is not an IP address"));
    assert!(err("10.0.0/8").contains("is not an IP address"));
    assert!(err("*.internal.example").contains("wildcards are not supported"));
    assert!(err("0x7f.1").contains("reads as the address 127.0.0.1"));
    assert!(err("[::1]").contains("reads as the address ::1"));
    for bad in [
        "http://hooks.example/",
        "hooks.example:8443",
        "a b",
        "a..b",
        "-",
        "exa$mple",
        "\u{0}",
    ] {
        assert!(
            err(bad).contains("is not a network, an IP address or a host name"),
            "{bad}: {}",
            err(bad)
        );
    }
    let long = "a".repeat(5000);
    assert_eq!(
        err(&long),
        "an entry of 5000 characters; a host name has at most 253, and a network is an address and a prefix length"
    );
    let label = format!("{}.example", "a".repeat(64));
    assert!(
        err(&label).contains("1 to 63 characters"),
        "{}",
        err(&label)
    );
}

fn policy(allow: &[&str]) -> EgressPolicy {
    EgressPolicy::new(false, allow.iter().map(|t| AllowEntry::parse(t).unwrap()))
}

fn url(text: &str) -> url::Url {
    url::Url::parse(text).unwrap()
}

#[test]
fn urls_are_checked_for_user_info_literals_and_localhost() {
    let none = policy(&[]);
    for ok in [
        "https://hooks.example/x",
        "http://8.8.8.8/",
        "http://[2606:4700:4700::1111]:8080/",
        "http://loop4.test/",
    ] {
        assert_eq!(none.check_url(&url(ok)), Ok(()), "{ok}");
    }
    for (bad, want) in [
        ("http://127.0.0.1@evil.test/", "user info"),
        ("http://user:pass@hooks.example/", "user info"),
        ("http://:pass@hooks.example/", "user info"),
        ("http://127.0.0.1/", "address 127.0.0.1 is loopback"),
        ("http://2130706433/", "address 127.0.0.1 is loopback"),
        ("http://0x7f.1/", "address 127.0.0.1 is loopback"),
        ("http://[::ffff:7f00:1]/", "carrying 127.0.0.1"),
        ("http://[::1]/", "address ::1 is loopback"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://localhost:8080/", "host `localhost` is this machine"),
        ("http://LOCALHOST./", "host `localhost` is this machine"),
        ("http://a.localhost/", "host `a.localhost` is this machine"),
    ] {
        let e = none.check_url(&url(bad)).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
    // The password is never part of the message.
    let e = none
        .check_url(&url("http://user:hunter2@hooks.example/"))
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2") && !e.contains("user:"), "{e}");
    // Allowing everything private does not allow user info.
    let all = EgressPolicy::new(true, []);
    assert_eq!(all.check_url(&url("http://127.0.0.1/")), Ok(()));
    assert_eq!(all.check_url(&url("http://localhost/")), Ok(()));
    assert!(matches!(
        all.check_url(&url("http://127.0.0.1@evil.test/")),
        Err(Refused::UserInfo { host }) if host == "evil.test"
    ));
}

#[test]
fn the_allow_list_lets_through_what_it_names_and_nothing_else() {
    let p = policy(&[
        "10.1.2.0/24",
        "::1/128",
        "127.0.0.1",
        "localhost",
        "hooks.internal.example",
    ]);
    assert_eq!(p.check_url(&url("http://10.1.2.200/")), Ok(()));
    assert!(p.check_url(&url("http://10.1.3.1/")).is_err());
    assert_eq!(p.check_url(&url("http://[::1]/")), Ok(()));
    assert_eq!(p.check_url(&url("http://127.0.0.1/")), Ok(()));
    assert!(p.check_url(&url("http://127.0.0.2/")).is_err());
    // A network allows the IPv4 address in its IPv6 forms too.
    assert_eq!(p.check_url(&url("http://[::ffff:10.1.2.3]/")), Ok(()));
    assert_eq!(p.check_url(&url("http://localhost/")), Ok(()));
    assert!(p.check_url(&url("http://a.localhost/")).is_err());
    let sock = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 0);
    // A named host passes whatever it resolves to.
    assert_eq!(
        p.check_resolved("hooks.internal.example", &[sock("192.168.1.1")]),
        Ok(())
    );
    assert_eq!(
        p.check_resolved("Hooks.Internal.Example.", &[sock("192.168.1.1")]),
        Ok(())
    );
    assert!(
        p.check_resolved("other.example", &[sock("192.168.1.1")])
            .is_err()
    );
    assert_eq!(
        p.check_resolved("other.example", &[sock("10.1.2.7")]),
        Ok(())
    );
}

#[test]
fn a_name_is_refused_when_any_of_its_addresses_is_blocked() {
    let p = policy(&[]);
    let sock = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 443);
    assert_eq!(
        p.check_resolved("hooks.example", &[sock("8.8.8.8"), sock("2606:4700::1")]),
        Ok(())
    );
    let refused = p
        .check_resolved("both.test", &[sock("8.8.8.8"), sock("127.0.0.1")])
        .unwrap_err();
    assert!(matches!(
        &refused,
        Refused::Resolved { host, address, .. } if host == "both.test" && address.to_string() == "127.0.0.1"
    ));
    assert!(matches!(
        p.check_resolved("127.0.0.1", &[sock("127.0.0.1")]),
        Err(Refused::Address { .. })
    ));
}

/// A real HTTP server on 127.0.0.1 that counts the connections it accepts.
async fn counting_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn the_client_refuses_before_connecting_and_sends_what_is_allowed() {
    let (port, count) = counting_server().await;
    let connections = || count.load(std::sync::atomic::Ordering::SeqCst);
    let guarded = EgressClient::new(Arc::new(policy(&[]))).unwrap();
    for target in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1@localhost:{port}/"),
    ] {
        assert!(
            guarded
                .request(reqwest::Method::POST, &url(&target))
                .is_err(),
            "{target}"
        );
    }
    // Past the URL check, the resolver refuses what `localhost` resolves to.
    let resolved = reqwest::dns::Resolve::resolve(
        &GuardedResolver {
            policy: Arc::new(policy(&[])),
        },
        "localhost".parse().unwrap(),
    )
    .await;
    let error = match resolved {
        Ok(_) => panic!("localhost resolved through the guard"),
        Err(e) => e,
    };
    let refused = refusal_in(error.as_ref()).expect("the refusal is in the chain");
    assert!(
        matches!(refused, Refused::Resolved { host, blocked, .. } if host == "localhost" && blocked.what == "loopback"),
        "{refused}"
    );
    assert_eq!(connections(), 0, "nothing was sent");

    // Named in the allow-list, by address or by name, it goes through.
    for (allow, target) in [
        ("127.0.0.0/8", format!("http://127.0.0.1:{port}/")),
        ("localhost", format!("http://localhost:{port}/")),
    ] {
        let client = EgressClient::new(Arc::new(policy(&[allow, "::1"]))).unwrap();
        let response = client
            .request(reqwest::Method::GET, &url(&target))
            .unwrap()
            .send()
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(response.status(), 200);
    }
    assert_eq!(connections(), 2);
}

#[tokio::test]
async fn resolving_an_address_checks_it_and_a_failed_lookup_says_which_host() {
    let p = policy(&[]);
    assert!(matches!(
        p.resolve("127.0.0.1", 25).await,
        Err(ResolveError::Refused(Refused::Address { .. }))
    ));
    assert!(matches!(
        p.resolve("localhost", 25).await,
        Err(ResolveError::Refused(Refused::Resolved { .. }))
    ));
    let e = p.resolve("no-such-host.invalid", 25).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot resolve `no-such-host.invalid`"),
        "{e}"
    );
    assert_eq!(
        policy(&["127.0.0.1"])
            .resolve("127.0.0.1", 25)
            .await
            .unwrap(),
        vec![SocketAddr::new("127.0.0.1".parse().unwrap(), 25)]
    );
}
