//! Command arguments in one flat buffer: no allocation per argument.

use std::io;

use redis::{RedisWrite, ToRedisArgs};

/// A list of binary arguments stored back to back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Args {
    data: Vec<u8>,
    /// Where each argument ends in `data`.
    ends: Vec<usize>,
}

impl Args {
    /// The number of arguments.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, index: usize) -> usize {
        match index.checked_sub(1) {
            Some(before) => self.ends.get(before).copied().unwrap_or(self.data.len()),
            None => 0,
        }
    }

    /// Keeps the first `len` arguments.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len < self.ends.len() {
            let end = self.start(len);
            self.data.truncate(end);
            self.ends.truncate(len);
        }
    }

    /// Inserts `arg` as argument number `index` (at most [`Args::len`]).
    pub(crate) fn insert(&mut self, index: usize, arg: &[u8]) {
        let index = index.min(self.ends.len());
        let at = self.start(index);
        self.data.splice(at..at, arg.iter().copied());
        for end in self.ends.iter_mut().skip(index) {
            *end += arg.len();
        }
        self.ends.insert(index, at + arg.len());
    }

    /// The arguments, one slice each.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let arg = self.data.get(start..end).unwrap_or_default();
            start = end;
            arg
        })
    }
}

impl RedisWrite for Args {
    fn write_arg(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.ends.push(self.data.len());
    }

    fn write_arg_fmt(&mut self, arg: impl std::fmt::Display) {
        use io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(self.writer_for_next_arg(), "{arg}");
    }

    fn writer_for_next_arg(&mut self) -> impl io::Write + '_ {
        ArgWriter { args: self }
    }
}

/// Appends to the last argument; ends it when dropped.
struct ArgWriter<'a> {
    args: &'a mut Args,
}

impl io::Write for ArgWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.args.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ArgWriter<'_> {
    fn drop(&mut self) {
        self.args.ends.push(self.args.data.len());
    }
}

impl ToRedisArgs for Args {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        for arg in self.iter() {
            out.write_arg(arg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vecs(args: &Args) -> Vec<Vec<u8>> {
        args.iter().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn arguments_keep_their_bounds_through_insert_and_truncate() {
        let mut args = Args::default();
        "a".write_redis_args(&mut args);
        12i64.write_redis_args(&mut args);
        2.5f64.write_redis_args(&mut args);
        vec!["x", ""].write_redis_args(&mut args);
        assert_eq!(vecs(&args), [&b"a"[..], b"12", b"2.5", b"x", b""]);
        args.insert(1, b"n");
        assert_eq!(vecs(&args), [&b"a"[..], b"n", b"12", b"2.5", b"x", b""]);
        args.truncate(3);
        assert_eq!(vecs(&args), [&b"a"[..], b"n", b"12"]);
        args.insert(3, b"end");
        assert_eq!(vecs(&args), [&b"a"[..], b"n", b"12", b"end"]);
        assert_eq!(args.to_redis_args(), vecs(&args));
    }
}
