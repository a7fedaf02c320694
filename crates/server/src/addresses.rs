//! Per-address limits, applied at accept to every connection (native, TLS, HTTP): how many
//! one address may hold at once, and how fast it may open new ones (a token bucket). Without
//! them one address could take every slot of [`Config::max_connections`](crate::Config) and
//! have everyone else told `server_full`. An IPv6 address counts by its /64, the block one
//! subscriber is usually given; an IPv4 address mapped into IPv6 counts as itself.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use ipnet::IpNet;

use crate::config::Config;

/// Most addresses remembered; beyond, those holding no connection are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// The networks exempt by default: loopback, where local benchmarks and tests open thousands
/// of connections.
pub fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ]
}

/// Parses a list of networks, `CIDR[,CIDR…]`: `10.0.0.0/8,fd00::/8`; an address without a
/// prefix is a network of one (`::1`). `''` or `none` is the empty list.
pub fn parse_networks(text: &str) -> Result<Vec<IpNet>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(str::trim)
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    format!(
                        "{item:?} is not a network such as 10.0.0.0/8 or fd00::/8, or an address"
                    )
                })
        })
        .collect()
}

/// What a connection from one address is counted as: the address itself, or its /64. Every
/// per-address limit counts by it (connections here, upload reservations in `files`).
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// `ip`, with an IPv4 address mapped into IPv6 (a dual-stack listener's) made IPv4 again.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The connections held by each address and their allowance of new ones.
pub(crate) struct Addresses {
    per_address: usize,
    per_minute: u32,
    exempt: Vec<IpNet>,
    /// The connections the server holds, all addresses together.
    active: Arc<AtomicUsize>,
    /// The place of every connection not counted by address (exempt, or no limits).
    unlimited: Arc<Place>,
    /// A std mutex: held for a map lookup or update only, once per accept and close.
    counts: Mutex<HashMap<IpAddr, Count>>,
}

struct Count {
    /// Connections held now.
    held: usize,
    /// New connections allowed now: refilled at `per_minute` a minute, up to `per_minute`.
    tokens: f64,
    /// When `tokens` was last refilled.
    at: Instant,
    /// The place the address's connections share, while any lives.
    place: Weak<Place>,
}

impl Count {
    fn new(per_minute: u32) -> Self {
        Self {
            held: 0,
            tokens: f64::from(per_minute),
            at: Instant::now(),
            place: Weak::new(),
        }
    }

    fn refill(&mut self, per_minute: u32) {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * f64::from(per_minute) / 60.0;
        self.tokens = (self.tokens + earned).min(f64::from(per_minute));
        self.at = now;
    }

    /// Whether forgetting this count changes nothing: no connection held, allowance full.
    fn is_spent(&self, per_minute: u32) -> bool {
        self.held == 0 && self.tokens >= f64::from(per_minute)
    }
}

/// Why a connection was refused, a sentence for its `bye` (`too_many_connections`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

impl Addresses {
    /// The limits of `config`, counting connections into `active` too.
    pub(crate) fn new(config: &Config, active: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new_cyclic(|addresses| Self {
            per_address: config.max_connections_per_address,
            per_minute: config.max_new_connections_per_minute,
            exempt: config.limit_exempt.clone(),
            unlimited: Arc::new(Place {
                active: active.clone(),
                address: None,
                addresses: addresses.clone(),
            }),
            active,
            counts: Mutex::default(),
        })
    }

    /// The connections the server holds now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Admits a new connection from `ip`, counted (by the server, and by its address unless
    /// exempt) until the guard returned is dropped; or says why not.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Guard, Refused> {
        let ip = canonical(ip);
        let unlimited = self.per_address == 0 && self.per_minute == 0;
        if unlimited || self.exempt.iter().any(|net| net.contains(&ip)) {
            return Ok(Guard::new(self.unlimited.clone()));
        }
        let key = key(ip);
        let mut counts = self.counts.lock().unwrap();
        if counts.len() >= MAX_TRACKED && !counts.contains_key(&key) {
            let per_minute = self.per_minute;
            counts
                .values_mut()
                .for_each(|count| count.refill(per_minute));
            counts.retain(|_, count| !count.is_spent(per_minute));
            if counts.len() >= MAX_TRACKED {
                // Under a flood from many addresses, forget allowances rather than grow.
                counts.retain(|_, count| count.held > 0);
            }
        }
        let count = counts
            .entry(key)
            .or_insert_with(|| Count::new(self.per_minute));
        if self.per_address > 0 && count.held >= self.per_address {
            return Err(Refused(format!(
                "Your address holds its maximum of {} connections; close one and try again.",
                self.per_address
            )));
        }
        if self.per_minute > 0 {
            count.refill(self.per_minute);
            if count.tokens < 1.0 {
                return Err(Refused(format!(
                    "Your address opened more than {} connections in a minute; try again shortly.",
                    self.per_minute
                )));
            }
            count.tokens -= 1.0;
        }
        let place = self.place_of(key, count);
        drop(counts);
        Ok(Guard::new(place))
    }

    /// The place shared by `key`'s connections, made if none lives; counts one more held.
    fn place_of(&self, key: IpAddr, count: &mut Count) -> Arc<Place> {
        count.held += 1;
        count.place.upgrade().unwrap_or_else(|| {
            let place = Arc::new(Place {
                active: self.active.clone(),
                address: Some(key),
                addresses: self.unlimited.addresses.clone(),
            });
            count.place = Arc::downgrade(&place);
            place
        })
    }
}

