//! `pass_to_io!`: the `AsyncRead` / `AsyncWrite` methods a connection wrapper leaves
//! as they are, written once. The wrappers of a served connection ([`super::framing`],
//! [`super::linger`], the write counter in [`super`]) each change one or two methods
//! and pass the others to the connection they wrap.

/// Writes the listed `AsyncRead` / `AsyncWrite` methods as calls to the same method of
/// the wrapper's `io` field, inside the trait's `impl` block, so that a wrapper writes
/// only the methods it changes:
///
/// ```ignore
/// impl<IO: AsyncWrite + Unpin> AsyncWrite for Wrapper<IO> {
///     pass_to_io!(poll_write, poll_write_vectored, is_write_vectored, poll_flush);
///
///     fn poll_shutdown(/* what the wrapper does */) { /* ... */ }
/// }
/// ```
macro_rules! pass_to_io {
    ($($method:ident),+ $(,)?) => { $( pass_to_io!(@ $method); )+ };
    (@ poll_read) => {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.io), cx, buf)
        }
    };
    (@ poll_write) => {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.io), cx, data)
        }
    };
    (@ poll_write_vectored) => {
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            data: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            tokio::io::AsyncWrite::poll_write_vectored(std::pin::Pin::new(&mut self.io), cx, data)
        }
    };
    (@ is_write_vectored) => {
        fn is_write_vectored(&self) -> bool {
            tokio::io::AsyncWrite::is_write_vectored(&self.io)
        }
    };
    (@ poll_flush) => {
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.io), cx)
        }
    };
    (@ poll_shutdown) => {
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.io), cx)
        }
    };
}
