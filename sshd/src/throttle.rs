//! A source's `bwlimit`: the original passes it to rsync as `--bwlimit`, which paces the
//! transfer so a backup does not fill a production machine's link. We pace what we read
//! from the agent's daemon; TCP (or the SSH window) slows the sender to match.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Parses rsync's `--bwlimit` value: a number of KiB per second, or with a unit suffix
/// (`b` bytes; `k`, `m`, `g` or `kib`... powers of 1024; `kb`, `mb`, `gb` powers of 1000).
/// `Ok(None)` means no limit (`0`, or empty). The result is in bytes per second.
pub fn parse_bwlimit(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bwlimit {text:?} is not a number with an optional unit"))?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "k" | "kib" => 1024.0,
        "b" => 1.0,
        "kb" => 1000.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        _ => return Err(format!("bwlimit {text:?} has an unknown unit")),
    };
    let rate = value * scale;
    if !rate.is_finite() || rate > u64::MAX as f64 {
        return Err(format!("bwlimit {text:?} is out of range"));
    }
    // Any rate above zero is a limit, however small (truncating it to 0 would lift it).
    Ok(if rate > 0.0 {
        Some((rate as u64).max(MIN_RATE))
    } else {
        None
    })
}

/// rsync's own floor: slower than this is not a useful backup.
const MIN_RATE: u64 = 512;

/// Reads from `inner` at no more than `rate` bytes per second on average; writes pass.
pub struct Paced<S> {
    inner: S,
    rate: u64,
    /// When the bytes read so far will have been "paid for".
    next_read_at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> std::fmt::Debug for Paced<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paced")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl<S> Paced<S> {
    pub fn new(inner: S, bytes_per_second: u64) -> Self {
        Paced {
            inner,
            rate: bytes_per_second.max(1),
            next_read_at: Instant::now(),
            sleep: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Paced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if Instant::now() < this.next_read_at {
            let at = this.next_read_at;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            sleep.as_mut().reset(at);
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            let cost = Duration::from_secs_f64(read as f64 / this.rate as f64);
            this.next_read_at = this.next_read_at.max(Instant::now()) + cost;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Paced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bwlimit_values_parse_as_rsync_reads_them() {
        assert_eq!(parse_bwlimit("1000"), Ok(Some(1000 * 1024)));
        assert_eq!(parse_bwlimit("1.5m"), Ok(Some(1536 * 1024)));
        assert_eq!(parse_bwlimit("100kb"), Ok(Some(100_000)));
        assert_eq!(parse_bwlimit("2MiB"), Ok(Some(2 << 20)));
        assert_eq!(parse_bwlimit("10b"), Ok(Some(MIN_RATE)));
        assert_eq!(parse_bwlimit("0.0001"), Ok(Some(MIN_RATE)));
        assert_eq!(parse_bwlimit("0"), Ok(None));
        assert_eq!(parse_bwlimit(""), Ok(None));
        assert!(parse_bwlimit("fast").is_err());
        assert!(parse_bwlimit("10x").is_err());
        assert!(parse_bwlimit("1e400").is_err());
    }

    /// Only a lower bound is checked: a loaded machine may be slower, never faster.
    #[tokio::test]
    async fn reads_are_paced_to_the_rate() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let payload = vec![7u8; 96 * 1024];
        writer.write_all(&payload).await.unwrap();
        drop(writer);
        let mut paced = Paced::new(reader, 64 * 1024);
        let started = Instant::now();
        let mut got = Vec::new();
        paced.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        // 96 KiB at 64 KiB/s is 1.5 s, paid before the read that sees the end.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1400), "{took:?}");
    }
}