/// What a connection counts against: the server's connections and, unless exempt, its
/// address's. One place is shared by every connection of an address, and one by all those
/// not counted by address, so that a connection's guard is one pointer and costs no
/// allocation of its own: a connection's task holds its guard for as long as it lives.
pub(crate) struct Place {
    active: Arc<AtomicUsize>,
    /// The address counted, by its key; `None`: not counted by address.
    address: Option<IpAddr>,
    /// Weak: the addresses hold the places, as long as any connection does.
    addresses: Weak<Addresses>,
}

impl Place {
    /// Counts one more connection here, without asking whether it may (the limits were
    /// applied at accept): the WebSocket that takes over an admitted HTTP connection.
    fn enter(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        if let (Some(key), Some(addresses)) = (self.address, self.addresses.upgrade()) {
            let mut counts = addresses.counts.lock().unwrap();
            let count = counts
                .entry(key)
                .or_insert_with(|| Count::new(addresses.per_minute));
            count.held += 1;
        }
    }

    /// Counts one connection less here.
    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        if let (Some(key), Some(addresses)) = (self.address, self.addresses.upgrade()) {
            let per_minute = addresses.per_minute;
            let mut counts = addresses.counts.lock().unwrap();
            if let Some(count) = counts.get_mut(&key) {
                count.held = count.held.saturating_sub(1);
                count.refill(per_minute);
                if count.is_spent(per_minute) {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// Counts a connection in its [`Place`] for as long as it lives.
pub(crate) struct Guard(Arc<Place>);

impl Guard {
    /// A guard for a connection already counted in `place`'s address.
    fn new(place: Arc<Place>) -> Self {
        place.active.fetch_add(1, Ordering::AcqRel);
        Self(place)
    }

    /// Counts one more connection in `place`, as [`Place::enter`] does.
    pub(crate) fn enter(place: &Arc<Place>) -> Self {
        place.enter();
        Self(place.clone())
    }

    /// Where this connection is counted, for connections that start more.
    pub(crate) fn place(&self) -> Arc<Place> {
        self.0.clone()
    }

    /// A place counted by the server alone, in `active`: for tests of sessions.
    pub(crate) fn unlimited(active: Arc<AtomicUsize>) -> Arc<Place> {
        Arc::new(Place {
            active,
            address: None,
            addresses: Weak::new(),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(per_address: usize, per_minute: u32, exempt: &str) -> Arc<Addresses> {
        let config = Config {
            max_connections_per_address: per_address,
            max_new_connections_per_minute: per_minute,
            limit_exempt: parse_networks(exempt).unwrap(),
            ..Config::default()
        };
        Addresses::new(&config, Arc::default())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse() {
        assert_eq!(parse_networks("").unwrap(), vec![]);
        assert_eq!(parse_networks(" none ").unwrap(), vec![]);
        assert_eq!(
            parse_networks("127.0.0.0/8,::1").unwrap(),
            loopback(),
            "the default, as the command line gives it"
        );
        assert_eq!(
            parse_networks("10.1.2.3/8, fd00::1/8").unwrap(),
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "fd00::/8".parse().unwrap()
            ]
        );
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("localhost").is_err());
        assert!(parse_networks("10.0.0.0/8,").is_err());
    }

    #[test]
    fn an_address_holds_at_most_its_share() {
        let addresses = addresses(2, 0, "none");
        let first = addresses.admit(ip("10.0.0.1")).unwrap();
        let _second = addresses.admit(ip("10.0.0.1")).unwrap();
        assert!(addresses.admit(ip("10.0.0.1")).is_err());
        assert!(addresses.admit(ip("10.0.0.2")).is_ok(), "another address");
        drop(first);
        assert!(addresses.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_itself() {
        let addresses = addresses(1, 0, "none");
        let _held = addresses.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            addresses.admit(ip("2001:db8:1:2:ffff::9")).is_err(),
            "same /64"
        );
        assert!(
            addresses.admit(ip("2001:db8:1:3::1")).is_ok(),
            "another /64"
        );
        let _v4 = addresses.admit(ip("192.0.2.7")).unwrap();
        assert!(addresses.admit(ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn new_connections_spend_an_allowance_that_refills() {
        let addresses = addresses(0, 3, "none");
        for _ in 0..3 {
            drop(addresses.admit(ip("10.0.0.1")).unwrap());
        }
        assert!(addresses.admit(ip("10.0.0.1")).is_err());
        // A minute's worth later (20 s a connection at 3 a minute), one more.
        {
            let mut counts = addresses.counts.lock().unwrap();
            let count = counts.get_mut(&ip("10.0.0.1")).unwrap();
            count.at -= std::time::Duration::from_secs(21);
        }
        assert!(addresses.admit(ip("10.0.0.1")).is_ok());
        assert!(addresses.admit(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn exempt_networks_are_not_counted_nor_remembered() {
        let addresses = addresses(1, 1, "127.0.0.0/8,::1,10.9.0.0/16");
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(addresses.admit(ip("127.0.0.1")).unwrap());
            held.push(addresses.admit(ip("::1")).unwrap());
            held.push(addresses.admit(ip("::ffff:10.9.8.7")).unwrap());
        }
        assert!(addresses.counts.lock().unwrap().is_empty());
        assert_eq!(addresses.active(), 15, "counted by the server all the same");
        drop(held);
        assert_eq!(addresses.active(), 0);
    }

    #[test]
    fn an_address_is_forgotten_once_it_holds_nothing_and_its_allowance_is_full() {
        let addresses = addresses(2, 0, "none");
        let http = addresses.admit(ip("10.0.0.1")).unwrap();
        let socket = Guard::enter(&http.place());
        assert!(
            addresses.admit(ip("10.0.0.1")).is_err(),
            "a connection entered without asking counts"
        );
        drop(http);
        assert_eq!(addresses.counts.lock().unwrap().len(), 1);
        drop(socket);
        assert!(addresses.counts.lock().unwrap().is_empty());
        assert_eq!(addresses.active(), 0);
    }
}
