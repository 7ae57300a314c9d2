//! CPU time of this process and of PostgreSQL, for the `*_cpu` examples: steadier than
//! throughput on a shared 2-core machine. Linux only (it reads `/proc`).

/// CPU ticks (user + system) of this process and of all `postgres` processes, in the
/// kernel's clock ticks (100 a second on every Linux this runs on; see [`TICKS_PER_SECOND`]).
pub fn ticks() -> (u64, u64) {
    fn ticks(pid: &str) -> Option<(bool, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(") ")?;
        let fields: Vec<&str> = rest.split(' ').collect();
        let used = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((head.contains("(postgres"), used))
    }
    let own = ticks("self").map_or(0, |(_, t)| t);
    let postgres = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| ticks(&pid))
        .filter_map(|(pg, t)| pg.then_some(t))
        .sum();
    (own, postgres)
}

/// Clock ticks a second in `/proc`'s process times.
pub const TICKS_PER_SECOND: f64 = 100.0;
