//! Small helpers every module may use; this module uses none of the others.

/// Locks a mutex, recovering the data if another thread panicked while holding it.
///
/// The collector's state stays consistent across a panic (every critical section is a single
/// push, pop or read), and a test double that poisons itself would turn one failed assertion
/// into a cascade of unrelated panics.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `http://ADDR` + `path`, with an unspecified listen address (`0.0.0.0`, `::`) replaced by
/// loopback so the URL can actually be connected to.
pub(crate) fn url_for(addr: std::net::SocketAddr, path: &str) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        let loopback = match addr {
            std::net::SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            std::net::SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        addr.set_ip(loopback);
    }
    format!("http://{addr}{path}")
}

#[cfg(test)]
mod tests {
    use super::url_for;

    #[test]
    fn url_replaces_unspecified_address_with_loopback() {
        let addr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(url_for(addr, "/x"), "http://127.0.0.1:8080/x");
        let addr = "[::]:81".parse().expect("addr");
        assert_eq!(url_for(addr, ""), "http://[::1]:81");
        let addr = "127.0.0.1:9".parse().expect("addr");
        assert_eq!(url_for(addr, "/a?b=c"), "http://127.0.0.1:9/a?b=c");
    }
}
