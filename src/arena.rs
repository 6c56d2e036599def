//! A request's byte strings in one buffer: what an adapter copies out of its server's request on
//! the server's thread is freed on the Python side's, which glibc's per-thread caches do not
//! absorb, so the fewer allocations per request the cheaper. Each string is a [`Span`].

/// A byte range of an [`Arena`]. (A request's strings fit a server's header buffers, far below
/// 4 GiB.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    pub(crate) fn len(self) -> usize {
        self.len as usize
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Arena(Vec<u8>);

impl Arena {
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.0.reserve_exact(bytes);
    }

    pub(crate) fn get(&self, span: Span) -> &[u8] {
        let start = span.start as usize;
        &self.0[start..start + span.len as usize]
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> Span {
        let mark = self.mark();
        self.0.extend_from_slice(bytes);
        self.since(mark)
    }

    /// Where the next bytes go: [`Arena::since`] makes a span of what was added after it, and
    /// [`Arena::truncate`] drops it again.
    pub(crate) fn mark(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn since(&self, mark: usize) -> Span {
        // A wrong slice later would be worse than stopping here.
        assert!(
            self.0.len() <= u32::MAX as usize,
            "a request's strings above 4 GiB"
        );
        Span {
            start: mark as u32,
            len: (self.0.len() - mark) as u32,
        }
    }

    pub(crate) fn truncate(&mut self, mark: usize) {
        self.0.truncate(mark);
    }

    /// Appends bytes made on the way (a lowercased or converted name, say).
    pub(crate) fn extend(&mut self, bytes: impl IntoIterator<Item = u8>) {
        self.0.extend(bytes);
    }

    /// Appends a copy of a span already in the arena.
    pub(crate) fn extend_from_span(&mut self, span: Span) {
        let start = span.start as usize;
        self.0.extend_from_within(start..start + span.len as usize);
    }

    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_find_their_bytes_after_later_pushes_and_truncation() {
        let mut a = Arena::default();
        let x = a.push(b"abc");
        let mark = a.mark();
        a.extend(b"DEF".iter().map(|c| c.to_ascii_lowercase()));
        let y = a.since(mark);
        a.extend_from_span(x);
        let z = a.since(mark);
        assert_eq!(
            (a.get(x), a.get(y), a.get(z)),
            (&b"abc"[..], &b"def"[..], &b"defabc"[..])
        );
        a.truncate(mark);
        assert_eq!(a.get(x), b"abc");
        assert_eq!(a.push(b"").len(), 0);
    }
}
