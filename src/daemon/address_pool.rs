//! The pool of function addresses: the lowest free address of the subnet from .10 up.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Host part of the first address handed out.
const FIRST_HOST: u32 = 10;

/// The lowest address of `subnet`, from host .10 up to the last before broadcast, that is
/// not in `taken`.
pub fn lowest_free(subnet: Ipv4Net, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let base = u32::from(subnet.network());
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (base.checked_add(FIRST_HOST)?..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn starts_at_dot_ten() {
        let ip = lowest_free(net("10.0.0.0/24"), &HashSet::new());
        assert_eq!(ip, Some(Ipv4Addr::new(10, 0, 0, 10)));
    }

    #[test]
    fn skips_taken_and_fills_holes() {
        let taken: HashSet<_> = [10, 11, 13]
            .iter()
            .map(|h| Ipv4Addr::new(10, 0, 0, *h))
            .collect();
        assert_eq!(
            lowest_free(net("10.0.0.0/24"), &taken),
            Some(Ipv4Addr::new(10, 0, 0, 12))
        );
    }

    #[test]
    fn exhausted_pool_gives_none() {
        // /28: hosts .10 to .14 (.15 is broadcast).
        let taken: HashSet<_> = (10..=14).map(|h| Ipv4Addr::new(10, 0, 0, h)).collect();
        assert_eq!(lowest_free(net("10.0.0.0/28"), &taken), None);
        assert_eq!(lowest_free(net("10.0.0.0/30"), &HashSet::new()), None);
    }
}
