//! CPU time of this process and of PostgreSQL, for the `*_cpu` examples: steadier than
//! throughput on a shared 2-core machine. Linux only (it reads `/proc`).

use std::collections::{HashMap, HashSet};

/// CPU ticks (user + system) of this process and of all `postgres` processes, in the
/// kernel's clock ticks (100 a second on every Linux this runs on; see [`TICKS_PER_SECOND`]).
pub fn ticks() -> (u64, u64) {
    let own = process_ticks("self").map_or(0, |(_, t)| t);
    let postgres = postgres_pids()
        .into_iter()
        .filter_map(|pid| process_ticks(&pid.to_string()))
        .map(|(_, t)| t)
        .sum();
    (own, postgres)
}

/// Clock ticks a second in `/proc`'s process times.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// Whether `/proc/<pid>/stat` names a postgres process, and its user + system ticks.
fn process_ticks(pid: &str) -> Option<(bool, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let used = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((head.contains("(postgres"), used))
}

fn postgres_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| name.parse::<u32>().ok())
        .filter(|pid| process_ticks(&pid.to_string()).is_some_and(|(pg, _)| pg))
        .collect()
}

/// A reading of CPU times: this process, every postgres process, and each PostgreSQL
/// backend serving one of this process's connections.
///
/// The machine's other PostgreSQL sessions (other test suites, other benchmarks in the
/// same cluster) count in [`Used::all_postgres`]; [`Sample::since`] also gives the CPU of
/// this process's own backends alone, which they do not disturb. (Neither counts the
/// server's shared work, the WAL writer's say, in the own figure; a backend that exited
/// between two samples is missed.)
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// This process's ticks before and after finding its backends (which reads every
    /// socket's table: not counted as the work measured).
    own: u64,
    own_after: u64,
    all_postgres: u64,
    /// Ticks of each backend of this process's connections, by pid.
    backends: HashMap<u32, u64>,
}

/// CPU ticks between two [`Sample`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    /// This process.
    pub client: u64,
    /// The backends serving this process's connections.
    pub backends: u64,
    /// Every postgres process (other sessions' included).
    pub all_postgres: u64,
}

impl Sample {
    /// Reads the CPU times now.
    pub fn take() -> Self {
        let own = process_ticks("self").map_or(0, |(_, t)| t);
        let pids = postgres_pids();
        let mut all_postgres = 0;
        let mut ticks_of = HashMap::new();
        for pid in &pids {
            if let Some((_, t)) = process_ticks(&pid.to_string()) {
                all_postgres += t;
                ticks_of.insert(*pid, t);
            }
        }
        let backends = own_backends(&pids)
            .into_iter()
            .filter_map(|pid| Some((pid, *ticks_of.get(&pid)?)))
            .collect();
        let own_after = process_ticks("self").map_or(own, |(_, t)| t);
        Self {
            own,
            own_after,
            all_postgres,
            backends,
        }
    }

    /// What was used since `earlier`. A backend that started meanwhile counts whole.
    pub fn since(&self, earlier: &Self) -> Used {
        let backends = self
            .backends
            .iter()
            .map(|(pid, t)| t.saturating_sub(earlier.backends.get(pid).copied().unwrap_or(0)))
            .sum();
        Used {
            client: self.own.saturating_sub(earlier.own_after),
            backends,
            all_postgres: self.all_postgres.saturating_sub(earlier.all_postgres),
        }
    }
}

/// The inode of each TCP socket in `/proc/net/tcp{,6}`, with its local and remote ports.
fn tcp_sockets() -> Vec<(u64, u16, u16)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |f: &str| {
                f.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let (Some(local), Some(remote), Some(inode)) = (
                fields.get(1).and_then(|f| port(f)),
                fields.get(2).and_then(|f| port(f)),
                fields.get(9).and_then(|f| f.parse::<u64>().ok()),
            ) else {
                continue;
            };
            out.push((inode, local, remote));
        }
    }
    out
}

/// The socket inodes `pid` holds open.
fn socket_inodes(pid: &str) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The postgres processes (among `pids`) at the other end of this process's TCP
/// connections: a backend's socket has this process's local port as its remote port.
fn own_backends(pids: &[u32]) -> Vec<u32> {
    let sockets = tcp_sockets();
    let mine = socket_inodes("self");
    let my_ports: HashSet<u16> = sockets
        .iter()
        .filter(|(inode, ..)| mine.contains(inode))
        .map(|(_, local, _)| *local)
        .collect();
    let peer_inodes: HashSet<u64> = sockets
        .iter()
        .filter(|(inode, _, remote)| my_ports.contains(remote) && !mine.contains(inode))
        .map(|(inode, ..)| *inode)
        .collect();
    pids.iter()
        .copied()
        .filter(|pid| !socket_inodes(&pid.to_string()).is_disjoint(&peer_inodes))
        .collect()
}
